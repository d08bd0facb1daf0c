"""The rollout backend seam: the ``rlbench`` decoder and ``model.generate`` agree, stop where the model stops, and
report the sampling log-probs the trainer recomputes."""

from __future__ import annotations

import json

import pytest
import torch
from rlbench.tasks.arith import Arith
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlbench.core.config import TinyConfig
from rlbench.core.configure import build_run_config
from rlbench.engine.generation import encode_prompt, make_generator, stop_ids
from rlbench.engine.policy import Policy, load_model
from rlbench.run.tiny.model import build_tiny_model
from rlbench.run.tiny.tokenizer import build_char_tokenizer
from rlbench.run.training import build_trainer

CPU = torch.device("cpu")


def _tiny_lab_dir(tmp_path):
    """The tiny lab's architecture (a ~1M-parameter Llama, char tokenizer), randomly initialised and saved."""
    torch.manual_seed(1)
    tok = build_char_tokenizer()
    path = tmp_path / "tiny-lab"
    build_tiny_model(TinyConfig(), tok).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _prompts(tok, n: int = 12) -> list[list[int]]:
    task = Arith()
    return [encode_prompt(tok, task.prompt(e)) for e in task.load("test")[:n]]


@pytest.mark.parametrize("which", ["tiny-lab", "tiny-qwen2"])
def test_greedy_completions_equal_model_generate(which, tiny_qwen_dir, tmp_path):
    path = _tiny_lab_dir(tmp_path) if which == "tiny-lab" else tiny_qwen_dir
    model, tok = load_model(str(path), "fp32", CPU)
    policy = Policy(model, tok, CPU)
    prompts = _prompts(tok)
    kw = dict(temperature=1.0, top_p=1.0, max_new_tokens=24, greedy=True)
    ours = make_generator("rlbench", policy, batch_size=5).generate(prompts, **kw)
    reference = make_generator("hf", policy, batch_size=5).generate(prompts, **kw)
    assert ours.texts == reference.texts
    assert torch.equal(ours.input_ids, reference.input_ids)
    assert torch.equal(ours.response_mask, reference.response_mask)
    assert ours.finish_reasons == reference.finish_reasons
    assert ours.logprobs is None and reference.logprobs is None  # greedy: nothing to correct


@pytest.mark.parametrize("backend", ["rlbench", "hf"])
def test_sampling_is_seeded_and_reports_logprobs(backend, tiny_qwen_dir):
    model, tok = load_model(str(tiny_qwen_dir), "fp32", CPU)
    gen = make_generator(backend, Policy(model, tok, CPU))
    kw = dict(temperature=0.7, top_p=0.9, max_new_tokens=10, seed=3)
    a, b = gen.generate(_prompts(tok, 4), **kw), gen.generate(_prompts(tok, 4), **kw)
    assert a.texts == b.texts and torch.equal(a.logprobs, b.logprobs)
    assert a.logprobs.shape == a.response_mask.shape
    assert bool((a.logprobs[a.response_mask.bool()] < 0).all())
    assert bool((a.logprobs[~a.response_mask.bool()] == 0).all())


def test_an_extra_generation_config_eos_stops_every_backend(tmp_path):
    """A checkpoint whose generation_config lists a second EOS (as Qwen2.5-Instruct's <|im_end|>) ends there."""
    path = _tiny_lab_dir(tmp_path)
    model, tok = load_model(str(path), "fp32", CPU)
    prompts = _prompts(tok, 8)
    free = make_generator("rlbench", Policy(model, tok, CPU)).generate(
        prompts, temperature=1.0, top_p=1.0, max_new_tokens=12, greedy=True
    )
    # the token most completions emit third: stopping at it must cut them there
    extra = int(free.input_ids[:, free.prompt_len + 2].mode().values)
    assert extra != tok.eos_token_id
    model.generation_config.eos_token_id = [tok.eos_token_id, extra]
    assert stop_ids(tok, model) == (tok.eos_token_id, extra)
    kw = dict(temperature=1.0, top_p=1.0, max_new_tokens=12, greedy=True)
    ours = make_generator("rlbench", Policy(model, tok, CPU)).generate(prompts, **kw)
    theirs = make_generator("hf", Policy(model, tok, CPU)).generate(prompts, **kw)
    assert torch.equal(ours.input_ids, theirs.input_ids) and torch.equal(ours.response_mask, theirs.response_mask)
    # each row ends at its first stop token in the completion it would otherwise have produced
    free_rows = free.input_ids[:, free.prompt_len :].tolist()
    expected = [next((i + 1 for i, t in enumerate(row) if t in (tok.eos_token_id, extra)), 12) for row in free_rows]
    assert ours.response_mask.sum(1).long().tolist() == expected
    assert any(n < 12 for n in expected) and ours.finish_reasons.count("stop") == sum(n < 12 for n in expected)


