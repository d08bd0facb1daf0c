import torch

from rlbench.engine.decoder import Decoder, sample_next
from rlbench.engine.generation import encode_prompt
from rlbench.engine.policy import Policy, load_model


def _policy(path) -> Policy:
    model, tok = load_model(str(path), "fp32", torch.device("cpu"))
    return Policy(model, tok, torch.device("cpu"))


def test_generation_layout_and_determinism(tiny_qwen_dir):
    policy = _policy(tiny_qwen_dir)
    tok = policy.tokenizer
    prompts = [encode_prompt(tok, "Q: 1+2=? A:"), encode_prompt(tok, "Q: 10+20-5=? A:")]
    gen = Decoder(policy)
    kwargs = dict(temperature=1.0, top_p=1.0, max_new_tokens=12)
    a = gen.generate(prompts * 3, seed=7, **kwargs)
    b = gen.generate(prompts * 3, seed=7, **kwargs)
    assert torch.equal(a.input_ids, b.input_ids)
    P = a.prompt_len
    assert P == max(len(p) for p in prompts)
    # left-padded prompts: the short prompt's first columns are padding with mask 0
    assert a.attention_mask[0, : P - len(prompts[0])].sum() == 0
    assert a.input_ids[0, P - len(prompts[0]) : P].tolist() == prompts[0]
    lengths = a.response_mask.sum(1).long()
    for row, n, trunc in zip(a.input_ids[:, P:], lengths, a.truncated):
        eos_positions = (row[:n] == tok.eos_token_id).nonzero().flatten().tolist()
        # EOS, if any, is the last counted token; nothing after it is counted
        assert eos_positions in ([], [int(n) - 1])
        assert bool(trunc) == (eos_positions == [])
        assert (row[n:] == tok.pad_token_id).all()
    assert torch.equal(a.attention_mask[:, P:].float(), a.response_mask)


def test_chunked_generation_matches_layout(tiny_qwen_dir):
    policy = _policy(tiny_qwen_dir)
    prompts = [encode_prompt(policy.tokenizer, p) for p in ("Q: 1=? A:", "Q: 123+45=? A:", "Q: 9-9=? A:")]
    whole = Decoder(policy).generate(prompts, greedy=True, temperature=1.0, top_p=1.0, max_new_tokens=6)
    chunked = Decoder(policy, batch_size=2).generate(prompts, greedy=True, temperature=1.0, top_p=1.0, max_new_tokens=6)
    assert whole.texts == chunked.texts
    assert torch.equal(whole.response_mask, chunked.response_mask)


def test_top_p_keeps_only_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    draws = {int(sample_next(logits, 1.0, 0.7, g)) for _ in range(300)}
    assert draws == {0, 1}
    draws = {int(sample_next(logits, 1.0, 1.0, g)) for _ in range(2000)}
    assert draws == {0, 1, 2, 3}


def test_chat_prompts_use_the_template(tiny_qwen_dir):
    policy = _policy(tiny_qwen_dir)
    ids = encode_prompt(policy.tokenizer, [{"role": "user", "content": "hi"}])
    text = policy.tokenizer.decode(ids, skip_special_tokens=True)
    assert text.startswith("<user>hi") and text.endswith("<assistant>"), repr(text)


def test_logprobs_match_generation_distribution(tiny_qwen_dir):
    """Log-probs from the training forward equal those of the decoding loop's own logits (same model, T=1)."""
    from rlbench.engine.batch import RolloutBatch

    policy = _policy(tiny_qwen_dir)
    prompts = [encode_prompt(policy.tokenizer, "Q: 5+5=? A:"), encode_prompt(policy.tokenizer, "Q: 12-3+4=? A:")]
    gen = Decoder(policy).generate(prompts, greedy=True, temperature=1.0, top_p=1.0, max_new_tokens=5)
    batch = RolloutBatch(
        gen.input_ids,
        gen.attention_mask,
        gen.response_mask,
        gen.prompt_len,
        rewards=torch.zeros(2),
        group_ids=torch.arange(2),
    )
    out = policy.forward(batch, with_entropy=True)
    # Greedy tokens are each row's argmax, so recomputing the full forward row by row must agree.
    for i, p in enumerate(prompts):
        n = int(gen.response_mask[i].sum())
        full = torch.tensor([p + gen.input_ids[i, gen.prompt_len : gen.prompt_len + n].tolist()])
        logits = policy.model(full).logits[0, len(p) - 1 : -1].log_softmax(-1)
        expected = logits.gather(-1, full[0, len(p) :, None]).squeeze(-1)
        assert torch.allclose(out.logprobs[i, :n], expected, atol=1e-5)
        assert (out.logprobs[i, n:] == 0).all() and (out.entropy[i, n:] == 0).all()
