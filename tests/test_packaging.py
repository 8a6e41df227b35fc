"""The wheel holds every package of the source tree (pyproject.toml lists them by hand)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_in_the_wheel():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    mapped = {name: ROOT / folder for name, folder in setuptools["package-dir"].items()}
    found = set()
    for top in ("embedsearch", "service", "index"):
        for init in (ROOT / top).rglob("__init__.py"):
            found.add(".".join(init.parent.relative_to(ROOT).parts))
    for name, folder in mapped.items():
        found |= {name} | {f"{name}.{p.name}" for p in folder.iterdir() if p.is_dir() and any(p.glob("*.py"))}
    assert found == listed, (sorted(found - listed), sorted(listed - found))
