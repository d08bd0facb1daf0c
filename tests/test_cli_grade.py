"""``rlbench grade``: grading a completions file, its report and output, and one-line errors with exit code 2."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from rlbench.cli_grade import PROGRESS_MIN_ROWS, grade
from rlbench.registry import get_task

GSM_ROWS = [
    {"question": "3+4?", "answer": "3+4=7\n#### 7"},
    {"question": "2*5?", "answer": "2*5=10\n#### 10"},
    {"question": "9-1?", "answer": "9-1=8\n#### 8"},
]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def gsm(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "gsm.jsonl", GSM_ROWS)


def run(*args: str):
    return CliRunner().invoke(grade, list(args), catch_exceptions=False)


def test_grades_by_index_and_id(tmp_path: Path, gsm: Path) -> None:
    completions = write_jsonl(
        tmp_path / "c.jsonl",
        [
            {"index": 0, "completion": "#### 7"},
            {"id": "test-1", "completion": "#### 11"},
            {"index": 2, "id": "test-2", "completion": "the answer is 8"},
            "",  # blank lines are skipped
            {"index": 2, "completion": "#### 8.0"},
        ],
    )
    out = tmp_path / "out" / "grades.jsonl"
    result = run("--task", "gsm8k", "--data", str(gsm), "--completions", str(completions), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "accuracy 0.5000 (2/4)" in result.stdout
    assert "reasons: correct 2, wrong 1, no_answer 1, unparsable 0, timeout 0" in result.stdout
    graded = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(g["line"], g["index"], g["id"], g["reason"], g["reward"]) for g in graded] == [
        (1, 0, "test-0", "correct", 1.0),
        (2, 1, "test-1", "wrong", 0.0),
        (3, 2, "test-2", "no_answer", 0.0),
        (5, 2, "test-2", "correct", 1.0),
    ]
    assert graded[1]["extracted"] == "11"


def test_task_options_via_set(tmp_path: Path, gsm: Path) -> None:
    completions = write_jsonl(tmp_path / "c.jsonl", [{"index": 2, "completion": "the answer is 8"}])
    result = run("--task", "gsm8k", "--set", f"task.data={gsm}", "--set", "task.grading=flexible", "--completions", str(completions))
    assert result.exit_code == 0, result.output
    assert "accuracy 1.0000 (1/1)" in result.stdout


def test_other_split_and_generated_task(tmp_path: Path) -> None:
    arith = get_task("arith").from_options({"train_size": 50, "test_size": 20})
    train = arith.load("train")
    completions = write_jsonl(tmp_path / "c.jsonl", [{"id": e.id, "completion": e.solution} for e in train[:5]])
    sizes = ["--set", "task.train_size=50", "--set", "task.test_size=20"]
    result = run("--task", "arith", "--split", "train", *sizes, "--completions", str(completions))
    assert result.exit_code == 0, result.output
    assert "task arith split train: accuracy 1.0000 (5/5)" in result.stdout


def test_math_hard_grading(tmp_path: Path) -> None:
    data = write_jsonl(
        tmp_path / "math.jsonl",
        [{"problem": "1/2?", "solution": "\\boxed{\\frac12}", "level": "Level 5", "unique_id": "test/a/1.json"}],
    )
    completions = write_jsonl(
        tmp_path / "c.jsonl",
        [
            {"id": "test/a/1.json", "completion": "so \\boxed{0.5}"},
            {"index": 0, "completion": "\\boxed{0.25}"},
            {"index": 0, "completion": "0.5"},
            {"index": 0, "completion": "\\boxed{9**9**9**9}"},
        ],
    )
    result = run("--task", "math-hard", "--data", str(data), "--completions", str(completions))
    assert result.exit_code == 0, result.output
    assert "accuracy 0.2500 (1/4)" in result.stdout
    assert "reasons: correct 1, wrong 1, no_answer 1, unparsable 1, timeout 0" in result.stdout


def test_progress_bar_on_stderr_for_long_inputs(tmp_path: Path, gsm: Path) -> None:
    rows = [{"index": i % 3, "completion": "#### 7"} for i in range(PROGRESS_MIN_ROWS)]
    result = run("--task", "gsm8k", "--data", str(gsm), "--completions", str(write_jsonl(tmp_path / "c.jsonl", rows)))
    assert result.exit_code == 0
    assert "grading" in result.stderr and f"{PROGRESS_MIN_ROWS}/{PROGRESS_MIN_ROWS}" in result.stderr
    assert "grading" not in result.stdout
    short = run("--task", "gsm8k", "--data", str(gsm), "--completions", str(write_jsonl(tmp_path / "s.jsonl", rows[:3])))
    assert short.stderr == ""


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"index": 0, "completion": "#### 7"}', "{not json"], r"c\.jsonl:2: line is not JSON"),
        (['{"index": 0}'], r"c\.jsonl:1: field 'completion' missing"),
        (['{"index": 0, "completion": 7}'], r"c\.jsonl:1: field 'completion' must be a string"),
        (['{"completion": "x"}'], r"c\.jsonl:1: field 'index' or 'id' missing"),
        (['{"index": 3, "completion": "x"}'], r"c\.jsonl:1: field 'index' = 3 is out of range \(the split has 3 rows\)"),
        (['{"index": -1, "completion": "x"}'], r"c\.jsonl:1: field 'index' = -1 is out of range"),
        (['{"index": true, "completion": "x"}'], r"c\.jsonl:1: field 'index' must be an integer"),
        (['{"index": "0", "completion": "x"}'], r"c\.jsonl:1: field 'index' must be an integer"),
        (['{"id": "test-9", "completion": "x"}'], r"c\.jsonl:1: field 'id' = 'test-9' names no example"),
        (['{"id": "test-1", "index": 0, "completion": "x"}'], r"c\.jsonl:1: field 'id' = 'test-1' is row 1, but field 'index' says 0"),
        (["[1, 2]"], r"c\.jsonl:1: expected a JSON object"),
        ([], r"c\.jsonl: empty file"),
    ],
)
def test_bad_completions_exit_2_with_one_line(tmp_path: Path, gsm: Path, lines: list[str], message: str) -> None:
    completions = tmp_path / "c.jsonl"
    completions.write_text("".join(line + "\n" for line in lines))
    result = run("--task", "gsm8k", "--data", str(gsm), "--completions", str(completions))
    assert result.exit_code == 2
    assert result.stdout == ""
    lines_out = result.stderr.splitlines()
    assert len(lines_out) == 1, result.stderr
    assert lines_out[0].startswith("error: ")
    assert re.search(message, lines_out[0]), lines_out[0]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--task", "nope"], "unknown task 'nope'"),
        (["--task", "gsm8k", "--set", "task.grading=lenient"], "task.grading='lenient'"),
        (["--task", "gsm8k", "--set", "task.colour=blue"], "task.colour: unknown key"),
        (["--task", "gsm8k", "--set", "seed=3"], "grade accepts only task.<key>=<value>"),
        (["--task", "gsm8k", "--split", "dev"], "split 'dev'"),
    ],
)
def test_bad_task_settings_exit_2(tmp_path: Path, gsm: Path, extra: list[str], message: str) -> None:
    completions = write_jsonl(tmp_path / "c.jsonl", [{"index": 0, "completion": "#### 7"}])
    result = run(*extra, "--data", str(gsm), "--completions", str(completions))
    assert result.exit_code == 2
    assert len(result.stderr.splitlines()) == 1 and message in result.stderr


def test_bad_data_file_exit_2(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "gsm.jsonl", [GSM_ROWS[0], {"question": "q"}])
    completions = write_jsonl(tmp_path / "c.jsonl", [{"index": 0, "completion": "#### 7"}])
    result = run("--task", "gsm8k", "--data", str(data), "--completions", str(completions))
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {data}:2: field 'answer' is missing or empty"


def test_missing_completions_file_exit_2(tmp_path: Path, gsm: Path) -> None:
    result = run("--task", "gsm8k", "--data", str(gsm), "--completions", str(tmp_path / "absent.jsonl"))
    assert result.exit_code == 2
    assert "absent.jsonl: cannot read" in result.stderr and len(result.stderr.splitlines()) == 1
