"""rlbench.algorithms and rlbench.tasks load from the same tree as rlbench, however rlbench is installed: from a source
tree never installed, in editable mode (this virtualenv), from a second checkout sharing this virtualenv, and from a
built wheel."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROBE = (
    "import json, rlbench, rlbench.algorithms, rlbench.tasks, rlbench.configs;"
    "print(json.dumps({m.__name__: m.__file__ for m in (rlbench, rlbench.algorithms, rlbench.tasks, "
    "rlbench.configs)}))"
)


def _where(cwd: Path, pythonpath: Path | None = None) -> dict[str, Path]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=cwd, env=env, capture_output=True, text=True, check=True)
    return {name: Path(path).resolve() for name, path in json.loads(out.stdout).items()}


def _copy_tree(dest: Path) -> Path:
    for name in ("rlbench", "algorithms", "tasks", "configs"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def _all_under(found: dict[str, Path], tree: Path) -> bool:
    return all(tree.resolve() in path.parents for path in found.values())


def test_editable_install_loads_everything_from_this_tree(tmp_path: Path):
    assert _all_under(_where(tmp_path), ROOT)


def test_a_source_tree_never_installed_loads_from_itself(tmp_path: Path):
    tree = _copy_tree(tmp_path / "source")
    found = _where(tmp_path, pythonpath=tree)
    assert _all_under(found, tree), found


def test_a_second_checkout_sharing_the_virtualenv_loads_from_itself(tmp_path: Path):
    """Run from the second checkout's folder, as its tests and scripts are: this virtualenv's editable install points
    at the first checkout, whose rlbench.algorithms must not be picked up."""
    second = _copy_tree(tmp_path / "second")
    found = _where(second)
    assert _all_under(found, second), found
    assert not any(ROOT.resolve() in path.parents for path in found.values())


def test_a_built_wheel_loads_everything_from_where_it_is_installed(tmp_path: Path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(ROOT)],
        check=True,
        capture_output=True,
        text=True,
    )
    target = tmp_path / "site"
    wheel = next(wheels.glob("rlbench-*.whl"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        text=True,
    )
    found = _where(tmp_path, pythonpath=target)
    assert _all_under(found, target), found
    assert (target / "rlbench" / "algorithms" / "em_pg.py").is_file()


@pytest.mark.parametrize("name", ["algorithms", "tasks"])
def test_the_built_ins_register_from_the_loaded_tree(name: str):
    from rlbench.core import registry

    table = registry.algorithms() if name == "algorithms" else registry.tasks()
    assert table and all(
        ROOT.resolve() in Path(sys.modules[cls.__module__].__file__).resolve().parents for cls in table.values()
    )
