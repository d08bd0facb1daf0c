"""The gsm8k task: data loading and its errors, prompts, strict / flexible grading, gold check on the real test set."""

from __future__ import annotations

import json
import sys
import time
import types
from pathlib import Path

import pytest
from rlbench.tasks.base import Example
from rlbench.tasks.data import DataError
from rlbench.tasks.gsm8k import GSM8K, extract_answer, reference_answer

from rlbench.core.config import ConfigError
from rlbench.core.configure import build_task
from rlbench.core.registry import get_task

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
GSM8K_TEST = DATA / "gsm8k" / "test.jsonl"

ROWS = [
    {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3+4=<<3+4=7>>7\n#### 7"},
    {
        "question": "A shop sells 1,000 pens a day. How many in 2 days?",
        "answer": "1000*2=<<1000*2=2000>>2000\n#### 2,000",
    },
    {"question": "Temperature falls from 2 to -3. Change?", "answer": "-3-2=-5\n#### -5"},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def task(tmp_path: Path, **options) -> GSM8K:
    return build_task({"name": "gsm8k", "data": str(write_jsonl(tmp_path / "gsm.jsonl", ROWS)), **options})


def ex(answer: str) -> Example:
    return Example("test-0", "q", answer)


def test_registered_with_documented_options() -> None:
    assert get_task("gsm8k") is GSM8K
    assert GSM8K.options() == {
        "data": None,
        "reward": None,
        "hub_config": "main",
        "prompt_style": "paper",
        "grading": "strict",
        "validation_size": 500,
    }


def test_load_local_file(tmp_path: Path) -> None:
    examples = task(tmp_path).load("test")
    assert [e.id for e in examples] == ["test-0", "test-1", "test-2"]
    assert [e.answer for e in examples] == ["7", "2000", "-5"]
    assert examples[1].solution == ROWS[1]["answer"]
    assert examples[0].question == ROWS[0]["question"]


def test_load_directory_and_split_pattern(tmp_path: Path) -> None:
    # a directory's own validation file is the validation split; train drops its problems (here ROWS[1])
    write_jsonl(tmp_path / "train.jsonl", ROWS[:2])
    write_jsonl(tmp_path / "validation.jsonl", ROWS[1:2])
    write_jsonl(tmp_path / "test.jsonl", ROWS[1:])
    by_dir = build_task({"name": "gsm8k", "data": str(tmp_path)})
    assert [e.answer for e in by_dir.load("train")] == ["7"]
    assert [e.id for e in by_dir.load("validation")] == ["validation-0"]
    assert [e.answer for e in by_dir.load("test")] == ["2000", "-5"]
    by_pattern = build_task({"name": "gsm8k", "data": str(tmp_path / "{split}.jsonl")})
    assert [e.answer for e in by_pattern.load("train")] == ["7"]


def test_unknown_split(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="split 'dev': the gsm8k task has train, validation, test"):
        task(tmp_path).load("dev")


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"question": "q", "answer": "#### 1"}\n{"question": "q2"}\n', r"gsm\.jsonl:2: field 'answer' is missing"),
        ('{"question": "q", "answer": "#### 1"}\nnot json\n', r"gsm\.jsonl:2: line is not JSON"),
        ('{"answer": "#### 1"}\n', r"gsm\.jsonl:1: field 'question' is missing"),
        ('{"question": "q", "answer": "no final answer"}\n', r"gsm\.jsonl:1: field 'answer' has no '#### <number>'"),
        ('{"question": "q", "answer": ["#### 5"]}\n', r"gsm\.jsonl:1: field 'answer' must be a string, got list"),
        ('{"question": "q", "answer": 5}\n', r"gsm\.jsonl:1: field 'answer' has no '#### <number>'"),
        ("[1, 2]\n", r"gsm\.jsonl:1: expected a JSON object"),
        ("", r"gsm\.jsonl: empty file"),
        ("\n\n", r"gsm\.jsonl: empty file"),
    ],
)
def test_local_file_errors_name_file_line_and_field(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "gsm.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        build_task({"name": "gsm8k", "data": str(path)}).load("test")


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        build_task({"name": "gsm8k", "data": str(tmp_path / "absent.jsonl")}).load("test")


def test_json_and_parquet_files(tmp_path: Path) -> None:
    (tmp_path / "gsm.json").write_text(json.dumps(ROWS))
    assert [e.answer for e in build_task({"name": "gsm8k", "data": str(tmp_path / "gsm.json")}).load("test")] == [
        "7",
        "2000",
        "-5",
    ]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([ROWS[0], {"question": "q"}]))
    with pytest.raises(DataError, match=r"bad\.json record 1: field 'answer'"):
        build_task({"name": "gsm8k", "data": str(bad)}).load("test")
    pa = pytest.importorskip("pyarrow")  # ships with datasets, a dependency
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "gsm.parquet")
    assert [e.answer for e in build_task({"name": "gsm8k", "data": str(tmp_path / "gsm.parquet")}).load("test")] == [
        "7",
        "2000",
        "-5",
    ]


def test_hub_loading_goes_through_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    calls = []

    def load_dataset(name, config, split):
        calls.append((name, config, split))
        return ROWS[:2]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    task_ = build_task({"name": "gsm8k", "validation_size": 1})
    examples = task_.load("train") + task_.load("validation")  # validation is carved out of the hub's train split
    assert calls == [("openai/gsm8k", "main", "train")]
    assert sorted(e.answer for e in examples) == ["2000", "7"]


