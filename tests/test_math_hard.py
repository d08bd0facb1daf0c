"""The math-hard task: presets and data, prompts, boxed-answer grading under a hard limit, gold checks on real MATH."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile
import time
import types
import uuid
from pathlib import Path

import pytest
from rlbench.tasks.base import Example
from rlbench.tasks.data import DataError
from rlbench.tasks.math_hard import HUB, MathHard

from rlbench.core.config import ConfigError
from rlbench.core.configure import build_task
from rlbench.core.registry import get_task

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
MATH = DATA / "math"


def row(uid: str, level, answer: str, problem: str | None = None, **extra) -> dict:
    return {
        "problem": problem or f"Problem {uid}?",
        "level": level,
        "type": "Algebra",
        "solution": f"Work for {uid}, so the answer is $\\boxed{{{answer}}}$.",
        "unique_id": uid,
        **extra,
    }


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def math_dir(tmp_path: Path) -> Path:
    """A miniature of shared/data/math: MATH-500 holds test/a/2 (by id) and a train problem's text under a new id."""
    write_jsonl(
        tmp_path / "train.jsonl",
        [
            row("train/a/1", "Level 1", "1"),
            row("train/a/2", "Level 3", "2"),
            row("train/a/3", "Level 5", "\\frac{1}{3}"),
            row("train/a/4", "Level ?", "4"),
            row("train/a/5", "Level 4", "5", problem="Shared problem text."),
        ],
    )
    write_jsonl(
        tmp_path / "test.jsonl",
        [row("test/a/1", "Level 5", "7"), row("test/a/2", "Level 4", "8"), row("test/a/3", "Level 2", "9")],
    )
    write_jsonl(
        tmp_path / "math500_test.jsonl",
        [
            {**row("test/a/2", 4, "8"), "answer": "8", "subject": "Algebra"},
            {**row("test/b/9", 2, "x", problem="Shared  problem\ntext."), "answer": "x"},
        ],
    )
    return tmp_path


def make(data: Path | str | None, **options) -> MathHard:
    return build_task({"name": "math-hard", "data": None if data is None else str(data), **options})


def ex(answer: str) -> Example:
    return Example("t", "q", answer)


# ------------------------------------------------------------------------------------------------ data


def test_registered_with_documented_options() -> None:
    assert get_task("math-hard") is MathHard
    assert MathHard.options() == {
        "data": None,
        "reward": None,
        "preset": "paper",
        "prompt_style": "chat",
        "grade_timeout": 2.0,
        "grade_workers": 0,
        "validation_size": 500,
    }


def test_paper_preset(math_dir: Path) -> None:
    task = make(math_dir, validation_size=1)
    train, validation = task.load("train"), task.load("validation")
    # Levels 3-5 of train + test, minus MATH-500 by id (test/a/2) and by problem text (train/a/5); one of them is
    # carved out as the validation split (since issue 14).
    assert len(validation) == 1
    both = sorted(train + validation, key=lambda e: ["train/a/2", "train/a/3", "test/a/1"].index(e.id))
    assert [e.id for e in both] == ["train/a/2", "train/a/3", "test/a/1"]
    assert [e.answer for e in both] == ["2", "\\frac{1}{3}", "7"]
    test = task.load("test")
    assert [e.id for e in test] == ["test/a/2", "test/b/9"]
    assert test[0].answer == "8" and test[0].meta["level"] == 4


def test_lvl5_preset(math_dir: Path) -> None:
    with (math_dir / "train.jsonl").open("a") as handle:  # a second level-5 training problem to carve from
        handle.write(json.dumps(row("train/a/6", "Level 5", "6")) + "\n")
    task = make(math_dir, preset="lvl5", validation_size=1)
    assert sorted(e.id for e in task.load("train") + task.load("validation")) == ["train/a/3", "train/a/6"]
    assert [e.id for e in task.load("test")] == ["test/a/1"]


def test_single_file_is_the_test_split(math_dir: Path) -> None:
    assert [e.id for e in make(math_dir / "test.jsonl").load("test")] == ["test/a/1", "test/a/2", "test/a/3"]
    assert [e.id for e in make(math_dir / "test.jsonl", preset="lvl5").load("test")] == ["test/a/1"]
    with pytest.raises(ConfigError, match="single file, which serves the test split only"):
        make(math_dir / "test.jsonl").load("train")


def test_reference_prefers_answer_field_then_last_box(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "t.jsonl",
        [
            {"problem": "p", "solution": "\\boxed{1} then \\boxed{\\frac{2}{3}}"},
            {"problem": "p", "solution": "\\boxed{1}", "answer": "5"},
            {"problem": "p", "answer": 12},  # a JSON number is its text
        ],
    )
    examples = make(path).load("test")
    assert [e.answer for e in examples] == ["\\frac{2}{3}", "5", "12"]
    assert [e.id for e in examples] == ["test-0", "test-1", "test-2"]  # no unique_id: source and row


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"solution": "\\boxed{1}"}], r"t\.jsonl:1: field 'problem' is missing"),
        (
            [{"problem": "p", "solution": "no box"}],
            r"t\.jsonl:1: no field 'answer' and field 'solution' has no \\boxed",
        ),
        ([{"problem": "p"}], r"t\.jsonl:1: fields 'answer' and 'solution' are both missing"),
    ],
)
def test_record_errors_name_file_line_and_field(tmp_path: Path, rows: list[dict], message: str) -> None:
    with pytest.raises(DataError, match=message):
        make(write_jsonl(tmp_path / "t.jsonl", rows)).load("test")


