"""Packaging: every package folder is declared, and nothing generic lands at the top of site-packages."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else pytest.importorskip("tomli")


def _setuptools_table():
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_folder_is_declared():
    table = _setuptools_table()
    declared = set(table["packages"])
    expected = set()
    for package, folder in table["package-dir"].items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            expected.add(".".join([package, *rel.parts]))
    assert expected - declared == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert declared - expected == set(), "these are declared but have no __init__.py"


def test_all_packages_live_under_hqrs():
    table = _setuptools_table()
    assert all(name.startswith("hqrs.") for name in table["packages"])
    assert all(name.startswith("hqrs.") for name in table["package-dir"])


@pytest.mark.parametrize(
    "name", ["hqrs.modeling", "hqrs.dataset_builder", "hqrs.hub_cards", "hqrs.scripts", "hqrs.evaluation"]
)
def test_subpackages_import_from_their_folders(name):
    module = importlib.import_module(name)
    folder = _setuptools_table()["package-dir"][name]
    assert Path(module.__file__).resolve().parent == (REPO / folder).resolve()


def test_no_generic_top_level_modules(tmp_path):
    # from a folder outside the checkout, so that only the installed environment is searched
    code = (
        "import importlib.util as u; "
        "names = ['modeling', 'scripts', 'dataset_builder', 'hub_cards', 'evaluation', 'tests', 'bench']; "
        "print([n for n in names if u.find_spec(n) is not None])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
