"""The package's structure: no import cycle, the contract between models and data, one registry of nets."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import brats_lightning

PACKAGE = Path(brats_lightning.__file__).parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, at any level (function-level imports included)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for t in targets:
                if t in modules and t != name and not name.startswith(t + "."):
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


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_in_the_package() -> None:
    graph = import_graph()
    assert (
        "brats_lightning.training.train" in graph
        and "brats_lightning.training.pipeline" in graph["brats_lightning.training.train"]
    )
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


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
