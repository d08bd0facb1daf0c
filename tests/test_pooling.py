"""rlbench report A B: folders holding seeds of one comparison pool into the leaderboard of the unsplit comparison;
folders whose runs were not run alike are refused, naming the field; other comparisons stay apart, as before."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from report_helpers import make_comparison, read_json, seal
from run_helpers import stable

from rlbench.cli import main

SKILL = {"em-pg": 0.7, "grpo": 0.5, "reinforce": 0.6}
SEEDS = (1, 2, 3, 4, 5)
PROVENANCE = {"dir", "command", "created", "code_version", "pooled_from"}  # what differs between split and unsplit
CONTROL = "em-pg (A/A control)"


def _cli(*args: str):
    return CliRunner().invoke(main, ["report", *args])


def _split(full: Path, parts: dict[str, tuple[int, ...]]) -> list[Path]:
    """Copy a comparison's runs into one folder per seed subset, each with the manifest that command would write."""
    manifest = read_json(full / "manifest.json")
    out = []
    for name, seeds in parts.items():
        dest = full.parent / name
        (dest / "runs").mkdir(parents=True)
        for run in (full / "runs").iterdir():
            if int(run.name.rsplit("-s", 1)[1]) in seeds:
                shutil.copytree(run, dest / "runs" / run.name)
        seed_list = ",".join(map(str, seeds))
        (dest / "manifest.json").write_text(
            json.dumps(
                {
                    **manifest,
                    "seeds": list(seeds),
                    "created": f"2025-02-0{len(out) + 1}T00:00:00+00:00",
                    "command": f"rlbench compare --seeds {seed_list} --out {name}",
                    "machine": {"cpus": 2 + len(out)},
                }
            )
        )
        out.append(dest)
    return out


def _comparable(report: dict) -> dict:
    """report.json without what names the folders and commands (the only things a split changes)."""
    data = {k: v for k, v in report.items() if k != "report_command"}
    data["tasks"] = [{k: v for k, v in t.items() if k not in PROVENANCE} for t in report["tasks"]]
    return data


def _one_error_line(result, *needles: str) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.fixture()
def split(tmp_path: Path) -> tuple[Path, Path, Path]:
    full = make_comparison(tmp_path / "full", SKILL, seeds=SEEDS)
    a, b = _split(full, {"A": (1, 2, 3), "B": (4, 5)})
    return full, a, b


def test_pooled_folders_give_the_unsplit_leaderboard(split, tmp_path):
    full, a, b = split
    assert _cli(str(full)).exit_code == 0
    result = _cli(str(a), str(b), "--out", str(tmp_path / "pooled"))
    assert result.exit_code == 0, result.output
    assert f"arith: pooled from {a} (seeds 1, 2, 3) + {b} (seeds 4, 5)" in result.output
    unsplit, pooled = read_json(full / "report.json"), read_json(tmp_path / "pooled" / "report.json")
    assert _comparable(pooled) == _comparable(unsplit)
    task = pooled["tasks"][0]
    assert task["seeds"] == list(SEEDS) and task["label"] == "arith" and task["audit"]["matched"]
    assert [r["name"] for r in task["runs"]] == [r["name"] for r in unsplit["tasks"][0]["runs"]]
    assert task["dir"] == f"{a} + {b}"
    assert task["command"] == "rlbench compare --seeds 1,2,3 --out A; rlbench compare --seeds 4,5 --out B"
    assert [(p["dir"], p["seeds"], p["machine"]) for p in task["pooled_from"]] == [
        (str(a), [1, 2, 3], {"cpus": 2}),
        (str(b), [4, 5], {"cpus": 3}),
    ]
    assert pooled["report_command"] == f"rlbench report {a} {b} --out {tmp_path / 'pooled'} --metric greedy --ci t"

    # the page and the markdown hold the same numbers: only the provenance lines differ
    def body(path: Path) -> list[str]:
        keep = ("Report command", "Comparison command", "Folder", "Code version")
        return [line for line in path.read_text().splitlines() if not any(k in line for k in keep)]

    assert body(tmp_path / "pooled" / "leaderboard.md") == body(full / "leaderboard.md")


def test_pooling_does_not_depend_on_the_folders_order(split, tmp_path):
    _, a, b = split
    assert _cli(str(a), str(b), "--out", str(tmp_path / "ab")).exit_code == 0
    assert _cli(str(b), str(a), "--out", str(tmp_path / "ba")).exit_code == 0
    ab, ba = (read_json(tmp_path / name / "report.json") for name in ("ab", "ba"))
    assert _comparable(ab) == _comparable(ba)