def test_missing_level_named_when_the_preset_needs_it(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", [row("a", "Level 5", "1"), {"problem": "p", "solution": "\\boxed{2}"}])
    with pytest.raises(DataError, match=r"t\.jsonl:2: field 'level' is missing"):
        make(path, preset="lvl5").load("test")


def test_file_level_errors(math_dir: Path, tmp_path: Path) -> None:
    (math_dir / "math500_test.jsonl").unlink()
    with pytest.raises(DataError, match="no math500_test data file"):
        make(math_dir).load("test")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match=r"empty\.jsonl: empty file"):
        make(empty).load("test")
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(row("a", 5, "1")) + "\n{oops\n")
    with pytest.raises(DataError, match=r"broken\.jsonl:2: line is not JSON"):
        make(broken).load("test")
    with pytest.raises(DataError, match="no such file or directory"):
        make(tmp_path / "absent").load("test")


def test_bad_options(math_dir: Path) -> None:
    with pytest.raises(ConfigError, match="task.preset"):
        make(math_dir, preset="lvl9")
    with pytest.raises(ConfigError, match="task.grade_timeout"):
        make(math_dir, grade_timeout=0)
    with pytest.raises(ConfigError, match="task.grade_workers"):
        make(math_dir, grade_workers=-1)


def test_hub_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    # lighteval's MATH copy has no unique_id: MATH-500 must still be removed from training, by problem text.
    def lighteval(level: str, answer: str, problem: str) -> dict:
        return {k: v for k, v in row("-", level, answer, problem).items() if k != "unique_id"}

    tables = {
        (*HUB["math"], "train"): [
            lighteval("Level 5", "1", "Kept."),
            lighteval("Level 5", "2", "Held out."),
            lighteval("Level 4", "4", "Also kept."),
        ],
        (*HUB["math"], "test"): [lighteval("Level 2", "3", "Too easy.")],
        (*HUB["math500"], "test"): [
            {"problem": "Held out.", "solution": "", "answer": "2", "level": 5, "unique_id": "test/q/1"}
        ],
    }
    calls = []

    def load_dataset(name, config, split):
        calls.append((name, config, split))
        return tables[(name, config, split)]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    task = make(None, validation_size=1)
    assert sorted(e.question for e in task.load("train") + task.load("validation")) == ["Also kept.", "Kept."]
    assert [e.id for e in task.load("test")] == ["test/q/1"]
    assert set(calls) == set(tables)


def test_prompts(math_dir: Path) -> None:
    example = make(math_dir).load("test")[0]
    instruction = "Please reason step by step, and put your final answer within \\boxed{}."
    assert make(math_dir).prompt(example) == [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": f"{example.question}\n{instruction}"},
    ]
    assert (
        make(math_dir, prompt_style="base").prompt(example)
        == f"Problem:\n{example.question}\n\n{instruction}\n\nSolution:"
    )


# ------------------------------------------------------------------------------------------------ grading


@pytest.fixture(scope="module")
def task() -> MathHard:
    t = MathHard()
    t.checker.warm_up()  # start the grading processes outside the timed calls
    return t


@pytest.mark.parametrize(
    "completion, reference, reason",
    [
        ("so the answer is $\\boxed{\\frac{1}{2}}$", "\\frac12", "correct"),
        ("\\boxed{0.5}", "\\frac{1}{2}", "correct"),
        ("first \\boxed{3}, no wait: \\boxed{4}", "4", "correct"),
        ("first \\boxed{4}, no wait: \\boxed{3}", "4", "wrong"),
        ("\\fbox{(1, 2]}", "(1,2]", "correct"),
        ("\\boxed{\\text{(C)}}", "\\text{(C)}", "correct"),
        ("The answer is 4.", "4", "no_answer"),  # unboxed answers are never credited
        ("$4$", "4", "no_answer"),
        ("\\boxed{}", "4", "unparsable"),
        ("\\boxed{4}", "\\frac \\pi4 + 2 - \\sqrt2", "unparsable"),  # reference math-verify cannot read
        ("\\boxed{\\frac \\pi4 + 2 - \\sqrt2}", "\\frac \\pi4 + 2 - \\sqrt2", "unparsable"),  # not even its copy
    ],
)
def test_grade(task: MathHard, completion: str, reference: str, reason: str) -> None:
    grade = task.grade(completion, ex(reference))
    assert grade.reason == reason
    assert grade.reward == (1.0 if reason == "correct" else 0.0)


