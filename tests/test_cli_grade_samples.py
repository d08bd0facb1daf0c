"""``rlbench grade`` with k samples per problem: each graded in input order; mean@k, unbiased pass@k and maj@k per
problem and overall; mixed k allowed and named; only a repeated (id, sample) or an unknown id refused."""

from __future__ import annotations

import json
import random
from math import comb
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import SHARED_DATA

from rlbench.cli.grade import grade

GSM8K_TEST = SHARED_DATA / "gsm8k" / "test.jsonl"


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def run(*args: str):
    return CliRunner().invoke(grade, list(args), catch_exceptions=False)


def gsm_problems(tmp_path: Path, n: int) -> Path:
    """n problems whose answer is their own index: test-i has answer i."""
    return write_jsonl(tmp_path / "gsm.jsonl", [{"question": f"{i}?", "answer": f"so\n#### {i}"} for i in range(n)])


def pass_at(n: int, c: int, k: int) -> float:
    """The unbiased estimator written out, for the expected values."""
    return 1.0 - comb(n - c, k) / comb(n, k)


def test_repeated_ids_are_samples_graded_in_input_order_with_mean_pass_and_maj_at_k(tmp_path):
    data = gsm_problems(tmp_path, 3)
    # interleaved as a sampler writes them; test-0: 3 of 4 right, test-1: 0 of 4, test-2: 1 of 4 but a wrong majority
    answers = {"test-0": ["0", "0", "9", "0"], "test-1": ["5", "6", "7", "8"], "test-2": ["2", "4", "4", "3"]}
    rows = [{"id": pid, "completion": f"#### {answers[pid][j]}"} for j in range(4) for pid in answers]
    out, summary = tmp_path / "grades.jsonl", tmp_path / "summary.json"
    result = run(
        "--task",
        "gsm8k",
        "--data",
        str(data),
        "--completions",
        str(write_jsonl(tmp_path / "c.jsonl", rows)),
        "--out",
        str(out),
        "--summary",
        str(summary),
    )
    assert result.exit_code == 0, result.output
    graded = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(g["line"], g["id"]) for g in graded] == [(i + 1, r["id"]) for i, r in enumerate(rows)]
    assert [g["correct"] for g in graded] == [r["completion"] == f"#### {r['id'][5:]}" for r in rows]
    correct = {"test-0": 3, "test-1": 0, "test-2": 1}
    expected = {j: sum(pass_at(4, c, j) for c in correct.values()) / 3 for j in (1, 2, 4)}
    assert result.stdout.splitlines()[-1] == (
        f"3 problems, 4 samples each: mean@4 {4 / 12:.4f}, pass@1 {expected[1]:.4f}, pass@2 {expected[2]:.4f}, "
        f"pass@4 {expected[4]:.4f}, maj@4 {1 / 3:.4f}"
    )
    report = json.loads(summary.read_text())
    assert report["k"] == {"uniform": True, "min": 4, "max": 4, "problems_with": {"4": 3}}
    first = report["per_problem"][0]
    assert (first["id"], first["k"], first["correct"], first["mean@k"], first["maj@k"]) == ("test-0", 4, 3, 0.75, 1.0)
    assert first["pass@2"] == pytest.approx(pass_at(4, 3, 2)) and first["pass@3"] == 1.0
    assert [p["maj@k"] for p in report["per_problem"]] == [1.0, 0.0, 0.0]  # test-2's majority answer is 4, wrong
    assert report["overall"]["pass@3"] == pytest.approx(sum(pass_at(4, c, 3) for c in correct.values()) / 3)


def test_problems_with_different_k_are_allowed_and_the_summary_says_so(tmp_path):
    data = gsm_problems(tmp_path, 2)
    rows = [{"index": 0, "sample": j, "completion": f"#### {j % 2}"} for j in range(3)]  # 0, 1, 0: 2 of 3
    rows += [{"index": 1, "sample": j, "completion": "#### 1"} for j in range(2)]  # 2 of 2
    result = run("--task", "gsm8k", "--data", str(data), "--completions", str(write_jsonl(tmp_path / "c.jsonl", rows)))
    assert result.exit_code == 0, result.output
    line = result.stdout.splitlines()[-1]
    assert line.startswith("2 problems, 2 to 3 samples each (k varies: 1 with 3, 1 with 2;"), line
    assert f"mean@k {(2 / 3 + 1) / 2:.4f}" in line and f"pass@2 {(pass_at(3, 2, 2) + 1) / 2:.4f}" in line
    assert "pass@3" not in line  # not every problem has 3 samples: no unbiased pass@3 over all of them
    assert "accuracy 0.8000 (4/5)" in result.stdout  # per completion, as before


