"""``rlbench grade``: grading a completions file, its report and output, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from rlbench.cli.grade import PROGRESS_MIN_ROWS, grade
from rlbench.core.configure import build_task
from rlbench.core.registry import get_task

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


def math_data(tmp_path: Path, n: int) -> Path:
    """n math-hard problems, each with answer 1/2; ids test/a/0.json, test/a/1.json, ..."""
    rows = [
        {"problem": "1/2?", "solution": "\\boxed{\\frac12}", "level": "Level 5", "unique_id": f"test/a/{i}.json"}
        for i in range(n)
    ]
    return write_jsonl(tmp_path / "math.jsonl", rows)


def run(*args: str):
    return CliRunner().invoke(grade, list(args), catch_exceptions=False)


def test_grades_by_index_and_id(tmp_path: Path) -> None:
    gsm = write_jsonl(tmp_path / "gsm.jsonl", [*GSM_ROWS, {"question": "1+7?", "answer": "1+7=8\n#### 8"}])
    completions = write_jsonl(
        tmp_path / "c.jsonl",
        [
            {"index": 0, "completion": "#### 7"},
            {"id": "test-1", "completion": "#### 11"},
            {"index": 2, "id": "test-2", "completion": "the answer is 8"},
            "",  # blank lines are skipped
            {"index": 3, "completion": "#### 8.0"},
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
        (5, 3, "test-3", "correct", 1.0),
    ]
    assert graded[1]["extracted"] == "11"


def test_task_options_via_set(tmp_path: Path, gsm: Path) -> None:
    completions = write_jsonl(tmp_path / "c.jsonl", [{"index": 2, "completion": "the answer is 8"}])
    result = run(
        "--task",
        "gsm8k",
        "--set",
        f"task.data={gsm}",
        "--set",
        "task.grading=flexible",
        "--completions",
        str(completions),
    )
    assert result.exit_code == 0, result.output
    assert "accuracy 1.0000 (1/1)" in result.stdout


def test_other_split_and_generated_task(tmp_path: Path) -> None:
    arith = build_task({"name": "arith", "train_size": 50, "test_size": 20})
    train = arith.load("train")
    completions = write_jsonl(tmp_path / "c.jsonl", [{"id": e.id, "completion": e.solution} for e in train[:5]])
    sizes = ["--set", "task.train_size=50", "--set", "task.test_size=20"]
    result = run("--task", "arith", "--split", "train", *sizes, "--completions", str(completions))
    assert result.exit_code == 0, result.output
    assert "task arith split train: accuracy 1.0000 (5/5)" in result.stdout


def test_math_hard_grading(tmp_path: Path) -> None:
    data = math_data(tmp_path, 4)
    completions = write_jsonl(
        tmp_path / "c.jsonl",
        [
            {"id": "test/a/0.json", "completion": "so \\boxed{0.5}"},
            {"index": 1, "completion": "\\boxed{0.25}"},
            {"index": 2, "completion": "0.5"},
            {"index": 3, "completion": "\\boxed{9**9**9**9}"},
        ],
    )
    result = run("--task", "math-hard", "--data", str(data), "--completions", str(completions))
    assert result.exit_code == 0, result.output
    assert "accuracy 0.2500 (1/4)" in result.stdout
    assert "reasons: correct 1, wrong 1, no_answer 1, unparsable 1, timeout 0" in result.stdout


def test_progress_bar_on_stderr_for_long_inputs(tmp_path: Path) -> None:
    gsm = write_jsonl(tmp_path / "gsm.jsonl", [GSM_ROWS[i % 3] for i in range(PROGRESS_MIN_ROWS)])
    rows = [{"index": i, "completion": "#### 7"} for i in range(PROGRESS_MIN_ROWS)]
    result = run("--task", "gsm8k", "--data", str(gsm), "--completions", str(write_jsonl(tmp_path / "c.jsonl", rows)))
    assert result.exit_code == 0
    assert "grading" in result.stderr and f"{PROGRESS_MIN_ROWS}/{PROGRESS_MIN_ROWS}" in result.stderr
    assert "grading" not in result.stdout
    short = run(
        "--task", "gsm8k", "--data", str(gsm), "--completions", str(write_jsonl(tmp_path / "s.jsonl", rows[:3]))
    )
    assert short.stderr == ""


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"index": 0, "completion": "#### 7"}', "{not json"], r"c\.jsonl:2: line is not JSON"),
        (['{"index": 0}'], r"c\.jsonl:1: field 'completion' missing"),
        (['{"index": 0, "completion": 7}'], r"c\.jsonl:1: field 'completion' must be a string"),
        (['{"completion": "x"}'], r"c\.jsonl:1: field 'index' or 'id' missing"),
        (
            ['{"index": 3, "completion": "x"}'],
            r"c\.jsonl:1: field 'index' = 3 is out of range \(the split has 3 rows\)",
        ),
        (['{"index": -1, "completion": "x"}'], r"c\.jsonl:1: field 'index' = -1 is out of range"),
        (['{"index": true, "completion": "x"}'], r"c\.jsonl:1: field 'index' must be an integer"),
        (['{"index": "0", "completion": "x"}'], r"c\.jsonl:1: field 'index' must be an integer"),
        (['{"id": "test-9", "completion": "x"}'], r"c\.jsonl:1: field 'id' = 'test-9' names no example"),
        (
            ['{"id": "test-1", "index": 0, "completion": "x"}'],
            r"c\.jsonl:1: field 'id' = 'test-1' is row 1, but field 'index' says 0",
        ),
        (["[1, 2]"], r"c\.jsonl:1: expected a JSON object"),
        ([], r"c\.jsonl: empty file"),
        # one sample named twice would count twice in mean@k and pass@k: by id, by index, or one of each
        (
            [
                '{"id": "test-0", "sample": 0, "completion": "#### 7"}',
                '{"index": 1, "sample": 0, "completion": "x"}',
                '{"id": "test-0", "sample": 1, "completion": "x"}',
                '{"id": "test-0", "sample": 0, "completion": "x"}',
            ],
            r"c\.jsonl:4: duplicate sample 0 of id 'test-0' \(row 0\), first on line 1$",
        ),
        (
            ['{"index": 2, "sample": 3, "completion": "x"}', "", '{"index": 2, "sample": 3, "completion": "y"}'],
            r"c\.jsonl:3: duplicate sample 3 of id 'test-2'.* line 1$",
        ),
        (
            ['{"index": 1, "sample": 0, "completion": "x"}', '{"id": "test-1", "sample": 0, "completion": "y"}'],
            r"c\.jsonl:2: duplicate sample 0 of id 'test-1'.* line 1$",
        ),
        (
            ['{"index": 0, "sample": -1, "completion": "x"}'],
            r"c\.jsonl:1: field 'sample' must be a non-negative integer, got -1",
        ),
        (
            ['{"index": 0, "sample": "0", "completion": "x"}'],
            r"c\.jsonl:1: field 'sample' must be a non-negative integer",
        ),
        (
            ['{"index": 0, "sample": true, "completion": "x"}'],
            r"c\.jsonl:1: field 'sample' must be a non-negative integer",
        ),
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
    assert lines_out[0].startswith("rlbench: error: ")
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
    assert result.stderr.strip() == f"rlbench: error: {data}:2: field 'answer' is missing or empty"


def test_missing_completions_file_exit_2(tmp_path: Path, gsm: Path) -> None:
    result = run("--task", "gsm8k", "--data", str(gsm), "--completions", str(tmp_path / "absent.jsonl"))
    assert result.exit_code == 2
    assert "absent.jsonl: cannot read" in result.stderr and len(result.stderr.splitlines()) == 1


def leftovers(folder: Path) -> list[str]:
    """Temp files a write left behind (they start with a dot and end in .tmp)."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("spelling", ["same", "dot-slash", "absolute", "dot-dot", "symlink", "hard link"])