def _one_step(tiny_qwen_dir, tmp_path, backend: str, **rollout) -> dict:
    config = build_run_config(
        {
            "model": str(tiny_qwen_dir),
            "algo": {"name": "grpo"},
            "out": str(tmp_path / backend),
            "rollout": {"batch_size": 8, "samples_per_prompt": 4, "backend": backend, **rollout},
            "sampling": {"max_new_tokens": 12, "temperature": 0.8},
            "task": {"name": "arith", "train_size": 40, "test_size": 8},
            "budget": {"steps": 2},
            "eval": {"limit": 2, "samples": 0, "every": 0},
        }
    )
    build_trainer(config, progress=False).run()
    return [json.loads(line) for line in (tmp_path / backend / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("backend", ["rlbench", "hf"])
def test_the_sampler_gap_is_logged_and_zero_in_fp32(backend, tiny_qwen_dir, tmp_path):
    rows = _one_step(tiny_qwen_dir, tmp_path, backend)
    for row in rows:
        assert 0 <= row["sampler_gap_abs"] < 1e-4, row["sampler_gap_abs"]
        assert abs(row["sampler_gap_kl"]) < 1e-7


def test_truncated_importance_sampling_is_identity_when_the_gap_is_zero(tiny_qwen_dir, tmp_path):
    rows = _one_step(tiny_qwen_dir, tmp_path, "rlbench", tis_cap=2.0)
    for row in rows:
        assert row["tis_weight_mean"] == pytest.approx(1.0, abs=1e-4)
        assert row["tis_capped_frac"] == 0.0


def test_an_unknown_backend_is_named():
    with pytest.raises(Exception, match="rollout.backend"):
        build_run_config({"rollout": {"backend": "sglang"}})
    with pytest.raises(ValueError, match="rollout.backend='sglang'"):
        make_generator("sglang", None)  # type: ignore[arg-type]


def _extra_eos_model(tmp_path):
    """The tiny lab's architecture saved with a generation_config that lists a second EOS (the char ``r``, which
    this random model emits a lot), and what ``model.generate`` does with it: the reference everything must match."""
    path = _tiny_lab_dir(tmp_path)
    model, tok = load_model(str(path), "fp32", CPU)
    extra = tok.convert_tokens_to_ids("r")
    model.generation_config.eos_token_id = [tok.eos_token_id, extra]
    model.generation_config.save_pretrained(path)
    return path, extra


def _generate_reference(path, prompts: list[list[int]], max_new: int) -> list[int]:
    """Completion lengths ``model.generate`` gives, greedy, stopping where its own generation_config says."""
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    lengths = []
    for ids in prompts:
        out = model.generate(
            torch.tensor([ids]), max_new_tokens=max_new, do_sample=False, pad_token_id=tok.pad_token_id
        )
        lengths.append(out.shape[1] - len(ids))
    return lengths


def test_rollouts_end_at_the_extra_eos(tmp_path):
    path, extra = _extra_eos_model(tmp_path)
    config = build_run_config(
        {
            "model": str(path),
            "algo": {"name": "reinforce"},
            "out": str(tmp_path / "run"),
            "rollout": {"batch_size": 8, "samples_per_prompt": 2},
            "sampling": {"max_new_tokens": 16},
            "task": {"name": "arith", "train_size": 40, "test_size": 8},
            "budget": {"steps": 1},
            "eval": {"limit": 2},
        }
    )
    trainer = build_trainer(config, progress=False)
    batch, _, _ = trainer.rollout(0, {})
    for row, n, cut in zip(batch.response_ids, batch.response_mask.sum(1).long(), batch.truncated):
        ids = row[:n].tolist()
        assert not any(t in (extra, trainer.policy.tokenizer.eos_token_id) for t in ids[:-1])
        assert bool(cut) == (n == 16 and ids[-1] not in (extra, trainer.policy.tokenizer.eos_token_id))
    assert int(batch.response_mask.sum(1).min()) < 16


def test_evaluation_and_rlbench_eval_end_where_model_generate_does(tmp_path):
    from click.testing import CliRunner

    from rlbench.cli.eval import eval_

    path, _ = _extra_eos_model(tmp_path)
    task = Arith()
    examples = task.load("test")[:6]
    tok = AutoTokenizer.from_pretrained(path)
    expected = _generate_reference(path, [encode_prompt(tok, task.prompt(e)) for e in examples], 16)
    assert min(expected) < 16  # the extra EOS does stop some completions early
    records = tmp_path / "records.jsonl"
    result = CliRunner().invoke(
        eval_,
        [
            "--model",
            str(path),
            "--task",
            "arith",
            "--limit",
            "6",
            "--k",
            "0",
            "--max-new-tokens",
            "16",
            "--set",
            "threads=1",
            "--quiet",
            "--out",
            str(tmp_path / "eval.json"),
            "--records",
            str(records),
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    lengths = [json.loads(line)["greedy"]["tokens"] for line in records.read_text().splitlines()]
    assert lengths == expected


def test_hf_sampling_memory_does_not_grow_with_vocabulary_times_steps(tmp_path):
    """The hf backend's log-probs are taken as it decodes: 256 new tokens peak about where 32 do, not 224 steps x
    a (rows, vocabulary) fp32 tensor higher (what keeping every step's logits cost)."""
    from memory_helpers import LiveBytes
    from transformers import Qwen2Config, Qwen2ForCausalLM

    rows, vocab = 4, 32000
    tok = build_char_tokenizer()
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = Qwen2ForCausalLM(config).eval()
    gen = make_generator("hf", Policy(model, tok, CPU))
    prompts = _prompts(tok, rows)
    peaks = {}
    for new in (32, 256):
        with LiveBytes() as meter:
            out = gen.generate(prompts, temperature=1.0, top_p=1.0, max_new_tokens=new, seed=0)
            peaks[new] = meter.peak
        assert out.logprobs.shape == (rows, new)  # ran every step (no stop token drawn from 32,000 ids)
    one_step = rows * vocab * 4
    assert peaks[256] - peaks[32] < one_step, (peaks, one_step)  # kept every step: 224 x one_step more
