"""The Llama-family fast path (rlbench.engine.fastpath) must compute what the model's own forward computes.

Checked on small random Llama (GQA), Qwen2 (q/k/v biases, GQA) and Qwen3 (q/k norms) models: decoding logits step by
step, the packed training forward's log-probs and gradients (with and without shared prompts), the engine's other
paths (shared-prompt KV cache, plain forward), and that generation stays deterministic for a seed.
"""

import doctest

import pytest
import torch

from rlbench.engine import fastpath
from rlbench.engine import policy as policy_module
from rlbench.engine.batch import RolloutBatch
from rlbench.engine.decoder import Decoder
from rlbench.engine.generation import encode_prompt, left_pad
from rlbench.engine.policy import Policy, load_model, position_ids_from_mask
from rlbench.run.tiny.tokenizer import build_char_tokenizer

PROMPTS = ["Q: 1+2=? A:", "Q: 10+20-5=? A:", "Q: 7=? A:"]


def _model(kind: str):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    tok = build_char_tokenizer()
    common = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=True))
    elif kind == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common, tie_word_embeddings=False))
    else:
        model = Qwen3ForCausalLM(Qwen3Config(**common, head_dim=16, tie_word_embeddings=True))
    with torch.no_grad():  # random biases / norm weights, so that a permutation or scale mistake would show
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.5)
    return Policy(model, tok, torch.device("cpu"))


@pytest.fixture(params=["llama", "qwen2", "qwen3"])
def policy(request) -> Policy:
    return _model(request.param)


def _batch(policy: Policy, repeats: int = 2, new_tokens: int = 9) -> RolloutBatch:
    prompts = [encode_prompt(policy.tokenizer, p) for p in PROMPTS for _ in range(repeats)]
    gen = Decoder(policy).generate(prompts, temperature=1.0, top_p=1.0, max_new_tokens=new_tokens, seed=3)
    n = gen.input_ids.shape[0]
    batch = RolloutBatch(
        gen.input_ids,
        gen.attention_mask,
        gen.response_mask,
        gen.prompt_len,
        rewards=torch.zeros(n),
        group_ids=torch.arange(n),
    )
    batch.advantages = torch.linspace(-1, 1, n)[:, None] * gen.response_mask
    # a sampled token that happens to be the pad id is a real token (nn.Embedding gives its row no gradient)
    batch.input_ids[0, gen.prompt_len] = policy.tokenizer.pad_token_id
    batch.attention_mask[0, gen.prompt_len] = 1
    batch.response_mask[0, 0] = 1
    return batch


def test_supported_models(policy, tiny_qwen_dir):
    assert fastpath.supports(policy.model, 64)
    model, _ = load_model(str(tiny_qwen_dir), "fp32", torch.device("cpu"))
    assert fastpath.supports(model, 64)


def test_decoder_logits_match_the_model(policy):
    model, tok = policy.model.eval(), policy.tokenizer
    ids, mask = left_pad([encode_prompt(tok, p) for p in PROMPTS], tok.pad_token_id, torch.device("cpu"))
    pos = position_ids_from_mask(mask)
    with torch.no_grad():
        decoder = fastpath.StaticKVDecoder(model, ids.shape[1] + 40)
        mine = decoder.prefill(ids, mask, pos)
        for step in range(40):  # past a CHUNK boundary, so the buffers grow
            theirs = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1]
            torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4)
            nxt = theirs.argmax(-1)
            ids, mask = torch.cat([ids, nxt[:, None]], 1), torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            pos = torch.cat([pos, pos[:, -1:] + 1], 1)
            if step == 20:  # drop a row and copy another, as the generator does
                keep = torch.tensor([2, 0, 0])
                decoder.keep(keep)
                ids, mask, pos, nxt = ids[keep], mask[keep], pos[keep], nxt[keep]
            mine = decoder.step(nxt, pos[:, -1])


def _grads(policy: Policy, batch: RolloutBatch, fast: bool, share: bool):
    policy.fast, policy.share_prompts = fast, share
    policy._fast_ok.clear()
    policy.model.train()
    policy.model.zero_grad()
    out = policy.forward(batch, temperature=0.7, with_entropy=True)
    loss = (out.logprobs * batch.advantages).sum() + 0.1 * out.entropy.sum()
    loss.backward()
    return out, [p.grad.clone() for p in policy.model.parameters()]


