"""The site (or collection) of every case: what cross-validation folds are stratified by.

BraTS 2017-2019 case ids carry the institution or collection the scan came from
(``Brats18_2013_11_1``: the BRATS 2013 data; ``Brats18_CBICA_ABM_1``: CBICA; ``Brats18_TCIA01_201_1``:
TCIA collection 01; ``BraTS19_TMC_...``). Folds that hold every site in proportion give a
cross-validation estimate that says something about the whole data set; folds that are one site
each (``data.split=site``) measure how a model carries to a scanner and protocol it never saw.

``data.groups`` says how a case gets its group:

* ``auto`` (default): the BraTS id's site token when the id has one (:data:`BRATS_SITE`), else one
  group for all (BraTS 2020+ and synthetic ids carry no site);
* a regular expression with one capture group, matched against the case id
  (``data.groups='^([A-Z]+)-'``); a case it does not match is an error naming it;
* a CSV file with columns ``case,group`` (every case must be listed).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from pathlib import Path

from brats_lightning.errors import ConfigError, DataError

__all__ = ["BRATS_SITE", "case_groups"]

#: the site token of a BraTS 2017-2019 training id: ``Brats18_<site>_<...>_1``, ``BraTS19_<site>_...``
BRATS_SITE = re.compile(r"^Bra[Tt][Ss]1[789]_(?P<site>2013|CBICA|TCIA\d\d|TMC|[A-Z]{2,6}\d{0,2})_")

#: the group of cases whose id carries no site
ONE_GROUP = "all"


def case_groups(case_ids: Sequence[str], spec: str | None = "auto") -> dict[str, str]:
    """Case id -> group, as ``spec`` says (see the module docstring).

    Raises:
        ConfigError: an invalid regular expression, or a CSV that cannot be read.
        DataError: a case the regular expression does not match, or that the CSV does not list.
    """
    spec = "auto" if spec in (None, "", "auto") else str(spec)
    if spec == "auto":
        found = {c: m["site"] for c in case_ids if (m := BRATS_SITE.match(c))}
        if len(found) != len(case_ids):  # not every id carries a site: one group (never half a guess)
            return dict.fromkeys(case_ids, ONE_GROUP)
        return found
    if spec.endswith(".csv"):
        return _from_csv(Path(spec), case_ids)
    try:
        pattern = re.compile(spec)
    except re.error as e:
        raise ConfigError(f"data.groups={spec!r}: not a regular expression ({e})") from None
    if pattern.groups != 1:
        raise ConfigError(f"data.groups={spec!r}: the pattern needs exactly one capture group (the site)")
    out: dict[str, str] = {}
    for c in case_ids:
        m = pattern.search(c)
        if m is None or not m.group(1):
            raise DataError(f"case {c}: data.groups={spec!r} does not match its id (no site)")
        out[c] = m.group(1)
    return out


def _from_csv(path: Path, case_ids: Sequence[str]) -> dict[str, str]:
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ConfigError(f"data.groups={path}: cannot read the CSV ({e})") from None
    if not rows or not {"case", "group"} <= set(rows[0]):
        raise ConfigError(f"data.groups={path}: expected a CSV with columns case,group")
    table = {str(r["case"]).strip(): str(r["group"]).strip() for r in rows}
    missing = [c for c in case_ids if not table.get(c)]
    if missing:
        raise DataError(f"{path}: no group for case(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return {c: table[c] for c in case_ids}
