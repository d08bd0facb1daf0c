"""Where runs execute: GPU slices on this machine (faked on CPU), multi-process runs that still end with their
compare, and Ray.

Over 400 lines on purpose: the local and the Ray executor are held to the same checks (placement log, kill and
rerun, bitwise equal results) in one file, as rlbench/study/executors.py keeps them side by side."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from run_helpers import SMALL_COMPARISON, stable_records, stable_rows

from rlbench.cli import main
from rlbench.core.config import ConfigError
from rlbench.study import executors
from rlbench.study.executors import FAKE_GPUS_ENV, PLACEMENTS, Job, LocalExecutor, device_slices, placement_from_flags

# A stand-in for `rlbench train`: it records the devices it was given, its arguments and its parent, then sleeps.
FAKE_CHILD = """
import json, os, sys, time
start = time.time()
time.sleep(float(os.environ.get("FAKE_SLEEP", "0.5")))
parent = open(f"/proc/{os.getppid()}/cmdline", "rb").read().replace(b"\\0", b" ").decode()
line = {"run": os.path.basename(os.path.dirname(sys.argv[1])), "devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "args": sys.argv[2:], "parent": parent, "start": start, "end": time.time()}
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps(line) + "\\n")
"""


@pytest.fixture()
def fake_child(monkeypatch, tmp_path):
    log = tmp_path / "children.jsonl"
    monkeypatch.setenv("FAKE_LOG", str(log))

    def command(request: Path, processes: int = 1) -> list[str]:
        extra = ["--processes", str(processes)] if processes > 1 else []
        return [sys.executable, "-c", FAKE_CHILD, str(request), *extra]

    monkeypatch.setattr(executors, "train_command", command)
    return log


def _jobs(folder: Path, n: int) -> list[Job]:
    jobs = []
    for i in range(n):
        out = folder / "runs" / f"run-s{i}"
        out.mkdir(parents=True)
        (out / "request.yaml").write_text("{}\n")
        jobs.append(Job(out.name, out, out / "request.yaml"))
    return jobs


def _drain(executor: LocalExecutor, jobs: list[Job]) -> list:
    todo, done, most = list(jobs), [], 0
    while todo or executor.in_flight():
        while todo and executor.has_room():
            executor.submit(todo.pop(0))
        most = max(most, len(executor.in_flight()))
        done += executor.poll(0.05)
    return done, most


def _overlap(a: dict, b: dict) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


def test_device_slices(monkeypatch):
    monkeypatch.setenv(FAKE_GPUS_ENV, "4")
    assert device_slices("auto", None) == [["0"], ["1"], ["2"], ["3"]]
    assert device_slices(None, 2) == [["0", "1"], ["2", "3"]]
    assert device_slices("auto", 3) == [["0", "1", "2"]]  # the fourth GPU stays idle
    assert device_slices("3,1", 1) == [["3"], ["1"]]
    assert device_slices(None, None) is None
    for devices, per_run, fragment in (
        ("auto", 5, "--gpus-per-run 5: only 4 GPU(s)"),
        ("0,7", None, "--devices 0,7: '7' is not a visible GPU"),
        ("1,1", None, "--devices 1,1: GPU 1 is named twice"),
        ("auto", 0, "--gpus-per-run 0: must be >= 1"),
    ):
        with pytest.raises(ConfigError, match=re.escape(fragment)):
            device_slices(devices, per_run)


def test_inherited_visible_devices_are_what_a_child_is_given(monkeypatch):
    import torch

    monkeypatch.delenv(FAKE_GPUS_ENV, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert executors.visible_gpus() == ["5", "7"]
    assert device_slices("1", None) == [["7"]]


def test_without_gpus_the_device_flags_exit_2_naming_the_flag_and_jobs_keeps_its_meaning(monkeypatch, tmp_path):
    monkeypatch.delenv(FAKE_GPUS_ENV, raising=False)
    if executors.visible_gpus():
        pytest.skip("this machine has GPUs")
    base = ["compare", "--algos", "reinforce", "--seeds", "1", "--budget", "steps=1"]
    for extra, fragment in (
        (["--devices", "auto"], "--devices auto: no GPU is visible here"),
        (["--devices", "0,1"], "--devices 0,1: no GPU is visible here"),
        (["--gpus-per-run", "2"], "--gpus-per-run 2: no GPU is visible here"),
        (["--ray-address", "auto"], "--ray-address auto: only with --executor ray"),
        (["--executor", "ray", "--devices", "0"], "--devices 0: not with --executor ray"),
        (["--jobs", "0"], "--jobs 0: must be >= 1"),
    ):
        out = tmp_path / "o"
        result = CliRunner().invoke(main, [*base, "--out", str(out), *extra])
        assert result.exit_code == 2 and fragment in result.output, (extra, result.output)
        assert not out.exists()
    assert placement_from_flags(jobs=3) == executors.Placement("local", 3)
    monkeypatch.setattr(executors.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=re.escape("--executor ray: Ray is not installed here; pip install")):
        placement_from_flags("ray")
    assert placement_from_flags().jobs == max(1, min(2, os.cpu_count() or 1))


def test_each_run_gets_its_own_slice_and_no_device_serves_two_runs_at_once(monkeypatch, tmp_path, fake_child):
    monkeypatch.setenv(FAKE_GPUS_ENV, "4")
    executor = LocalExecutor(tmp_path, slices=device_slices("auto", 1))
    done, most = _drain(executor, _jobs(tmp_path, 7))
    assert sorted(d.job.name for d in done) == [f"run-s{i}" for i in range(7)]
    assert all(d.returncode == 0 for d in done)
    assert most == 4  # four slices: the other runs queued
    children = [json.loads(line) for line in fake_child.read_text().splitlines()]
    assert len(children) == 7 and {c["devices"] for c in children} == {"0", "1", "2", "3"}
    for i, a in enumerate(children):
        for b in children[i + 1 :]:
            assert not (a["devices"] == b["devices"] and _overlap(a, b)), (a, b)
        assert a["args"] == [] and "rlbench.study.executors" not in a["parent"]  # one process: started directly
    starts = {
        r["run"]: r["devices"]
        for r in map(json.loads, (tmp_path / PLACEMENTS).read_text().splitlines())
        if r["event"] == "start"
    }
    assert starts == {c["run"]: c["devices"] for c in children}


def test_a_run_given_k_gpus_trains_in_k_processes_started_directly(monkeypatch, tmp_path, fake_child):
    monkeypatch.setenv(FAKE_GPUS_ENV, "4")
    executor = LocalExecutor(tmp_path, jobs=None, slices=device_slices("auto", 2))
    done, most = _drain(executor, _jobs(tmp_path, 3))
    assert most == 2 and all(d.returncode == 0 for d in done)
    children = [json.loads(line) for line in fake_child.read_text().splitlines()]
    assert {c["devices"] for c in children} == {"0,1", "2,3"}
    assert all(c["args"] == ["--processes", "2"] and "pytest" in c["parent"] for c in children)  # no process between


def test_jobs_caps_the_slices_used(monkeypatch, tmp_path, fake_child):
    monkeypatch.setenv(FAKE_GPUS_ENV, "4")
    executor = LocalExecutor(tmp_path, jobs=2, slices=device_slices("auto", 1))
    done, most = _drain(executor, _jobs(tmp_path, 4))
    assert most == 2 and {json.loads(line)["devices"] for line in fake_child.read_text().splitlines()} <= {"0", "1"}


def test_compare_places_runs_on_fake_gpus_and_records_where(monkeypatch, tmp_path, fake_child):
    import rlbench.study.compare as compare

    monkeypatch.setenv(FAKE_GPUS_ENV, "2")
    monkeypatch.setattr(compare, "load_comparison", lambda folder: folder)
    monkeypatch.setattr(compare, "audit_comparison", lambda folder: {"matched": True, "problems": []})
    out = tmp_path / "cmp"
    result = CliRunner().invoke(
        main,
        [
            "compare",
            "--algos",
            "reinforce,em-pg",
            "--seeds",
            "1,2",
            "--budget",
            "steps=1",
            "--model",
            "unused",
            "--out",
            str(out),
            "--no-report",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / PLACEMENTS).read_text().splitlines()]
    assert rows[0]["event"] == "executor" and rows[0]["devices"] == [["0"], ["1"]] and rows[0]["slots"] == 2
    assert sorted(r["run"] for r in rows if r["event"] == "start") == [
        "em-pg-s1",
        "em-pg-s2",
        "reinforce-s1",
        "reinforce-s2",
    ]
    assert {r["devices"] for r in rows if r["event"] == "start"} == {"0", "1"}
    assert [r["returncode"] for r in rows if r["event"] == "end"] == [0, 0, 0, 0]
    assert "comparison: 4 runs:" in result.output  # the live display (not a terminal: a line per change)


# A rank of `rlbench train --processes 2` under `compare`, stood in for: it follows its starter as a rank does and
# says when it is ready and when a SIGTERM stopped it. Its launcher is the real `accelerate launch`, reached as
# `rlbench train --processes` reaches it (rlbench.core.lifeline.exec_launcher), under a stand-in compare.
RANK = """
import os, signal, sys, time
from rlbench.core.lifeline import follow_parent

