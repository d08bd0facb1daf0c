"""Generators turn prompts into sampled completions. The Hugging Face backend runs everywhere (CPU or GPU).

A generator returns a :class:`Generation` in the RolloutBatch layout: prompts left-padded to ``P``, completions
right-padded to ``T``, every completion ending at its first EOS or at ``max_new_tokens``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Protocol, Sequence

import torch
from transformers import DynamicCache, PreTrainedTokenizerBase

from rlbench.engine import fastpath
from rlbench.engine.fastpath import StaticKVDecoder
from rlbench.engine.policy import Policy, _cache_kwarg, distinct_rows, position_ids_from_mask


@dataclass
class Generation:
    input_ids: torch.Tensor  # [B, P+T]
    attention_mask: torch.Tensor  # [B, P+T]
    response_mask: torch.Tensor  # [B, T] float
    prompt_len: int
    truncated: torch.Tensor  # [B] bool
    texts: list[str]

    @property
    def num_tokens(self) -> int:
        return int(self.response_mask.sum())


class Generator(Protocol):
    def generate(
        self, prompt_ids: Sequence[list[int]], *, temperature: float, top_p: float, max_new_tokens: int,
        greedy: bool = False, seed: int | None = None,
    ) -> Generation: ...

    def sync_weights(self, policy: Policy) -> None: ...


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: "str | list[dict[str, str]]") -> list[int]:
    """Plain text as the tokenizer encodes it; chat messages through the tokenizer's chat template."""
    if isinstance(prompt, str):
        return list(tokenizer(prompt).input_ids)
    if tokenizer.chat_template is None:
        raise ValueError("this task builds chat prompts but the tokenizer has no chat template; pick a plain-text prompt style")
    ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    return list(ids)


