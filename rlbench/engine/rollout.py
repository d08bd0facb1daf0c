"""Generators turn prompts into sampled completions. The Hugging Face backend runs everywhere (CPU or GPU).

A generator returns a :class:`Generation` in the RolloutBatch layout: prompts left-padded to ``P``, completions
right-padded to ``T``, every completion ending at its first EOS or at ``max_new_tokens``.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Protocol, Sequence

import torch
from transformers import DynamicCache, PreTrainedTokenizerBase

from rlbench.engine.policy import Policy, position_ids_from_mask


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
    """One token per row from ``softmax(logits / temperature)`` restricted to the top-p nucleus."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # keep a token if the mass before it is below top_p (so the first token is always kept)
        keep = (sorted_probs.cumsum(-1) - sorted_probs) < top_p
        sorted_probs = sorted_probs * keep
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class HFGenerator:
    """Batched decoding with a KV cache on the training model itself (weights are always in sync)."""

    def __init__(self, policy: Policy, batch_size: int | None = None) -> None:
        self.policy = policy
        self.batch_size = batch_size

    def sync_weights(self, policy: Policy) -> None:
        self.policy = policy

    @torch.no_grad()
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
        out = torch.full((B, max_new_tokens), pad, dtype=torch.long, device=device)
        alive = torch.ones(B, dtype=torch.bool, device=device)
        lengths = torch.zeros(B, dtype=torch.long, device=device)
        cache_kw = _cache_argument(model)
        cache = DynamicCache()
        positions = position_ids_from_mask(mask)
        step_ids, step_pos, full_mask = ids, positions, mask
        was_training = model.training
        model.eval()
        try:
            for t in range(max_new_tokens):
                with policy.autocast():
                    logits = model(
                        input_ids=step_ids, attention_mask=full_mask, position_ids=step_pos,
                        use_cache=True, logits_to_keep=1, **{cache_kw: cache},
                    ).logits[:, -1]
                nxt = logits.argmax(-1) if greedy else sample_next(logits, temperature, top_p, rng)
                nxt = torch.where(alive, nxt, torch.full_like(nxt, pad))
                out[:, t] = nxt
                lengths += alive.long()
                alive = alive & (nxt != eos)
                if not bool(alive.any()):
                    break
                step_ids = nxt[:, None]
                step_pos = step_pos[:, -1:] + 1
                full_mask = torch.cat([full_mask, torch.ones((B, 1), dtype=full_mask.dtype, device=device)], dim=1)
        finally:
            model.train(was_training)
        T = int(lengths.max().item()) if B else 0
        T = max(T, 1)
        out = out[:, :T]
        response_mask = (torch.arange(T, device=device)[None, :] < lengths[:, None]).float()
        ended_with_eos = (out.gather(1, (lengths - 1).clamp(min=0)[:, None]).squeeze(1) == eos) & (lengths > 0)
        texts = tok.batch_decode(
            [row[: int(n)].tolist() for row, n in zip(out, lengths)], skip_special_tokens=True
        )
        return Generation(
            input_ids=torch.cat([ids, out], dim=1),
            attention_mask=torch.cat([mask, response_mask.long()], dim=1),
            response_mask=response_mask,
            prompt_len=P,
            truncated=~ended_with_eos,
            texts=texts,
        )


def _cache_argument(model: torch.nn.Module) -> str:
    """transformers 5.x renamed ``past_key_values`` to ``cache``; accept both generations of models."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


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
