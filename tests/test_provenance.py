"""Where a result came from: the commit of a clean tree, a commit plus the hash of its diff for a dirty one, and the
leaderboard's warning when a result ran from uncommitted changes."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from rlbench.core import provenance
from rlbench.study.report.text import code_line


def _git(repo: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    _git(tmp_path, "init", "-q")
    (tmp_path / "algo.py").write_text("LR = 1e-4\n")
    _git(tmp_path, "add", "algo.py")
    _git(tmp_path, "commit", "-q", "-m", "first")
    monkeypatch.setattr(provenance, "_ROOT", tmp_path)
    return tmp_path


def test_a_clean_tree_is_its_commit(repo: Path):
    version = provenance.code_version()
    assert version == _git(repo, "rev-parse", "HEAD")
    assert not provenance.is_dirty(version)
    assert "UNCOMMITTED" not in code_line({"code_version": version, "created": None})


def test_an_uncommitted_change_is_the_commit_plus_its_diffs_hash(repo: Path):
    head = _git(repo, "rev-parse", "HEAD")
    (repo / "algo.py").write_text("LR = 2e-4\n")
    first = provenance.code_version()
    assert re.fullmatch(re.escape(head) + r"\+dirty\.[0-9a-f]{12}", first), first
    (repo / "algo.py").write_text("LR = 3e-4\n")
    second = provenance.code_version()
    assert second != first  # the hash names the exact diff
    assert provenance.is_dirty(second)
    assert "UNCOMMITTED CHANGES" in code_line({"code_version": second, "created": None})


def test_outside_a_git_checkout_there_is_no_code_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(provenance, "_ROOT", tmp_path)
    assert provenance.code_version() is None


def test_this_checkout_is_found_from_the_module_itself():
    assert (provenance._ROOT / "rlbench" / "core" / "provenance.py").is_file()
