"""The project's structure: import layers and no import cycle over the package, its Hydra plugin and the
benchmarks; the contract between models and data; one registry of nets."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: the trees checked: module prefix -> folder
TREES = {
    "brats_lightning": ROOT / "brats_lightning",
    "hydra_plugins": ROOT / "hydra_plugins",
    "benchmarks": ROOT / "benchmarks",
}

#: the layers, lowest first: a module may import modules of its own layer (without a cycle) or of lower
#: layers, never of a higher one. A prefix names a module and everything under it (``brats_lightning`` only its
#: ``__init__``); ``*.__main__`` is any command's entry module. Every module
#: must fall in a layer: a new one is placed here on purpose.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "foundation",
        (
            "brats_lightning",
            "brats_lightning.errors",
            "brats_lightning.files",
            "brats_lightning.schema",
            "brats_lightning.seeding",
            "brats_lightning.precision",
            "brats_lightning.stats",
        ),
    ),
    ("data", ("brats_lightning.data",)),
    ("nets", ("brats_lightning.nets",)),
    (
        "inference and evaluation",
        ("brats_lightning.inference", "brats_lightning.evaluation", "brats_lightning.viz", "brats_lightning.run_files"),
    ),
    ("lightning", ("brats_lightning.modules", "brats_lightning.callbacks")),
    ("model loading", ("brats_lightning.load",)),
    (
        "stages and commands",
        (
            "brats_lightning.config",
            "brats_lightning.options",
            "brats_lightning.training",
            "brats_lightning.crossval",
            "brats_lightning.predict",
            "brats_lightning.evaluate",
            "brats_lightning.report",
            "brats_lightning.sweep",
            "brats_lightning.prepare",
            "brats_lightning.export",
        ),
    ),
    ("entry points", ("*.__main__", "brats_lightning.cli", "hydra_plugins", "benchmarks")),
]


def _module_name(prefix: str, folder: Path, path: Path) -> str:
    parts = [prefix, *path.relative_to(folder).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    """Every module of the checked trees, by dotted name."""
    return {_module_name(p, d, f): f for p, d in TREES.items() for f in sorted(d.rglob("*.py"))}


def import_graph(found: dict[str, Path] | None = None) -> dict[str, set[str]]:
    """Module -> the checked modules it imports, at any level (function-level imports included).

    ``from a.b import c`` counts as importing ``a.b.c`` when that is a module, else ``a.b``; a benchmark's
    ``from _common import ...`` (its folder is on ``sys.path``) is ``benchmarks._common``.
    """
    found = modules() if found is None else found
    graph: dict[str, set[str]] = {}
    for name, path in found.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                module = (
                    f"benchmarks.{node.module}"
                    if name.startswith("benchmarks.") and f"benchmarks.{node.module}" in found
                    else node.module
                )
                subs = [f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in found]
                targets = subs if len(subs) == len(node.names) else [module, *subs]
            for t in targets:
                if t in found and t != name and not name.startswith(t + "."):
                    deps.add(t)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the graph (as a path that returns to its start), or ``None``."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def layer_of(module: str) -> int | None:
    """The index of ``module``'s layer in :data:`LAYERS` (the longest matching prefix wins), or ``None``."""
    if module.endswith(".__main__"):
        return len(LAYERS) - 1
    best: tuple[int, int] | None = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            within = module.startswith(prefix + ".") and prefix != "brats_lightning"  # the package: its __init__ only
            if (module == prefix or within) and (best is None or len(prefix) > best[1]):
                best = (index, len(prefix))
    return None if best is None else best[0]


def unit_of(module: str) -> str:
    """The unit a module belongs to for the package-level graph: a subpackage of the trees' roots
    (``brats_lightning.data``) or a top-level module (``brats_lightning.viz``); a command's entry module
    (``*.__main__``, the top layer) is a unit of its own."""
    parts = module.split(".")
    return module if module.endswith(".__main__") or len(parts) < 2 else ".".join(parts[:2])


