"""Load a causal LM (tiny lab, hub id or local directory) and compute per-token log-probs of completions.

One code path serves every model: the tiny lab is saved as an ordinary Hugging Face checkpoint and loaded like a 7B
model would be.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from rlbench.engine import fastpath
from rlbench.engine.batch import PolicyOutput, RolloutBatch
from rlbench.engine.precision import PRECISIONS, autocast, weight_dtype


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def looks_like_a_path(name: str) -> bool:
    """A ``--model`` that names a folder rather than a hub id (hub ids are ``name`` or ``org/name``, nothing more).

    >>> [looks_like_a_path(m) for m in ("Qwen/Qwen2.5-1.5B", "gpt2", "./x", "../m", "/m", "~/m", "runs/a/checkpoint")]
    [False, False, True, True, True, True, True]
    """
    if name in (".", "..") or name.startswith(("/", "./", "../", "~", ".\\", "..\\")):
        return True
    return "\\" in name or name.count("/") > 1


class ModelNotFound(FileNotFoundError):
    """The model cannot be found where ``--model`` says (no such folder, no config.json, the hub out of reach); the
    message is one line naming ``--model`` and what to do."""


def load_model(
    name_or_path: str,
    precision: str,
    device: torch.device,
    *,
    revision: str | None = None,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A hub id or a local directory; weights in bf16 only for ``precision='bf16-pure'`` (``bf16`` keeps fp32 masters
    and runs under autocast).

    ``revision`` and ``trust_remote_code`` go to both the tokenizer and the model; ``attn_implementation`` to the
    model only (a tokenizer has no attention). A ``--model`` that looks like a path but does not exist, or a hub id
    when the hub cannot be reached, raises :class:`ModelNotFound` with a one-line message.
    """
    local = Path(name_or_path).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ModelNotFound(f"--model {name_or_path}: not a directory (a model is a folder with a config.json)")
        if not (local / "config.json").exists():
            raise ModelNotFound(f"--model {name_or_path}: directory has no config.json (not a saved model)")
        name_or_path = str(local)
    elif looks_like_a_path(name_or_path):
        raise ModelNotFound(f"--model {name_or_path}: no such directory")
    common = {"revision": revision, "trust_remote_code": trust_remote_code}
    model_kw = {"attn_implementation": attn_implementation} if attn_implementation else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **common)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=weight_dtype(precision), **common, **model_kw)
    except OSError as exc:
        why = _hub_problem(exc, name_or_path, revision)
        if why is None:
            raise
        raise ModelNotFound(f"--model {name_or_path}: {why}") from None
    if tokenizer.pad_token_id is None:
        # Base models often lack a pad token; padding is always masked, so any id works.
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)
    return model, tokenizer


def _hub_problem(exc: BaseException, name: str, revision: str | None) -> str | None:
    """One line for a hub failure found anywhere in ``exc``'s chain; None for any other error."""
    from huggingface_hub import errors

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled)):
            return (
                f"not a local folder, and the Hugging Face hub cannot be reached (offline or HF_HUB_OFFLINE=1) "
                f"with no cached copy; pass a local path (--model /path/to/model), or download it first "
                f"(hf download {name})"
            )
        if isinstance(seen, errors.RevisionNotFoundError):
            return f"revision {revision!r} not found on the hub (model_args.revision)"
        if isinstance(seen, errors.GatedRepoError):
            return "a gated repository: accept its licence on the hub and log in (hf auth login)"
        if isinstance(seen, errors.RepositoryNotFoundError):
            return "not a local folder, and no such model on the Hugging Face hub (or it is private: hf auth login)"
        seen = seen.__cause__ or seen.__context__
    return None


