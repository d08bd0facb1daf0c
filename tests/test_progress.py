"""Progress from a comparison's files: totals from the budget, run states, ETAs, the live display, `rlbench status`,
and an evaluation progress bar that changes nothing it watches."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml
from click.testing import CliRunner
from run_helpers import stable_records

from rlbench.cli import main
from rlbench.core.locks import hold
from rlbench.study.progress import Live, duration, status_text
from rlbench.study.snapshots import Tracker, budget_fraction, lock_held, total_steps


def test_total_steps_and_budget_fraction_follow_the_budget():
    assert total_steps({"steps": 50}, 64) == 50
    assert total_steps({"samples": 3840}, 64) == 60
    assert total_steps({"samples": 100}, 64) == 1  # a run stops before a step that would overrun
    assert total_steps({"samples": 3840, "steps": 40}, 64) == 40
    assert total_steps({"tokens": 10_000}, 64) is None and total_steps({"steps": 5, "seconds": 60}, 8) is None
    assert budget_fraction({"steps": 10}, {"steps": 40}, 8) == 0.25
    assert budget_fraction({"samples": 64}, {"samples": 100}, 64) == 1.0  # its one allowed step is all of it
    assert budget_fraction({"tokens": 2500, "steps": 1}, {"tokens": 10_000, "steps": 100}, 8) == 0.25
    assert budget_fraction({"seconds": 90.0}, {"seconds": 60}, 8) == 1.0
    assert [duration(s) for s in (None, 4.4, 65, 3725)] == ["?", "4s", "1m05s", "1h02m"]


def _comparison(tmp_path: Path, budget: dict | None = None) -> Path:
    folder = tmp_path / "cmp"
    (folder / "runs").mkdir(parents=True)
    manifest = {
        "algos": ["grpo", "em-pg[baseline=mean]"],
        "seeds": [1, 2],
        "budget": budget or {"samples": 80},
        "rows": [{"label": "grpo", "slug": "grpo"}, {"label": "em-pg[baseline=mean]", "slug": "em-pg.baseline-mean"}],
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _run(folder: Path, name: str, steps: int, status: str | None = None, budget: dict | None = None) -> Path:
    run = folder / "runs" / name
    run.mkdir(exist_ok=True)
    request = {"budget": budget or {"samples": 80}, "rollout": {"batch_size": 8}}
    (run / "request.yaml").write_text(yaml.safe_dump(request))
    with open(run / "metrics.jsonl", "a") as f:
        for step in range(1, steps + 1):
            f.write(
                json.dumps(
                    {
                        "step": step,
                        "reward_mean": step / 10,
                        "usage": {"steps": step, "samples": 8 * step, "seconds": 1.0 * step},
                    }
                )
                + "\n"
            )
    (run / "eval.jsonl").write_text(json.dumps({"point": 0, "greedy": {"accuracy": 0.25}}) + "\n")
    if status:
        (run / "summary.json").write_text(
            json.dumps({"status": status, "wall_seconds": 12.0, "usage": {"steps": steps}})
        )
    return run


def test_states_come_from_summaries_and_locks(tmp_path):
    folder = _comparison(tmp_path)
    _run(folder, "grpo-s1", 10, "completed")
    running = _run(folder, "em-pg.baseline-mean-s1", 3)
    _run(folder, "grpo-s2", 4, "diverged")
    _run(folder, "em-pg.baseline-mean-s2", 2, "interrupted")
    with hold(running, "run"):
        assert lock_held(running) is True
        views = {v.name: v for v in Tracker(folder).snapshot().runs}
        lines = status_text(folder)
    assert lock_held(running) is False
    assert {n: v.state for n, v in views.items()} == {
        "grpo-s1": "done",
        "em-pg.baseline-mean-s1": "running",
        "grpo-s2": "failed",
        "em-pg.baseline-mean-s2": "queued",
    }
    run = views["em-pg.baseline-mean-s1"]
    assert (run.step, run.total, run.reward, run.score) == (3, 10, 0.3, 0.25)
    assert run.eta == 7.0  # training-loop seconds per step (1 s) x 7 steps left: what the files alone say
    assert views["grpo-s2"].note == "diverged"
    assert views["em-pg.baseline-mean-s2"].note == "stopped at step 2; resumes"
    text = "\n".join(lines)
    assert lines[1] == "algorithm             seed  state     step  reward   eval  ETA/took  note", text
    assert "em-pg[baseline=mean]     1  running   3/10   0.300  0.250        7s" in lines, text
    assert "grpo                     1  done     10/10   1.000  0.250       12s" in lines, text
    assert "grpo                     2  failed    4/10   0.400  0.250            (diverged)" in lines, text
    # no slot count recorded: one slot; the stopped run has 80% of a 12 s run left once the running one ends
    assert lines[-1] == "comparison: 4 runs: 1 running, 1 queued, 1 done, 1 failed; ETA 17s", lines
    assert lines[0].endswith("no executor recorded: not running")


def test_status_command_prints_the_table_once(tmp_path):
    folder = _comparison(tmp_path)
    _run(folder, "grpo-s1", 10, "completed")
    result = CliRunner().invoke(main, ["status", str(folder)])
    assert result.exit_code == 0, result.output
    assert "comparison: 4 runs: 0 running, 3 queued, 1 done, 0 failed" in result.output
    bad = CliRunner().invoke(main, ["status", str(tmp_path)])
    assert bad.exit_code == 2 and "not a comparison folder (no manifest.json)" in bad.output


def test_a_tokens_budget_shows_the_share_used_and_a_remote_run_counts_as_running_while_its_files_change(tmp_path):
    budget = {"tokens": 1000}
    folder = _comparison(tmp_path, budget)
    run = _run(folder, "grpo-s1", 2, budget=budget)
    with open(run / "metrics.jsonl", "a") as f:
        row = {"step": 3, "reward_mean": 0.5, "usage": {"tokens": 400, "steps": 3, "seconds": 3.0}}
        f.write(json.dumps(row) + "\n")
    with open(folder / "placements.jsonl", "w") as f:
        f.write(json.dumps({"event": "executor", "executor": "ray", "host": "elsewhere", "pid": 1, "slots": 4}) + "\n")
        f.write(json.dumps({"event": "start", "run": "grpo-s1", "host": "node-7", "devices": "2,3"}) + "\n")
    snapshot = Tracker(folder).snapshot()
    view = snapshot.runs[0]
    assert (view.state, view.total, view.fraction, view.devices, view.host) == ("running", None, 0.4, "2,3", "node-7")
    assert "running? (another machine" in snapshot.driver
    text = "\n".join(status_text(folder))
    assert "3 (40%)" in text and "node-7:2,3" in text
    old = 1_000_000_000
    for name in ("metrics.jsonl", "eval.jsonl", "request.yaml"):
        os.utime(run / name, (old, old))
    assert Tracker(folder).snapshot().runs[0].state == "queued"  # nothing written for a long time: not running


def test_live_eta_times_the_runs_and_places_the_queued_ones_on_the_slots(tmp_path):
    folder = _comparison(tmp_path)
    (folder / "placements.jsonl").write_text(json.dumps({"event": "executor", "executor": "local", "slots": 2}) + "\n")
    _run(folder, "grpo-s1", 10, "completed")  # took 12 s: the estimate for queued runs
    running = _run(folder, "em-pg.baseline-mean-s1", 2)
    tracker = Tracker(folder)
    live = {"em-pg.baseline-mean-s1": "running"}
    first = tracker.snapshot(live, now=100.0)
    assert first.runs[1].eta == 8.0  # not timed yet: 1 training second per step x 8 left
    with open(running / "metrics.jsonl", "a") as f:  # two more steps in 10 s of wall clock (evaluations included)
        for step in (3, 4):
            f.write(
                json.dumps(
                    {"step": step, "reward_mean": 0.4, "usage": {"steps": step, "samples": 8 * step, "seconds": step}}
                )
                + "\n"
            )
    later = tracker.snapshot(live, now=110.0)
    assert later.runs[1].eta == 30.0  # 0.2 of the budget per 10 s, 0.6 left
    assert [v.state for v in later.runs] == ["done", "running", "queued", "queued"]
    # slots: the running run frees one at 30 s, the other is free now: queued runs take 12 s each -> 12 and 24 s
    assert later.eta == 30.0
    tracker.ended("grpo-s1", 60.0)
    # 60 s per run: one queued run takes the free slot (0-60 s), the other the running run's (30-90 s)
    assert tracker.snapshot(live, now=110.0).eta == 90.0


def test_live_display_redraws_on_a_terminal_and_prints_a_line_per_change_elsewhere(tmp_path):
    folder = _comparison(tmp_path)
    running = _run(folder, "grpo-s1", 2)
    live = {"grpo-s1": "running"}
    log = io.StringIO()
    display = Live(folder, stream=log, terminal=False)
    display.refresh(live, force=True)
    display.refresh(live, force=True)  # nothing changed: nothing printed
    with open(running / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 3, "reward_mean": 0.7, "usage": {"steps": 3, "samples": 24, "seconds": 3}}) + "\n")
    display.refresh(live, force=True)
    display.write("grpo-s1: done in 9 s")
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("grpo-s1: step 2/10, reward 0.200, eval 0.250, ETA ")
    # no run ended yet: the running one, projected to 10 s in all, is the estimate for the 3 queued on one slot
    assert lines[1] == "comparison: 4 runs: 1 running, 3 queued, 0 done, 0 failed; ETA 38s"
    assert lines[2].startswith("grpo-s1: step 3/10, reward 0.700") and lines[3] == "grpo-s1: done in 9 s"
    assert len(lines) == 4

    screen = io.StringIO()
    display = Live(folder, stream=screen, terminal=True)
    display.refresh(live, force=True)
    display.write("a message")
    display.refresh(live, force=True)  # nothing changed: nothing redrawn
    out = re.sub(r"\x1b\[[0-9;]*m", "", screen.getvalue())  # the styles; the cursor moves stay
    erase = "\r\x1b[2K" + "\x1b[1A\x1b[2K" * 2  # back over the 3 live lines, clearing each
    assert out.count(erase) == 1 and out.count("a message") == 1  # the live lines cleared once, for the message
    drawn = out.split(erase + "a message\n")[1]  # then redrawn below it at once, not a second later
    assert drawn.splitlines()[0].split() == ["algorithm", "seed", "step", "reward", "eval", "ETA"]
    assert drawn.splitlines()[1].split() == ["grpo", "1", "3/10", "0.700", "0.250", "7s"]
    # a new display: not timed yet, 7 training seconds left, then the 3 queued runs of 10 s each on one slot
    assert drawn.endswith("comparison: 4 runs: 1 running, 3 queued, 0 done, 0 failed; ETA 37s")
    display.close()
    assert screen.getvalue().endswith("\n\x1b[?25h")  # the table left in place, the cursor below it and shown


def test_evaluation_progress_bar_changes_no_result(tiny_qwen_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = [
        sys.executable,
        "-m",
        "rlbench.cli",
        "train",
        "--model",
        str(tiny_qwen_dir),
        "--task",
        "arith",
        "--algo",
        "em-pg",
        "--set",
        "rollout.batch_size=8",
        "--set",
        "rollout.samples_per_prompt=2",
        "--set",
        "sampling.max_new_tokens=8",
        "--set",
        "eval.limit=6",
        "--set",
        "eval.samples=4",
        "--set",
        "eval.every=2",
        "--set",
        "task.train_size=40",
        "--set",
        "task.test_size=8",
        "--set",
        "budget.steps=3",
        "--set",
        "algo.entropy_coef=0.05",
        "--set",
        "threads=1",
    ]
    quiet = subprocess.run(
        [*common, "--out", str(tmp_path / "quiet"), "--quiet"], env=env, capture_output=True, text=True, timeout=300
    )
    shown = subprocess.run(
        [*common, "--out", str(tmp_path / "shown")], env=env, capture_output=True, text=True, timeout=300
    )
    assert quiet.returncode == shown.returncode == 0, shown.stderr
    assert "evaluating" in shown.stderr and "completion" in shown.stderr and "evaluating" not in quiet.stderr
    volatile = ("tokens_per_second", "seconds")

    def rows(run: str, name: str) -> list:
        out = []
        for line in (tmp_path / run / name).read_text().splitlines():
            row = json.loads(line)
            for mode in ("greedy", "sampled"):
                for key in volatile:
                    (row.get(mode) or {}).pop(key, None)
            row.pop("usage", None)
            out.append(row)
        return out

    assert rows("quiet", "eval.jsonl") == rows("shown", "eval.jsonl")
    assert stable_records(tmp_path / "quiet") == stable_records(tmp_path / "shown")
    assert len(rows("shown", "eval.jsonl")) == len(stable_records(tmp_path / "shown")) == 3