def test_the_checks_find_what_they_look_for() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert layer_of("brats_lightning.data.readers") == 1 and layer_of("brats_lightning.data.synthetic.__main__") == 7
    assert layer_of("brats_lightning.predict.run") == 6 and layer_of("somewhere.else") is None
    assert layer_of("brats_lightning") == 0 and layer_of("brats_lightning.new_module") is None
    assert (
        unit_of("brats_lightning.data.options") == "brats_lightning.data"
        and unit_of("benchmarks._common") == "benchmarks._common"
    )
    assert layer_of("brats_lightning.sweep") < layer_of("hydra_plugins.brats_lightning_sweeper")  # type: ignore[operator]


def test_every_module_has_a_layer() -> None:
    graph = import_graph()
    assert "brats_lightning.training.pipeline" in graph["brats_lightning.training.train"]
    assert "benchmarks._common" in graph["benchmarks.bench_inference"]
    unplaced = sorted(m for m in graph if layer_of(m) is None)
    assert not unplaced, f"modules outside every layer of LAYERS: {unplaced}"


def test_no_import_cycle_between_modules() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_no_import_cycle_between_packages() -> None:
    units: dict[str, set[str]] = {}
    for module, deps in import_graph().items():
        units.setdefault(unit_of(module), set()).update(unit_of(d) for d in deps if unit_of(d) != unit_of(module))
    cycle = find_cycle(units)
    assert cycle is None, " -> ".join(cycle or [])


def test_no_import_runs_back_up_a_layer() -> None:
    upward = [
        f"{module} ({LAYERS[layer_of(module)][0]}) imports {dep} ({LAYERS[layer_of(dep)][0]})"  # type: ignore[index]
        for module, deps in sorted(import_graph().items())
        for dep in sorted(deps)
        if layer_of(module) is not None and layer_of(dep) is not None and layer_of(dep) > layer_of(module)  # type: ignore[operator]
    ]
    assert not upward, "\n".join(upward)


def test_the_data_module_fulfils_the_contract(tmp_path: Path) -> None:
    from brats_lightning.data.contract import PatchData, SegmentationData
    from brats_lightning.data.datamodule import BratsDataModule

    dm = BratsDataModule(root=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"))
    assert isinstance(dm, PatchData) and isinstance(dm, SegmentationData)
    assert not isinstance(object(), SegmentationData)


def test_two_phase_training_refuses_a_data_module_without_patches(tmp_path: Path) -> None:
    import pytorch_lightning as pl

    from brats_lightning.callbacks.two_phase import TwoPhaseTraining
    from brats_lightning.modules.patch import PatchCNNModule

    class SlicesOnly(pl.LightningDataModule):
        mode, crop_size = "slices", (16, 16)

    trainer = pl.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        max_epochs=2,
        callbacks=[TwoPhaseTraining()],
        default_root_dir=tmp_path,
    )
    with pytest.raises(TypeError, match="PatchData"):
        trainer.fit(PatchCNNModule("localpath"), datamodule=SlicesOnly())


def test_every_paper_net_is_registered_and_built_by_name() -> None:
    from brats_lightning.errors import ConfigError
    from brats_lightning.modules.patch import PatchCNNModule
    from brats_lightning.nets import patch_net_class
    from brats_lightning.nets.twopath import PatchCNN

    papers = {"localpath", "globalpath", "twopath", "average", "input_cascade", "local_cascade", "mf_cascade"}
    assert papers <= set(PatchCNN.registry)
    for arch in sorted(papers):
        module = PatchCNNModule(arch, first_stage_cache=True)
        assert type(module.net) is patch_net_class(arch) and module.net.arch == arch
    stages = {a: sorted(PatchCNNModule(a).stage_checkpoints()) for a in ("twopath", "average", "mf_cascade")}
    assert stages == {
        "twopath": [],
        "average": ["model.global_ckpt", "model.local_ckpt"],
        "mf_cascade": ["model.first_stage_ckpt"],
    }
    with pytest.raises(ConfigError, match="unknown patch CNN 'nope'.*twopath"):
        PatchCNNModule("nope")