def test_grade_many_matches_grade(task: MathHard) -> None:
    completions = ["\\boxed{2}", "\\boxed{3}", "none", "\\boxed{\\frac{4}{2}}"] * 4
    examples = [ex("2")] * len(completions)
    assert task.grade_many(completions, examples) == [task.grade(c, e) for c, e in zip(completions, examples)]


def test_grade_many_rejects_mismatched_lengths(task: MathHard) -> None:
    with pytest.raises(ValueError, match="2 completions for 1 examples"):
        task.grade_many(["a", "b"], [ex("1")])


def test_timeout_is_a_hard_limit() -> None:
    # A limit shorter than any sympy call: every check is killed and reported as timeout, within the limit.
    fast = MathHard(MathHard.Config(grade_timeout=0.001, grade_workers=1))
    fast.checker.warm_up()
    start = time.perf_counter()
    grade = fast.grade("\\boxed{\\int_0^1 x^{17} \\sin(x)\\,dx + \\frac{7}{9}}", ex("\\frac{19}{23}"))
    assert time.perf_counter() - start < 3.0
    assert grade.reason == "timeout" and grade.reward == 0.0


ADVERSARIAL = {
    "python-power-tower": "\\boxed{9**9**9**9}",
    "latex-power-tower": "\\boxed{10^{10^{10^{10}}}}",
    "factorial-of-huge": "\\boxed{(10^{10})!}",
    "nested-braces": "\\boxed{" + "{" * 10_000 + "8" + "}" * 10_000 + "}",
    "unboxed-nested-braces": "{" * 10_000 + "8" + "}" * 10_000,
    "megabyte": "8" * (1 << 20),
    "megabyte-boxed": "\\boxed{" + "8" * (1 << 20) + "}",
    "megabyte-open-boxes": "\\boxed{" * 150_000,
    "python-import": "\\boxed{__import__('os').system('touch PWNED')}",
    "unicode-digits": "\\boxed{８}",
    "arabic-indic-digits": "\\boxed{٨}",
}


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_adversarial_completions(task: MathHard, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    before = set(os.listdir(tempfile.gettempdir()))
    start = time.perf_counter()
    grade = task.grade(ADVERSARIAL[name], ex("8"))
    assert time.perf_counter() - start <= 3.0
    assert grade.reward == 0.0 and not grade.correct
    assert grade.reason in {"no_answer", "unparsable", "timeout", "wrong"}
    assert not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()
    assert "PWNED" not in set(os.listdir(tempfile.gettempdir())) - before


def test_python_in_a_box_runs_nothing(task: MathHard, tmp_path: Path) -> None:
    target = tmp_path / f"pwned-{uuid.uuid4().hex}"
    for text in (f"__import__('os').system('touch {target}')", f"exec(\"open('{target}','w')\")"):
        assert task.grade(f"\\boxed{{{text}}}", ex("0")).reward == 0.0
    assert not target.exists()


# ------------------------------------------------------------------------------------------------ real data


def real(preset: str) -> MathHard:
    if not (MATH / "train.jsonl").is_file():
        pytest.skip(f"MATH data not found at {MATH} (the shared data folder is absent)")
    return make(MATH, preset=preset)


def test_real_data_sizes() -> None:
    paper, lvl5 = real("paper"), real("lvl5")
    # 8,888 and 2,304 training problems, each minus the 500 carved out as the validation split (since issue 14)
    assert (len(paper.load("train")), len(paper.load("validation"))) == (8388, 500)
    assert len(paper.load("test")) == 500
    assert (len(lvl5.load("train")), len(lvl5.load("validation"))) == (1804, 500)
    assert len(lvl5.load("test")) == 1324
    assert not {e.id for e in paper.load("train")} & {e.id for e in paper.load("test")}


def gold_rates(task: MathHard, examples: list[Example]) -> tuple[float, float]:
    """(correct rate of the reference solutions, correct rate with the final answer replaced by a wrong one)."""
    # The corruption rule lives in benchmarks/gold_check.py, so the script and the tests apply the same one.
    spec = importlib.util.spec_from_file_location("gold_check", ROOT / "benchmarks" / "gold_check.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    gold = task.grade_many([e.solution for e in examples], examples)
    bad = task.grade_many([script.math_corrupt(e, examples) for e in examples], examples)
    n = len(examples)
    return sum(g.correct for g in gold) / n, sum(g.correct for g in bad) / n


@pytest.mark.parametrize("preset", ["paper", "lvl5"])
def test_gold_check_sample(preset: str) -> None:
    """Every 8th test problem, in the default run; the full sets are the slow tests below."""
    task_ = real(preset)
    correct, corrupt = gold_rates(task_, task_.load("test")[::8])
    assert correct >= 0.99 and corrupt <= 0.01


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["paper", "lvl5"])
def test_gold_check_full(preset: str) -> None:
    task_ = real(preset)
    correct, corrupt = gold_rates(task_, task_.load("test"))
    assert correct >= 0.99 and corrupt <= 0.01