class ValueHead(nn.Module):
    """A scalar value per position, on the policy backbone's last hidden state (PPO's critic)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj(hidden.float()).squeeze(-1)


class ValueModel(nn.Module):
    """A critic of its own, as verl's: a copy of the policy's initial transformer (without its LM head) and a
    :class:`ValueHead` on its last hidden state. It reads the tokens and shares no weight with the policy."""

    def __init__(self, backbone: nn.Module, hidden_size: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = ValueHead(hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_len: int) -> torch.Tensor:
        """Values ``[B, T]``: V(s_t) for the state before completion token t (the hidden state one position back)."""
        out = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            use_cache=False,
        )
        T = response_len
        return self.head(out.last_hidden_state[:, -(T + 1) : -1])


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions count real tokens only, so left padding does not shift them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@dataclass
class Policy:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    precision: str = "fp32"
    value_head: nn.Module | None = None  # every critic parameter: a ValueHead, or a ValueModel (value_model below)
    value_model: bool = False  # value_head is a ValueModel: it reads the tokens, not the policy's hidden states
    share_prompts: bool = True  # run a prompt shared by several rows once (see forward); False = one plain forward
    fast: bool = True  # Llama-family models: the packed forward of rlbench.engine.fastpath (checked on first use)
    # a LoRA run's reference: the same peft model with its adapters switched off (the base), not a second copy
    adapters_off: bool = False
    _fast_ok: dict = field(default_factory=dict, repr=False, compare=False)  # id(model) -> fast path matched

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:  # a stale name (bf16-mixed) would otherwise silently mean fp32
            raise ValueError(f"precision={self.precision!r}: must be one of {', '.join(PRECISIONS)}")

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.precision, self.device)

    def _adapters(self) -> contextlib.AbstractContextManager:
        return self.model.disable_adapter() if self.adapters_off else contextlib.nullcontext()

    def parameters(self) -> Iterator[nn.Parameter]:
        yield from self.model.parameters()
        if self.value_head is not None:
            yield from self.value_head.parameters()

    def forward(
        self, batch: RolloutBatch, temperature: float = 1.0, with_entropy: bool = False, with_values: bool = False
    ) -> PolicyOutput:
        """Log-probs ``[B, T]`` of the completion tokens (and optionally entropy and values).

        Logits are computed for completion positions only, never over the prompt. When several rows share a prompt
        (GRPO's samples per prompt), the prompt is run once: its keys and values are computed for the distinct
        prompts, repeated to every row that shares them, and the completions attend to them (the gradient flows back
        through the repetition). Same function, fewer FLOPs. Three implementations, one result (up to rounding):

        - Llama-family models (``fast``): :func:`rlbench.engine.fastpath.packed_logits`, which also skips padding;
          checked against the model's own forward the first time it runs on a model (and never used again for that
          model if it disagrees);
        - any model, rows sharing prompts: the model's forward on the distinct prompts, then on the completions with
          the prompts' KV cache repeated to their rows (:meth:`_forward_shared`);
        - otherwise one forward over ``[B, P + T]`` with ``logits_to_keep``.
        """
        head_values = with_values and not self.value_model  # the head reads the policy's last hidden states
        with self.autocast(), self._adapters():
            logits, hidden = self._logits(batch, head_values)
        logits = logits.float()
        if temperature != 1.0:
            logits = logits / temperature
        log_norm = torch.logsumexp(logits, dim=-1)
        targets = batch.response_ids
        logprobs = (logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - log_norm) * batch.response_mask
        entropy = None
        if with_entropy:
            probs = torch.softmax(logits, dim=-1)
            entropy = (log_norm - (probs * logits).sum(-1)) * batch.response_mask
        values = None
        if with_values:
            if self.value_head is None:
                raise RuntimeError("values requested but the policy has no value head")
            if self.value_model:
                with self.autocast():
                    values = self.value_head(batch.input_ids, batch.attention_mask, batch.response_len)
            else:
                values = self.value_head(hidden)
            values = values * batch.response_mask
        return PolicyOutput(logprobs=logprobs, entropy=entropy, values=values)

    def _logits(self, batch: RolloutBatch, with_values: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits ``[B, T, V]`` of the completion tokens (position t predicts token t) and, with values, the last
        hidden states at the same positions."""
        shared = shared_prompts(batch) if self.share_prompts else None
        if not with_values and self._use_fast(batch, shared):
            return self._packed(batch, shared), None
        if shared is not None:
            return self._forward_shared(batch, *shared, with_values)
        return self._forward_plain(batch, with_values)

    def _packed(self, batch: RolloutBatch, shared) -> torch.Tensor:
        if shared is None:
            shared = (torch.arange(batch.size, device=batch.input_ids.device),) * 2
        return fastpath.packed_logits(
            self.model,
            batch.input_ids,
            batch.attention_mask,
            position_ids_from_mask(batch.attention_mask),
            batch.prompt_len,
            *shared,
        )

    def _use_fast(self, batch: RolloutBatch, shared) -> bool:
        key = id(self.model)
        if not self.fast or self._fast_ok.get(key) is False or batch.prompt_len == 0:
            return False
        if not fastpath.supports(self.model, batch.input_ids.shape[1]):
            return False
        # the packed layout needs left-padded prompts (the last prompt column is real) and right-padded completions
        # (each completion's tokens come first, then padding only)
        completion = batch.attention_mask[:, batch.prompt_len :]
        if not bool(batch.attention_mask[:, batch.prompt_len - 1].all()):
            return False
        if bool((completion[:, 1:] > completion[:, :-1]).any()):
            return False
        if key not in self._fast_ok:  # first use on this model: the packed forward must give the model's logits
            with torch.no_grad():
                theirs = self._forward_plain(batch, False)[0].float()
                try:
                    mine = self._packed(batch, shared).float()
                except (ValueError, RuntimeError, IndexError) as exc:
                    mine, why = None, f"{type(exc).__name__}: {exc}"
            mask = batch.response_mask.bool()
            if mine is not None:
                why = fastpath.disagreement(mine[mask], theirs[mask], self.precision)
            ok = mine is not None and why is None
            if not ok:
                warnings.warn(
                    f"{type(self.model).__name__}: the packed forward disagrees with the model's own "
                    f"({why}); using the model's forward instead",
                    RuntimeWarning,
                    stacklevel=4,
                )
            self._fast_ok[key] = ok
        return self._fast_ok[key]

    def _forward_plain(self, batch: RolloutBatch, with_values: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        T = batch.response_len
        out = self.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=position_ids_from_mask(batch.attention_mask),
            logits_to_keep=T + 1,
            output_hidden_states=with_values,
            use_cache=False,
        )
        logits = out.logits[:, :-1]  # position i predicts token i+1: these predict the T completion tokens
        hidden = out.hidden_states[-1][:, -(T + 1) : -1] if with_values else None
        return logits, hidden

    def _forward_shared(
        self, batch: RolloutBatch, firsts: torch.Tensor, rows: torch.Tensor, with_values: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits ``[B, T, V]`` (and last hidden states) with each distinct prompt run once.

        1. the distinct prompts ``[U, P]`` -> a KV cache, and the logits of their last position (the first completion
           token's distribution);
        2. the cache repeated to the ``B`` rows (``rows[i]`` = the distinct prompt of row ``i``);
        3. the completions ``[B, T]`` attend to it; position ``P + t`` predicts completion token ``t + 1``.
        """
        P = batch.prompt_len
        mask = batch.attention_mask
        positions = position_ids_from_mask(mask)
        cache = DynamicCache()
        kw = _cache_kwarg(self.model)
        head = self.model(
            input_ids=batch.input_ids[firsts, :P],
            attention_mask=mask[firsts, :P],
            position_ids=positions[firsts, :P],
            use_cache=True,
            logits_to_keep=1,
            output_hidden_states=with_values,
            **{kw: cache},
        )
        cache.batch_select_indices(rows)
        tail = self.model(
            input_ids=batch.input_ids[:, P:],
            attention_mask=mask,
            position_ids=positions[:, P:],
            use_cache=True,
            output_hidden_states=with_values,
            **{kw: cache},
        )
        logits = torch.cat([head.logits[rows], tail.logits[:, :-1]], dim=1)
        hidden = None
        if with_values:
            hidden = torch.cat([head.hidden_states[-1][rows, -1:], tail.hidden_states[-1][:, :-1]], dim=1)
        return logits, hidden


def shared_prompts(batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor] | None:
    """:func:`distinct_rows` of the batch's prompts (ids and mask); None when every prompt is distinct.

    >>> import torch
    >>> from rlbench.engine.batch import RolloutBatch
    >>> ids = torch.tensor([[1, 5, 6, 7], [1, 5, 6, 8], [0, 1, 9, 7]])  # prompts (P=3): [1,5,6] twice, [0,1,9]
    >>> b = RolloutBatch(ids, (ids != 0).long(), torch.ones(3, 1), 3, torch.zeros(3), torch.arange(3))
    >>> shared_prompts(b)
    (tensor([0, 2]), tensor([0, 0, 1]))
    """
    P = batch.prompt_len
    if P == 0 or batch.response_len < 1:
        return None
    return distinct_rows(batch.input_ids[:, :P], batch.attention_mask[:, :P])


def distinct_rows(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(firsts, rows)`` when some rows of (``ids``, ``mask``) repeat, else None: ``firsts`` are the first row of
    each distinct one, in order, and ``rows[i]`` is the index into ``firsts`` of row ``i`` (``ids[firsts][rows]``
    is ``ids``).

    >>> import torch
    >>> distinct_rows(torch.tensor([[3, 4], [1, 2], [3, 4], [1, 2]]), torch.ones(4, 2))
    (tensor([0, 1]), tensor([0, 1, 0, 1]))
    """
    B = ids.shape[0]
    if B < 2:
        return None
    key = torch.cat([ids, mask.to(ids.dtype)], dim=1)
    _, rows = torch.unique(key, dim=0, return_inverse=True)
    n = int(rows.max()) + 1
    if n == B:
        return None
    order = torch.arange(B, device=rows.device)
    firsts = torch.full((n,), B, dtype=torch.long, device=rows.device).scatter_reduce_(0, rows, order, "amin")
    sorted_firsts, perm = firsts.sort()
    rank = torch.empty_like(firsts)
    rank[perm] = torch.arange(n, device=rows.device)
    return sorted_firsts, rank[rows]


def _cache_kwarg(model: nn.Module) -> str:
    """transformers 5.x renamed ``past_key_values`` to ``cache``; accept both generations of models (a peft model's
    forward passes keywords through to its base model, whose signature decides)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(base.forward).parameters
    return "cache" if "cache" in params else "past_key_values"
