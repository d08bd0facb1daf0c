"""Issue 14: every task has a validation split, disjoint from test and never trained on, and what selects (the tiny
lab's SFT stop rule, tuning through ``eval.split``) reads it instead of test."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from rlbench.tasks.arith import Arith, ArithConfig
from rlbench.tasks.data import carve_validation, text_key

from rlbench.core.config import ConfigError, SamplingConfig, TinyConfig
from rlbench.core.configure import build_task, resolve
from rlbench.core.registry import get_task

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def text(example) -> str:
    return text_key(example.question)


def assert_disjoint(task) -> dict[str, list]:
    splits = {name: task.load(name) for name in ("train", "validation", "test")}
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        assert not {e.id for e in splits[a]} & {e.id for e in splits[b]}, (a, b)
        assert not {text(e) for e in splits[a]} & {text(e) for e in splits[b]}, (a, b)
    for examples in splits.values():
        assert len({e.id for e in examples}) == len(examples)
    return splits


@pytest.mark.parametrize("name", ["arith", "gsm8k", "math-hard"])
def test_every_task_lists_validation(name: str) -> None:
    assert get_task(name).splits == ("train", "validation", "test")


# ------------------------------------------------------------------------------------------------ arith


def test_arith_validation_is_its_own_stream_disjoint_from_test_and_train() -> None:
    task = Arith(ArithConfig(train_size=3000, validation_size=200, test_size=300))
    splits = assert_disjoint(task)
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [3000, 200, 300]
    again = Arith(ArithConfig(train_size=3000, validation_size=200, test_size=300))
    assert [e.id for e in again.load("validation")] == [e.id for e in splits["validation"]]
    # test does not depend on the validation settings (the leaderboard's problems stay the same)
    other = Arith(ArithConfig(train_size=3000, validation_size=50, test_size=300))
    assert [e.id for e in other.load("test")] == [e.id for e in splits["test"]]
    held_out = {e.id for e in splits["validation"] + splits["test"]}
    stream = task.fresh_train_examples(seed=0)
    assert not {next(stream).id for _ in range(3000)} & held_out


def test_arith_default_sizes() -> None:
    task = Arith()
    assert [len(task.load(s)) for s in ("train", "validation", "test")] == [20000, 500, 500]


def test_arith_validation_size_errors() -> None:
    with pytest.raises(ConfigError, match="task.validation_size"):
        Arith(ArithConfig(validation_size=0))
    small = Arith(ArithConfig(min_operand=1, max_operand=2, min_ops=1, max_ops=1, test_size=2, validation_size=50))
    with pytest.raises(ConfigError, match="task.validation_size=50"):
        small.load("validation")


@pytest.mark.parametrize("name", ["arith", "gsm8k", "math-hard"])
def test_bad_split_is_a_one_line_config_error(name: str) -> None:
    task = build_task({"name": name} if name == "arith" else {"name": name, "data": str(DATA)})
    with pytest.raises(ConfigError, match=f"split 'dev': the {name} task has train, validation, test") as info:
        task.load("dev")
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------------ carving


def test_carve_is_order_independent_keeps_duplicates_together_and_refuses_too_few() -> None:
    keys = [f"problem {i}" for i in range(50)] + ["problem 3", "problem 7"]
    train, validation = carve_validation(keys, 10, "here")
    assert len(validation) == 10 and len(set(keys[i] for i in validation)) == 10
    assert not {keys[i] for i in train} & {keys[i] for i in validation}  # a duplicate never straddles
    assert len(train) + len(validation) == 52 - sum(keys.count(keys[i]) - 1 for i in validation)
    shuffled = keys[:]
    random.Random(0).shuffle(shuffled)
    _, again = carve_validation(shuffled, 10, "here")
    assert {shuffled[i] for i in again} == {keys[i] for i in validation}
    with pytest.raises(ConfigError, match="task.validation_size=3: here has only 3 distinct problems"):
        carve_validation(["a", "b", "c", "a"], 3, "here")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def gsm_rows(n: int, offset: int = 0) -> list[dict]:
    return [
        {"question": f"What is {i} plus 1?", "answer": f"{i}+1={i + 1}\n#### {i + 1}"}
        for i in range(offset, offset + n)
    ]


def test_gsm8k_carves_validation_from_train_and_a_file_overrides(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", gsm_rows(30))
    write_jsonl(tmp_path / "test.jsonl", gsm_rows(5, offset=100))
    task = build_task({"name": "gsm8k", "data": str(tmp_path), "validation_size": 8})
    splits = assert_disjoint(task)
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [22, 8, 5]
    assert all(e.id.startswith("train-") for e in splits["validation"])  # carved rows keep their source ids
    # the same problems in another order give the same validation problems
    write_jsonl(tmp_path / "shuffled.jsonl", gsm_rows(30)[::-1])
    reversed_ = build_task({"name": "gsm8k", "data": str(tmp_path / "shuffled.jsonl"), "validation_size": 8})
    assert {text(e) for e in reversed_.load("validation")} == {text(e) for e in splits["validation"]}
    # a validation file of its own replaces the slice; train drops its problems
    write_jsonl(tmp_path / "validation.jsonl", gsm_rows(3, offset=10))
    own = build_task({"name": "gsm8k", "data": str(tmp_path / "{split}.jsonl")})
    assert [e.id for e in own.load("validation")] == ["validation-0", "validation-1", "validation-2"]
    assert len(own.load("train")) == 27
    assert_disjoint(own)
    with pytest.raises(ConfigError, match="task.validation_size=500"):
        build_task({"name": "gsm8k", "data": str(tmp_path / "shuffled.jsonl")}).load("train")


def test_lm_eval_bridge_refuses_a_carved_split(tmp_path: Path) -> None:
    from rlbench.run.eval.lm_eval_bridge import data_file

    write_jsonl(tmp_path / "train.jsonl", gsm_rows(30))
    write_jsonl(tmp_path / "test.jsonl", gsm_rows(5, offset=100))
    task = build_task({"name": "gsm8k", "data": str(tmp_path), "validation_size": 8})
    assert data_file(task, "test") == (tmp_path / "test.jsonl").resolve()
    for split in ("validation", "train"):
        with pytest.raises(ConfigError, match=f"--split {split}: not a whole file"):
            data_file(task, split)
    write_jsonl(tmp_path / "validation.jsonl", gsm_rows(3, offset=10))
    assert data_file(task, "validation") == (tmp_path / "validation.jsonl").resolve()


def test_math_hard_validation_file_is_filtered_like_train(tmp_path: Path) -> None:
    def row(uid: str, level: str, problem: str) -> dict:
        return {"problem": problem, "level": level, "type": "Algebra", "solution": "\\boxed{1}", "unique_id": uid}

    write_jsonl(tmp_path / "train.jsonl", [row(f"train/a/{i}", "Level 5", f"P{i}") for i in range(4)])
    write_jsonl(tmp_path / "test.jsonl", [row("test/a/1", "Level 5", "T1")])
    write_jsonl(tmp_path / "math500_test.jsonl", [row("test/a/1", "Level 5", "T1")])
    write_jsonl(tmp_path / "validation.jsonl", [row("train/a/1", "Level 5", "P1"), row("v/1", "Level 1", "easy")])
    task = build_task({"name": "math-hard", "data": str(tmp_path)})
    assert [e.id for e in task.load("validation")] == ["train/a/1"]  # level 1 is not a training level
    assert [e.id for e in task.load("train")] == ["train/a/0", "train/a/2", "train/a/3"]


# ------------------------------------------------------------------------------------------------ real data


def real(name: str, **options):
    if not DATA.is_dir():
        pytest.skip(f"shared data not found at {DATA}")
    return build_task({"name": name, **options})


def test_real_gsm8k_splits() -> None:
    task = real("gsm8k", data=str(DATA / "gsm8k"))
    splits = assert_disjoint(task)
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [6973, 500, 1319]
    again = real("gsm8k", data=str(DATA / "gsm8k" / "{split}.jsonl"))
    assert [e.id for e in again.load("validation")] == [e.id for e in splits["validation"]]
    assert [e.id for e in again.load("train")] == [e.id for e in splits["train"]]


@pytest.mark.parametrize(
    "preset, folder, sizes",
    [
        ("paper", "math", [8388, 500, 500]),
        ("lvl5", "math", [1804, 500, 1324]),
        ("lvl5", "math_hard", [1804, 500, 1324]),
    ],
)
def test_real_math_hard_splits(preset: str, folder: str, sizes: list[int]) -> None:
    task = real("math-hard", data=str(DATA / folder), preset=preset)
    splits = assert_disjoint(task)
    assert [len(splits[s]) for s in ("train", "validation", "test")] == sizes
    levels = {3, 4, 5} if preset == "paper" else {5}
    assert {int(str(e.meta["level"]).removeprefix("Level ")) for e in splits["validation"]} <= levels
    if folder == "math_hard":  # the level-5 folder and the full MATH folder give the same validation problems
        full = real("math-hard", data=str(DATA / "math"), preset="lvl5")
        assert [e.id for e in full.load("validation")] == [e.id for e in splits["validation"]]


# ------------------------------------------------------------------------------------------------ what selects


def test_warmstart_curve_reads_validation_and_reports_test_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import rlbench.run.tiny.warmstart as ws

    task = Arith(ArithConfig(train_size=100, validation_size=30, test_size=20))
    seen: list[set[str]] = []
    real_evaluate = ws.evaluate

    def spy(generator, task_, examples, **kwargs):
        seen.append({e.id for e in examples})
        return real_evaluate(generator, task_, examples, **kwargs)

    monkeypatch.setattr(ws, "evaluate", spy)
    tiny = TinyConfig(
        layers=1,
        hidden=32,
        heads=2,
        mlp=64,
        sft_steps=6,
        sft_horizon=None,
        check_every=3,
        sft_batch=8,
        warmstart="build",
    )
    report = ws.run_sft(tiny, task, SamplingConfig(max_new_tokens=8), tmp_path / "out", progress=False)
    validation, test = {e.id for e in task.load("validation")}, {e.id for e in task.load("test")}
    assert len(seen) == 3  # steps 3 and 6, then the report-only test measurement
    assert all(ids == validation for ids in seen[:-1]) and seen[-1] == test
    assert report["held_out_split"] == "validation" and report["held_out_problems"] == 30
    assert report["test"]["problems"] == 20


def test_warmstart_cache_key_has_a_new_version(monkeypatch: pytest.MonkeyPatch) -> None:
    import rlbench.run.tiny.warmstart as ws

    assert ws.FORMAT_VERSION >= 3  # 1 stopped on test, 2 on a noisy validation check: never reuse their builds
    task, tiny, sampling = Arith(), TinyConfig(), SamplingConfig()
    key = ws.cache_key(tiny, task, sampling)
    monkeypatch.setattr(ws, "FORMAT_VERSION", 1)
    assert ws.cache_key(tiny, task, sampling) != key


def test_eval_split_validation_drives_the_run_evaluator() -> None:
    from rlbench.run.training import RunEvaluator

    config = resolve(None, ["eval.split=validation", "eval.limit=7"])
    task = Arith()
    evaluator = RunEvaluator(config, task)
    assert [e.id for e in evaluator.examples] == [e.id for e in task.load("validation")[:7]]


def test_cli_eval_split_validation(tiny_qwen_dir: Path, tmp_path: Path) -> None:
    from rlbench.cli.eval import eval_

    before = torch.get_num_threads()
    try:
        out, recs = tmp_path / "eval.json", tmp_path / "recs.jsonl"
        result = CliRunner().invoke(
            eval_,
            [
                "--model",
                str(tiny_qwen_dir),
                "--task",
                "arith",
                "--split",
                "validation",
                "--max-new-tokens",
                "6",
                "--set",
                "threads=1",
                "--quiet",
                "--limit",
                "4",
                "--k",
                "0",
                "--out",
                str(out),
                "--records",
                str(recs),
            ],
        )
    finally:
        torch.set_num_threads(before)
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["split"] == "validation"
    ids = [json.loads(line)["id"] for line in recs.read_text().splitlines()]
    assert ids == [e.id for e in Arith().load("validation")[:4]]
