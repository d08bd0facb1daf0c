"""One writer per folder: the folder lock, refusals of folders rlbench did not write, several ranks, orphaned runs."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from rlbench.cli import main
from rlbench.core import lifeline
from rlbench.core.config import ConfigError
from rlbench.core.locks import LOCK, hold, holder, is_run_folder, refuse_foreign, refuse_several_ranks

SMALL = [
    "--set",
    "rollout.batch_size=8",
    "--set",
    "rollout.samples_per_prompt=2",
    "--set",
    "sampling.max_new_tokens=8",
    "--set",
    "eval.limit=4",
    "--set",
    "task.train_size=50",
    "--set",
    "task.test_size=10",
    "--set",
    "budget.steps=1",
]


def _train(model: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", str(model), "--task", "arith", "--out", str(out), "--quiet", *SMALL, *extra]


def _compare(model: Path, out: Path) -> list[str]:
    return [
        "compare",
        "--model",
        str(model),
        "--task",
        "arith",
        "--algos",
        "reinforce",
        "--seeds",
        "1",
        "--budget",
        "steps=1",
        "--out",
        str(out),
        "--jobs",
        "1",
        "--quiet",
        *SMALL,
    ]


def _one_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    return lines[0]


def test_a_held_folder_refuses_a_second_holder_naming_the_first(tmp_path):
    with hold(tmp_path / "run", "run"):
        assert holder(tmp_path / "run") == os.getpid()
        with pytest.raises(
            ConfigError, match=rf"run: another rlbench run is writing this folder \(pid {os.getpid()}\)"
        ):
            with hold(tmp_path / "run", "run"):
                pass
    with hold(tmp_path / "run", "run"):  # released when the block ends
        pass


def test_the_lock_goes_with_its_holder_however_it_dies(tmp_path):
    code = (
        "import sys, time; from pathlib import Path; from rlbench.core.locks import hold\n"
        "with hold(Path(sys.argv[1]), 'run'):\n    print('held', flush=True); time.sleep(600)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    with pytest.raises(ConfigError, match=f"pid {proc.pid}"):
        with hold(tmp_path, "run"):
            pass
    proc.kill()
    proc.wait()
    with hold(tmp_path, "run"):
        pass


def test_a_holder_on_its_way_out_is_waited_for(tmp_path):
    inside, release = threading.Event(), threading.Event()

    def first() -> None:
        with hold(tmp_path, "run"):
            inside.set()
            release.wait()

    thread = threading.Thread(target=first)
    thread.start()
    inside.wait()
    threading.Timer(0.5, release.set).start()
    with hold(tmp_path, "run", wait=30):
        pass
    thread.join()


def test_only_empty_missing_or_rlbench_folders_are_written(tmp_path):
    refuse_foreign(tmp_path / "missing", "run", False)
    (tmp_path / "empty").mkdir()
    refuse_foreign(tmp_path / "empty", "run", False)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("mine: 1\n")
    (mine / "samples.jsonl").write_text("{}\n")
    assert not is_run_folder(mine)
    with pytest.raises(ConfigError, match=f"--out {mine}: not empty and not an rlbench run folder"):
        refuse_foreign(mine, "run", is_run_folder(mine))
    (mine / "metrics.jsonl").write_text("")
    assert is_run_folder(mine)
    prepared = tmp_path / "prepared"
    with hold(prepared, "run"):  # what compare does before it starts the run
        (prepared / "request.yaml").write_text("seed: 1\n")
    assert is_run_folder(prepared)


@pytest.mark.parametrize(
    "env, named",
    [
        ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}, "WORLD_SIZE=2"),
        ({"LOCAL_WORLD_SIZE": "4"}, "LOCAL_WORLD_SIZE=4"),
        ({"RANK": "1"}, "RANK=1"),
        ({"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}, None),
    ],
)
def test_several_ranks_are_refused(monkeypatch, env, named):
    for name in ("WORLD_SIZE", "LOCAL_WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if named is None:
        refuse_several_ranks()
        return
    with pytest.raises(ConfigError, match=f"{named}: rlbench compare starts its runs itself"):
        refuse_several_ranks()


def test_compare_under_two_ranks_exits_2_before_writing(tiny_qwen_dir, tmp_path):
    env = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
    line = _one_line(CliRunner().invoke(main, _compare(tiny_qwen_dir, tmp_path / "cmp"), env=env))
    assert line == (
        "rlbench: error: WORLD_SIZE=2: rlbench compare starts its runs itself, run it as one process "
        "(a single run trains in several with `rlbench train --processes N`)"
    )
    assert not any(tmp_path.iterdir())


def test_train_refuses_a_folder_it_did_not_write_and_leaves_it_as_it_was(tiny_qwen_dir, tmp_path):
    out = tmp_path / "theirs"
    (out / "state").mkdir(parents=True)
    files = {"config.yaml": "mine: 1\n", "state/x": "keep\n", "samples.jsonl": '{"mine": 1}\n'}
    for name, text in files.items():
        (out / name).write_text(text)
    for extra in ((), ("--resume",)):
        line = _one_line(CliRunner().invoke(main, _train(tiny_qwen_dir, out, *extra)))
        assert f"--out {out}: not empty and not an rlbench run folder" in line
    assert {str(p.relative_to(out)): p.read_text() for p in out.rglob("*") if p.is_file()} == files


def test_compare_refuses_a_folder_it_did_not_write_and_leaves_its_report_files_alone(tiny_qwen_dir, tmp_path):
    out = tmp_path / "site"
    out.mkdir()
    files = {"index.html": "<p>mine</p>\n", "leaderboard.md": "mine\n", "report.json": '{"mine": 1}\n'}
    for name, text in files.items():
        (out / name).write_text(text)
    line = _one_line(CliRunner().invoke(main, _compare(tiny_qwen_dir, out)))
    assert f"--out {out}: not empty and not an rlbench comparison folder" in line
    assert {p.name: p.read_text() for p in out.iterdir()} == files


def test_train_and_compare_on_a_folder_being_written_exit_2_naming_the_writer(tiny_qwen_dir, tmp_path):
    run, cmp = tmp_path / "run", tmp_path / "cmp"
    with hold(run, "run"), hold(cmp, "comparison"):
        line = _one_line(CliRunner().invoke(main, _train(tiny_qwen_dir, run, "--resume")))
        assert (
            line == f"rlbench: error: {run}: another rlbench run is writing this folder (pid {os.getpid()}); "
            "wait for it to finish or stop it"
        )
        line = _one_line(CliRunner().invoke(main, _compare(tiny_qwen_dir, cmp)))
        assert f"{cmp}: another rlbench comparison is writing this folder (pid {os.getpid()})" in line
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in cmp.iterdir()) == [LOCK]


def test_train_resumes_its_own_folder(tiny_qwen_dir, tmp_path):
    out = tmp_path / "run"
    assert CliRunner().invoke(main, _train(tiny_qwen_dir, out)).exit_code == 0
    again = CliRunner().invoke(main, _train(tiny_qwen_dir, out, "--resume"))
    assert again.exit_code == 0 and '"status": "completed"' in again.output, again.output


def test_the_parent_watch_sends_sigterm_once_the_parent_is_gone(monkeypatch):
    sent = []
    monkeypatch.setattr(lifeline.os, "kill", lambda pid, sig: sent.append((pid, sig)))
    started = time.monotonic()
    lifeline.watch(parent=os.getppid() + 1, poll=0.01)  # not our parent: as if ours had died and we were re-parented
    assert sent == [(os.getpid(), signal.SIGTERM)] and time.monotonic() - started < 1


def test_a_run_started_by_a_compare_that_is_already_gone_ends_at_once(tmp_path):
    env = {**os.environ, lifeline.PARENT_ENV: str(os.getpid() + 10**6)}
    code = "from rlbench.core.lifeline import follow_parent; follow_parent(); import time; time.sleep(60); print('outlived')"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == -signal.SIGTERM and "outlived" not in done.stdout
