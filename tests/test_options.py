# ruff: noqa: E501 - the tables of options and messages read best one per line
"""One schema for every command's options (brats_lightning.options): its coverage of every composed config, and
the options it refuses, each in one line naming the option, exit 2, before any work."""

from __future__ import annotations

import inspect
import itertools
import types
import typing
from pathlib import Path
from typing import Any

import pytest
from omegaconf import DictConfig
from pydantic import BaseModel

from brats_lightning.config import compose, config_dir
from brats_lightning.errors import ConfigError
from brats_lightning.options import SCHEMAS, check_choices, check_config, config_groups, plain
from brats_lightning.schema import (
    Sub,
    _branches,  # the union's branches, as the error messages read them
)
from tests.helpers import run_argv, run_command

#: a data set folder for the configs that need one (its convention given: nothing is read)
REAL = "/nonexistent/BraTS2018"


def _compositions() -> list[tuple[str, list[str]]]:
    groups = config_groups(config_dir())
    out: list[tuple[str, list[str]]] = [("train", []), ("prepare", [])]
    data_root = [f"data.root={REAL}", "data.convention=brats2017"]
    for group, choices in groups.items():
        if group in ("hydra", "local", "paths", "scale", "hparams_search"):
            continue  # hydra's own; machine files; chosen by the trainer; a sweep's (the hydra node)
        for choice in choices:
            extra = (
                data_root if group in ("experiment", "ablation") or (group == "data" and choice != "synthetic") else []
            )
            if group == "ablation":
                out.append(("train", ["experiment=real_fast_ablation", f"+ablation={choice}", *extra]))
            elif group == "havaei":
                out.append(("train", [f"havaei={choice}", "model=twopath"]))
            else:
                out.append(("train", [f"{group}={choice}", *extra]))
    out += [
        ("predict", ["ckpt_path=a.ckpt", "input_dir=in", "output_dir=out"]),
        ("evaluate", ["pred_dir=p", "gt_dir=g", "out_dir=o"]),
        ("export", ["ckpt_path=a.ckpt", "out=m.onnx"]),
    ]
    return out


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    """Every leaf option of a plain config (``model.width``), an empty mapping counting as one."""
    if isinstance(node, dict):
        if not node:
            return {prefix: node}
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_leaves(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: node}


def _metadata(tp: Any) -> list[Any]:
    out: list[Any] = []
    if typing.get_origin(tp) is typing.Annotated:
        args = typing.get_args(tp)
        for m in args[1:]:  # a pydantic Field(ge=...) carries its bounds as metadata of its own
            out += [m, *getattr(m, "metadata", [])]
        out += _metadata(args[0])
    elif typing.get_origin(tp) in (typing.Union, types.UnionType):
        out += [m for a in typing.get_args(tp) for m in _metadata(a)]
    return out


def _field(models: list[Any], key: str, value: Any) -> list[Any]:
    """The annotations the schema gives ``key`` in any of ``models`` (the branch that ``_target_`` selects)."""
    found: list[Any] = []
    for tp in models:
        for t in _branches(tp):
            if isinstance(t, type) and issubclass(t, BaseModel):
                for name, f in t.model_fields.items():
                    if key in (name, f.alias):
                        found.append(typing.Annotated[(f.annotation, *f.metadata)] if f.metadata else f.annotation)
            elif typing.get_origin(t) is dict:
                found.append(typing.get_args(t)[1])
    return found


def _selected(annotations: list[Any], node: Any) -> list[Any]:
    """The union branches a mapping ``node`` selects by its ``_target_`` (all of them without one), and the schema
    a :class:`~brats_lightning.schema.Sub` field names."""
    out: list[Any] = []
    for a in annotations:
        out += [m.schema for m in _metadata(a) if isinstance(m, Sub)]
        for t in _branches(a):
            if isinstance(t, type) and issubclass(t, BaseModel):
                target = next((f for f in t.model_fields.values() if f.alias == "_target_"), None)
                if (
                    target is None
                    or not isinstance(node, dict)
                    or node.get("_target_") in typing.get_args(target.annotation)
                ):
                    out.append(t)
            elif typing.get_origin(t) is dict:
                out.append(t)
    return out


