"""Hydra/OmegaConf plumbing: where ``conf/`` is, custom resolvers, composing configs in code."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

__all__ = ["apply_extras", "check_budget", "compose", "config_dir", "print_config_tree", "register_resolvers"]


def config_dir() -> str:
    """Absolute path of the config folder.

    A source checkout (editable install) uses the top-level ``conf/``; a wheel ships the same files
    as ``brats_lightning/conf`` (see ``pyproject.toml``).
    """
    here = Path(__file__).resolve().parent
    for cand in (here / "conf", here.parent / "conf"):
        if (cand / "train.yaml").is_file():
            return str(cand)
    raise FileNotFoundError(f"brats_lightning configs not found next to {here} (looked for conf/train.yaml)")


def _in_channels(modalities: Sequence[str], symmetry: bool, context: int = 0) -> int:
    from brats_lightning.data.channels import in_channels_for

    return in_channels_for(list(modalities), bool(symmetry), int(context))


def _num_classes(convention: str) -> int:
    from brats_lightning.data.labels import get_convention

    return get_convention(convention).num_classes


def _data_convention(root: object, layout: object = "auto") -> str:
    from brats_lightning.data.layouts import dataset_convention

    return dataset_convention(None if root in (None, "None") else str(root), str(layout or "auto"))


#: ``model.arch`` in a table's words (``bl.net_name``)
_NET_WORDS = {"fcn": "FCN", "unet": "U-Net decoder", "dynunet": "MONAI DynUNet 2D"}


def _net_name(arch: str, width: float = 1.0, symmetry: bool = True) -> str:
    """The net in a table's words, from the options that make it: ``"U-Net decoder + symmetry, half width"``.

    So a run that overrides ``model.arch``, ``model.width`` or ``data.symmetry`` is named for what it trained.
    """
    name = _NET_WORDS.get(str(arch), str(arch)) + (" + symmetry" if symmetry else "")
    width = float(width)
    if width == 0.5:
        return name + ", half width"
    return name if width == 1.0 else f"{name}, width {width:g}"


def _cpu_precision() -> str:
    from brats_lightning.precision import training_precision

    return training_precision()


def _wandb_offline() -> bool:
    """W&B runs offline unless an API key is configured (environment or ~/.netrc)."""
    if os.environ.get("WANDB_MODE") in ("online", "run"):
        return False
    if os.environ.get("WANDB_API_KEY"):
        return False
    netrc = Path.home() / ".netrc"
    try:
        return not (netrc.is_file() and "api.wandb.ai" in netrc.read_text())
    except OSError:
        return True


def _run_name(task: str) -> str:
    """``task`` plus the job's overrides inside a Hydra job (one W&B run name per multirun job)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        extra = HydraConfig.get().job.override_dirname
    except (ValueError, AttributeError):
        extra = ""
    return f"{task}/{extra}" if extra else task


def check_budget(budget_minutes: object, reserve_minutes: object) -> tuple[float, float]:
    """``(budget, reserve)`` in minutes, checked: a positive budget, a reserve in ``[0, budget)``.

    Raises:
        ConfigError: naming the option and what would work.
    """
    from brats_lightning.errors import ConfigError

    def number(name: str, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise ConfigError(f"{name} must be a number of minutes, got {value!r}")
        return float(value)

    budget, reserve = number("budget_minutes", budget_minutes), number("reserve_minutes", reserve_minutes)
    if budget <= 0:
        raise ConfigError(f"budget_minutes={budget_minutes}: the time budget must be positive (e.g. budget_minutes=90)")
    if not 0 <= reserve < budget:
        raise ConfigError(
            f"reserve_minutes={reserve_minutes} must be at least 0 and less than budget_minutes={budget_minutes} "
            "(it is the part of the budget kept for the last validation, the tuning and the test)"
        )
    return budget, reserve


def _max_time(budget_minutes: float, reserve_minutes: float) -> dict[str, float]:
    """``trainer.max_time`` for a run of ``budget_minutes`` in all, ``reserve_minutes`` of which are kept for
    what follows training (the last validation, tuning, testing)."""
    budget, reserve = check_budget(budget_minutes, reserve_minutes)
    return {"seconds": 60.0 * (budget - reserve)}


def register_resolvers() -> None:
    """Register the ``bl.*`` resolvers used by the configs (idempotent)."""
    for name, fn in (
        ("bl.in_channels", _in_channels),
        ("bl.num_classes", _num_classes),
        ("bl.wandb_offline", _wandb_offline),
        ("bl.cpu_precision", _cpu_precision),
        ("bl.run_name", _run_name),
        ("bl.net_name", _net_name),
        ("bl.data_convention", _data_convention),
        ("bl.max_time", _max_time),
    ):
        if not OmegaConf.has_resolver(name):
            # a data set's convention reads label files: once per root and layout
            OmegaConf.register_new_resolver(name, fn, use_cache=name == "bl.data_convention")


def compose(overrides: Sequence[str] = (), config_name: str = "train", output_dir: str | None = None) -> DictConfig:
    """Compose a config in code, as ``python -m brats_lightning`` would (for tests and notebooks).

    Args:
        overrides: Hydra overrides (``["model=fcn_sym", "trainer.max_epochs=1"]``).
        config_name: primary config.
        output_dir: sets ``paths.output_dir`` (otherwise it needs a Hydra run).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    if output_dir is not None:
        OmegaConf.set_struct(cfg, False)
        cfg.paths.output_dir = str(output_dir)
        OmegaConf.set_struct(cfg, True)
    return cfg


def apply_extras(cfg: DictConfig) -> None:
    """The template's conveniences, ``extras`` in ``conf/train.yaml``, before any work.

    ``extras.print_config``: the composed config printed as a tree (rich), the run's first output;
    ``extras.enforce_tags``: a run without ``tags`` is refused (a lab that files runs by tag);
    ``extras.ignore_warnings``: Python warnings silenced.

    Raises:
        ConfigError: ``extras.enforce_tags`` and no tags.
    """
    import warnings

    from brats_lightning.errors import ConfigError

    extras = cfg.get("extras") or {}
    if extras.get("ignore_warnings"):
        warnings.filterwarnings("ignore")
    if extras.get("enforce_tags") and not cfg.get("tags"):
        raise ConfigError(
            "tags is empty and extras.enforce_tags=true: name the run, e.g. tags='[baseline, lr_sweep]' (or "
            "extras.enforce_tags=false)"
        )
    if extras.get("print_config") and int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0:
        print_config_tree(cfg)


FIRST_GROUPS = ("data", "model", "trainer", "callbacks", "logger")


def print_config_tree(cfg: DictConfig, first: Sequence[str] = FIRST_GROUPS) -> None:
    """Print the composed config as a rich tree: the groups in ``first`` on top, then the rest, ``hydra`` left out.

    Values that cannot be resolved yet (``${hydra:...}`` outside a Hydra run) are shown as written.
    """
    from rich.console import Console
    from rich.syntax import Syntax
    from rich.tree import Tree

    tree = Tree("config", guide_style="dim")
    keys = [k for k in first if k in cfg] + [str(k) for k in cfg if k not in first and k != "hydra"]
    for key in keys:
        node = cfg._get_node(key)
        try:
            value = OmegaConf.select(cfg, key, throw_on_missing=False)
            text = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        except Exception:  # noqa: BLE001 - an interpolation only Hydra's run can resolve: shown as written
            text = OmegaConf.to_yaml(node) if isinstance(node, DictConfig) else str(node)
        tree.add(str(key), style="bold").add(Syntax(text.rstrip(), "yaml", theme="ansi_dark", word_wrap=True))
    Console().print(tree)