def test_one_sample_per_problem_prints_no_samples_line(tmp_path):
    data = gsm_problems(tmp_path, 2)
    rows = [{"index": i, "completion": f"#### {i}"} for i in range(2)]
    result = run("--task", "gsm8k", "--data", str(data), "--completions", str(write_jsonl(tmp_path / "c.jsonl", rows)))
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 2 and "mean@" not in result.stdout


def test_50000_rows_of_200_problems_grade_in_input_order_with_a_progress_bar(tmp_path):
    data = gsm_problems(tmp_path, 200)
    rng = random.Random(0)
    rows = [
        {"index": i, "completion": f"#### {i if rng.random() < 0.3 else -1}"} for i in range(200) for _ in range(250)
    ]
    rng.shuffle(rows)
    out = tmp_path / "grades.jsonl"
    result = run(
        "--task",
        "gsm8k",
        "--data",
        str(data),
        "--completions",
        str(write_jsonl(tmp_path / "c.jsonl", rows)),
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    assert "50000/50000" in result.stderr and "grading" in result.stderr
    graded = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["index"] for g in graded] == [r["index"] for r in rows]
    assert [g["correct"] for g in graded] == [r["completion"] == f"#### {r['index']}" for r in rows]
    assert result.stdout.splitlines()[-1].startswith("200 problems, 250 samples each: mean@250 ")


@pytest.mark.skipif(not GSM8K_TEST.exists(), reason=f"GSM8K's test split is not at {GSM8K_TEST} (../shared/data)")
def test_four_samples_of_every_gsm8k_test_problem(tmp_path):
    references = [json.loads(line)["answer"] for line in GSM8K_TEST.read_text().splitlines()]
    assert len(references) == 1319
    rows = []
    for j in range(4):  # sample-major, as a sampler writing one pass after another does
        for i, solution in enumerate(references):
            answer = solution.rsplit("####", 1)[1].strip().replace(",", "")
            right = (i + j) % 3 != 0
            rows.append({"id": f"test-{i}", "sample": j, "completion": solution if right else f"#### {answer}1"})
    completions = write_jsonl(tmp_path / "c.jsonl", rows)
    out = tmp_path / "grades.jsonl"
    result = run("--task", "gsm8k", "--data", str(GSM8K_TEST), "--completions", str(completions), "--out", str(out))
    assert result.exit_code == 0, result.output
    graded = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(g["id"], g["sample"]) for g in graded] == [(r["id"], r["sample"]) for r in rows]
    counts = [sum((i + j) % 3 != 0 for j in range(4)) for i in range(1319)]
    mean, pass4 = sum(counts) / (4 * 1319), sum(c > 0 for c in counts) / 1319
    # the wrong answers agree with each other, so 2 right of 4 is a tie, broken by the first sample's answer
    majority = sum(c >= 3 or (c == 2 and i % 3 != 0) for i, c in enumerate(counts)) / 1319
    line = result.stdout.splitlines()[-1]
    assert line.startswith(f"1,319 problems, 4 samples each: mean@4 {mean:.4f}, pass@1 {mean:.4f}, "), line
    assert f"pass@4 {pass4:.4f}" in line and line.endswith(f"maj@4 {majority:.4f}")
    # the same file with one (id, sample) pair repeated: exit 2, naming the line, before anything is graded
    write_jsonl(completions, [*rows[:2000], rows[17], *rows[2000:]])
    again = run("--task", "gsm8k", "--data", str(GSM8K_TEST), "--completions", str(completions))
    assert again.exit_code == 2 and again.stdout == ""
    assert again.stderr.strip() == (
        f"rlbench: error: {completions}:2001: duplicate sample 0 of id 'test-17' (row 17), first on line 18"
    )


def test_summary_is_never_written_over_the_completions_or_the_grades(tmp_path):
    data = gsm_problems(tmp_path, 1)
    completions = write_jsonl(tmp_path / "c.jsonl", [{"index": 0, "completion": "#### 0"}] * 2)
    before = completions.read_bytes()
    result = run(
        "--task", "gsm8k", "--data", str(data), "--completions", str(completions), "--summary", str(completions)
    )
    assert result.exit_code == 2 and "--summary" in result.stderr and "same file as --completions" in result.stderr
    out = tmp_path / "g.jsonl"
    result = run(
        "--task",
        "gsm8k",
        "--data",
        str(data),
        "--completions",
        str(completions),
        "--out",
        str(out),
        "--summary",
        str(out),
    )
    assert result.exit_code == 2 and result.stderr.strip().endswith(f"--summary {out}: same file as --out {out}")
    assert completions.read_bytes() == before and not out.exists()