def test_hub_failure_names_the_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def load_dataset(name, config, split):
        raise ConnectionError("offline")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(DataError, match="task.data='someone/gsm8k-copy'.*offline"):
        build_task({"name": "gsm8k", "data": "someone/gsm8k-copy"}).load("test")


def test_prompts(tmp_path: Path) -> None:
    example = task(tmp_path).load("test")[0]
    expected = (
        'Tom has 3 apples and buys 4. How many? Let\'s think step by step and output the final answer after "####".'
    )
    assert task(tmp_path).prompt(example) == expected
    assert task(tmp_path, prompt_style="chat").prompt(example) == [{"role": "user", "content": expected}]


def test_bad_option_values_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="task.grading"):
        build_task({"name": "gsm8k", "grading": "lenient"})
    with pytest.raises(ConfigError, match="task.prompt_style"):
        build_task({"name": "gsm8k", "prompt_style": "fancy"})


def test_reference_answer() -> None:
    assert reference_answer("work\n#### 1,234") == "1234"
    assert reference_answer("#### 5\n#### 6") == "6"
    assert reference_answer("no marker") is None


@pytest.mark.parametrize(
    "completion, reason, extracted",
    [
        ("3+4=7\n#### 7", "correct", "7"),
        ("#### 7.00", "correct", "7"),
        ("#### $7", "correct", "7"),
        ("#### 7%", "correct", "7"),
        ("so #### 7.", "correct", "7"),
        ("####7", "correct", "7"),
        ("#### 8\nwait, fixing it: #### 7", "correct", "7"),  # the last marked answer counts
        ("#### 7\nwait: #### 8", "wrong", "8"),
        ("The answer is 7", "no_answer", None),  # strict: no marker, no reward
        ("#### seven", "no_answer", None),
        ("#### ７", "no_answer", None),  # fullwidth digit is not a number
        ("#### ٧", "no_answer", None),
        ("#### " + "9" * 100, "unparsable", "9" * 64),
        ("#### 9**9**9**9", "wrong", "9"),  # read as the number 9, never evaluated
    ],
)
def test_strict_grading(completion: str, reason: str, extracted: str | None) -> None:
    grade = GSM8K().grade(completion, ex("7"))
    assert (grade.reason, grade.extracted) == (reason, extracted)
    assert grade.reward == (1.0 if reason == "correct" else 0.0)


@pytest.mark.parametrize(
    "completion, reason",
    [
        ("so she has 2,000 pens", "correct"),
        ("2000 pens, i.e. 2,000.0", "correct"),
        ("#### 2000 and then 5 more", "wrong"),  # flexible takes the last number, marker or not
        ("no numbers at all", "no_answer"),
        ("٢٠٠٠", "no_answer"),
    ],
)
def test_flexible_grading(completion: str, reason: str) -> None:
    flexible = GSM8K(GSM8K.Config(grading="flexible"))
    assert flexible.grade(completion, ex("2000")).reason == reason


def test_extract_answer_modes() -> None:
    assert extract_answer("x 3 #### 4 y 5", "strict") == "4"
    assert extract_answer("x 3 #### 4 y 5", "flexible") == "5"


# Graded against the reference 8: the Unicode case spells the right answer in other digits, the rest are junk.
ADVERSARIAL = {
    "power-tower": "#### 9**9**9**9",
    "latex-tower": r"#### 10^{10^{10^{10}}}",
    "nested-braces": "#### " + "{" * 10_000 + "7" + "}" * 10_000,
    "megabyte": "7" * (1 << 20),
    "megabyte-markers": "#### " * (1 << 18),
    "megabyte-spaces": "####" + " " * (1 << 20) + "x",
    "python": "#### __import__('os').system('touch PWNED')",
    "unicode-digits": "#### ８ or ٨ or ８",
}


@pytest.mark.parametrize("name", ADVERSARIAL)
@pytest.mark.parametrize("grading", ["strict", "flexible"])
def test_adversarial_completions(name: str, grading: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    grade = GSM8K(GSM8K.Config(grading=grading)).grade(ADVERSARIAL[name], ex("8"))
    assert time.perf_counter() - start < 3.0
    assert grade.reward == 0.0 and not grade.correct
    assert not (tmp_path / "PWNED").exists()


# ------------------------------------------------------------------------------------------------ real data


def real_test_set() -> list[Example]:
    if not GSM8K_TEST.is_file():
        pytest.skip(f"GSM8K data not found at {GSM8K_TEST} (the shared data folder is absent)")
    return build_task({"name": "gsm8k", "data": str(GSM8K_TEST.parent)}).load("test")


def test_real_data_sizes() -> None:
    examples = real_test_set()
    assert len(examples) == 1319
    task_ = build_task({"name": "gsm8k", "data": str(GSM8K_TEST.parent)})
    # the 7,473 training problems minus the 500 carved out as the validation split (intended since issue 14)
    assert len(task_.load("train")) == 6973 and len(task_.load("validation")) == 500


def test_gold_check_real_test_set() -> None:
    examples = real_test_set()
    task_ = GSM8K(GSM8K.Config(data=str(GSM8K_TEST.parent)))
    gold = task_.grade_many([e.solution for e in examples], examples)
    assert sum(g.correct for g in gold) / len(examples) >= 0.995
    wrong = [f"{e.solution.rsplit('####', 1)[0]}#### {int(e.answer) + 1}" for e in examples]
    assert sum(g.correct for g in task_.grade_many(wrong, examples)) / len(examples) <= 0.01
