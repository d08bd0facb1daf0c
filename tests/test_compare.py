"""A small comparison: matched budgets, an audit, and a SIGKILL in the middle that a rerun recovers from bitwise.

Over 400 lines on purpose: its tests share one comparison command line (``_cmd``) and the bitwise run comparisons;
split, the files would import them from one another."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from run_helpers import SMALL_COMPARISON, stable_records, stable_rows

from rlbench.cli import main
from rlbench.core.config import ConfigError
from rlbench.study.compare import parse_budget

SETTINGS = SMALL_COMPARISON


def _cmd(model: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "rlbench.cli",
        "compare",
        "--model",
        str(model),
        "--task",
        "arith",
        "--algos",
        "reinforce,em-pg",
        "--seeds",
        "1",
        "--budget",
        "steps=6",
        "--out",
        str(out),
        "--jobs",
        "1",
        "--no-report",
        "--quiet",
        *SETTINGS,
    ]


def test_budget_parsing():
    assert parse_budget("samples=3840").samples == 3840
    both = parse_budget("steps=5, seconds=60")
    assert (both.steps, both.seconds) == (5, 60.0)
    for bad in ("samples", "samples=0", "apples=3", "steps=x"):
        with pytest.raises(ConfigError):
            parse_budget(bad)


def test_sigkill_then_rerun_equals_an_uninterrupted_comparison(tiny_qwen_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    subprocess.run(_cmd(tiny_qwen_dir, clean), check=True, env=env, capture_output=True, timeout=600)

    proc = subprocess.Popen(
        _cmd(tiny_qwen_dir, killed),
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    victim = killed / "runs" / "em-pg-s1" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (victim.exists() and len(victim.read_text().splitlines()) >= 3):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert victim.exists() and not (victim.parent / "summary.json").exists(), "the kill must land mid-run"

    done = subprocess.run(_cmd(tiny_qwen_dir, killed), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "audit: matched" in done.stdout
    for run in ("reinforce-s1", "em-pg-s1"):
        a, b = clean / "runs" / run, killed / "runs" / run
        for name in ("metrics.jsonl", "eval.jsonl"):
            assert stable_rows(a / name) == stable_rows(b / name), (run, name)
        assert stable_records(a) == stable_records(b) and len(stable_records(b)) == 3, run
        steps = [r["step"] for r in stable_rows(b / "metrics.jsonl")]
        assert steps == list(range(1, 7))  # no duplicated or missing rows
        sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
        assert sa["final"] == sb["final"] and sa["status"] == sb["status"] == "completed"
    audit = json.loads((killed / "audit.json").read_text())
    assert audit["matched"] and all(run["matched"] for run in audit["runs"].values())
    manifest = json.loads((killed / "manifest.json").read_text())
    assert manifest["algos"] == ["reinforce", "em-pg"] and manifest["budget"]["steps"] == 6
    assert manifest["packages"]["torch"]


def test_rerun_with_a_different_budget_is_refused(tiny_qwen_dir, tmp_path):
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"task": "arith", "budget": {"steps": 99}}))
    result = CliRunner().invoke(
        main,
        [
            "compare",
            "--model",
            str(tiny_qwen_dir),
            "--task",
            "arith",
            "--algos",
            "reinforce",
            "--seeds",
            "1",
            "--budget",
            "steps=2",
            "--out",
            str(out),
            *SETTINGS,
        ],
    )
    assert result.exit_code == 2
    assert "differs from the comparison" in result.output


def test_unknown_algorithm_option_is_named(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("algo_options: {grpo: {clip_high: 0.28}}\n")
    result = CliRunner().invoke(
        main,
        ["compare", "--algos", "reinforce", "--config", str(cfg), "--out", str(tmp_path / "o"), "--budget", "steps=1"],
    )
    assert result.exit_code == 2 and "algo_options.grpo" in result.output


def test_set_algo_key_is_an_option_of_every_rows_algorithm(tmp_path):
    from rlbench.cli.compare import shared_tree
    from rlbench.study.compare import Comparison
    from rlbench.study.variants import parse_rows

    tree, options = shared_tree(None, "arith", None, None, ("algo.loss_agg=token-mean",))
    comp = Comparison(tmp_path, tree, parse_rows("em-pg,reinforce[loss_agg=seq-mean-token-sum]"), [1], options, "cmd")
    assert comp.run_config(comp.rows[0], 1).algo["loss_agg"] == "token-mean"  # em-pg's default is another
    assert comp.run_config(comp.rows[1], 1).algo["loss_agg"] == "seq-mean-token-sum"  # the row's own wins
    tree, options = shared_tree(None, "arith", None, None, ("algo.lam=0.9",))
    comp = Comparison(tmp_path, tree, parse_rows("ppo,grpo"), [1], options, "cmd")
    assert comp.run_config(comp.rows[0], 1).algo["lam"] == 0.9
    with pytest.raises(ConfigError, match="--algos grpo: .*lam"):
        comp.run_config(comp.rows[1], 1)
    with pytest.raises(ConfigError, match="--set algo.name"):
        shared_tree(None, "arith", None, None, ("algo.name=grpo",))


def test_variant_rows_and_the_control_run_with_their_own_options_and_stream(tiny_qwen_dir, tmp_path):
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
            "reinforce,reinforce[baseline=none]",
            "--control",
            "--seeds",
            "1",
            "--budget",
            "steps=3",
            "--out",
            str(out),
            "--jobs",
            "1",
            "--quiet",
            *SETTINGS,
        ],
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["algos"] == ["reinforce", "reinforce[baseline=none]", "reinforce (A/A control)"]
    assert manifest["reference"] == "reinforce"
    rows = {r["label"]: r for r in manifest["rows"]}
    assert rows["reinforce[baseline=none]"]["resolved"]["baseline"] == "none"
    assert rows["reinforce (A/A control)"]["control"] and rows["reinforce (A/A control)"]["slug"] == "reinforce.control"
    runs = out / "runs"
    configs = {
        name: yaml.safe_load((runs / name / "config.yaml").read_text())
        for name in ("reinforce-s1", "reinforce.baseline-none-s1", "reinforce.control-s1")
    }
    assert configs["reinforce.baseline-none-s1"]["algo"]["baseline"] == "none"
    assert configs["reinforce-s1"]["algo"]["baseline"] == "mean"  # defaults are written out, not implied
    assert [c["rollout"]["sample_stream"] for c in configs.values()] == [0, 0, 1]
    ref, control = (stable_rows(runs / n / "metrics.jsonl") for n in ("reinforce-s1", "reinforce.control-s1"))
    assert [r["prompt_ids_hash"] for r in ref] == [r["prompt_ids_hash"] for r in control]  # same prompts
    texts = [
        [json.loads(line)["completion"] for line in (runs / n / "samples.jsonl").read_text().splitlines()]
        for n in ("reinforce-s1", "reinforce.control-s1")
    ]
    assert texts[0] != texts[1]  # another sampling stream
    md = (out / "leaderboard.md").read_text()
    assert "| reinforce[baseline=none] |" in md and "### Controls" in md
    assert "| reinforce (A/A control) |" in md


@pytest.mark.parametrize(
    "algos, seeds, fragment",
    [
        ("em-pg[baseline=nope]", "1", "--algos em-pg[baseline=nope]: algo.baseline='nope'"),
        ("em-pg[no_such_option=1]", "1", "--algos em-pg[no_such_option=1]: algo.no_such_option: unknown key"),
        ("em-pg,em-pg[]", "1", "'em-pg' names two rows"),
        ("reinforce", "1,1", "--seeds: seed 1 is named twice"),
    ],
)
def test_bad_rows_and_seeds_exit_2_naming_them(tmp_path, algos, seeds, fragment):
    out = tmp_path / "o"
    result = CliRunner().invoke(
        main, ["compare", "--algos", algos, "--seeds", seeds, "--out", str(out), "--budget", "steps=1"]
    )
    assert result.exit_code == 2 and fragment in result.output, result.output
    assert not out.exists()


def test_a_foreign_run_folder_is_not_adopted(tiny_qwen_dir, tmp_path):
    out = tmp_path / "cmp"
    foreign = CliRunner().invoke(
        main,
        [
            "train",
            "--model",
            str(tiny_qwen_dir),
            "--task",
            "arith",
            "--algo",
            "reinforce",
            "--seed",
            "1",
            "--out",
            str(out / "runs" / "reinforce-s1"),
            "--quiet",
            "--set",
            "budget.steps=2",
            *SETTINGS,
            "--set",
            "optim.lr=2e-4",
        ],
    )
    assert foreign.exit_code == 0, foreign.output
    result = CliRunner().invoke(
        main,
        [
            "compare",
            "--model",
            str(tiny_qwen_dir),
            "--task",
            "arith",
            "--algos",
            "reinforce",
            "--seeds",
            "1",
            "--budget",
            "steps=2",
            "--out",
            str(out),
            "--quiet",
            *SETTINGS,
        ],
    )
    assert result.exit_code == 2
    assert "reinforce-s1/config.yaml: optim.lr = 0.0002 there, 0.001 in this comparison" in result.output


def _alive(pid: int) -> bool:
    """Running (a zombie nobody reaped counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_for_rows(path: Path, rows: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and not (path.exists() and len(path.read_text().splitlines()) >= rows):
        time.sleep(0.05)


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline and _alive(pid):
        time.sleep(0.05)
    return not _alive(pid)


def test_sigkill_of_the_compare_alone_ends_its_run_and_a_rerun_equals_an_uninterrupted_comparison(
    tiny_qwen_dir, tmp_path
):
    from rlbench.core.locks import holder

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    subprocess.run(_cmd(tiny_qwen_dir, clean), check=True, env=env, capture_output=True, timeout=600)

    proc = subprocess.Popen(
        _cmd(tiny_qwen_dir, killed),
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    run = killed / "runs" / "em-pg-s1"
    _wait_for_rows(run / "metrics.jsonl", 2)
    child = holder(run)
    assert child and child != proc.pid and _alive(child)
    proc.send_signal(signal.SIGKILL)  # the compare only, not its process group
    proc.wait()
    assert _gone_within(child, 30), "the run outlived its compare"
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"  # the SIGTERM path, not a crash

    done = subprocess.run(_cmd(tiny_qwen_dir, killed), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "audit: matched" in done.stdout
    for name in ("reinforce-s1", "em-pg-s1"):
        for log in ("metrics.jsonl", "eval.jsonl"):
            assert stable_rows(clean / "runs" / name / log) == stable_rows(killed / "runs" / name / log), (name, log)
        assert stable_records(clean / "runs" / name) == stable_records(killed / "runs" / name), name
        assert [r["step"] for r in stable_rows(killed / "runs" / name / "metrics.jsonl")] == list(range(1, 7))


def test_a_second_writer_is_refused_naming_the_holder_and_sigterm_of_the_compare_ends_its_run(tiny_qwen_dir, tmp_path):
    from rlbench.core.locks import holder

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "cmp"
    cmd = [*_cmd(tiny_qwen_dir, out), "--budget", "steps=100000"]  # the last --budget wins: runs until stopped
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        run = out / "runs" / "reinforce-s1"
        _wait_for_rows(run / "metrics.jsonl", 1)
        child = holder(run)
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2 and second.stderr.strip().splitlines() == [
            f"rlbench: error: {out}: another rlbench comparison is writing this folder (pid {proc.pid}); "
            "wait for it to finish or stop it"
        ]
        train = subprocess.run(
            [
                sys.executable,
                "-m",
                "rlbench.cli",
                "train",
                "--config",
                str(run / "request.yaml"),
                "--resume",
                "--quiet",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert (
            train.returncode == 2 and f"{run}: another rlbench run is writing this folder (pid {child})" in train.stderr
        )
        steps = [r["step"] for r in stable_rows(run / "metrics.jsonl")]
        assert steps == list(range(1, len(steps) + 1))  # one writer: no step twice
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        assert _gone_within(child, 30), "the run outlived its compare"
        assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def _children(pid: int) -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _parent_of(int(p.name)) == pid]


def _parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process tree from /proc")
def test_sigkill_of_the_compare_ends_its_run_in_two_processes_as_interrupted(tiny_qwen_dir, tmp_path):
    """compare -> `accelerate launch` (what `rlbench train --processes 2` becomes) -> 2 gloo ranks: the launcher
    follows the compare, the ranks their launcher, and the run ends through SIGTERM, with its summary."""
    from rlbench.core.locks import holder
    from rlbench.study.executors import FAKE_GPUS_ENV

    env = {**os.environ, "OMP_NUM_THREADS": "1", FAKE_GPUS_ENV: "2"}  # CUDA_VISIBLE_DEVICES=0,1: gloo ranks on a CPU
    out = tmp_path / "cmp"
    cmd = [
        *_cmd(tiny_qwen_dir, out),
        "--algos",
        "em-pg",
        "--budget",
        "steps=100000",
        "--gpus-per-run",
        "2",
        "--set",
        "rollout.seed_rows=true",
    ]  # the last --algos / --budget win
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ranks: list[int] = []
    try:
        run = out / "runs" / "em-pg-s1"
        _wait_for_rows(run / "metrics.jsonl", 1)
        launcher = _parent_of(holder(run) or 0)  # rank 0 holds the run's lock
        ranks = _children(launcher)
        assert _parent_of(launcher) == proc.pid and len(ranks) == 2, (launcher, ranks)
        proc.send_signal(signal.SIGKILL)  # the compare only, not its process group
        proc.wait()
        assert all(_gone_within(pid, 60) for pid in [launcher, *ranks]), "the run outlived its compare"
        assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"
    finally:
        for pid in ranks:  # torch starts each rank in a session of its own
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the compare and its launcher, if either is left
        except ProcessLookupError:
            pass
        proc.wait()


def test_a_diverged_run_is_reported_as_such_and_the_comparison_exits_1(tiny_qwen_dir, tmp_path):
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
            "ppo",
            "--seeds",
            "1",
            "--budget",
            "steps=4",
            "--out",
            str(out),
            "--jobs",
            "1",
            "--quiet",
            *SETTINGS,
            "--set",
            "optim.lr=1e3",
        ],
    )
    assert result.exit_code == 1, result.output
    assert "rlbench: error: 1 run(s) did not complete: ppo-s1 (exit 3" in result.output
    assert "Traceback" not in result.output
    summary = json.loads((out / "runs" / "ppo-s1" / "summary.json").read_text())
    assert summary["status"] == "diverged"
    md = (out / "leaderboard.md").read_text()
    assert "Incomplete runs, left out of every number above: ppo-s1 (diverged)." in md
