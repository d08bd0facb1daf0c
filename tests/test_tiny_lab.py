import json

import pytest
import torch
from rlbench.tasks.arith import Arith, ArithConfig
from transformers import AutoTokenizer

from rlbench.core.config import ConfigError, SamplingConfig, TinyConfig
from rlbench.engine.file_hashes import sha256_file
from rlbench.run.tiny.tokenizer import build_char_tokenizer
from rlbench.run.tiny.warmstart import cache_key, ensure_warmstart


def test_char_tokenizer_round_trips(tmp_path):
    tok = build_char_tokenizer()
    text = "Q: 94+2-39=? A: 94+2=96 96-39=57 #### 57"
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id and len(ids) == len(text) + 1
    assert tok.decode(ids, skip_special_tokens=True) == text
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(text).input_ids == ids
    assert (again.eos_token_id, again.pad_token_id) == (tok.eos_token_id, tok.pad_token_id)


def test_arith_is_deterministic_and_splits_never_overlap():
    task = Arith(ArithConfig(train_size=3000, test_size=300))
    again = Arith(ArithConfig(train_size=3000, test_size=300))
    train, test = task.load("train"), task.load("test")
    assert [e.id for e in train] == [e.id for e in again.load("train")]
    assert len(train) == 3000 and len(test) == 300
    assert not {e.id for e in train} & {e.id for e in test}
    stream = task.fresh_train_examples(seed=0)
    fresh = {next(stream).id for _ in range(2000)}
    assert not fresh & {e.id for e in test}


def test_arith_grader_reads_only_the_final_answer():
    task = Arith()
    ex = task.load("test")[0]
    assert task.grade(ex.solution, ex).correct
    assert task.grade(f" 1+1=2 #### {int(ex.answer) + 1}", ex).reason == "wrong"
    assert task.grade(" 1+1=2", ex).reason == "no_answer"
    assert not task.grade(f" #### {ex.answer} and more", ex).correct


def test_arith_rejects_impossible_sizes():
    import pytest

    from rlbench.core.config import ConfigError

    with pytest.raises(ConfigError, match="task.test_size"):
        Arith(ArithConfig(min_operand=1, max_operand=2, min_ops=1, max_ops=1, test_size=100)).load("test")


def _small_build() -> TinyConfig:
    return TinyConfig(
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


def test_warmstart_is_cached_and_deterministic(cache_dir):
    tiny = _small_build()
    task = Arith(ArithConfig(train_size=100, test_size=20))
    sampling = SamplingConfig(max_new_tokens=8)
    first = ensure_warmstart(tiny, task, sampling, progress=False)
    stamp = (first / "warmstart.json").stat().st_mtime_ns
    assert ensure_warmstart(tiny, task, sampling, progress=False) == first
    assert (first / "warmstart.json").stat().st_mtime_ns == stamp  # second call built nothing
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(first).state_dict()
    # A different cache root forces a rebuild with the same seed: identical weights.
    import os

    os.environ["RLBENCH_CACHE"] = str(cache_dir / "other")
    second = ensure_warmstart(tiny, task, sampling, progress=False)
    assert second != first
    b = AutoModelForCausalLM.from_pretrained(second).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert cache_key(tiny, task, sampling) != cache_key(TinyConfig(seed=1), task, sampling)
    report = json.loads((second / "warmstart.json").read_text())
    assert report["sha256"] == sha256_file(second / "model.safetensors") and report["steps"] == 6
    # --rebuild builds again, whatever the cache holds, and gets the same bits
    built = (second / "warmstart.json").stat().st_mtime_ns
    assert ensure_warmstart(tiny, task, sampling, progress=False, rebuild=True) == second
    assert (second / "warmstart.json").stat().st_mtime_ns != built
    assert json.loads((second / "warmstart.json").read_text())["sha256"] == report["sha256"]


def test_the_reference_is_the_default_and_its_bytes_are_checked(cache_dir, monkeypatch):
    """tiny.warmstart=reference: the shipped weights, whatever the cache, checked against the pinned sha256."""
    import rlbench.run.tiny.warmstart as ws

    path = ensure_warmstart(TinyConfig(), Arith(), SamplingConfig(), progress=False)
    assert path == ws.REFERENCE_DIR and not cache_dir.exists()
    assert sha256_file(path / "model.safetensors") == ws.REFERENCE_SHA256
    assert json.loads((path / "warmstart.json").read_text())["recipe"] == ws.recipe(TinyConfig(), Arith())
    monkeypatch.setattr(ws, "REFERENCE_SHA256", "0" * 64)
    with pytest.raises(ConfigError, match="is not the pinned"):
        ensure_warmstart(TinyConfig(), Arith(), SamplingConfig(), progress=False)


def test_settings_the_reference_was_not_made_with_are_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"tiny\.layers differs from the shipped reference.*tiny\.warmstart=build"):
        ensure_warmstart(TinyConfig(layers=6), Arith(), SamplingConfig(), progress=False)
    with pytest.raises(ConfigError, match=r"task_config\.max_ops differs"):
        ensure_warmstart(TinyConfig(), Arith(ArithConfig(max_ops=4)), SamplingConfig(), progress=False)


def test_the_sft_schedule_has_no_stop_rule():
    """A fixed number of steps on a warm-up + cosine schedule: the learning rate is a function of the step alone."""
    from rlbench.run.tiny.warmstart import sft_lr_factor

    tiny = TinyConfig(sft_warmup=10, sft_steps=100, sft_horizon=200)
    assert sft_lr_factor(0, tiny) == pytest.approx(0.1) and sft_lr_factor(9, tiny) == 1.0
    assert sft_lr_factor(105, tiny) == pytest.approx(0.5)  # half-way down the 190-step cosine
    assert sft_lr_factor(99, TinyConfig(sft_warmup=10, sft_steps=100, sft_horizon=None)) < 1e-3
    assert sft_lr_factor(99, TinyConfig(sft_schedule="constant")) == 1.0