def _typed(annotation: Any) -> str | None:
    """Why ``annotation`` does not give a leaf a type and a range (``None``: it does)."""
    problems = []
    for t in _branches(annotation):
        if t is Any or t is object:
            problems.append("no type (Any)")
        elif t in (int, float):
            bounds = [m for m in _metadata(annotation) if any(hasattr(m, b) for b in ("ge", "gt", "le", "lt"))]
            if not bounds:
                problems.append(f"{t.__name__} without a range")
        elif typing.get_origin(t) in (list, tuple):
            for arg in typing.get_args(t):
                if arg is not Ellipsis and (why := _typed(arg)):
                    problems.append(f"items: {why}")
    return "; ".join(problems) or None


def test_every_option_of_every_command_has_a_type_and_a_range_in_the_schema() -> None:
    walked: set[str] = set()
    problems: list[str] = []
    for command, overrides in _compositions():
        cfg = compose(overrides, config_name=command, output_dir="/tmp/bl-schema-walk")
        check_config(cfg, command)  # every shipped composition is accepted
        values = plain(cfg)
        schema = SCHEMAS[command]
        for key in _leaves(values):
            walked.add(f"{command}:{key}")
            leaf = key.split(".")
            parent: list[Any] = [schema]
            node: Any = values
            for part in leaf[:-1]:
                node = node.get(part)
                parent = _selected(_field(parent, part, node), node)
            annotations = _field(parent, leaf[-1], None)
            if not annotations:
                problems.append(f"{command} {' '.join(overrides)}: {key} is not in the schema")
                continue
            why = [w for a in annotations if (w := _typed(a))]
            if len(why) == len(annotations):
                problems.append(f"{command}: {key}: {why[0]}")
    assert not problems, "\n".join(sorted(set(problems)))
    # the walk reached every group's options, the models' hyper-parameters and the other commands'
    for key in (
        "train:model.width",
        "train:model.dropout",
        "train:cv.final",
        "train:trainer.max_time.seconds",
        "train:callbacks.two_phase.phase2_epochs",
        "train:logger.wandb.project",
        "train:data.preprocess.zscore",
        "predict:postprocess_options.min_volume_mm3",
        "evaluate:hd95",
        "export:opset",
        "prepare:data.root",
    ):
        assert key in walked, key


@pytest.mark.parametrize(
    ("command", "overrides", "message"),
    [
        ("train", ["model.width=0"], "model.width: Input should be greater than 0 (got 0)"),
        ("train", ["model.lr=-0.001"], "model.lr: Input should be greater than 0 (got -0.001)"),
        ("train", ["model.n_blocks=9"], "model.n_blocks: Input should be less than or equal to 4 (got 9)"),
        ("train", ["model.inference_batch_size=0"], "model.inference_batch_size: Input should be greater than or equal"),
        ("train", ["data.max_cases=0"], "data.max_cases: Input should be greater than or equal to 1 (got 0)"),
        ("train", ["+model.widht=2"], "model.widht: unknown option; expected one of"),
        ("train", ["+trainer.foo=1"], "trainer.foo: unknown option"),
        ("train", ["model=twopath", "model.dropout=1.5"], "model.dropout: Input should be less than 1"),
        ("train", ["callbacks.last_checkpoint._target_=os.system"], "callbacks.last_checkpoint._target_: 'os.system' is not a Lightning callback"),
        ("train", ["experiment=real_fast", f"data.root={REAL}", "data.convention=brats2017", "cv.final=best"], "cv.final: Input should be 'all' or 'ensemble'"),
        ("train", ["trainer.precision=8"], "trainer.precision: "),
        ("train", ["logger=csv", "logger.csv._target_=os.system"], "logger.csv._target_: _target_ 'os.system' is none of the classes allowed here"),
        ("predict", ["ckpt_path=a", "input_dir=b", "output_dir=c", "probabilities=maybe"], "probabilities: Input should be a valid boolean (got 'maybe')"),
        ("predict", ["ckpt_path=a", "input_dir=b", "output_dir=c", "overwrite=no"], "overwrite: Input should be a valid boolean (got 'no')"),
        ("predict", ["ckpt_path=a", "input_dir=b", "output_dir=c", "batch_size=0"], "batch_size: Input should be greater than or equal to 1"),
        ("evaluate", ["pred_dir=a", "gt_dir=b", "out_dir=c", "hd95=perhaps"], "hd95: Input should be a valid boolean"),
        ("export", ["ckpt_path=a", "out=b", "opset=3"], "opset: Input should be greater than or equal to 13"),
    ],
)  # fmt: skip
def test_a_bad_option_is_one_line_naming_it(command: str, overrides: list[str], message: str) -> None:
    cfg = compose(overrides, config_name=command, output_dir="/tmp/bl-schema-bad")
    with pytest.raises(ConfigError) as e:
        check_config(cfg, command)
    assert str(e.value).startswith(message), str(e.value)
    assert "\n" not in str(e.value)


