"""Command entry points (the top layer: nothing in the package imports this module).

``brats-lightning <command> [arguments]`` (:func:`main`) runs every command of the package; ``python -m
brats_lightning...`` forms stay as they were. ``python -m brats_lightning`` and the ``brats-train`` console script run
:func:`train_command`: the Hydra application of :func:`brats_lightning.training.train.main`, with the resumable Optuna
sweeper registered so that ``hparams_search=...`` finds it however the package is installed.
"""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = ["COMMANDS", "Command", "command_arguments", "console", "main", "register_sweeper", "train_command", "usage"]


def register_sweeper() -> None:
    """Make the resumable sweeper known to Hydra (``Plugins.register``).

    Hydra finds plugins by listing the ``hydra_plugins`` package, which misses the portion of an editable
    install (``pip install -e``) unless the command runs from the repository's root; registered, the sweeper
    is found from any folder. Nothing happens when the plugin package is not installed.
    """
    try:
        from hydra.core.plugins import Plugins

        from hydra_plugins.brats_lightning_sweeper import ResumableOptunaSweeper
    except ImportError:
        return
    Plugins.instance().register(ResumableOptunaSweeper)


def train_command() -> None:
    """``python -m brats_lightning [overrides]``: train and test a model (see ``conf/train.yaml``)."""
    from brats_lightning.training.train import main

    register_sweeper()
    main()


@dataclass(frozen=True)
class Command:
    """One command of ``brats-lightning``.

    Attributes:
        module: the module whose ``main`` runs it (a Hydra application, or ``main(argv)`` with ``argparse``).
        summary: one line for ``--help``.
        same_as: the ``python -m`` form it equals.
        hydra: whether its arguments are Hydra overrides (``key=value``); otherwise ``argparse`` options.
        first: arguments put before the user's (``crossval``: ``experiment=real_fast`` unless an experiment is given).
        why_not_hydra: for an ``argparse`` command, why it is not a Hydra application.
    """

    module: str
    summary: str
    same_as: str
    hydra: bool = True
    first: tuple[str, ...] = field(default=())
    why_not_hydra: str = ""


#: why the folder-reading commands take argparse options rather than Hydra overrides
_READS_A_FOLDER = (
    "it reads a folder you name and writes its report into it; a Hydra application would open an outputs/<date> "
    "folder and a log of its own for every look at a finished run"
)

COMMANDS: dict[str, Command] = {
    "train": Command("brats_lightning.cli", "train and test a model; -m for a multirun, hparams_search=NAME for a "
                     "hyper-parameter search (conf/train.yaml)", "python -m brats_lightning"),
    "crossval": Command("brats_lightning.cli", "a cross-validation in one budget with out-of-fold figures and a model "
                        "card (experiment=real_fast unless you give another experiment=)",
                        "python -m brats_lightning experiment=real_fast", first=("experiment=real_fast",)),
    "predict": Command("brats_lightning.predict.run", "segment a folder of cases with a checkpoint, run folder or "
                       "ONNX model (conf/predict.yaml)", "python -m brats_lightning.predict"),
    "evaluate": Command("brats_lightning.evaluate", "score predictions against labels with the BraTS metrics "
                        "(conf/evaluate.yaml)", "python -m brats_lightning.evaluate"),
    "report": Command("brats_lightning.report.tables", "tables and figures of a multirun (the papers' experiments)",
                      "python -m brats_lightning.report", hydra=False, why_not_hydra=_READS_A_FOLDER),
    "prepare": Command("brats_lightning.prepare", "preprocess a data set into the cache, once (conf/prepare.yaml)",
                       "python -m brats_lightning.prepare"),
    "export": Command("brats_lightning.export", "export a checkpoint to ONNX (conf/export.yaml)",
                      "python -m brats_lightning.export"),
    "sweep": Command("brats_lightning.sweep.report", "report on a hyper-parameter search: best trials, importances, "
                     "plots (run one with: brats-lightning train hparams_search=NAME)",
                     "python -m brats_lightning.sweep", hydra=False, why_not_hydra=_READS_A_FOLDER),
    "synthesize": Command("brats_lightning.data.synthetic.__main__", "write the built-in synthetic BraTS-like data "
                          "set as NIfTI files", "python -m brats_lightning.data.synthetic", hydra=False,
                          why_not_hydra="it writes only into the folder you name; a Hydra application would add an "
                          "outputs/<date> folder and a log beside it"),
}  # fmt: skip


def usage() -> str:
    """The text of ``brats-lightning --help``."""
    width = max(map(len, COMMANDS))
    lines = [
        "usage: brats-lightning <command> [arguments]",
        "",
        "Brain tumour segmentation (BraTS) experiments: Shen et al.'s FCN and Havaei et al.'s patch CNNs, on",
        "PyTorch Lightning and Hydra. Arguments are Hydra overrides (key=value) unless said otherwise;",
        "brats-lightning <command> --help shows a command's own help (its config, for Hydra commands).",
        "",
        "commands:",
    ]
    indent = " " * (width + 4)
    for name, cmd in COMMANDS.items():
        lines += textwrap.wrap(cmd.summary, 100, initial_indent=f"  {name:<{width}}  ", subsequent_indent=indent)
        lines.append(f"{indent}= {cmd.same_as}" + ("" if cmd.hydra else "  [argparse options]"))
    lines += ["", "argparse commands, and why they are not Hydra applications:"]
    for name, cmd in COMMANDS.items():
        if not cmd.hydra:
            lines += textwrap.wrap(f"{name}: {cmd.why_not_hydra}", 100, initial_indent="  ", subsequent_indent="    ")
    lines += ["", "Docs: docs/index.md (mkdocs serve); every one-line error: docs/troubleshooting.md"]
    return "\n".join(lines)


def _entry(cmd: Command) -> Callable[..., object]:
    if cmd.module == "brats_lightning.cli":
        return train_command
    return importlib.import_module(cmd.module).main


def main(argv: Sequence[str] | None = None) -> int:
    """``brats-lightning <command> [arguments]``: run one command (``--help``: the list).

    Returns:
        The exit status: 0, or 2 with one line for an unknown command (the command's own status otherwise).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    cmd = COMMANDS.get(name)
    if cmd is None:
        print(f"error: unknown command {name!r}; expected one of {', '.join(COMMANDS)} (brats-lightning --help)",
              file=sys.stderr)  # fmt: skip
        return 2
    entry = _entry(cmd)
    if not cmd.hydra:
        result = entry(rest)
        return result if isinstance(result, int) else 0
    saved = sys.argv
    argv0 = saved[0] if saved else "brats-lightning"
    sys.argv = [f"{argv0} {name}", *command_arguments(cmd, rest)]  # Hydra reads the overrides from sys.argv
    try:
        entry()
    finally:
        sys.argv = saved
    return 0


def command_arguments(cmd: Command, rest: Sequence[str]) -> list[str]:
    """The arguments a command runs with: its own first ones (unless the user set the same key), then the user's."""
    given = {r.lstrip("+~").split("=", 1)[0] for r in rest}
    return [a for a in cmd.first if a.split("=", 1)[0] not in given] + list(rest)


def console() -> None:
    """The ``brats-lightning`` console script."""
    sys.exit(main())
