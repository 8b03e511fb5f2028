"""The papers' published results (BRATS 2013 test set), in one place, for the report's tables.

Metric keys are ours: ``dice``, ``ppv``, ``sensitivity``, each a ``(complete, core, enhancing)``
triple. Havaei et al.'s tables print PPV under the heading "Specificity": Shen et al.'s Table 1
lists the same figures as Havaei's PPV (InputCascadeCNN*: 0.89 / 0.79 / 0.68), and a true
specificity of a few-percent tumour is ~0.99+. So their "Specificity" is stored here as ``ppv``.
"""

from __future__ import annotations

__all__ = ["HAVAEI_TABLE1", "HAVAEI_TABLE2", "SHEN_TABLE1", "PUBLISHED", "LAYOUTS", "SOURCES", "paper_of"]

Triple = tuple[float, float, float]

#: Havaei et al. 2017, Table 1 ("Specificity" there = PPV here)
HAVAEI_TABLE1: dict[str, dict[str, Triple]] = {
    "TwoPathCNN*": {"dice": (0.85, 0.78, 0.73), "ppv": (0.93, 0.80, 0.72), "sensitivity": (0.80, 0.76, 0.75)},
    "LocalPathCNN*": {"dice": (0.85, 0.74, 0.71), "ppv": (0.91, 0.75, 0.71), "sensitivity": (0.80, 0.77, 0.73)},
    "AverageCNN*": {"dice": (0.84, 0.75, 0.70), "ppv": (0.95, 0.83, 0.73), "sensitivity": (0.77, 0.74, 0.73)},
    "GlobalPathCNN*": {"dice": (0.82, 0.73, 0.68), "ppv": (0.93, 0.81, 0.70), "sensitivity": (0.75, 0.65, 0.70)},
    "TwoPathCNN": {"dice": (0.78, 0.63, 0.68), "ppv": (0.67, 0.50, 0.59), "sensitivity": (0.96, 0.89, 0.82)},
    "LocalPathCNN": {"dice": (0.77, 0.64, 0.68), "ppv": (0.65, 0.52, 0.60), "sensitivity": (0.96, 0.87, 0.80)},
}

#: Havaei et al. 2017, Table 2 (the cascades, second training phase)
HAVAEI_TABLE2: dict[str, dict[str, Triple]] = {
    "InputCascadeCNN*": {"dice": (0.88, 0.79, 0.73), "ppv": (0.89, 0.79, 0.68), "sensitivity": (0.87, 0.79, 0.80)},
    "MFCascadeCNN*": {"dice": (0.86, 0.77, 0.73), "ppv": (0.92, 0.80, 0.71), "sensitivity": (0.81, 0.76, 0.76)},
    "LocalCascadeCNN*": {"dice": (0.88, 0.76, 0.72), "ppv": (0.91, 0.76, 0.70), "sensitivity": (0.84, 0.80, 0.75)},
}

#: Shen et al. 2017, Table 1 (Dice, Positive Predictive Value, Sensitivity); "Proposed" is FCN + symmetry
SHEN_TABLE1: dict[str, dict[str, Triple]] = {
    "FCN + symmetry (3 blocks)": {
        "dice": (0.87, 0.82, 0.75),
        "ppv": (0.85, 0.87, 0.72),
        "sensitivity": (0.89, 0.79, 0.80),
    },
    "Tustison (BRATS 2013 winner)": {
        "dice": (0.87, 0.78, 0.74),
        "ppv": (0.85, 0.74, 0.69),
        "sensitivity": (0.89, 0.88, 0.83),
    },
}

#: every published row, by the report's setting names
PUBLISHED: dict[str, dict[str, Triple]] = {**HAVAEI_TABLE1, **HAVAEI_TABLE2, **SHEN_TABLE1}


def paper_of(setting: str) -> str | None:
    """``"havaei"`` or ``"shen"`` for a setting named as in the report, else ``None``."""
    if setting in HAVAEI_TABLE1 or setting in HAVAEI_TABLE2:
        return "havaei"
    if setting.startswith("FCN"):
        return "shen"
    return None


#: each paper's table layout: (heading, our metric) per column group. Havaei et al. print PPV under
#: "Specificity"; true specificity follows in its own columns.
LAYOUTS: dict[str | None, tuple[tuple[str, str], ...]] = {
    "havaei": (
        ("Dice", "dice"),
        ("Specificity†", "ppv"),
        ("Sensitivity", "sensitivity"),
        ("True specificity", "specificity"),
    ),
    "shen": (("Dice", "dice"), ("PPV", "ppv"), ("Sensitivity", "sensitivity"), ("Specificity", "specificity")),
    None: (("Dice", "dice"), ("Sensitivity", "sensitivity"), ("Specificity", "specificity"), ("PPV", "ppv")),
}
#: the papers' citations, as the report's published rows name them
SOURCES: dict[str, str] = {"havaei": "Havaei et al. 2017", "shen": "Shen et al. 2017"}
