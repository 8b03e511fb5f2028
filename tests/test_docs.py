"""The documentation's promises a test can hold: the README is a door, and the API reference lists every module."""

from __future__ import annotations

import re

from tests.helpers import ROOT
from tests.test_architecture import modules


def test_the_readme_is_a_door() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    # its two set-up commands, verbatim
    install = 'pip install -c constraints.txt -e ".[dev]" && python -m brats_lightning model=fcn_sym'
    assert f"{install}\npython -m pytest" in readme


def test_the_api_reference_lists_every_module_of_the_package() -> None:
    documented = set()
    for page in (ROOT / "docs" / "reference").glob("*.md"):
        documented |= set(re.findall(r"^::: (brats_lightning[\w.]*)$", page.read_text(), flags=re.M))
    found = {m: path for m, path in modules().items() if m.startswith("brats_lightning")}
    # every module but packages' __init__ and commands' __main__ (documented where they say something)
    package = {m for m, path in found.items() if path.name not in ("__init__.py", "__main__.py")}
    assert package - documented == set(), "modules missing from docs/reference"
    assert documented - set(found) == set(), "docs/reference names modules that do not exist"