def test_model_options_are_refused_before_any_work(tmp_path: Path) -> None:
    """``model.width=0`` trained before (exit 0); ``model.inference_batch_size=0`` failed after training."""
    from brats_lightning.training.train import main

    for option in ("model.width=0", "model.inference_batch_size=0", "model.n_blocks=9", "model.lr=-0.001"):
        out = tmp_path / option.split("=")[0]
        r = run_command(
            main, option, f"hydra.run.dir={out}", "debug=default", "logger=none", "extras.print_config=false"
        )
        assert r.code == 2, (option, r.err[-500:])
        assert r.err.strip().splitlines() == [f"error: {r.err.strip().removeprefix('error: ')}"]
        assert option.split("=")[0] in r.err
        assert not (out / "checkpoints").exists() and not (out / "val_curve.csv").exists()


def test_an_unknown_group_choice_is_one_line_listing_the_choices(tmp_path: Path) -> None:
    """Before: Hydra's multi-line ``Could not find 'model/bogus'`` and exit status 1."""
    from brats_lightning.training.train import main

    r = run_command(main, "model=bogus", f"hydra.run.dir={tmp_path}")
    assert r.code == 2
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: model=bogus: no such model ('bogus'); choices: average, fcn,"
    )
    with pytest.raises(ConfigError, match=r"^\+ablation=nope: no such ablation \('nope'\); choices: all, augment"):
        check_choices(["experiment=real_fast", "+ablation=nope"], config_dir())
    with pytest.raises(ConfigError, match="no such model"):
        check_choices(["-m", "model=fcn,fcn_sym,fcn9"], config_dir())
    check_choices(["-m", "model=fcn,fcn_sym", "model.width=0.5", "--cfg", "job", "debug=null"], config_dir())


def test_the_folder_commands_options_are_one_line(tmp_path: Path) -> None:
    """``report`` and ``sweep`` (argparse): a bad or unknown option was argparse's usage text and a second line."""
    from brats_lightning.report.tables import main as report_main
    from brats_lightning.sweep.report import main as sweep_main

    for main, argv, needle in (
        (sweep_main, [str(tmp_path), "--top", "0"], "sweep.top: Input should be greater than or equal to 1 (got 0)"),
        (sweep_main, [str(tmp_path), "--tpo", "3"], "unrecognized arguments: --tpo"),
        (report_main, [str(tmp_path), "--bogus"], "unrecognized arguments: --bogus"),
    ):
        r = run_argv(main, *argv)
        assert r.code == 2, r
        assert r.err.strip().splitlines() == [f"error: {r.err.strip().removeprefix('error: ')}"], r.err
        assert needle in r.err


def test_the_model_schemas_declare_exactly_the_modules_arguments() -> None:
    from brats_lightning.modules.segmentation import SegmentationModule

    for name, cls in SegmentationModule.registry.items():
        if cls.options_schema is None or cls.__module__.startswith("tests"):
            continue
        params = set(inspect.signature(cls.__init__).parameters) - {"self"}
        assert set(cls.options_schema.model_fields) == params, name


def test_every_command_has_a_schema() -> None:
    from brats_lightning.cli import COMMANDS

    assert set(COMMANDS) - {"synthesize"} <= set(SCHEMAS)


def test_a_composed_config_of_every_pair_of_common_choices_is_accepted() -> None:
    """Group choices combine: the schema accepts what the configs compose to (no false refusals)."""
    for model, trainer, logger in itertools.product(["fcn_sym", "twopath"], ["cpu", "gpu"], ["csv", "none"]):
        cfg = compose([f"model={model}", f"trainer={trainer}", f"logger={logger}"], output_dir="/tmp/bl-schema-pairs")
        assert isinstance(cfg, DictConfig)
        check_config(cfg, "train")
