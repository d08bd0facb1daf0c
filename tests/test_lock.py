"""requirements.lock and pyproject.toml agree: every dependency (and the [test] extra) is pinned in the lock at a
version its range admits, with hashes, so `scripts/setup.sh` installs exactly what was tested."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from check_lock import normalise, pins  # noqa: E402

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")


def _declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in [*project["dependencies"], *project["optional-dependencies"]["test"]]]


def test_every_dependency_is_locked_at_a_version_its_range_admits():
    locked = pins(ROOT / "requirements.lock")
    problems = []
    for req in _declared():
        version = locked.get(normalise(req.name))
        if version is None:
            problems.append(f"{req.name}: in pyproject.toml, not in requirements.lock")
        elif not req.specifier.contains(Version(version), prereleases=True):
            problems.append(f"{req.name}: lock pins {version}, pyproject.toml asks {req.specifier}")
    assert not problems, "run `bash scripts/lock.sh`: " + "; ".join(problems)


def test_every_pin_is_exact_and_hashed_with_the_cpu_build_of_torch():
    text = (ROOT / "requirements.lock").read_text()
    blocks = [b for b in text.split("\n") if b and not b.startswith((" ", "#"))]
    assert blocks and all("==" in b and b.rstrip().endswith("\\") for b in blocks), blocks[:3]
    assert text.count("--hash=sha256:") >= len(blocks)
    assert pins(ROOT / "requirements.lock")["torch"].endswith("+cpu")
    assert "bash scripts/lock.sh" in text  # the header names the command that regenerates it


def test_the_check_names_a_package_the_environment_does_not_match(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    import check_lock

    lock = tmp_path / "requirements.lock"
    lock.write_text("click==0.0.1 \\\n    --hash=sha256:00\n")
    monkeypatch.setattr(check_lock, "LOCK", lock)
    assert check_lock.main() == 1
    err = capsys.readouterr().err
    assert "click" in err and "(lock: 0.0.1)" in err