def left_pad(prompt_ids: Sequence[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    P = max(len(p) for p in prompt_ids)
    ids = torch.full((len(prompt_ids), P), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompt_ids), P), dtype=torch.long)
    for i, p in enumerate(prompt_ids):
        ids[i, P - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, P - len(p) :] = 1
    return ids.to(device), mask.to(device)


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row from ``softmax(logits / temperature)`` restricted to the top-p nucleus.

    Inverse-CDF sampling: one uniform number per row (``torch.multinomial`` draws one per vocabulary entry), and no
    sort unless ``top_p < 1``. The chosen index ``k`` satisfies ``cdf[k-1] <= u * total < cdf[k]`` with ``u`` in
    ``[0, 1)``, so a token of probability 0 (outside the nucleus) can never be drawn.
    """
    logits = logits.float()
    probs = torch.softmax(logits / temperature if temperature != 1.0 else logits, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # keep a token if the mass before it is below top_p (so the first token is always kept)
        keep = (sorted_probs.cumsum(-1) - sorted_probs) < top_p
        sorted_probs = sorted_probs * keep
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    cdf = probs.cumsum(-1)
    u = torch.rand((probs.shape[0], 1), generator=generator, device=probs.device, dtype=cdf.dtype)
    # (the clamp only guards u * total rounding up to total)
    return (cdf <= u.mul_(cdf[:, -1:])).sum(-1).clamp_(max=probs.shape[-1] - 1)


# Decoding checks which rows are still running every CHECK_EVERY steps (a device sync on GPUs), and drops the
# finished rows from the batch once at most SHRINK_AT of its rows are still running (fast path only).
CHECK_EVERY = 2
SHRINK_AT = 0.85


class HFGenerator:
    """Batched decoding with a KV cache on the training model itself (weights are always in sync).

    Llama-family models (Llama, Mistral, Qwen2, Qwen3) decode through :mod:`rlbench.engine.fastpath`: the same
    parameters, a pre-allocated KV cache and a minimal forward, checked against the model's own forward on first use.
    Every other model (or ``fast=False``) decodes through ``model(...)`` with a ``DynamicCache``.
    """

    def __init__(self, policy: Policy, batch_size: int | None = None, fast: bool = True) -> None:
        self.policy = policy
        self.batch_size = batch_size
        self.fast = fast
        self._fast_ok: dict[int, bool] = {}  # id(model) -> the fast path matched the model's own forward

    def sync_weights(self, policy: Policy) -> None:
        if policy.model is not self.policy.model:
            self._fast_ok.clear()
        self.policy = policy

    def generate(
        self, prompt_ids: Sequence[list[int]], *, temperature: float, top_p: float, max_new_tokens: int,
        greedy: bool = False, seed: int | None = None,
    ) -> Generation:
        chunk = self.batch_size or len(prompt_ids)
        rng = None
        if not greedy:
            rng = torch.Generator(device=self.policy.device)
            rng.manual_seed(seed if seed is not None else torch.seed())
        parts = [
            self._generate(prompt_ids[i : i + chunk], temperature, top_p, max_new_tokens, greedy, rng)
            for i in range(0, len(prompt_ids), chunk)
        ]
        return parts[0] if len(parts) == 1 else _concat(parts, self.policy.tokenizer.pad_token_id)

    def _generate(self, prompt_ids, temperature, top_p, max_new_tokens, greedy, rng) -> Generation:
        policy, tok = self.policy, self.policy.tokenizer
        model, device = policy.model, policy.device
        eos, pad = tok.eos_token_id, tok.pad_token_id
        ids, mask = left_pad(prompt_ids, pad, device)
        B, P = ids.shape
        N = max_new_tokens
        positions = position_ids_from_mask(mask)
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode(), policy.autocast():
                decoder = self._fast_decoder(ids, mask, positions, N)
                if decoder is not None:
                    run, first = _decode_fast, decoder
                else:
                    run, first = _decode_hf, model
                out, steps = run(first, ids, mask, positions, N, eos, pad, greedy, temperature, top_p, rng)
        finally:
            model.train(was_training)
        # out [steps, B]: a row's completion ends at its first EOS, or runs for every step taken
        out = out[:steps].t().clone()
        is_eos = out == eos
        has_eos = is_eos.any(1)
        lengths = torch.where(has_eos, is_eos.int().argmax(1) + 1, torch.full_like(has_eos, steps, dtype=torch.long))
        T = max(int(lengths.max()) if B else 0, 1)
        out = out[:, :T]
        response_mask = (torch.arange(T, device=device)[None, :] < lengths[:, None]).float()
        out = torch.where(response_mask.bool(), out, torch.full_like(out, pad))
        texts = tok.batch_decode([row[: int(n)].tolist() for row, n in zip(out, lengths)], skip_special_tokens=True)
        return Generation(
            input_ids=torch.cat([ids, out], dim=1),
            attention_mask=torch.cat([mask, response_mask.long()], dim=1),
            response_mask=response_mask,
            prompt_len=P,
            truncated=~has_eos,
            texts=texts,
        )

    def _fast_decoder(self, ids, mask, positions, max_new_tokens) -> "StaticKVDecoder | None":
        """The fast path's decoder for this batch, or None (unsupported model, or it disagreed with the model)."""
        model = self.policy.model
        key = id(model)
        if not self.fast or self._fast_ok.get(key) is False:
            return None
        if not fastpath.supports(model, ids.shape[1] + max_new_tokens):
            return None
        if key not in self._fast_ok:
            # first use on this model: the fast forward must give the model's own logits (prefill, then one step)
            n = min(ids.shape[0], 4)
            ids_n, mask_n, pos_n = ids[:n], mask[:n], positions[:n]
            theirs = model(input_ids=ids_n, attention_mask=mask_n, position_ids=pos_n, use_cache=False).logits[:, -1]
            nxt = theirs.argmax(-1)
            ids_2, mask_2 = torch.cat([ids_n, nxt[:, None]], 1), torch.cat([mask_n, torch.ones_like(mask_n[:, :1])], 1)
            pos_2 = torch.cat([pos_n, pos_n[:, -1:] + 1], 1)
            theirs_2 = model(input_ids=ids_2, attention_mask=mask_2, position_ids=pos_2, use_cache=False).logits[:, -1]
            try:
                probe = fastpath.StaticKVDecoder(model, ids.shape[1] + 1)
                mine = probe.prefill(ids_n, mask_n, pos_n).float()
                mine_2 = probe.step(nxt, pos_2[:, -1]).float()
                error = max(float((mine - theirs.float()).abs().max()), float((mine_2 - theirs_2.float()).abs().max()))
                fp32 = mine.dtype == theirs.dtype == torch.float32 and not self.policy.precision.startswith("bf16")
                tol = (1e-3 if fp32 else 5e-2) * (1.0 + float(theirs.float().abs().max()))
                ok, why = error <= tol, f"max logit difference {error:.3g} > {tol:.3g}"
            except (ValueError, RuntimeError, IndexError) as exc:
                ok, why = False, f"{type(exc).__name__}: {exc}"
            if not ok:
                warnings.warn(f"{type(model).__name__}: the fast decoding path disagrees with the model's forward "
                              f"({why}); decoding through model(...) instead", RuntimeWarning, stacklevel=3)
            self._fast_ok[key] = ok
            if not ok:
                return None
        return fastpath.StaticKVDecoder(model, ids.shape[1] + max_new_tokens)


