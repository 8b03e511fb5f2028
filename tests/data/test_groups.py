"""brats_lightning.data.groups: a case's site from its id, a pattern or a CSV."""

from __future__ import annotations

from pathlib import Path

import pytest

from brats_lightning.data.groups import case_groups
from brats_lightning.errors import ConfigError, DataError
from tests.helpers import BRATS18


def test_a_case_s_site_comes_from_its_id_a_pattern_or_a_csv(tmp_path: Path) -> None:
    groups = case_groups(BRATS18)
    assert groups["Brats18_2013_3_1"] == "2013" and groups["Brats18_TCIA10_637_1"] == "TCIA10"
    assert sorted(set(groups.values())) == ["2013", "CBICA", "TCIA01", "TCIA02", "TCIA03", "TCIA10"]
    # ids without a site (BraTS 2020+, synthetic): one group, never half a guess
    assert set(case_groups(["BraTS20_Training_001", "Brats18_CBICA_ABM_1"]).values()) == {"all"}
    assert case_groups(["A-1", "B-2"], r"^([A-Z])-") == {"A-1": "A", "B-2": "B"}
    with pytest.raises(DataError, match=r"case c3: data.groups='\^\(\[A-Z\]\)-' does not match"):
        case_groups(["A-1", "c3"], r"^([A-Z])-")
    with pytest.raises(ConfigError, match="exactly one capture group"):
        case_groups(["A-1"], r"^[A-Z]-")
    table = tmp_path / "sites.csv"
    table.write_text("case,group\nA-1,north\nB-2,south\n")
    assert case_groups(["A-1", "B-2"], str(table)) == {"A-1": "north", "B-2": "south"}
    with pytest.raises(DataError, match=r"sites.csv: no group for case\(s\) \['C-3'\]"):
        case_groups(["A-1", "C-3"], str(table))
