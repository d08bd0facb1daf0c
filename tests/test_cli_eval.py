"""``rlbench eval``: result and records files, determinism for a seed, exact chunk merging, pass@k / maj@k on scripted
completions, the tiny-lab warm-start, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from rlbench.cli.eval import eval_
from rlbench.core.registry import get_task
from rlbench.engine.decoder import Decoder
from rlbench.engine.generation import Generation
from rlbench.engine.policy import Policy, load_model
from rlbench.run.eval.evaluate import chunk_seed, evaluate
from rlbench.run.eval.metrics import summarize
from rlbench.run.tiny.tokenizer import build_char_tokenizer

FAST = ["--task", "arith", "--max-new-tokens", "6", "--set", "threads=1", "--quiet"]


@pytest.fixture(autouse=True)
def keep_torch_threads():
    # --set threads=1 sets torch's process-wide thread count; other tests must not inherit it.
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def run(*args: str):
    return CliRunner().invoke(eval_, list(args), catch_exceptions=False)


def without_speed(metrics: dict) -> dict:
    """Generation speed is timing, the one thing that cannot be equal between two runs."""
    out = {k: v for k, v in metrics.items() if k not in ("records", "generation_seconds", "tokens")}
    for mode in ("greedy", "sampled"):
        if mode in out:
            out[mode] = {k: v for k, v in out[mode].items() if k != "tokens_per_second"}
    return out


def test_writes_result_records_and_table(tiny_qwen_dir: Path, tmp_path: Path) -> None:
    out, recs = tmp_path / "res" / "eval.json", tmp_path / "recs.jsonl"
    result = CliRunner().invoke(
        eval_,
        [
            "--model",
            str(tiny_qwen_dir),
            *FAST[:-1],
            "--limit",
            "5",
            "--k",
            "3",
            "--chunk-size",
            "2",
            "--out",
            str(out),
            "--records",
            str(recs),
        ],
    )
    assert result.exit_code == 0, result.output
    res = json.loads(out.read_text())
    assert (res["harness"], res["model"], res["task"], res["split"], res["problems"]) == (
        "rlbench",
        str(tiny_qwen_dir),
        "arith",
        "test",
        5,
    )
    assert res["settings"]["k"] == 3 and res["settings"]["ks"] == [1, 2, 3]
    assert res["settings"]["max_new_tokens"] == 6 and res["settings"]["chunk_size"] == 2
    assert set(res["sampled"]) >= {"accuracy", "pass@1", "pass@2", "pass@3", "maj@3", "length_mean", "truncated_frac"}
    assert res["elapsed_seconds"] > 0 and res["tokens_per_second"] > 0

    records = [json.loads(line) for line in recs.read_text().splitlines()]
    assert [r["id"] for r in records] == [e.id for e in get_task("arith")().load("test")[:5]]
    assert all(len(r["samples"]) == 3 for r in records)
    tokens = sum(r["greedy"]["tokens"] + sum(s["tokens"] for s in r["samples"]) for r in records)
    assert res["tokens_total"] == tokens and all(r["greedy"]["tokens"] <= 6 for r in records)
    # the file's metrics are exactly what the records say
    again = summarize(records, ks=[1, 2, 3], temperature=1.0, top_p=1.0)
    assert without_speed(again) == without_speed({k: res[k] for k in ("problems", "greedy", "sampled")})

    assert "greedy pass@1" in result.stdout and "pass@3" in result.stdout and "maj@3" in result.stdout
    assert "evaluating" in result.stderr and "5/5" in result.stderr  # the progress bar, over problems


def test_same_seed_same_completions_other_seed_other_samples(tiny_qwen_dir: Path, tmp_path: Path) -> None:
    def records(seed: str, name: str) -> list[dict]:
        path = tmp_path / f"{name}.jsonl"
        res = run(
            "--model",
            str(tiny_qwen_dir),
            *FAST,
            "--limit",
            "3",
            "--k",
            "2",
            "--chunk-size",
            "2",
            "--seed",
            seed,
            "--out",
            str(tmp_path / f"{name}.json"),
            "--records",
            str(path),
        )
        assert res.exit_code == 0, res.output
        return [json.loads(line) for line in path.read_text().splitlines()]

    a, b, c = records("5", "a"), records("5", "b"), records("6", "c")
    assert a == b
    assert [r["greedy"] for r in a] == [r["greedy"] for r in c]  # greedy does not depend on the seed
    assert [r["samples"] for r in a] != [r["samples"] for r in c]


class ScriptedGenerator:
    """Returns fixed completions per prompt: ``plan[prompt] = (greedy, [sample 1, ..., sample k])``.

    A prompt's j-th row within one sampled call gets sample j, so the output does not depend on how problems are
    chunked, and chunked evaluation must give exactly the metrics of one call.
    """

    def __init__(self, plan: dict[str, tuple[str, list[str]]]) -> None:
        self.plan = plan
        self.tokenizer = build_char_tokenizer()
        self.seeds: list[int | None] = []

    def generate(self, prompt_ids, *, temperature, top_p, max_new_tokens, greedy=False, seed=None) -> Generation:
        if not greedy:
            self.seeds.append(seed)
        seen: dict[str, int] = {}
        texts = []
        for ids in prompt_ids:
            prompt = self.tokenizer.decode(ids, skip_special_tokens=True)
            first, samples = self.plan[prompt]
            j = seen[prompt] = seen.get(prompt, -1) + 1
            texts.append(first if greedy else samples[j])
        lengths = torch.tensor([len(t) for t in texts])
        T = max(int(lengths.max()), 1)
        mask = (torch.arange(T)[None, :] < lengths[:, None]).float()
        B = len(texts)
        return Generation(
            input_ids=torch.zeros((B, T), dtype=torch.long),
            attention_mask=mask.long(),
            response_mask=mask,
            prompt_len=0,
            truncated=lengths >= 20,
            texts=texts,
        )

    def sync_weights(self, policy) -> None:
        pass

    def sleep(self) -> None:
        pass


def arith_plan(n: int, k: int) -> tuple[list, dict]:
    """A mix of right, wrong, missing and truncated answers whose pattern differs from problem to problem."""
    task = get_task("arith")()
    examples = task.load("test")[:n]
    plan = {}
    for i, e in enumerate(examples):
        right, wrong = f" #### {e.answer}", f" #### {int(e.answer) + 1 + i % 3}"
        choices = [right, wrong, " no answer here", " " + "x" * 25]
        # every fifth problem is never right; the others mix right, wrong and missing answers
        samples = [choices[1 + j % 2] if i % 5 == 0 else choices[(i + j) % 3] for j in range(k)]
        plan[task.prompt(e)] = (choices[i % 4], samples)
    return examples, plan


def test_chunked_metrics_equal_one_call() -> None:
    task = get_task("arith")()
    examples, plan = arith_plan(11, 4)
    ks = [1, 2, 3, 4]
    one = evaluate(ScriptedGenerator(plan), task, examples, max_new_tokens=30, samples=4, ks=ks, keep_records=True)
    assert 0 < one["sampled"]["pass@1"] < one["sampled"]["pass@4"] < 1  # the plan is not degenerate
    assert 0 < one["greedy"]["accuracy"] < 1 and 0 < one["greedy"]["truncated_frac"] < 1
    for chunk in (1, 3, 11, 50):
        generator = ScriptedGenerator(plan)
        merged = evaluate(
            generator, task, examples, chunk_size=chunk, max_new_tokens=30, samples=4, ks=ks, seed=7, keep_records=True
        )
        assert merged.pop("records") == one["records"]
        assert without_speed(merged) == without_speed(one)
        # each chunk draws from its own seed, a function of (seed, chunk index) only
        assert generator.seeds == [chunk_seed(7, i) for i in range(-(-len(examples) // chunk))]
        assert len(set(generator.seeds)) == len(generator.seeds)


def test_summarize_reproduces_evaluate_on_real_completions(tiny_qwen_dir: Path) -> None:
    torch.set_num_threads(1)
    model, tok = load_model(str(tiny_qwen_dir), "fp32", torch.device("cpu"))
    generator = Decoder(Policy(model, tok, torch.device("cpu")))
    task = get_task("arith")()
    res = evaluate(
        generator, task, task.load("test")[:4], max_new_tokens=5, samples=3, ks=[1, 2, 3], seed=1, keep_records=True
    )
    assert without_speed(summarize(res["records"], ks=[1, 2, 3], temperature=1.0, top_p=1.0)) == without_speed(res)


def test_pass_at_k_mean_and_majority_by_hand() -> None:
    task = get_task("arith")()
    a, b, c = task.load("test")[:3]
    right = {e.id: f" #### {e.answer}" for e in (a, b, c)}
    wrong = " #### 999"
    plan = {
        task.prompt(a): (right[a.id], [wrong, wrong, right[a.id], " none"]),  # 1 of 4 right, majority wrong
        task.prompt(b): (wrong, [right[b.id], wrong, right[b.id], " none"]),  # 2 of 4 right, majority right
        task.prompt(c): (wrong, [wrong, right[c.id], wrong, right[c.id]]),  # 2-2 tie: the first answer seen wins
    }
    metrics = evaluate(
        ScriptedGenerator(plan), task, [a, b, c], chunk_size=2, max_new_tokens=30, samples=4, ks=[1, 2, 3, 4]
    )
    s = metrics["sampled"]
    assert metrics["greedy"]["accuracy"] == pytest.approx(1 / 3)
    assert s["accuracy"] == pytest.approx(5 / 12)  # mean@4
    # Chen et al.: 1 - C(n-c, k) / C(n, k) per problem, then the mean
    assert s["pass@1"] == pytest.approx((1 / 4 + 2 / 4 + 2 / 4) / 3)
    assert s["pass@2"] == pytest.approx(((1 - 3 / 6) + (1 - 1 / 6) + (1 - 1 / 6)) / 3)
    assert s["pass@3"] == pytest.approx(((1 - 1 / 4) + 1 + 1) / 3)
    assert s["pass@4"] == pytest.approx(1.0)
    assert s["maj@4"] == pytest.approx(1 / 3)
    assert s["reasons"] == {"wrong": 5, "correct": 5, "no_answer": 2}


def test_tiny_uses_the_training_warm_start(
    tiny_qwen_dir: Path, tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rlbench.run.tiny.warmstart as warmstart
    from rlbench.core.config import RunConfig

    calls = []

    def fake(tiny, task, sampling, progress=True):
        calls.append((tiny, task.name, sampling))
        return tiny_qwen_dir

    monkeypatch.setattr(warmstart, "ensure_warmstart", fake)
    out = tmp_path / "tiny.json"
    res = run("--model", "tiny", *FAST, "--limit", "2", "--k", "1", "--out", str(out))
    assert res.exit_code == 0, res.output
    tiny, task_name, sampling = calls[0]
    # the cache key a training run with `model: tiny` and the same sampling settings computes
    expected = RunConfig()
    assert tiny == expected.tiny and task_name == "arith" and sampling.max_new_tokens == 6
    assert warmstart.cache_key(tiny, get_task("arith")(), sampling) == warmstart.cache_key(
        expected.tiny, get_task("arith")(), type(expected.sampling)(max_new_tokens=6)
    )
    saved = json.loads(out.read_text())
    assert saved["model"] == "tiny" and saved["model_path"] == str(tiny_qwen_dir)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "/nonexistent/model"], "--model /nonexistent/model: no such directory"),
        (["--model", "{empty}"], "directory has no config.json"),
        (["--task", "nosuch"], "--task: unknown task 'nosuch'"),
        (["--k", "-1"], "--k -1: must be >= 0"),
        (["--limit", "0"], "--limit 0: must be >= 1"),
        (["--max-new-tokens", "0"], "--max-new-tokens 0: must be >= 1"),
        (["--chunk-size", "0"], "--chunk-size 0: must be >= 1"),
        (["--device", "tpu"], "--device tpu: must be auto, cpu, cuda or cuda:N"),
        (["--set", "optim.lr=1"], "--set optim...: eval accepts only"),
        (["--set", "task.name=gsm8k"], "--set task.name: use --task"),
        (["--set", "task.max_ops=0"], "task.max_ops=0"),
        (["--set", "sampling.temperature=0"], "sampling.temperature=0.0: must be > 0"),
        (["--split", "dev"], "split 'dev': the arith task has train, validation, test"),
        (["--task", "gsm8k", "--data", "{missing}"], "missing.jsonl: no such file"),
        (["--harness", "lm-eval"], "--task arith: the lm-eval harness supports gsm8k"),
        (["--harness", "lm-eval", "--task", "gsm8k", "--k", "2"], "--k 2: the lm-eval harness decodes greedily only"),
        (
            ["--harness", "lm-eval", "--task", "gsm8k", "--data", "openai/gsm8k"],
            "--data: the lm-eval harness reads a local file",
        ),
        (["--out", "{dir}"], "is a directory"),
        (["--model", "tiny", "--task", "gsm8k", "--data", "{gsm}"], "--model tiny: the tiny lab warm-starts on"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    tiny_qwen_dir: Path, tmp_path: Path, cache_dir: Path, args: list[str], message: str
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "gsm.jsonl").write_text(json.dumps({"question": "1+1?", "answer": "#### 2"}) + "\n")
    subs = {
        "{empty}": str(tmp_path / "empty"),
        "{missing}": str(tmp_path / "missing.jsonl"),
        "{dir}": str(tmp_path),
        "{gsm}": str(tmp_path / "gsm.jsonl"),
    }
    args = [subs.get(a, a) for a in args]
    base = {"--model": str(tiny_qwen_dir), "--task": "arith", "--out": str(tmp_path / "o.json")}
    for flag, value in base.items():
        if flag not in args:
            args = [flag, value, *args]
    result = CliRunner().invoke(eval_, [*args, "--quiet"])
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert message in result.stderr, result.stderr
    assert not (tmp_path / "o.json").exists()
    assert not cache_dir.exists()  # nothing was started, not even a warm-start lock


def test_missing_lm_eval_is_one_line(tiny_qwen_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "gsm.jsonl"
    data.write_text(json.dumps({"question": "1+1?", "answer": "#### 2"}) + "\n")
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` now fails as if it were not installed
    result = CliRunner().invoke(
        eval_,
        [
            "--model",
            str(tiny_qwen_dir),
            "--task",
            "gsm8k",
            "--data",
            str(data),
            "--harness",
            "lm-eval",
            "--out",
            str(tmp_path / "o.json"),
        ],
    )
    assert result.exit_code == 2
    assert result.stderr.strip() == "rlbench: error: --harness lm-eval needs lm-eval: pip install 'rlbench[eval]'"


def test_registered_with_the_rlbench_command() -> None:
    from rlbench.cli import main

    result = CliRunner().invoke(main, ["eval", "--help"])
    assert result.exit_code == 0 and "--harness" in result.output and "--records" in result.output