def test_out_is_the_completions_file_exit_2_and_input_kept(
    tmp_path: Path, gsm: Path, monkeypatch: pytest.MonkeyPatch, spelling: str
) -> None:
    monkeypatch.chdir(tmp_path)
    completions = write_jsonl(tmp_path / "c.jsonl", [{"index": 0, "completion": "#### 7"}])
    before = completions.read_bytes()
    if spelling == "same":
        out = "c.jsonl"
    elif spelling == "dot-slash":
        out = "./c.jsonl"
    elif spelling == "absolute":
        out = str(completions)
    elif spelling == "dot-dot":
        (tmp_path / "sub").mkdir()
        out = "sub/../c.jsonl"
    elif spelling == "symlink":
        (tmp_path / "link.jsonl").symlink_to(completions)
        out = "link.jsonl"
    else:
        os.link(completions, tmp_path / "hard.jsonl")
        out = "hard.jsonl"
    result = run("--task", "gsm8k", "--data", str(gsm), "--completions", "c.jsonl", "--out", out)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"rlbench: error: --out {Path(out)}: same file as --completions c.jsonl; writing it would destroy the input"
    ]
    assert completions.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_lone_surrogate_is_graded_and_written_escaped(tmp_path: Path) -> None:
    # "\ud800" is valid JSON but no UTF-8 encoder accepts it; math-hard extracts it into the output's "extracted".
    completions = tmp_path / "c.jsonl"
    completions.write_text(
        '{"index": 0, "completion": "\\\\boxed{\\ud800}"}\n'
        '{"index": 1, "completion": "\\\\boxed{\\\\frac12} \\udc00"}\n'
        '{"index": 2, "completion": "\\\\boxed{0.5}"}\n'
    )
    out = tmp_path / "grades.jsonl"
    result = run(
        "--task",
        "math-hard",
        "--data",
        str(math_data(tmp_path, 3)),
        "--completions",
        str(completions),
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert "accuracy 0.6667 (2/3)" in result.stdout
    graded = [json.loads(line) for line in out.read_bytes().decode("utf-8").splitlines()]  # strict UTF-8, JSON lines
    assert [(g["line"], g["reason"], g["extracted"]) for g in graded] == [
        (1, "unparsable", "\ud800"),
        (2, "correct", "\\frac12"),
        (3, "correct", "0.5"),
    ]


def test_grader_that_cannot_read_the_text_grades_the_row_unparsable(
    tmp_path: Path, gsm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gsm_cls = get_task("gsm8k")
    real = gsm_cls.grade

    def picky(self, completion: str, example):  # a grader that encodes its input, as a C library would
        completion.encode("utf-8")
        return real(self, completion, example)

    monkeypatch.setattr(gsm_cls, "grade", picky)
    completions = tmp_path / "c.jsonl"
    completions.write_text('{"index": 0, "completion": "#### 7"}\n{"index": 1, "completion": "#### 10 \\ud800"}\n')
    out = tmp_path / "grades.jsonl"
    result = run("--task", "gsm8k", "--data", str(gsm), "--completions", str(completions), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "accuracy 0.5000 (1/2)" in result.stdout
    assert [json.loads(line)["reason"] for line in out.read_text().splitlines()] == ["correct", "unparsable"]


@pytest.mark.parametrize("umask", [0o022, 0o077])
@pytest.mark.parametrize("existing", [False, True])
def test_out_mode_follows_the_umask(tmp_path: Path, gsm: Path, umask: int, existing: bool) -> None:
    completions = write_jsonl(tmp_path / "c.jsonl", [{"index": 0, "completion": "#### 7"}])
    out = tmp_path / "grades.jsonl"
    if existing:
        out.write_text("old\n")
        out.chmod(0o600)
    old = os.umask(umask)
    try:
        result = run("--task", "gsm8k", "--data", str(gsm), "--completions", str(completions), "--out", str(out))
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask
    assert json.loads(out.read_text())["reason"] == "correct"
    assert leftovers(tmp_path) == []


def test_out_symlink_is_written_through(tmp_path: Path, gsm: Path) -> None:
    completions = write_jsonl(tmp_path / "c.jsonl", [{"index": 0, "completion": "#### 7"}])
    target = tmp_path / "store" / "grades.jsonl"
    target.parent.mkdir()
    target.write_text("old\n")
    link = tmp_path / "grades.jsonl"
    link.symlink_to(target)
    result = run("--task", "gsm8k", "--data", str(gsm), "--completions", str(completions), "--out", str(link))
    assert result.exit_code == 0, result.output
    assert link.is_symlink()
    assert json.loads(target.read_text())["id"] == "test-0"
    assert leftovers(target.parent) == []


@pytest.mark.parametrize("step", ["fsync", "replace"])
def test_failed_write_exit_2_leaves_out_and_no_temp_file(
    tmp_path: Path, gsm: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    completions = write_jsonl(tmp_path / "c.jsonl", [{"index": 0, "completion": "#### 7"}])
    out = tmp_path / "grades.jsonl"
    out.write_text("old\n")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, step, disk_full)
    result = run("--task", "gsm8k", "--data", str(gsm), "--completions", str(completions), "--out", str(out))
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [f"rlbench: error: {out}: cannot write (No space left on device)"]
    assert out.read_text() == "old\n"
    assert leftovers(tmp_path) == []
