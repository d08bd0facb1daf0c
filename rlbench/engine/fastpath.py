"""A fast path for Llama-family causal LMs: decoding with a KV cache in place, and a packed training forward.

Both run the *same parameters* of the same ``nn.Module`` (no copy to keep in sync) through a minimal forward, and
both are checked against the model's own forward on first use (:func:`disagreement`, called by ``Decoder`` and
``Policy``); any other model
runs through ``model(...)``.

Why, measured on CPU with the tiny lab (1M parameters, batch 64): a decoding step through ``model(...)`` with a
``DynamicCache`` copies every layer's keys and values (``torch.cat``) every step and rebuilds masks and module calls;
a training forward over a ``[B, P + T]`` batch spends up to a third of its matrix products on padding and, in GRPO,
runs every prompt once per sample. Here:

- **decoding** (:class:`StaticKVDecoder`): keys/values are written in place into buffers grown a chunk at a time;
  the padding mask is built once; rows that have finished leave the batch (``keep``); a prompt shared by several
  rows is prefilled once and its cache rows copied; the prefill's last layer runs attention and MLP for the last
  position only.
- **training** (:func:`packed_logits`): only real tokens go through the matrix products (packed ``[N, hidden]``; the
  last token of each completion, whose logits predict nothing, is skipped too); every distinct prompt is run once
  and its keys/values are shared by the rows that continue it; attention is the only step that sees the padded
  layout.
- both: queries and keys are one matrix product; RoPE is one complex product (the rows of W_q and W_k are permuted
  within each head so that the pairs ``(i, i + D/2)`` that ``rotate_half`` mixes are adjacent; queries and keys
  share the permutation, so their dot products are unchanged); the softmax scale is folded into W_q and each
  RMSNorm's scale into the projection after it; attention is written out (matmul, softmax, matmul).

torch.compile was tried and left out: compiling the MLP block alone took ~27 s on this CPU and saved ~10% of it, the
shapes change every step (rows leave the batch, the cache grows, the packed token count varies), and a tiny-lab
training step takes under a second.

Supported (:func:`supports`): the Llama layout (``model.model.layers[i].self_attn.{q,k,v,o}_proj``,
``mlp.{gate,up,down}_proj``, RMSNorms ``input_layernorm`` / ``post_attention_layernorm``, ``model.model.norm``,
``model.lm_head``, ``model.model.rotary_emb``) of Llama, Mistral (no sliding window in reach), Qwen2 (q/k/v biases)
and Qwen3 (q/k norms), with a rope type whose tables do not depend on the sequence length and no attention dropout.

Over 400 lines on purpose: the decoder and the packed training forward share the fused weights, the head
permutation and the attention kernel; split, the permutation that makes both match the model's own forward would be
a private contract between two files.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MAX_PARAMETERS = 500_000_000  # above this the fused weight copies cost more memory than the overhead they save
CHUNK = 16  # decoding KV buffers grow this many positions at a time (see StaticKVDecoder._reserve)
SUPPORTED_MODEL_TYPES = {"llama", "mistral", "qwen2", "qwen3"}
STATIC_ROPE_TYPES = {"default", "linear", "llama3"}  # cos/sin of a position do not depend on the sequence length


def _rope_type(config) -> str:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    return params.get("rope_type", params.get("type", "default")) if isinstance(params, dict) else "default"


def _sliding_window(config, attn: nn.Module) -> int | None:
    if hasattr(attn, "sliding_window"):
        return attn.sliding_window
    if config.model_type == "mistral":
        return getattr(config, "sliding_window", None)
    return None


def supports(model: nn.Module, max_len: int) -> bool:
    """True when the fast path computes ``model``'s forward for sequences of up to ``max_len`` tokens.

    Never for a peft (LoRA) model: the fast path reads each projection's ``weight`` and would silently drop the
    adapters, and fusing ``W + B A`` once per step would cost the copy that LoRA exists to avoid. Such a model runs
    through its own forward (and ``model.generate``-style decoding with a ``DynamicCache``).
    """
    if getattr(model, "peft_config", None) or getattr(model, "_hf_peft_config_loaded", False):
        return False
    config = getattr(model, "config", None)
    if config is None or getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        return False
    body = getattr(model, "model", None)
    if body is None or not all(hasattr(body, a) for a in ("embed_tokens", "layers", "norm", "rotary_emb")):
        return False
    if not isinstance(getattr(model, "lm_head", None), nn.Linear) or _rope_type(config) not in STATIC_ROPE_TYPES:
        return False
    if model.training and getattr(config, "attention_dropout", 0.0):
        return False
    if sum(p.numel() for p in model.parameters()) > MAX_PARAMETERS:
        return False
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if head_dim % 2:
        return False
    for layer in body.layers:
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        if attn is None or mlp is None:
            return False
        if not all(isinstance(getattr(attn, n, None), nn.Linear) for n in ("q_proj", "k_proj", "v_proj", "o_proj")):
            return False
        if not all(isinstance(getattr(mlp, n, None), nn.Linear) for n in ("gate_proj", "up_proj", "down_proj")):
            return False
        for norm in (
            layer.input_layernorm,
            layer.post_attention_layernorm,
            getattr(attn, "q_norm", None),
            getattr(attn, "k_norm", None),
        ):
            if norm is not None and not type(norm).__name__.endswith("RMSNorm"):
                return False
        window = _sliding_window(config, attn)
        if window is not None and window < max_len:
            return False
    return True


# ---------------------------------------------------------------------------------------------------- shared maths


def disagreement(mine: torch.Tensor, theirs: torch.Tensor, precision: str) -> str | None:
    """None when the fast path's logits ``mine`` match the model's own ``theirs``, else why not.

    The one tolerance rule for both fast paths: the largest absolute logit difference may be 1e-3 (fp32) or 5e-2
    (bf16 in any form) times ``1 + max |theirs|``.
    """
    mine, theirs = mine.float(), theirs.float()
    if theirs.numel() == 0:
        return None
    error = float((mine - theirs).abs().max())
    tol = (1e-3 if precision == "fp32" else 5e-2) * (1.0 + float(theirs.abs().max()))
    return None if error <= tol else f"max logit difference {error:.3g} > {tol:.3g}"


def _rms(x: torch.Tensor, eps: float, weight: torch.Tensor | None = None) -> torch.Tensor:
    """LlamaRMSNorm: normalise in fp32, cast back, then scale (the layer norms' scales are folded into the next
    projection instead: ``W @ (w * n) == (W * w) @ n``)."""
    if x.dtype == torch.float32:
        return F.rms_norm(x, x.shape[-1:], weight, eps)
    out = F.rms_norm(x.float(), x.shape[-1:], None, eps).to(x.dtype)
    return out if weight is None else weight * out


def _pair_permutation(head_dim: int, device) -> torch.Tensor:
    """Index order that puts dims i and i + D/2 side by side: [0, D/2, 1, D/2 + 1, ...]."""
    half = head_dim // 2
    return torch.stack([torch.arange(half, device=device), torch.arange(half, head_dim, device=device)], 1).flatten()


def _permute_heads(w: torch.Tensor, head_dim: int, perm: torch.Tensor) -> torch.Tensor:
    """Apply ``perm`` within every head of a projection's output rows (weight ``[H*D, in]`` or bias ``[H*D]``)."""
    return w.view(-1, head_dim, *w.shape[1:])[:, perm].reshape(w.shape)


