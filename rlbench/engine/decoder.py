"""The ``rlbench`` rollout backend: batched decoding with a KV cache on the training model itself.

Llama-family models (Llama, Mistral, Qwen2, Qwen3) decode through :mod:`rlbench.engine.fastpath`: the same parameters,
a pre-allocated KV cache and a minimal forward, checked against the model's own forward on first use. Every other
model (or ``fast=False``) decodes through ``model(...)`` with a ``DynamicCache``. Weights are always in sync: there is
no copy to push to.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from rlbench.engine import fastpath
from rlbench.engine.fastpath import StaticKVDecoder
from rlbench.engine.generation import Generation, PolicyBackend, assemble, concat, left_pad, stop_ids, token_logprobs
from rlbench.engine.policy import Policy, _cache_kwarg, distinct_rows, position_ids_from_mask


def sample_next(
    logits: torch.Tensor,
    temperature: float,
    top_p: float,
    generator: torch.Generator | None,
    u: torch.Tensor | None = None,
) -> torch.Tensor:
    """One token per row from ``softmax(logits / temperature)`` restricted to the top-p nucleus.

    Inverse-CDF sampling: one uniform number per row (``torch.multinomial`` draws one per vocabulary entry), and no
    sort unless ``top_p < 1``. The chosen index ``k`` satisfies ``cdf[k-1] <= u * total < cdf[k]`` with ``u`` in
    ``[0, 1)``, so a token of probability 0 (outside the nucleus) can never be drawn. ``u`` (``[B]``) supplies the
    uniform numbers instead of ``generator``.
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
    if u is None:
        u = torch.rand((probs.shape[0], 1), generator=generator, device=probs.device, dtype=cdf.dtype)
    else:
        u = u.to(cdf.dtype)[:, None].clone()
    # (the clamp only guards u * total rounding up to total)
    return (cdf <= u.mul_(cdf[:, -1:])).sum(-1).clamp_(max=probs.shape[-1] - 1)


# Decoding checks which rows are still running every CHECK_EVERY steps (a device sync on GPUs), and drops the
# finished rows from the batch once at most SHRINK_AT of its rows are still running (fast path only).
CHECK_EVERY = 2
SHRINK_AT = 0.85


class Decoder(PolicyBackend):
    """The default backend (``rollout.backend: rlbench``); see the module docstring."""

    seeds_rows = True

    def __init__(
        self, policy: Policy, batch_size: int | None = None, model_path: str | None = None, fast: bool = True
    ) -> None:
        super().__init__(policy, batch_size)
        self.fast = fast
        self._fast_ok: dict[int, bool] = {}  # id(model) -> the fast path matched the model's own forward

    def sync_weights(self, policy: Policy) -> None:
        if policy.model is not self.policy.model:  # another model: its fast path is checked again on first use
            self._fast_ok.clear()
        super().sync_weights(policy)

    def generate(
        self,
        prompt_ids: Sequence[list[int]],
        *,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        greedy: bool = False,
        seed: int | Sequence[int] | None = None,
    ) -> Generation:
        """``seed``: one stream for the whole call, or one seed per row (each row's draws then depend on its seed
        alone, not on which other rows share its batch: what data-parallel ranks need)."""
        chunk = self.batch_size or len(prompt_ids)
        rng, row_seeds = None, None
        if not greedy and isinstance(seed, Sequence):
            row_seeds = list(seed)
        elif not greedy:
            rng = torch.Generator(device=self.policy.device)
            rng.manual_seed(seed if seed is not None else torch.seed())
        parts = []
        for i in range(0, len(prompt_ids), chunk):
            uniforms = None if row_seeds is None else _row_uniforms(row_seeds[i : i + chunk], max_new_tokens)
            parts.append(
                self._generate(prompt_ids[i : i + chunk], temperature, top_p, max_new_tokens, greedy, rng, uniforms)
            )
        return concat(parts, self.policy.tokenizer.pad_token_id)

    def _generate(self, prompt_ids, temperature, top_p, max_new_tokens, greedy, rng, uniforms) -> Generation:
        policy, tok = self.policy, self.policy.tokenizer
        model, device = policy.model, policy.device
        stops, pad = stop_ids(tok, model), tok.pad_token_id
        ids, mask = left_pad(prompt_ids, pad, device)
        positions = position_ids_from_mask(mask)
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode(), policy.autocast():
                decoder = self._fast_decoder(ids, mask, positions, max_new_tokens)
                run, first = (_decode_fast, decoder) if decoder is not None else (_decode_hf, model)
                sampling = Sampling(
                    greedy,
                    temperature,
                    top_p,
                    rng,
                    torch.tensor(stops, device=device),
                    pad,
                    None if uniforms is None else uniforms.to(device),
                )
                out, logprobs, steps = run(first, ids, mask, positions, max_new_tokens, sampling)
        finally:
            model.train(was_training)
        # out [steps, B]: a row's completion ends at its first stop token, or runs for every step taken
        tokens = out[:steps].t().clone()
        lps = None if greedy else logprobs[:steps].t().clone()
        return assemble(ids, mask, tokens, stops, pad, tok, lps)

    def _fast_decoder(self, ids, mask, positions, max_new_tokens) -> StaticKVDecoder | None:
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
                mine = torch.cat([probe.prefill(ids_n, mask_n, pos_n), probe.step(nxt, pos_2[:, -1])])
                why = fastpath.disagreement(mine, torch.cat([theirs, theirs_2]), self.policy.precision)
            except (ValueError, RuntimeError, IndexError) as exc:
                why = f"{type(exc).__name__}: {exc}"
            ok = why is None
            if not ok:
                warnings.warn(
                    f"{type(model).__name__}: the fast decoding path disagrees with the model's forward "
                    f"({why}); decoding through model(...) instead",
                    RuntimeWarning,
                    stacklevel=3,
                )
            self._fast_ok[key] = ok
            if not ok:
                return None
        return fastpath.StaticKVDecoder(model, ids.shape[1] + max_new_tokens)