def test_a_run_with_another_fingerprint_is_refused_naming_the_field(split, tmp_path):
    _, a, b = split
    run = b / "runs" / "grpo-s4"
    _edit_json(run / "fingerprint.json", lambda fp: fp["config"]["optim"].update(lr=2e-4))
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["optim"]["lr"] = 2e-4
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    line = _one_error_line(
        _cli(str(a), str(b), "--out", str(tmp_path / "pooled")),
        f"{run / 'fingerprint.json'}: config.optim.lr differs from {a}'s (0.0001 there, 0.0002 here)",
    )
    assert "cannot be pooled" in line
    assert not (tmp_path / "pooled").exists()


def test_other_initial_weights_are_refused(split, tmp_path):
    _, a, b = split
    for run in (b / "runs").iterdir():  # B was run from another warm-start
        _edit_json(run / "fingerprint.json", lambda fp: fp.update(init_weights="w1"))
    _one_error_line(
        _cli(str(a), str(b), "--out", str(tmp_path / "p")),
        "fingerprint.json: init_weights differs from",
        "('w0' there, 'w1' here)",
    )


def test_a_run_at_odds_inside_the_first_folder_is_the_audits_to_flag(split, tmp_path):
    _, a, b = split
    _edit_json(a / "runs" / "grpo-s1" / "fingerprint.json", lambda fp: fp.update(init_weights="w1"))
    result = _cli(str(a), str(b), "--out", str(tmp_path / "p"))
    assert result.exit_code == 0, result.output
    audit = read_json(tmp_path / "p" / "report.json")["tasks"][0]["audit"]
    assert audit["flagged_runs"] == ["grpo-s1"]
    assert any(p.startswith("grpo-s1: init_weights differs") for p in audit["problems"])


def test_shared_seeds_are_refused_and_no_pool_keeps_folders_apart(split, tmp_path):
    full, a, _ = split
    _one_error_line(
        _cli(str(full), str(a), "--out", str(tmp_path / "p")),
        f"{a / 'manifest.json'}: seed 1 is also in {full}",
        "--no-pool",
    )
    result = _cli(str(full), str(a), "--out", str(tmp_path / "apart"), "--no-pool")
    assert result.exit_code == 0, result.output
    data = read_json(tmp_path / "apart" / "report.json")
    assert [t["label"] for t in data["tasks"]] == ["arith (full)", "arith (A)"]
    assert data["report_command"].endswith("--no-pool")
    _one_error_line(_cli(str(a), str(a), "--out", str(tmp_path / "twice")), "named twice")


def test_folders_of_another_design_stay_two_comparisons(split, tmp_path):
    _, a, b = split
    # (a budget is no example: B's runs would contradict it, and the audit blames that manifest)
    _edit_json(b / "manifest.json", lambda m: m.update(model="tiny-2"))
    result = _cli(str(a), str(b), "--out", str(tmp_path / "two"))
    assert result.exit_code == 0, result.output
    assert f"note: {b} is not pooled with {a}: their manifests differ in model" in result.output
    data = read_json(tmp_path / "two" / "report.json")
    assert [t["label"] for t in data["tasks"]] == ["arith (A)", "arith (B)"]
    assert all("pooled_from" not in t for t in data["tasks"])
    assert _cli(str(a), str(b)).exit_code == 2  # several folders, pooled or not: --out is required


def test_other_tasks_are_reported_beside_a_pooled_one(split, tmp_path):
    _, a, b = split
    gsm = make_comparison(tmp_path / "gsm", {"em-pg": 0.4, "grpo": 0.45}, task="gsm8k")
    result = _cli(str(a), str(gsm), str(b), "--out", str(tmp_path / "both"))
    assert result.exit_code == 0, result.output
    data = read_json(tmp_path / "both" / "report.json")
    assert [(t["label"], t["seeds"]) for t in data["tasks"]] == [("arith", [1, 2, 3, 4, 5]), ("gsm8k", [1, 2, 3])]
    assert data["summary"]["tasks"] == ["arith", "gsm8k"]