def _rotate(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """RoPE on pair-permuted heads: each adjacent pair is a complex number, multiplied by e^{i * angle}."""
    dtype = x.dtype
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * rotation).flatten(-2).to(dtype)


def _bias(linear: nn.Linear) -> torch.Tensor:
    if linear.bias is not None:
        return linear.bias
    return torch.zeros(linear.out_features, dtype=linear.weight.dtype, device=linear.weight.device)


class _Layer:
    __slots__ = (
        "eps1",
        "w_qkv",
        "b_qkv",
        "w_v",
        "b_v",
        "q_norm",
        "k_norm",
        "w_o",
        "b_o",
        "eps2",
        "w_g",
        "b_g",
        "w_u",
        "b_u",
        "w_down",
        "b_down",
        "act",
    )


class FusedWeights:
    """The model's parameters arranged for the fast path: fused q/k, RoPE-permuted, scales folded in.

    Built from the parameters by differentiable ops, so gradients reach the model's own parameters; build it again
    after the weights change (it is cheap: a copy of the attention and MLP weights).
    """

    def __init__(self, model: nn.Module) -> None:
        config, body = model.config, model.model
        self.n_heads = config.num_attention_heads
        self.n_kv = getattr(config, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.n_heads
        self.groups = self.n_heads // self.n_kv
        scale = self.head_dim**-0.5
        self.embed = body.embed_tokens.weight
        # the padding row gets no gradient, as in nn.Embedding(padding_idx=...)
        self.padding_idx = getattr(body.embed_tokens, "padding_idx", None)
        self.norm_eps = body.norm.variance_epsilon
        self.lm_w, self.lm_b = model.lm_head.weight * body.norm.weight, model.lm_head.bias
        self.rotary = body.rotary_emb
        device = self.embed.device
        perm = _pair_permutation(self.head_dim, device)
        D = self.head_dim
        self.post_scale = 1.0
        self.layers: list[_Layer] = []
        for layer in body.layers:
            attn, mlp, L = layer.self_attn, layer.mlp, _Layer()
            ln1, ln2 = layer.input_layernorm.weight, layer.post_attention_layernorm.weight
            L.eps1, L.eps2 = layer.input_layernorm.variance_epsilon, layer.post_attention_layernorm.variance_epsilon
            q_norm, k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
            L.q_norm = None if q_norm is None else (q_norm.weight[perm], q_norm.variance_epsilon)
            L.k_norm = None if k_norm is None else (k_norm.weight[perm], k_norm.variance_epsilon)
            # the softmax scale folds into W_q (RoPE is linear) unless a q-norm sits between the projection and RoPE
            q_scale = scale if q_norm is None else 1.0
            self.post_scale = 1.0 if q_norm is None else scale
            L.w_qkv = (
                torch.cat(
                    [_permute_heads(attn.q_proj.weight, D, perm) * q_scale, _permute_heads(attn.k_proj.weight, D, perm)]
                )
                * ln1
            )
            L.b_qkv = None
            if attn.q_proj.bias is not None or attn.k_proj.bias is not None:
                L.b_qkv = torch.cat(
                    [_permute_heads(_bias(attn.q_proj), D, perm) * q_scale, _permute_heads(_bias(attn.k_proj), D, perm)]
                )
            L.w_v, L.b_v = attn.v_proj.weight * ln1, attn.v_proj.bias
            L.w_o, L.b_o = attn.o_proj.weight, attn.o_proj.bias
            # gate and up stay two products: fused, the backward of the split costs a copy of both gradients and
            # SiLU runs on a strided half (measured ~10% slower for the MLP's forward + backward)
            L.w_g, L.b_g = mlp.gate_proj.weight * ln2, mlp.gate_proj.bias
            L.w_u, L.b_u = mlp.up_proj.weight * ln2, mlp.up_proj.bias
            L.w_down, L.b_down = mlp.down_proj.weight, mlp.down_proj.bias
            L.act = mlp.act_fn
            self.layers.append(L)

    def rotation(self, length: int) -> torch.Tensor:
        """``e^{i * angle}`` for positions ``0 .. length-1``: ``[length, D/2]`` complex, from the model's own tables."""
        positions = torch.arange(length, device=self.embed.device)[None]
        cos, sin = self.rotary(self.embed[:1][None], positions)
        half = self.head_dim // 2
        cos, sin = cos[0].float(), sin[0].float()  # [length, D], each the same table twice (rotate_half layout)
        if not (torch.equal(cos[:, :half], cos[:, half:]) and torch.equal(sin[:, :half], sin[:, half:])):
            raise ValueError("rotary tables are not in rotate_half layout")
        return torch.complex(cos[:, :half], sin[:, :half])

    def qk_v(self, L: _Layer, x: torch.Tensor, rotation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotated queries+keys ``[..., Hq + Hkv, D]`` and values ``[..., Hkv, D]`` of hidden states ``x``."""
        Hq, Hkv, D = self.n_heads, self.n_kv, self.head_dim
        h = _rms(x, L.eps1)
        qk = F.linear(h, L.w_qkv, L.b_qkv).view(*x.shape[:-1], Hq + Hkv, D)
        if L.q_norm is not None:
            (wq, eq), (wk, ek) = L.q_norm, L.k_norm
            qk = torch.cat([_rms(qk[..., :Hq, :], eq, wq), _rms(qk[..., Hq:, :], ek, wk)], dim=-2)
        return _rotate(qk, rotation), F.linear(h, L.w_v, L.b_v).view(*x.shape[:-1], Hkv, D)

    def mlp(self, L: _Layer, x: torch.Tensor) -> torch.Tensor:
        h = _rms(x, L.eps2)
        return F.linear(L.act(F.linear(h, L.w_g, L.b_g)) * F.linear(h, L.w_u, L.b_u), L.w_down, L.b_down)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(_rms(x, self.norm_eps), self.lm_w, self.lm_b)

    def expand_kv(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, Hkv, L, D]`` -> ``[B, Hq, L, D]`` (query head h reads kv head h // G)."""
        if self.groups == 1:
            return x
        B, H, L, D = x.shape
        return x[:, :, None].expand(B, H, self.groups, L, D).reshape(B, H * self.groups, L, D)


# ---------------------------------------------------------------------------------------------------- decoding


class StaticKVDecoder:
    """Prefill once, then one token per row per :meth:`step`, with keys/values written in place.

    Built per ``generate`` call under ``torch.inference_mode`` (the fused weights then are plain copies).
    """

    def __init__(self, model: nn.Module, max_len: int) -> None:
        self.w = FusedWeights(model)
        self.max_len = max_len
        self.table = self.w.rotation(max_len)  # [L_max, D/2]
        self.key_bias = torch.empty(0, dtype=self.w.embed.dtype, device=self.w.embed.device)  # [B, 1, 1, L_max]
        self.caches: list[list[torch.Tensor]] = [[self.key_bias, self.key_bias] for _ in self.w.layers]
        self.batch = self.capacity = self.length = 0

    def _reserve(self, end: int) -> None:
        """Grow the KV buffers to hold ``end`` positions, CHUNK at a time.

        Batched attention over a slice ``[:, :, :end]`` of a buffer costs in proportion to the buffer's whole length
        (measured on CPU: a slice of 46 of 81 positions cost as much as all 81), so buffers are kept only a little
        longer than what is used; each growth copies them once, amortised over CHUNK steps.
        """
        if end <= self.capacity:
            return
        capacity = min(self.max_len, end + CHUNK)
        shape = (self.batch, self.w.n_kv, capacity, self.w.head_dim)
        for kv in self.caches:
            for j, old in enumerate(kv):
                new = self.key_bias.new_empty(shape)
                if self.length:
                    new[:, :, : self.length] = old[:, :, : self.length]
                kv[j] = new
        self.capacity = capacity

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        w = self.w
        B, S = ids.shape
        D, Hq, Hkv, G = w.head_dim, w.n_heads, w.n_kv, w.groups
        start, end = self.length, self.length + S
        self._reserve(end)
        x = F.embedding(ids, w.embed, w.padding_idx)
        rotation = self.table[positions][:, :, None]  # [B, S, 1, D/2]
        last = len(w.layers) - 1
        for i, (L, (k_cache, v_cache)) in enumerate(zip(w.layers, self.caches)):
            qk, v = w.qk_v(L, x, rotation)
            k_cache[:, :, start:end] = qk[:, :, Hq:].transpose(1, 2)
            v_cache[:, :, start:end] = v.transpose(1, 2)
            keys, values = k_cache[:, :, :end], v_cache[:, :, :end]  # [B, Hkv, end, D]
            if S > 1 and i == last:
                # prefill's last layer: only the last position's output is used (the others' keys and values are
                # in the cache already), so attention and MLP run for it alone; it attends to every real key
                S, x, qk, bias = 1, x[:, -1:].contiguous(), qk[:, -1:], self.key_bias[:, :, :, :end]
            if S == 1:  # query head h reads kv head h // G, so [B, Hq, D] is [B, Hkv, G, D]
                q = qk[:, 0, :Hq].reshape(B, Hkv, G, D)
                scores = torch.matmul(q, keys.transpose(-1, -2))  # [B, Hkv, G, end]
                if w.post_scale != 1.0:
                    scores.mul_(w.post_scale)
                probs = torch.softmax(scores.add_(bias), dim=-1, dtype=torch.float32).to(values.dtype)
                out = torch.matmul(probs, values).view(B, 1, Hq * D)
            else:  # prefill: queries grouped by kv head, [B, Hkv, G*S, D]
                q = qk[:, :, :Hq].reshape(B, S, Hkv, G, D).permute(0, 2, 3, 1, 4).reshape(B, Hkv, G * S, D)
                scores = torch.matmul(q, keys.transpose(-1, -2)).view(B, Hkv, G, S, end)
                if w.post_scale != 1.0:
                    scores.mul_(w.post_scale)
                scores = scores.add_(bias[:, :, None]).view(B, Hkv, G * S, end)
                probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(values.dtype)
                out = torch.matmul(probs, values).view(B, Hkv, G, S, D).permute(0, 3, 1, 2, 4).reshape(B, S, Hq * D)
            x = x.add_(F.linear(out, L.w_o, L.b_o))
            x = x.add_(w.mlp(L, x))
        self.length = end
        return w.logits(x[:, -1])

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Left-padded prompts ``[B, P]``; returns the last position's logits ``[B, V]``."""
        B, P = ids.shape
        self.batch, self.capacity, self.length = B, 0, 0
        neg = torch.finfo(self.key_bias.dtype).min
        self.key_bias = self.key_bias.new_zeros((B, 1, 1, self.max_len))
        self.key_bias[:, 0, 0, :P] = torch.where(mask.bool(), 0.0, neg).to(self.key_bias.dtype)
        allowed = _prefix_mask(mask.bool())  # [B, P, P]
        bias = torch.where(allowed, 0.0, neg).to(self.key_bias.dtype)[:, None]  # [B, 1, P, P]
        return self._forward(ids, positions, bias)

    def step(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """One new token per row (``ids``, ``positions``: ``[B]``); returns logits ``[B, V]``."""
        end = self.length + 1
        return self._forward(ids[:, None], positions[:, None], self.key_bias[:, :, :, :end])

    def keep(self, rows: torch.Tensor) -> None:
        """Continue with rows ``rows`` of the current batch: drops the others; a repeated index copies a row."""
        for kv in self.caches:
            for j in range(2):
                kv[j] = kv[j].index_select(0, rows)
        self.key_bias = self.key_bias.index_select(0, rows)
        self.batch = int(rows.shape[0])


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v, with ``bias`` additive (0 or the dtype's minimum).

    Written out rather than ``F.scaled_dot_product_attention``: at the tiny lab's sizes (64 rows x 4 heads x ~30
    queries x ~50 keys) its CPU kernel's backward measured ~25% slower for the whole training step.
    """
    scores = torch.matmul(q, k.transpose(-1, -2))
    if scale != 1.0:
        scores = scores * scale
    probs = torch.softmax(scores + bias, dim=-1, dtype=torch.float32).to(v.dtype)
    return torch.matmul(probs, v)


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, torch.finfo(dtype).min)


def _prefix_mask(mask: torch.Tensor) -> torch.Tensor:
    """``[B, P, P]`` bool: causal and not padding; a padding query sees itself (no row is empty, so no NaN)."""
    P = mask.shape[1]
    causal = torch.ones(P, P, dtype=torch.bool, device=mask.device).tril()
    return (causal[None] & mask[:, None, :]) | torch.eye(P, dtype=torch.bool, device=mask.device)[None]


# ---------------------------------------------------------------------------------------------------- training


def packed_logits(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    positions: torch.Tensor,
    prompt_len: int,
    firsts: torch.Tensor,
    rows: torch.Tensor,
) -> torch.Tensor:
    """Logits ``[B, T, V]``: position ``t`` is the distribution of completion token ``t`` (zeros where the response
    mask is 0), for a batch laid out as in ``RolloutBatch`` (prompts left-padded to ``P``, completions right-padded).

    ``firsts`` / ``rows``: the distinct prompts (one row each) and the distinct prompt of every row (see
    ``rlbench.engine.policy.distinct_rows``; ``arange(B)`` twice when all differ). Only real tokens go through the
    matrix products: the distinct prompts' tokens ("head") and each completion's tokens but its last ("tail"; the
    last one's logits would predict past the completion, and no later token reads its keys). Attention unpacks them
    into a padded layout: the head attends causally within its prompt, the tail to its row's prompt (shared keys and
    values, repeated by ``rows``) and causally within its completion.
    """
    w = FusedWeights(model)
    B, total = input_ids.shape
    P, T = prompt_len, total - prompt_len
    U, Tq = int(firsts.shape[0]), T - 1
    D, Hq, Hkv = w.head_dim, w.n_heads, w.n_kv
    device = input_ids.device
    # packing: flat indices of the real tokens in the [U, P] head and the [B, Tq] tail layouts
    head_mask = attention_mask[firsts, :P].bool()
    head_idx = head_mask.flatten().nonzero().squeeze(1)
    tail_mask = attention_mask[:, P + 1 :].bool()  # tail position t is needed iff completion token t+1 is real
    tail_idx = tail_mask.flatten().nonzero().squeeze(1)
    n_head = int(head_idx.shape[0])
    ids = torch.cat([input_ids[firsts, :P].flatten()[head_idx], input_ids[:, P : P + Tq].flatten()[tail_idx]])
    pos = torch.cat([positions[firsts, :P].flatten()[head_idx], positions[:, P : P + Tq].flatten()[tail_idx]])
    rotation = w.rotation(total)[pos][:, None]  # [N, 1, D/2]
    dtype = w.embed.dtype if not torch.is_autocast_enabled(device.type) else torch.get_autocast_dtype(device.type)
    head_bias = _additive(_prefix_mask(head_mask)[:, None], dtype)  # [U, 1, P, P]
    causal = torch.ones(Tq, Tq, dtype=torch.bool, device=device).tril()
    tail_bias = _additive(
        torch.cat([head_mask[rows][:, None, :].expand(B, Tq, P), causal[None].expand(B, Tq, Tq)], dim=2)[:, None], dtype
    )  # [B, 1, Tq, P + Tq]

    def unpack(t: torch.Tensor, idx: torch.Tensor, n: int, length: int) -> torch.Tensor:
        """Packed ``[N, H, D]`` -> ``[n, H, length, D]`` with zeros where there is no token."""
        full = t.new_zeros((n * length, *t.shape[1:])).index_copy(0, idx, t)
        return full.view(n, length, *t.shape[1:]).transpose(1, 2)

    def pack(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``[n, H, length, D]`` -> packed ``[N, H * D]``."""
        n, H, length, _ = t.shape
        return t.transpose(1, 2).reshape(n * length, H * D)[idx]

    x = F.embedding(ids, w.embed, w.padding_idx)  # [N, hidden]
    for L in w.layers:
        qk, v = w.qk_v(L, x, rotation)  # [N, Hq + Hkv, D], [N, Hkv, D]
        q_h, k_h = unpack(qk[:n_head], head_idx, U, P).split([Hq, Hkv], dim=1)  # [U, H, P, D]
        v_h = unpack(v[:n_head], head_idx, U, P)
        o_h = _attention(q_h, w.expand_kv(k_h), w.expand_kv(v_h), head_bias, w.post_scale)
        out = [pack(o_h, head_idx)]
        if Tq > 0:
            q_t, k_t = unpack(qk[n_head:], tail_idx, B, Tq).split([Hq, Hkv], dim=1)  # [B, H, Tq, D]
            v_t = unpack(v[n_head:], tail_idx, B, Tq)
            keys = torch.cat([k_h[rows], k_t], dim=2)  # [B, Hkv, P + Tq, D]
            values = torch.cat([v_h[rows], v_t], dim=2)
            o_t = _attention(q_t, w.expand_kv(keys), w.expand_kv(values), tail_bias, w.post_scale)
            out.append(pack(o_t, tail_idx))
        x = x + F.linear(torch.cat(out), L.w_o, L.b_o)
        x = x + w.mlp(L, x)
    # the last prompt position (P - 1, never padding) predicts completion token 0; tail position t predicts t + 1
    head_last = head_mask.sum(1).cumsum(0) - 1
    logits = w.logits(torch.cat([x[head_last], x[n_head:]]))  # [U + N_tail, V]
    dest = (
        torch.cat([torch.arange(B, device=device) * T, (tail_idx // Tq) * T + tail_idx % Tq + 1])
        if Tq > 0
        else torch.arange(B, device=device) * T
    )
    source = torch.cat([logits[:U][rows], logits[U:]])
    return logits.new_zeros((B * T, logits.shape[-1])).index_copy(0, dest, source).view(B, T, -1)