def say(what):
    with open(sys.argv[1], "a") as f:
        f.write(f"{what} {os.environ['RANK']} {os.getpid()} {os.getppid()}\\n")

signal.signal(signal.SIGTERM, lambda *_: (say("stopped"), sys.exit(130)))
follow_parent()
say("ready")
time.sleep(120)
"""
LAUNCHER = """
import sys
from rlbench.core.lifeline import exec_launcher
exec_launcher([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *sys.argv[1:]])
"""
COMPARE = """
import os, subprocess, sys, time
from rlbench.core.lifeline import child_env
subprocess.Popen([sys.executable, "-c", sys.argv[1], *sys.argv[2:]], env={**os.environ, **child_env()})
time.sleep(120)
"""


def _marks(path: Path, what: str, count: int, seconds: float) -> list[list[int]]:
    """The ``what`` lines (rank, pid, parent) once there are ``count`` of them or time is up."""
    deadline = time.time() + seconds
    while True:
        lines = [line.split() for line in (path.read_text().splitlines() if path.exists() else [])]
        found = [[int(x) for x in line[1:]] for line in lines if line[0] == what]
        gave_up = what == "ready" and any(line[0] == "stopped" for line in lines)  # a rank ended itself
        if len(found) >= count or time.time() > deadline or gave_up:
            return found
        time.sleep(0.1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
@pytest.mark.parametrize("victim", ["compare", "launcher"])
def test_ranks_under_accelerate_launch_follow_their_launcher_which_follows_compare(tmp_path, victim):
    """A SIGKILL of the compare stops the launcher, which stops its ranks; a SIGKILL of the launcher stops its ranks
    itself. Until then the ranks run: they follow their launcher, not the compare above it."""
    import subprocess

    (tmp_path / "rank.py").write_text(RANK)
    marks = tmp_path / "marks"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    compare = subprocess.Popen(
        [sys.executable, "-c", COMPARE, LAUNCHER, str(tmp_path / "rank.py"), str(marks)],
        env=env,
        start_new_session=True,
    )
    ranks: list[list[int]] = []
    try:
        ranks = _marks(marks, "ready", 2, 120)
        assert sorted(r[0] for r in ranks) == [0, 1], marks.read_text() if marks.exists() else "no rank started"
        launcher = ranks[0][2]
        assert ranks[1][2] == launcher and _parent(launcher) == compare.pid  # compare -> launcher -> ranks
        time.sleep(2.0)
        assert not _marks(marks, "stopped", 1, 0), marks.read_text()  # the ranks run on under their launcher
        os.kill(compare.pid if victim == "compare" else launcher, signal.SIGKILL)
        stopped = _marks(marks, "stopped", 2, 60)
        assert sorted(r[0] for r in stopped) == [0, 1], marks.read_text()  # each rank's SIGTERM, not a SIGKILL
        deadline = time.time() + 30
        while time.time() < deadline and any(Path(f"/proc/{pid}").exists() for _, pid, _ in ranks):
            time.sleep(0.1)
        assert not any(Path(f"/proc/{pid}").exists() for _, pid, _ in ranks), "a rank outlived its launcher"
    finally:  # the ranks have sessions of their own (torch starts them so): each by its pid
        for pid in [r[1] for r in ranks] + [r[2] for r in ranks]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.killpg(compare.pid, signal.SIGKILL)  # the compare and, if it never started its ranks, the launcher
        except ProcessLookupError:
            pass
        compare.wait()


# ------------------------------------------------------------------------------------- a real run in 2 processes


SETTINGS = [
    "--set",
    "rollout.batch_size=8",
    "--set",
    "rollout.samples_per_prompt=2",
    "--set",
    "sampling.max_new_tokens=8",
    "--set",
    "eval.limit=4",
    "--set",
    "eval.samples=0",
    "--set",
    "eval.every=2",
    "--set",
    "task.train_size=40",
    "--set",
    "task.test_size=8",
    "--set",
    "checkpoint_every=2",
    "--set",
    "rollout.seed_rows=true",
]


def test_compare_trains_a_run_in_two_processes_on_its_slice(monkeypatch, tiny_qwen_dir, tmp_path):
    monkeypatch.setenv(FAKE_GPUS_ENV, "2")  # CUDA_VISIBLE_DEVICES=0,1 means nothing on a CPU: gloo ranks
    out = tmp_path / "cmp"
    result = CliRunner().invoke(
        main,
        [
            "compare",
            "--model",
            str(tiny_qwen_dir),
            "--task",
            "arith",
            "--algos",
            "em-pg",
            "--seeds",
            "1",
            "--budget",
            "steps=3",
            "--out",
            str(out),
            "--gpus-per-run",
            "2",
            "--no-report",
            "--quiet",
            *SETTINGS,
        ],
    )
    assert result.exit_code == 0, result.output + (out / "runs.log").read_text()
    run = out / "runs" / "em-pg-s1"
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    start = [json.loads(line) for line in (out / PLACEMENTS).read_text().splitlines()][1]
    assert start["event"] == "start" and start["devices"] == "0,1"
    bad = CliRunner().invoke(
        main,
        [
            "compare",
            "--model",
            str(tiny_qwen_dir),
            "--task",
            "arith",
            "--algos",
            "em-pg",
            "--seeds",
            "1",
            "--budget",
            "steps=3",
            "--out",
            str(tmp_path / "bad"),
            "--gpus-per-run",
            "2",
            "--quiet",
            *SETTINGS,
            "--set",
            "rollout.seed_rows=false",
        ],
    )
    assert bad.exit_code == 2 and "--gpus-per-run 2: em-pg-s1: rollout.seed_rows=false" in bad.output, bad.output
    assert not (tmp_path / "bad").exists()


# ---------------------------------------------------------------------------------------------- Ray

RAY_SETTINGS = SMALL_COMPARISON
ROWS = ("ppo[entropy_coef=0.05]", "em-pg[entropy_coef=0.05]")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _killer(folder: Path, plan: dict[str, str], killed: dict[str, int], stop: threading.Event) -> None:
    """Once a run has saved its state (step 2), SIGKILL its `rlbench train` process or the Ray worker above it."""
    from rlbench.core.locks import holder

    while not stop.is_set() and len(killed) < len(plan):
        for run, what in plan.items():
            metrics = folder / "runs" / run / "metrics.jsonl"
            if run in killed or not (metrics.parent / "state").is_dir() or len(metrics.read_text().splitlines()) < 2:
                continue
            child = holder(metrics.parent)
            if not child or "rlbench.cli train" not in _cmdline(child):
                continue
            victim = child if what == "run" else _parent(child)
            os.kill(victim, signal.SIGKILL)
            killed[run] = victim
        time.sleep(0.02)


def test_ray_executor_equals_the_local_one_even_after_a_worker_and_a_run_are_killed(
    tiny_qwen_dir, tmp_path, monkeypatch
):
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # an entropy bonus: with no reward yet (a random model), every step still changes the weights, so equal metrics
    # after a kill prove the resumed optimiser, value head and schedule state, not only the sampling seeds
    base = [
        "compare",
        "--model",
        str(tiny_qwen_dir),
        "--task",
        "arith",
        "--algos",
        ",".join(ROWS),
        "--seeds",
        "1,2",
        "--budget",
        "steps=6",
        "--no-report",
        "--quiet",
        *RAY_SETTINGS,
    ]
    local, remote = tmp_path / "local", tmp_path / "ray"
    done = CliRunner().invoke(main, [*base, "--out", str(local), "--jobs", "2"])
    assert done.exit_code == 0, done.output

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    killed: dict[str, int] = {}
    stop = threading.Event()
    plan = {"ppo.entropy_coef-0.05-s1": "worker", "em-pg.entropy_coef-0.05-s2": "run"}
    watcher = threading.Thread(target=_killer, args=(remote, plan, killed, stop), daemon=True)
    watcher.start()
    try:
        done = CliRunner().invoke(main, [*base, "--out", str(remote), "--executor", "ray", "--max-retries", "2"])
    finally:
        stop.set()
        watcher.join()
        ray.shutdown()
    assert done.exit_code == 0, done.output
    assert "audit: matched" in done.output
    assert set(killed) == set(plan), killed
    events = [json.loads(line) for line in (remote / PLACEMENTS).read_text().splitlines()]
    starts = {run: sum(e["event"] == "start" and e["run"] == run for e in events) for run in plan}
    assert starts == dict.fromkeys(plan, 2), starts  # Ray ran each killed run again
    assert all(e["returncode"] == 0 for e in events if e["event"] == "end")
    runs = sorted(p.name for p in (local / "runs").iterdir())
    assert len(runs) == 4 and set(plan) <= set(runs)
    for run in runs:
        for name in ("metrics.jsonl", "eval.jsonl"):
            assert stable_rows(local / "runs" / run / name) == stable_rows(remote / "runs" / run / name), (run, name)
        assert stable_records(local / "runs" / run) == stable_records(remote / "runs" / run), run
        metrics = stable_rows(remote / "runs" / run / "metrics.jsonl")
        assert [r["step"] for r in metrics] == list(range(1, 7))
        assert all(r["grad_norm"] > 0 for r in metrics)
        a, b = (json.loads((d / "runs" / run / "summary.json").read_text()) for d in (local, remote))
        assert a["final"] == b["final"] and b["status"] == "completed"