@dataclass
class Sampling:
    """How each next token is chosen, and where a row stops."""

    greedy: bool
    temperature: float
    top_p: float
    rng: torch.Generator | None
    stops: torch.Tensor  # the stop token ids
    pad: int
    uniforms: torch.Tensor | None = None  # [B, N]: row i's uniform number at step t, when rows are seeded one by one

    def pick(self, logits: torch.Tensor, t: int, rows: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The next token per row (``rows``: the original index of each row still decoding, None = all, in order)
        and, when sampling, its log-prob at the sampling temperature."""
        if self.greedy:
            return logits.argmax(-1), None
        u = None
        if self.uniforms is not None:
            u = self.uniforms[:, t] if rows is None else self.uniforms[rows, t]
        nxt = sample_next(logits, self.temperature, self.top_p, self.rng, u)
        return nxt, token_logprobs(logits, nxt, self.temperature)

    def stopped(self, nxt: torch.Tensor) -> torch.Tensor:
        return torch.isin(nxt, self.stops)


def _decode_fast(decoder, ids, mask, positions, N, s: Sampling):
    """Tokens and log-probs ``[N, B]`` (pad after a row's stop) and the steps taken, dropping finished rows as it goes."""
    B = ids.shape[0]
    out = torch.full((N, B), s.pad, dtype=torch.long, device=ids.device)
    logprobs = torch.zeros((N, B), dtype=torch.float, device=ids.device)
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
        nxt, lp = s.pick(logits, t, rows)
        nxt = torch.where(alive, nxt, s.pad)
        if rows is None:
            out[t] = nxt
            if lp is not None:
                logprobs[t] = lp
        else:
            out[t].index_copy_(0, rows, nxt)
            if lp is not None:
                logprobs[t].index_copy_(0, rows, lp)
        alive &= ~s.stopped(nxt)
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
    return out, logprobs, steps


def _decode_hf(model, ids, mask, positions, N, s: Sampling):
    """Any causal LM, through its own forward with a DynamicCache; the attention mask is allocated once."""
    B, P = ids.shape
    out = torch.full((N, B), s.pad, dtype=torch.long, device=ids.device)
    logprobs = torch.zeros((N, B), dtype=torch.float, device=ids.device)
    alive = torch.ones(B, dtype=torch.bool, device=ids.device)
    full_mask = torch.cat([mask, torch.ones((B, N), dtype=mask.dtype, device=mask.device)], dim=1)
    cache_kw = _cache_kwarg(model)
    cache = DynamicCache()
    step_ids, step_pos = ids, positions
    steps = N
    for t in range(N):
        logits = model(
            input_ids=step_ids,
            attention_mask=full_mask[:, : P + t],
            position_ids=step_pos,
            use_cache=True,
            logits_to_keep=1,
            **{cache_kw: cache},
        ).logits[:, -1]
        nxt, lp = s.pick(logits, t, None)
        nxt = torch.where(alive, nxt, s.pad)
        out[t] = nxt
        if lp is not None:
            logprobs[t] = lp
        alive &= ~s.stopped(nxt)
        if (t + 1) % CHECK_EVERY == 0 and not bool(alive.any()):
            steps = t + 1
            break
        step_ids = nxt[:, None]
        step_pos = step_pos[:, -1:] + 1
    return out, logprobs, steps


def _row_uniforms(seeds: Sequence[int], steps: int) -> torch.Tensor:
    """``[len(seeds), steps]`` uniform numbers, row i from its own generator: the same on every device and batch."""
    return torch.stack([torch.rand(steps, generator=torch.Generator().manual_seed(int(s))) for s in seeds])