def test_trackers_do_not_keep_folders_apart(split, tmp_path):
    full, a, b = split
    _edit_json(b / "manifest.json", lambda m: m["config"].update(report_to=["tensorboard"]))
    for run in (b / "runs").iterdir():
        config = yaml.safe_load((run / "config.yaml").read_text())
        (run / "config.yaml").write_text(yaml.safe_dump({**config, "report_to": ["tensorboard"]}))
        seal(run)  # the runs were launched so
    assert _cli(str(full)).exit_code == 0
    assert _cli(str(a), str(b), "--out", str(tmp_path / "p")).exit_code == 0
    assert _comparable(read_json(tmp_path / "p" / "report.json")) == _comparable(read_json(full / "report.json"))


def _with_control(full: Path) -> None:
    """Turn the fabricated 'em-pg.control' algorithm into compare's A/A control row of em-pg (stream 1)."""

    def rows(m):
        m["algos"] = ["em-pg", "grpo", CONTROL]
        m["rows"] = [
            {
                "label": "em-pg",
                "algo": "em-pg",
                "options": {},
                "slug": "em-pg",
                "control": False,
                "resolved": {"name": "em-pg"},
            },
            {
                "label": "grpo",
                "algo": "grpo",
                "options": {},
                "slug": "grpo",
                "control": False,
                "resolved": {"name": "grpo"},
            },
            {
                "label": CONTROL,
                "algo": "em-pg",
                "options": {},
                "slug": "em-pg.control",
                "control": True,
                "resolved": {"name": "em-pg"},
            },
        ]
        m["reference"] = "em-pg"

    _edit_json(full / "manifest.json", rows)
    for run in (full / "runs").glob("em-pg.control-s*"):
        config = yaml.safe_load((run / "config.yaml").read_text())
        config["algo"], config["rollout"]["sample_stream"] = {"name": "em-pg"}, 1
        (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

        def stream(fp):
            fp["algo"], fp["config"]["rollout"]["sample_stream"] = {"name": "em-pg"}, 1

        _edit_json(run / "fingerprint.json", stream)
        seal(run)  # the runs were launched so


def test_the_control_row_pools_with_its_own_stream(tmp_path):
    full = make_comparison(tmp_path / "full", {"em-pg": 0.6, "grpo": 0.5, "em-pg.control": 0.6}, seeds=SEEDS)
    _with_control(full)
    assert _cli(str(full)).exit_code == 0
    unsplit = read_json(full / "report.json")
    assert unsplit["tasks"][0]["audit"]["matched"], unsplit["tasks"][0]["audit"]["problems"]
    a, b = _split(full, {"A": (1, 2), "B": (3, 4, 5)})
    result = _cli(str(a), str(b), "--out", str(tmp_path / "p"))
    assert result.exit_code == 0, result.output
    pooled = read_json(tmp_path / "p" / "report.json")
    assert _comparable(pooled) == _comparable(unsplit)
    assert [r["control"] for r in pooled["tasks"][0]["algorithms"]] == [False, False, True]


# ------------------------------------------------------------------------------------------------ real runs

VOLATILE = frozenset({"cost", "throughput", "seconds", "wall_seconds", "train_seconds"})  # wall-clock measurements


@pytest.mark.slow
def test_two_real_compares_pool_into_the_unsplit_one(tiny_qwen_dir, tmp_path):
    settings = [
        "--set",
        "rollout.batch_size=4",
        "--set",
        "rollout.samples_per_prompt=2",
        "--set",
        "sampling.max_new_tokens=6",
        "--set",
        "eval.limit=4",
        "--set",
        "eval.every=2",
        "--set",
        "task.train_size=20",
        "--set",
        "task.test_size=4",
    ]

    def compare(out: Path, seeds: str) -> None:
        cmd = [
            sys.executable,
            "-m",
            "rlbench.cli",
            "compare",
            "--model",
            str(tiny_qwen_dir),
            "--task",
            "arith",
            "--algos",
            "reinforce,em-pg",
            "--seeds",
            seeds,
            "--budget",
            "steps=3",
            "--out",
            str(out),
            "--jobs",
            "1",
            "--quiet",
            *settings,
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]

    compare(tmp_path / "all", "1,2")
    compare(tmp_path / "first", "1")
    compare(tmp_path / "second", "2")
    result = _cli(str(tmp_path / "first"), str(tmp_path / "second"), "--out", str(tmp_path / "pooled"))
    assert result.exit_code == 0, result.output
    unsplit, pooled = (read_json(tmp_path / d / "report.json") for d in ("all", "pooled"))
    assert pooled["tasks"][0]["audit"]["matched"] and pooled["tasks"][0]["seeds"] == [1, 2]
    assert stable(_comparable(pooled), VOLATILE) == stable(_comparable(unsplit), VOLATILE)
