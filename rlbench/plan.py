"""``rlbench plan``: how much GPU memory a run's config needs per rank, estimated from the model's shape before
anything loads, and whether it fits. The command is :mod:`rlbench.cli.plan`; the arithmetic is here.

The estimate follows the engine's phases, which never overlap:

- always resident: the weights (fp32 masters for ``fp32`` and ``bf16``, bf16 for ``bf16-pure``; LoRA adapters in
  fp32, as peft keeps them), the reference copy when the algorithm's KL needs one (none with LoRA: the reference
  is the base with the adapters off), and AdamW's two states per trainable weight (in the weight's dtype; 1 byte
  each for ``adamw-8bit``);
- **generation**: the KV cache, ``2 x layers x kv_heads x head_dim x bytes x generation_batch_size x (prompt +
  max_new_tokens)`` (a vLLM backend instead takes ``gpu_memory_utilization`` of the GPU);
- **update**, one micro-batch at a time: gradients (per trainable weight, in its dtype), the activations autograd
  saves, the completion logits, and under ``bf16`` autocast the bf16 weight copies saved for the backward pass.

Rules of thumb (estimates, not measurements; the allocator adds fragmentation on top):

- activations: a Llama/Qwen2 decoder layer saves about ``8 x hidden + 2 x kv_dim + 4 x intermediate`` values per
  token (the inputs of its two norms and of the q/k/v and o projections, attention's q, k, v and output, SwiGLU's
  gate, up, activation and down-projection input; SDPA and flash attention keep no ``seq x seq`` scores), in the
  activation dtype, over ``micro_batch x (prompt + max_new_tokens)`` tokens. With gradient checkpointing only each
  layer's input stays (``hidden`` values per token per layer) plus one layer's full set during its recomputation;
- logits: ``micro_batch x max_new_tokens x vocab`` values in the activation dtype plus about three fp32 copies
  (``float()``, the softmax for the entropy, their gradient): ``act_bytes + 12`` bytes each;
- CUDA context and allocator slack: :data:`CUDA_OVERHEAD`.

FSDP (full sharding) across N GPUs divides the weights, gradients, optimiser states, the reference and the autocast
copies by N; the activations, logits and KV cache of each GPU's own micro-batch stay as they are. It adds one term:
the **rollout copy**, the full weights (in the weights' dtype) each GPU's generator decodes with, since a sharded model
cannot decode on one rank alone (rlbench/engine/sharding.py); it sleeps in CPU memory during the update. ``rlbench plan --processes N --fsdp`` shows that layout.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlbench.config import ConfigError, LoraConfig, RunConfig

GIB = 2**30
CUDA_OVERHEAD = 1.5 * GIB  # CUDA context (~0.5 GiB) and allocator slack: a rule of thumb
MAX_FSDP = 64  # the largest GPU count the verdict suggests
SUGGESTED_LORA_RANK = 16

# config.json values (main branch) of the paper's models, for machines that cannot reach the hub
KNOWN_SHAPES: dict[str, dict[str, Any]] = {
    "Qwen/Qwen2.5-0.5B": dict(model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
                              num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                              tie_word_embeddings=True),
    "Qwen/Qwen2.5-1.5B": dict(model_type="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                              num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                              tie_word_embeddings=True),
    "Qwen/Qwen2.5-Math-7B": dict(model_type="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                                 num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                                 tie_word_embeddings=False),
}


@dataclass(frozen=True)
class ModelShape:
    name: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    parameters: int  # every weight, tied ones once
    lora_parameters: int  # the adapters at the config's lora.rank and target_modules (0 without LoRA)
    source: str  # where the shape came from, said in the output


@dataclass
class Term:
    name: str
    bytes: float
    how: str  # the formula, with its numbers
    phase: str  # "resident", "generate" or "update"
    sharded: bool  # FSDP divides it by the number of GPUs


@dataclass
class Plan:
    shape: ModelShape
    terms: list[Term]
    gpus: int = 1
    notes: list[str] = field(default_factory=list)

    def total(self, phase: str) -> float:
        """Bytes per GPU during ``phase`` (resident terms included, and the CUDA overhead)."""
        return CUDA_OVERHEAD + sum(t.bytes / (self.gpus if t.sharded else 1)
                                   for t in self.terms if t.phase in ("resident", phase))

    @property
    def peak(self) -> float:
        return max(self.total("generate"), self.total("update"))

    def sharded(self, gpus: int) -> "Plan":
        return Plan(self.shape, self.terms, gpus, self.notes)


# ----------------------------------------------------------------------------------------------- the model's shape


def lora_parameter_count(model: nn.Module, lora: LoraConfig) -> int:
    """``rank x (in + out)`` for every ``nn.Linear`` whose name ends with a target (peft's matching for plain names)."""
    if not lora.rank:
        return 0
    targets = set(lora.target_modules)
    return sum(lora.rank * (m.in_features + m.out_features) for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and name.rpartition(".")[2] in targets)


def shape_of(name: str, model: nn.Module, lora: LoraConfig, source: str) -> ModelShape:
    c = model.config
    heads = c.num_attention_heads
    return ModelShape(
        name=name, layers=c.num_hidden_layers, hidden=c.hidden_size, intermediate=c.intermediate_size, heads=heads,
        kv_heads=getattr(c, "num_key_value_heads", None) or heads,
        head_dim=getattr(c, "head_dim", None) or c.hidden_size // heads, vocab=c.vocab_size,
        parameters=sum(p.numel() for p in model.parameters()), lora_parameters=lora_parameter_count(model, lora),
        source=source,
    )


def _on_meta(hf_config: Any) -> nn.Module:
    """The model built on the meta device: exact parameter counts for any architecture, no memory, no weights."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(hf_config)


def model_shape(config: RunConfig) -> ModelShape:
    """The shape of ``config.model``: the tiny lab's config, a local folder's config.json, the hub's (from the local
    cache first), or, for the models of :data:`KNOWN_SHAPES` at their main branch, the built-in table."""
    from transformers import AutoConfig

    from rlbench.engine.policy import looks_like_a_path

    name, a = config.model, config.model_args
    if name == "tiny":
        from rlbench.tiny.model import build_tiny_model
        from rlbench.tiny.tokenizer import build_char_tokenizer

        with torch.device("meta"):
            model = build_tiny_model(config.tiny, build_char_tokenizer())
        return shape_of(name, model, config.lora, "the tiny lab's config (tiny.*)")
    local = Path(name).expanduser()
    if local.is_dir():
        if not (local / "config.json").exists():
            raise ConfigError(f"--model {name}: directory has no config.json (not a saved model)")
        hf = AutoConfig.from_pretrained(local, trust_remote_code=a.trust_remote_code)
        return shape_of(name, _on_meta(hf), config.lora, f"{local / 'config.json'}")
    if looks_like_a_path(name):
        raise ConfigError(f"--model {name}: no such directory")
    kw = {"revision": a.revision, "trust_remote_code": a.trust_remote_code}
    if name in KNOWN_SHAPES and a.revision is None:
        try:
            hf = AutoConfig.from_pretrained(name, local_files_only=True, **kw)
            return shape_of(name, _on_meta(hf), config.lora, "its config.json in the local Hugging Face cache")
        except OSError:  # not cached: the table holds the same numbers, and the hub is not asked
            known = dict(KNOWN_SHAPES[name])
            hf = AutoConfig.for_model(known.pop("model_type"), **known)
            return shape_of(name, _on_meta(hf), config.lora,
                            "rlbench's built-in table of its config.json (not cached here; the hub was not asked)")
    try:
        hf = AutoConfig.from_pretrained(name, **kw)
    except OSError:
        known = ", ".join(KNOWN_SHAPES)
        raise ConfigError(f"--model {name}: cannot read its config.json (hub unreachable, or no such model); pass "
                          f"a local folder, or one of the built-in shapes: {known}") from None
    return shape_of(name, _on_meta(hf), config.lora, "its config.json on the Hugging Face hub")


# ----------------------------------------------------------------------------------------------- the arithmetic


def layer_activation_values(shape: ModelShape) -> int:
    """Values one decoder layer saves for the backward pass, per token (see the module docstring)."""
    return 8 * shape.hidden + 2 * shape.kv_heads * shape.head_dim + 4 * shape.intermediate


def estimate(config: RunConfig, shape: ModelShape, prompt_len: int, needs_reference: bool, minibatches: int = 1,
             gpu_memory_gib: float = 80.0, fsdp: bool = False) -> Plan:
    """Every term of the memory a run needs on one GPU, by phase (module docstring: the rules and the formulas);
    with ``fsdp``, the rollout copy too (then :meth:`Plan.sharded` gives the per-GPU numbers)."""
    P, L, h, V = shape.parameters, shape.layers, shape.hidden, shape.vocab
    lora = config.lora.rank > 0
    w_bytes = 2 if config.precision == "bf16-pure" else 4
    act = 4 if config.precision == "fp32" else 2
    weights_kind = {"fp32": "fp32", "bf16": "fp32 masters", "bf16-pure": "bf16"}[config.precision]
    state_bytes = (lambda dtype_bytes: 1) if config.optim.name == "adamw-8bit" else (lambda dtype_bytes: dtype_bytes)
    r = config.rollout
    micro = r.micro_batch_size or max(1, r.batch_size // max(1, minibatches))
    T = config.sampling.max_new_tokens
    seq = prompt_len + T
    terms = [Term("weights", P * w_bytes, f"{P:,} x {w_bytes} B ({weights_kind})", "resident", True)]
    if lora:
        A = shape.lora_parameters
        terms.append(Term("LoRA adapters", A * 4, f"{A:,} x 4 B (fp32)", "resident", True))
        trainable, t_bytes = A, 4
    else:
        trainable, t_bytes = P, w_bytes
    if needs_reference and not lora:
        terms.append(Term("reference copy", P * w_bytes, f"{P:,} x {w_bytes} B (a frozen copy for the KL)",
                          "resident", True))
    s_bytes = state_bytes(t_bytes)
    terms.append(Term(f"optimiser ({config.optim.name})", 2 * trainable * s_bytes,
                      f"2 states x {trainable:,} x {s_bytes} B", "resident", True))
    # generation
    if r.backend == "vllm":
        share = r.gpu_memory_utilization * gpu_memory_gib * GIB
        terms.append(Term("vLLM engine", share, f"rollout.gpu_memory_utilization {r.gpu_memory_utilization} x GPU",
                          "generate", False))
    else:
        per_token = 2 * L * shape.kv_heads * shape.head_dim * act
        gen = r.generation_batch_size
        terms.append(Term("KV cache", per_token * gen * seq,
                          f"2 x {L} layers x {shape.kv_heads} kv heads x {shape.head_dim} x {act} B x {gen} rows x "
                          f"{seq} tokens", "generate", False))
    if fsdp:  # on the CPU while updating
        terms.append(Term("rollout copy (FSDP)", P * w_bytes,
                          f"{P:,} x {w_bytes} B (full weights the generator decodes with)", "generate", False))
    # update
    terms.append(Term("gradients", trainable * t_bytes, f"{trainable:,} x {t_bytes} B", "update", True))
    if config.precision == "bf16":
        copies = P * 2 / (L if config.gradient_checkpointing else 1)
        how = f"{P:,} x 2 B" + (f" / {L} layers (checkpointing: one layer at a time)" if config.gradient_checkpointing
                                else " (bf16 casts of the weights, saved for the backward pass)")
        terms.append(Term("autocast weight copies", copies, how, "update", True))
    per_layer = layer_activation_values(shape)
    tokens = micro * seq
    if config.gradient_checkpointing:
        terms.append(Term("activations", tokens * (L * h + per_layer) * act,
                          f"{micro} rows x {seq} tokens x ({L} layers x {h} + {per_layer}) x {act} B (checkpointing)",
                          "update", False))
    else:
        terms.append(Term("activations", tokens * L * per_layer * act,
                          f"{micro} rows x {seq} tokens x {L} layers x {per_layer} x {act} B", "update", False))
    terms.append(Term("logits", micro * T * V * (act + 12), f"{micro} rows x {T} tokens x {V:,} x ({act} + 12) B",
                      "update", False))
    return Plan(shape, terms)


def fsdp_gpus_needed(plan: Plan, gpu_memory_gib: float) -> int | None:
    """The fewest GPUs across which FSDP brings the peak under ``gpu_memory_gib``; None if even MAX_FSDP do not."""
    for n in range(1, MAX_FSDP + 1):
        if plan.sharded(n).peak <= gpu_memory_gib * GIB:
            return n
    return None


def plan_run(config: RunConfig, prompt_len: int, gpu_memory_gib: float, shape: ModelShape | None = None,
             processes: int = 1, fsdp: bool = False) -> Plan:
    """The plan per GPU; with ``fsdp``, sharded across ``processes`` GPUs (data parallelism alone, ``processes``
    without ``fsdp``, keeps a whole copy per GPU: the same plan as one process)."""
    algo = config.algorithm
    plan = estimate(config, shape or model_shape(config), prompt_len, algo.needs_reference, algo.minibatches,
                    gpu_memory_gib, fsdp=fsdp)
    return plan.sharded(processes) if fsdp else plan


def _gib(value: float) -> str:
    return f"{value / GIB:8.2f}"


def _variant(config: RunConfig, **changes: Any) -> RunConfig:
    """A copy of ``config`` with ``gradient_checkpointing``, ``precision`` or ``lora_rank`` changed."""
    out = copy.deepcopy(config)
    for key, value in changes.items():
        if key == "lora_rank":
            out.lora.rank = value
        else:
            setattr(out, key, value)
    return out


def verdict(config: RunConfig, plan: Plan, prompt_len: int, gpu_memory_gib: float) -> list[str]:
    """Whether the run fits one GPU; if not, the smallest change that does: FSDP across N GPUs (with checkpointing
    if need be), LoRA (with checkpointing, then a bf16 base, if need be), or checkpointing alone."""
    limit = gpu_memory_gib * GIB
    peak = plan.peak
    if plan.gpus > 1:  # asked for FSDP across N GPUs (--processes N --fsdp)
        where = f"{plan.gpus} x {gpu_memory_gib:g} GiB GPUs with FSDP"
        if peak <= limit:
            return [f"verdict: fits on {where} (peak {peak / GIB:.1f} GiB per GPU, {peak / limit:.0%} of it)"]
        lines = [f"verdict: does NOT fit on {where} (peak {peak / GIB:.1f} GiB per GPU). Options:"]
    else:
        if peak <= limit:
            return [f"verdict: fits on one {gpu_memory_gib:g} GiB GPU (peak {peak / GIB:.1f} GiB, "
                    f"{peak / limit:.0%} of it)"]
        lines = [f"verdict: does NOT fit on one {gpu_memory_gib:g} GiB GPU (peak {peak / GIB:.1f} GiB). Options:"]
    shape = plan.shape

    def planned(fsdp: bool = False, **changes: Any) -> Plan:
        variant = _variant(config, **changes)
        return plan_run(variant, prompt_len, gpu_memory_gib, None if "lora_rank" in changes else shape, fsdp=fsdp)

    ckpt = {} if config.gradient_checkpointing else {"gradient_checkpointing": True}
    for extra, said in (({}, ""), (ckpt, " with gradient_checkpointing: true")):
        if said and not extra:
            continue
        sharded = planned(fsdp=True, **extra)
        n = fsdp_gpus_needed(sharded, gpu_memory_gib)
        if n is not None:
            lines.append(f"  - FSDP across {n} GPUs{said}: {sharded.sharded(n).peak / GIB:.1f} GiB per GPU (sharding "
                         f"divides the weights, gradients, optimiser states, reference and autocast copies by {n}; "
                         f"activations, logits, the KV cache and the generator's full rollout copy stay per GPU; "
                         f"rlbench plan --processes {n} --fsdp shows it)")
            break
    else:
        lines.append(f"  - FSDP: not even {MAX_FSDP} GPUs suffice: each GPU's activations, logits or KV cache alone are "
                     f"too large (lower rollout.micro_batch_size or rollout.generation_batch_size)")
    if not config.lora.rank:
        steps = [({"lora_rank": SUGGESTED_LORA_RANK}, f"lora.rank={SUGGESTED_LORA_RANK}")]
        if ckpt:
            steps.append(({**steps[-1][0], **ckpt}, steps[-1][1] + " + gradient_checkpointing: true"))
        if config.precision != "bf16-pure":
            steps.append(({**steps[-1][0], "precision": "bf16-pure"},
                          steps[-1][1] + " + precision: bf16-pure (a frozen bf16 base; peft keeps the adapters fp32)"))
        for changes, said in steps:
            lora_plan = planned(**changes)
            if lora_plan.peak <= limit or changes is steps[-1][0]:
                fits = "fits" if lora_plan.peak <= limit else "still does not fit"
                lines.append(f"  - LoRA ({said}): peak {lora_plan.peak / GIB:.1f} GiB, {fits} (gradients and "
                             f"optimiser states for the adapters only, no reference copy)")
                break
    if ckpt:
        ckpt_plan = planned(**ckpt)
        fits = "fits" if ckpt_plan.peak <= limit else "still does not fit"
        lines.append(f"  - gradient_checkpointing: true alone: peak {ckpt_plan.peak / GIB:.1f} GiB, {fits}")
    return lines


def report(config: RunConfig, plan: Plan, prompt_len: int, gpu_memory_gib: float) -> str:
    """The text ``rlbench plan`` prints after the resolved config."""
    s = plan.shape
    trainable = s.lora_parameters if config.lora.rank else s.parameters
    out = [
        f"model: {s.name}: {s.parameters:,} parameters ({s.layers} layers, hidden {s.hidden}, MLP {s.intermediate}, "
        f"{s.heads} heads / {s.kv_heads} KV heads of {s.head_dim}, vocabulary {s.vocab:,})",
        f"  shape from: {s.source}",
        f"  trainable: {trainable:,}" + (f" (LoRA rank {config.lora.rank})" if config.lora.rank else " (all)"),
        f"precision: {config.precision}; prompt {prompt_len} + max_new_tokens {config.sampling.max_new_tokens} tokens "
        f"(--prompt-len sets the prompt budget)",
        "",
        "estimated GPU memory per rank (GiB)" + (f", FSDP across {plan.gpus} GPUs" if plan.gpus > 1 else ""),
    ]
    for phase, title in (("resident", "always resident"), ("generate", "while generating"),
                         ("update", "while updating")):
        out.append(f"  {title}:")
        for t in (t for t in plan.terms if t.phase == phase):
            if t.sharded and plan.gpus > 1:
                out.append(f"    {t.name:<26}{_gib(t.bytes / plan.gpus)}   {t.how} / {plan.gpus} GPUs")
            else:
                out.append(f"    {t.name:<26}{_gib(t.bytes)}   {t.how}")
    out.append(f"  {'CUDA context and slack':<28}{_gib(CUDA_OVERHEAD)}   rule of thumb")
    out.append(f"  {'total while generating':<28}{_gib(plan.total('generate'))}")
    out.append(f"  {'total while updating':<28}{_gib(plan.total('update'))}")
    out.append(f"  {'peak':<28}{_gib(plan.peak)}")
    out.append("")
    out.extend(verdict(config, plan, prompt_len, gpu_memory_gib))
    return "\n".join(out)
