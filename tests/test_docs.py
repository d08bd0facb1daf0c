"""The documentation's entry points: docs/index.md names every page, and the README's first screen holds the two
commands and the report's screenshot (what a newcomer needs in five minutes)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_index_lists_every_doc_and_only_docs_that_exist():
    index = (ROOT / "docs" / "index.md").read_text()
    linked = set(re.findall(r"\]\(([^)#]+)\)", index))
    pages = {p.name for p in (ROOT / "docs").iterdir() if p.is_file() and p.name != "index.md"}
    assert pages <= linked, f"not in docs/index.md: {sorted(pages - linked)}"
    assert linked <= pages, f"docs/index.md links missing pages: {sorted(linked - pages)}"


def test_the_readme_opens_with_the_two_commands_and_the_screenshot():
    first = "\n".join((ROOT / "README.md").read_text().splitlines()[:60])
    assert "bash scripts/main.sh" in first and "bash scripts/test.sh" in first
    shots = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", first)
    assert shots and all((ROOT / s).exists() for s in shots), shots


def test_the_ci_script_runs_the_readme_test_command():
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
