"""The report page in a real browser: benchmarks/check_report_html.py drives headless Chromium over DevTools."""
from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from report_helpers import make_comparison
from rlbench.report.build import write_report

REPO = Path(__file__).resolve().parents[1]
CHECK = REPO / "benchmarks" / "check_report_html.py"
CHROMIUM = Path("/usr/bin/chromium")

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} not installed (apt-get install -y chromium): browser check skipped"
)


def _check(page: Path, *extra: str) -> tuple[int, dict]:
    done = subprocess.run([sys.executable, str(CHECK), str(page), *extra], capture_output=True, text=True, timeout=180)
    return done.returncode, json.loads(done.stdout)


def test_report_page_loads_cleanly_in_chromium(tmp_path):
    comparison = make_comparison(tmp_path / "arith", {"em-pg": 0.6, "grpo": 0.5, "ppo": 0.4, "reinforce": 0.55})
    write_report([comparison], comparison)
    shot = tmp_path / "shot.png"
    rc, result = _check(comparison / "index.html", "--screenshot", str(shot))
    assert rc == 0 and result["ok"], result
    assert (result["images"], result["broken"], result["tables"], result["scripts"]) == (5, 0, 4, 0)
    assert result["title"] == "RL leaderboard: arith"
    head = shot.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", head[16:24]) == (1400, 3000)


def test_checker_reports_console_errors_and_broken_images(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>bad</title>'
                    '</head><body><script>console.error("boom"); notDefined();</script><img src="missing.png"></body></html>')
    rc, result = _check(page)
    assert rc == 1 and not result["ok"]
    text = "\n".join(result["problems"])
    assert "console.error: boom" in text
    assert "uncaught exception: ReferenceError: notDefined is not defined" in text
    assert "1 of 1 images did not decode" in text
