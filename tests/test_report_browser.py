"""The report page in a real browser: benchmarks/check_report_html.py drives headless Chromium over DevTools."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from report_helpers import arith, make_comparison, rollout, seal

from rlbench.study.report.build import write_report

REPO = Path(__file__).resolve().parents[1]
CHECK = REPO / "benchmarks" / "check_report_html.py"
CHROMIUM = Path("/usr/bin/chromium")

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} not installed (apt-get install -y chromium): browser check skipped"
)


def _check(page: Path, *extra: str) -> tuple[int, dict]:
    done = subprocess.run([sys.executable, str(CHECK), str(page), *extra], capture_output=True, text=True, timeout=180)
    return done.returncode, json.loads(done.stdout)


SECTIONS = (
    "Greedy accuracy during training",
    "Training curve: policy entropy",
    "Training curve: rollout length",
    "Example completions",
    "Runs",
)


def test_report_page_loads_cleanly_in_chromium(tmp_path):
    comparison = make_comparison(tmp_path / "arith", {"em-pg": 0.6, "grpo": 0.5, "ppo": 0.4, "reinforce": 0.55})
    for run in (comparison / "runs").iterdir():  # a training quantity that changes, and logged rollouts
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        (run / "metrics.jsonl").write_text("".join(json.dumps({**r, "entropy": 1 / r["step"]}) + "\n" for r in rows))
        (run / "samples.jsonl").write_text(
            "".join(
                json.dumps(
                    dict(rollout(6, arith().load("train")[i], i > 0, None if i else "</td>"), prompt="<i>3+4?</i>")
                )
                + "\n"
                for i in range(3)
            )
        )
        seal(run)  # as the run logged them
    write_report([comparison], comparison)
    shot = tmp_path / "shot.png"
    expect = [arg for section in SECTIONS for arg in ("--expect", section)]
    rc, result = _check(comparison / "index.html", "--screenshot", str(shot), *expect)
    assert rc == 0 and result["ok"], result
    # accuracy, run scores, Δ, two training curves, time split; every figure has coloured data in it
    assert (result["images"], result["broken"], result["tables"], result["scripts"]) == (6, 0, 4, 0)
    assert [i["alt"] for i in result["colour"] if i["alt"].startswith("Training curve")] == [
        "Training curve: policy entropy (nats/token)",
        "Training curve: rollout length (tokens)",
    ]
    assert all(i["colour"] > 0.001 and i["width"] == 1200 for i in result["colour"])
    assert "Reasoning behaviours per 100 responses" not in result["headings"]  # all 0: left out
    assert result["title"] == "RL leaderboard: arith"
    head = shot.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", head[16:24]) == (1400, 3000)
    rc, result = _check(comparison / "index.html", "--screenshot", str(shot), "--full-page", "--expect", "Nowhere")
    assert rc == 1 and result["problems"] == ["no heading starts with 'Nowhere'"]
    assert struct.unpack(">II", shot.read_bytes()[16:24]) == (1400, result["height"]) and result["height"] > 3000


def test_checker_reports_a_blank_figure(tmp_path):
    import base64
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 2))
    fig.subplots().plot([0, 1], [0, 1], color="black")  # axes and a line, but nothing in colour: no data shown
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    page = tmp_path / "blank.html"
    page.write_text(
        '<!DOCTYPE html><html><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>b</title>'
        f'</head><body><img alt="empty" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'
        "</body></html>"
    )
    rc, result = _check(page)
    assert rc == 1 and len(result["problems"]) == 1 and result["problems"][0].startswith("blank image: 'empty'")


def test_checker_reports_console_errors_and_broken_images(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text(
        '<!DOCTYPE html><html><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>bad</title>'
        '</head><body><script>console.error("boom"); notDefined();</script><img src="missing.png"></body></html>'
    )
    rc, result = _check(page)
    assert rc == 1 and not result["ok"]
    text = "\n".join(result["problems"])
    assert "console.error: boom" in text
    assert "uncaught exception: ReferenceError: notDefined is not defined" in text
    assert "1 of 1 images did not decode" in text