def _pick(logits, greedy, temperature, top_p, rng) -> torch.Tensor:
    return logits.argmax(-1) if greedy else sample_next(logits, temperature, top_p, rng)


def _decode_fast(decoder, ids, mask, positions, N, eos, pad, greedy, temperature, top_p, rng):
    """Tokens ``[N, B]`` (pad after a row's EOS) and the number of steps taken, dropping finished rows as it goes."""
    B = ids.shape[0]
    out = torch.full((N, B), pad, dtype=torch.long, device=ids.device)
    rows = None  # original row of each row still in the batch (None: all of them, in order)
    alive = torch.ones(B, dtype=torch.bool, device=ids.device)
    pos = positions[:, -1] + 1
    shared = distinct_rows(ids, mask)
    if shared is None:
        logits = decoder.prefill(ids, mask, positions)
    else:  # repeated prompts (n samples per prompt): prefill each distinct prompt once, then copy its cache rows
        firsts, copies = shared
        logits = decoder.prefill(ids[firsts], mask[firsts], positions[firsts])[copies]
        decoder.keep(copies)
    steps = N
    for t in range(N):
        nxt = _pick(logits, greedy, temperature, top_p, rng)
        nxt = torch.where(alive, nxt, pad)
        if rows is None:
            out[t] = nxt
        else:
            out[t].index_copy_(0, rows, nxt)
        alive &= nxt != eos
        if t == N - 1:
            break
        if (t + 1) % CHECK_EVERY == 0:
            n_alive = int(alive.sum())
            if n_alive == 0:
                steps = t + 1
                break
            if n_alive <= SHRINK_AT * alive.shape[0]:
                keep = alive.nonzero().squeeze(1)
                decoder.keep(keep)
                rows = keep if rows is None else rows[keep]
                alive, nxt, pos = alive[keep], nxt[keep], pos[keep]
        logits = decoder.step(nxt, pos)
        pos = pos + 1
    return out, steps


def _decode_hf(model, ids, mask, positions, N, eos, pad, greedy, temperature, top_p, rng):
    """Any causal LM, through its own forward with a DynamicCache; the attention mask is allocated once."""
    B, P = ids.shape
    out = torch.full((N, B), pad, dtype=torch.long, device=ids.device)
    alive = torch.ones(B, dtype=torch.bool, device=ids.device)
    full_mask = torch.cat([mask, torch.ones((B, N), dtype=mask.dtype, device=mask.device)], dim=1)
    cache_kw = _cache_argument(model)
    cache = DynamicCache()
    step_ids, step_pos = ids, positions
    steps = N
    for t in range(N):
        logits = model(
            input_ids=step_ids, attention_mask=full_mask[:, : P + t], position_ids=step_pos,
            use_cache=True, logits_to_keep=1, **{cache_kw: cache},
        ).logits[:, -1]
        nxt = torch.where(alive, _pick(logits, greedy, temperature, top_p, rng), pad)
        out[t] = nxt
        alive &= nxt != eos
        if (t + 1) % CHECK_EVERY == 0 and not bool(alive.any()):
            steps = t + 1
            break
        step_ids = nxt[:, None]
        step_pos = step_pos[:, -1:] + 1
    return out, steps


_cache_argument = _cache_kwarg


def _concat(parts: list[Generation], pad: int) -> Generation:
    """Join chunks with different P and T into one layout (re-padding prompts left and completions right)."""
    P = max(g.prompt_len for g in parts)
    T = max(g.response_mask.shape[1] for g in parts)
    ids, masks, rmasks = [], [], []
    for g in parts:
        dp, dt = P - g.prompt_len, T - g.response_mask.shape[1]
        B = g.input_ids.shape[0]
        dev = g.input_ids.device
        pre = torch.full((B, dp), pad, dtype=torch.long, device=dev)
        post = torch.full((B, dt), pad, dtype=torch.long, device=dev)
        zeros_p = torch.zeros((B, dp), dtype=torch.long, device=dev)
        zeros_t = torch.zeros((B, dt), dtype=torch.long, device=dev)
        ids.append(torch.cat([pre, g.input_ids, post], dim=1))
        masks.append(torch.cat([zeros_p, g.attention_mask, zeros_t], dim=1))
        rmasks.append(torch.cat([g.response_mask, zeros_t.float()], dim=1))
    return Generation(
        input_ids=torch.cat(ids), attention_mask=torch.cat(masks), response_mask=torch.cat(rmasks), prompt_len=P,
        truncated=torch.cat([g.truncated for g in parts]), texts=[t for g in parts for t in g.texts],
    )