@pytest.mark.parametrize("repeats", [1, 3])
def test_packed_forward_matches_the_model(policy, repeats):
    batch = _batch(policy, repeats)
    ref, ref_grads = _grads(policy, batch, fast=False, share=False)
    for fast, share in ((True, True), (True, False), (False, True)):
        out, grads = _grads(policy, batch, fast, share)
        if fast:
            assert policy._fast_ok == {id(policy.model): True}
        torch.testing.assert_close(out.logprobs, ref.logprobs, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out.entropy, ref.entropy, rtol=1e-4, atol=1e-5)
        for g, r in zip(grads, ref_grads):  # rounding differs element by element; the gradient is the same
            assert float((g - r).norm()) <= 1e-4 * float(r.norm()) + 1e-7


def test_fast_paths_fall_back_when_they_disagree(monkeypatch):
    policy = _model("llama")
    batch = _batch(policy)
    real = fastpath.packed_logits
    monkeypatch.setattr(fastpath, "packed_logits", lambda *a: real(*a) + 1.0)
    with pytest.warns(RuntimeWarning, match="packed forward disagrees"):
        out = policy.forward(batch)
    assert policy._fast_ok == {id(policy.model): False}
    policy.fast = False
    torch.testing.assert_close(out.logprobs, policy.forward(batch).logprobs)


def test_generation_fast_path_matches_the_model_path():
    """Greedy decoding through the fast path and through model(...) give the same tokens; sampling is
    deterministic for a seed on both paths."""
    policy = _model("qwen2")
    prompts = [encode_prompt(policy.tokenizer, p) for p in PROMPTS for _ in range(3)]
    kw = dict(temperature=1.0, top_p=1.0, max_new_tokens=30)
    fast, slow = Decoder(policy), Decoder(policy, fast=False)
    assert torch.equal(
        fast.generate(prompts, greedy=True, **kw).input_ids, slow.generate(prompts, greedy=True, **kw).input_ids
    )
    for gen in (fast, slow):
        a, b = gen.generate(prompts, seed=5, **kw), gen.generate(prompts, seed=5, **kw)
        assert torch.equal(a.input_ids, b.input_ids) and a.texts == b.texts
    assert fast._fast_ok == {id(policy.model): True}


def test_docstring_examples():
    assert doctest.testmod(policy_module).failed == 0


def test_decoder_falls_back_when_it_disagrees(monkeypatch):
    policy = _model("llama")
    prompts = [encode_prompt(policy.tokenizer, p) for p in PROMPTS]
    kw = dict(greedy=True, temperature=1.0, top_p=1.0, max_new_tokens=6)
    expected = Decoder(policy, fast=False).generate(prompts, **kw)
    real = fastpath.StaticKVDecoder.step
    monkeypatch.setattr(fastpath.StaticKVDecoder, "step", lambda self, *a: real(self, *a) + 1.0)
    gen = Decoder(policy)
    with pytest.warns(RuntimeWarning, match="fast decoding path disagrees"):
        got = gen.generate(prompts, **kw)
    assert gen._fast_ok == {id(policy.model): False}
    assert torch.equal(got.input_ids, expected.input_ids)


def test_other_architectures_use_the_model_forward():
    """A model outside the Llama family (GPT-2) decodes and trains through model(...), shared prompts included."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = build_char_tokenizer()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tok),
            n_embd=32,
            n_layer=2,
            n_head=2,
            n_positions=128,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        )
    )
    policy = Policy(model, tok, torch.device("cpu"))
    assert not fastpath.supports(model, 64)
    batch = _batch(policy, repeats=3)
    ref, ref_grads = _grads(policy, batch, fast=False, share=False)
    out, grads = _grads(policy, batch, fast=True, share=True)
    assert policy._fast_ok == {}
    torch.testing.assert_close(out.logprobs, ref.logprobs, rtol=1e-4, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        assert float((g - r).norm()) <= 1e-4 * float(r.norm()) + 1e-7
