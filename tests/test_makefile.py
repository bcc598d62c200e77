"""The Makefile's list of extras for ``make test-latest`` names every extra pyproject.toml has
(a new connector's extra left out would go untested against the newest releases)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_make_test_latest_installs_every_extra() -> None:
    extras = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    )
    found = re.search(r"^EXTRAS := (.+)$", (ROOT / "Makefile").read_text(), re.M)
    assert found is not None, "no EXTRAS line in the Makefile"
    listed = set(found.group(1).split(","))
    assert extras - {"memory"} == listed, (extras, listed)
