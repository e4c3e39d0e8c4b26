"""The distribution ships every package and recipe (a non-editable install lacks nothing)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from setuptools import find_packages

REPO = Path(__file__).resolve().parents[1]


def test_every_package_is_listed_in_pyproject():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"])
    found = set(find_packages(str(REPO), include=["bids_pcs*"]))
    assert found - listed == set(), "add these to [tool.setuptools] packages"
    assert "bids_pcs.pipelines" in listed


def test_recipes_are_package_data():
    from bids_pcs.config import available_recipes

    on_disk = {p.stem for p in (REPO / "pipelines").glob("*.toml")}
    assert set(available_recipes()) == on_disk


def test_every_package_data_pattern_ships_a_file():
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = tool.get("package-dir", {})
    for package, patterns in tool["package-data"].items():
        root = REPO / folders.get(package, package.replace(".", "/"))
        for pattern in patterns:
            assert list(root.glob(pattern)), f"{package}: {pattern} matches no file"


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text().split("```bash\n", 1)[1].splitlines()
    command = readme[1].split("#", 1)[0].strip()
    assert command in (REPO / ".ci" / "run").read_text().splitlines()
