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
  saves, the completion logits, and under ``bf16`` autocast the bf16 weight copies saved for the backward pass;
- PPO's **critic**: a value model (``critic: model``, the default) is a full copy of the transformer, so it adds its
  weights, AdamW states, gradients, autocast copies and activations again; a value head adds ``hidden + 1`` weights;
- **decoding logits**: each decoding step's ``rows x vocab`` logits and the fp32 copies sampling derives from them
  (the ``hf`` backend holds one step more until the next shows the drawn token; no backend keeps every step's).

Rules of thumb (estimates, not measurements; the allocator adds fragmentation on top):

- activations: a Llama/Qwen2 decoder layer saves about ``8 x hidden + 2 x kv_dim + 4 x intermediate`` values per
  token (the inputs of its two norms and of the q/k/v and o projections, attention's q, k, v and output, SwiGLU's
  gate, up, activation and down-projection input; SDPA and flash attention keep no ``seq x seq`` scores) over
  ``micro_batch x (prompt + max_new_tokens)`` tokens. Under ``bf16`` autocast over fp32 weights the residual stream
  and the norms stay fp32 (``4 x hidden`` fp32 values) and each projection saves its own bf16 cast of its input
  (``7 x hidden + 2 x kv_dim + 4 x intermediate`` bf16 values). With gradient checkpointing only each layer's input
  stays (``hidden`` values per token per layer, fp32 under autocast) plus one layer's full set during its
  recomputation; checked against measured peaks on the CPU in tests/test_memory_plan.py;
- logits: ``micro_batch x max_new_tokens x vocab`` values in the activation dtype plus about three fp32 copies
  (``float()``, the softmax for the entropy, their gradient): ``act_bytes + 12`` bytes each;
- CUDA context and allocator slack: :data:`CUDA_OVERHEAD`.

FSDP (full sharding) across N GPUs divides the weights, gradients, optimiser states, the reference and the autocast
copies by N; the activations, logits and KV cache of each GPU's own micro-batch stay as they are. It adds one term:
the **rollout copy**, the full weights (in the weights' dtype) each GPU's generator decodes with, since a sharded model
cannot decode on one rank alone (rlbench/engine/sharding.py); it sleeps in CPU memory during the update. ``rlbench
plan --processes N --fsdp`` shows that layout, and the **host memory** it takes: every model loads whole on the CPU
before it is sharded, and the rollout copy sleeps there, per rank (times the ranks on the machine).

Over 400 lines on purpose: the estimate, the verdict that tries the levers (LoRA, checkpointing, micro-batch, FSDP)
on it and the printed report are one model of memory, whose terms must agree line for line; this docstring, the
model's documentation, is a tenth of the file.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from rlbench.core.config import RunConfig
from rlbench.run.model_shape import KNOWN_SHAPES, ModelShape, model_shape  # noqa: F401  (the shapes the plan is of)

GIB = 2**30
CUDA_OVERHEAD = 1.5 * GIB  # CUDA context (~0.5 GiB) and allocator slack: a rule of thumb
MAX_FSDP = 64  # the largest GPU count the verdict suggests
SUGGESTED_LORA_RANK = 16


@dataclass
class Term:
    name: str
    bytes: float
    how: str  # the formula, with its numbers
    phase: str  # "resident", "generate", "update"; or "host": CPU memory, outside the GPU totals
    sharded: bool  # FSDP divides it by the number of GPUs


@dataclass
class Plan:
    shape: ModelShape
    terms: list[Term]
    gpus: int = 1
    notes: list[str] = field(default_factory=list)

    def total(self, phase: str) -> float:
        """Bytes per GPU during ``phase`` (resident terms included, and the CUDA overhead)."""
        return CUDA_OVERHEAD + sum(
            t.bytes / (self.gpus if t.sharded else 1) for t in self.terms if t.phase in ("resident", phase)
        )

    @property
    def peak(self) -> float:
        return max(self.total("generate"), self.total("update"))

    def sharded(self, gpus: int) -> Plan:
        return Plan(self.shape, self.terms, gpus, self.notes)


# ----------------------------------------------------------------------------------------------- the arithmetic


def layer_activation_values(shape: ModelShape) -> int:
    """Values one decoder layer saves for the backward pass, per token, all in one dtype (see the module docstring)."""
    return 8 * shape.hidden + 2 * shape.kv_heads * shape.head_dim + 4 * shape.intermediate


def layer_activation_bytes(shape: ModelShape, precision: str) -> tuple[int, str]:
    """Bytes one decoder layer saves per token at ``precision``, and the formula. Under ``bf16`` autocast over fp32
    weights the residual stream and the norms stay fp32 (each norm saves its input and normalised value: ``4 x
    hidden`` fp32) while each projection saves its own bf16 cast of its input (q, k, v: 3 casts; gate, up: 2):
    ``7 x hidden + 2 x kv_dim + 4 x intermediate`` bf16. ``bf16-pure`` norms upcast to fp32 (``2 x hidden``)."""
    h, kv, mlp = shape.hidden, shape.kv_heads * shape.head_dim, shape.intermediate
    if precision == "fp32":
        values = layer_activation_values(shape)
        return values * 4, f"{values:,} x 4 B"
    if precision == "bf16":
        low, high = 7 * h + 2 * kv + 4 * mlp, 4 * h
    else:
        low, high = layer_activation_values(shape), 2 * h
    return low * 2 + high * 4, f"({low:,} x 2 B + {high:,} x 4 B)"


def estimate(
    config: RunConfig,
    shape: ModelShape,
    prompt_len: int,
    needs_reference: bool,
    minibatches: int = 1,
    gpu_memory_gib: float = 80.0,
    fsdp: bool = False,
    critic: str | None = None,
) -> Plan:
    """Every term of the memory a run needs on one GPU, by phase (module docstring: the rules and the formulas);
    with ``fsdp``, the rollout copy too (then :meth:`Plan.sharded` gives the per-GPU numbers). ``critic``: PPO's
    value model (``"model"``, a copy of the transformer) or value head (``"head"``); None without one."""
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
        terms.append(
            Term("reference copy", P * w_bytes, f"{P:,} x {w_bytes} B (a frozen copy for the KL)", "resident", True)
        )
    s_bytes = state_bytes(t_bytes)
    terms.append(
        Term(
            f"optimiser ({config.optim.name})",
            2 * trainable * s_bytes,
            f"2 states x {trainable:,} x {s_bytes} B",
            "resident",
            True,
        )
    )
    # the critic: a value model is a copy of the transformer without the LM head (in the weights' dtype) plus an fp32
    # scalar head; a value head is that head alone. Both train at full rank, LoRA or not.
    backbone = P - shape.head_parameters if critic == "model" else 0
    head = h + 1 if critic else 0
    critic_bytes = backbone * w_bytes + head * 4
    if critic:
        what = (
            f"{backbone:,} x {w_bytes} B (a copy of the transformer) + {head:,} x 4 B (its head)"
            if backbone
            else f"{head:,} x 4 B (a value head on the policy)"
        )
        terms.append(Term(f"critic ({critic})", critic_bytes, what, "resident", True))
        terms.append(
            Term(
                f"critic optimiser ({config.optim.name})",
                2 * (backbone * state_bytes(w_bytes) + head * state_bytes(4)),
                "2 states per critic weight",
                "resident",
                True,
            )
        )
    # generation
    if r.backend == "vllm":
        share = r.gpu_memory_utilization * gpu_memory_gib * GIB
        terms.append(
            Term(
                "vLLM engine",
                share,
                f"rollout.gpu_memory_utilization {r.gpu_memory_utilization} x GPU",
                "generate",
                False,
            )
        )
    else:
        per_token = 2 * L * shape.kv_heads * shape.head_dim * act
        gen = r.generation_batch_size
        terms.append(
            Term(
                "KV cache",
                per_token * gen * seq,
                f"2 x {L} layers x {shape.kv_heads} kv heads x {shape.head_dim} x {act} B x {gen} rows x {seq} tokens",
                "generate",
                False,
            )
        )
        # each decoding step's logits: the float copy and what sampling derives from it (the hf backend also holds
        # the previous step's, until the next step shows which token was drawn)
        copies = 4 + (r.backend == "hf")
        terms.append(
            Term(
                "decoding logits",
                gen * V * 4 * copies,
                f"{gen} rows x {V:,} x 4 B x {copies} fp32 copies",
                "generate",
                False,
            )
        )
    if fsdp:  # on the CPU while updating
        terms.append(
            Term(
                "rollout copy (FSDP)",
                P * w_bytes,
                f"{P:,} x {w_bytes} B (full weights the generator decodes with)",
                "generate",
                False,
            )
        )
        # host memory, per rank: every model loads whole on the CPU before it is sharded, beside the rollout copy
        models = 2 + (needs_reference and not lora) + (critic == "model")
        terms.append(
            Term(
                "models loaded whole, then sharded",
                models * P * w_bytes,
                f"{models} models (policy, rollout copy{', reference' if needs_reference and not lora else ''}"
                f"{', critic' if critic == 'model' else ''}) x {P:,} x {w_bytes} B, at start-up",
                "host",
                False,
            )
        )
        terms.append(Term("rollout copy, asleep", P * w_bytes, f"{P:,} x {w_bytes} B while updating", "host", False))
    # update
    terms.append(Term("gradients", trainable * t_bytes, f"{trainable:,} x {t_bytes} B", "update", True))
    if config.precision == "bf16":
        copies = P * 2 / (L if config.gradient_checkpointing else 1)
        how = f"{P:,} x 2 B" + (
            f" / {L} layers (checkpointing: one layer at a time)"
            if config.gradient_checkpointing
            else " (bf16 casts of the weights, saved for the backward pass)"
        )
        terms.append(Term("autocast weight copies", copies, how, "update", True))
    tokens = micro * seq
    activations, how = activation_term(shape, config.precision, config.gradient_checkpointing)
    terms.append(Term("activations", tokens * activations, f"{micro} rows x {seq} tokens x {how}", "update", False))
    if backbone:  # the value model runs the same layers again (checkpointing recomputes one layer of either at once)
        activations, how = activation_term(shape, config.precision, config.gradient_checkpointing, recomputed=False)
        terms.append(
            Term("critic activations", tokens * activations, f"{micro} rows x {seq} tokens x {how}", "update", False)
        )
    if backbone:
        terms.append(
            Term(
                "critic gradients", backbone * w_bytes + head * 4, f"{backbone + head:,} critic weights", "update", True
            )
        )
        if config.precision == "bf16":
            terms.append(
                Term(
                    "critic autocast copies",
                    backbone * 2 / (L if config.gradient_checkpointing else 1),
                    f"{backbone:,} x 2 B" + (f" / {L} layers" if config.gradient_checkpointing else ""),
                    "update",
                    True,
                )
            )
    terms.append(
        Term(
            "logits", micro * T * V * (act + 12), f"{micro} rows x {T} tokens x {V:,} x ({act} + 12) B", "update", False
        )
    )
    return Plan(shape, terms)


def activation_term(
    shape: ModelShape, precision: str, checkpointing: bool, recomputed: bool = True
) -> tuple[float, str]:
    """Bytes per token the backward pass keeps for one model's layers, and the formula: every layer's saved values,
    or with checkpointing each layer's input (in the residual stream's dtype) and, if ``recomputed``, the one layer's
    values being recomputed (a second model's backward runs after, not beside, the first's)."""
    L, h = shape.layers, shape.hidden
    layer, how = layer_activation_bytes(shape, precision)
    if checkpointing:
        stream = 2 if precision == "bf16-pure" else 4  # fp32 under autocast: the residual stream is never cast
        if not recomputed:
            return L * h * stream, f"{L} layers x {h} x {stream} B (checkpointing: layer inputs)"
        return L * h * stream + layer, f"({L} layers x {h} x {stream} B + {how}) (checkpointing)"
    return L * layer, f"{L} layers x {how}"


def fsdp_gpus_needed(plan: Plan, gpu_memory_gib: float) -> int | None:
    """The fewest GPUs across which FSDP brings the peak under ``gpu_memory_gib``; None if even MAX_FSDP do not."""
    for n in range(1, MAX_FSDP + 1):
        if plan.sharded(n).peak <= gpu_memory_gib * GIB:
            return n
    return None


def plan_run(
    config: RunConfig,
    prompt_len: int,
    gpu_memory_gib: float,
    shape: ModelShape | None = None,
    processes: int = 1,
    fsdp: bool = False,
) -> Plan:
    """The plan per GPU; with ``fsdp``, sharded across ``processes`` GPUs (data parallelism alone, ``processes``
    without ``fsdp``, keeps a whole copy per GPU: the same plan as one process)."""
    algo = config.algorithm
    critic = ("model" if algo.critic_model else "head") if algo.needs_values else None
    plan = estimate(
        config,
        shape or model_shape(config),
        prompt_len,
        algo.needs_reference,
        algo.minibatches,
        gpu_memory_gib,
        fsdp=fsdp,
        critic=critic,
    )
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
            return [
                f"verdict: fits on one {gpu_memory_gib:g} GiB GPU (peak {peak / GIB:.1f} GiB, {peak / limit:.0%} of it)"
            ]
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
        if n == 1:  # fits one GPU as it is: the other options say how
            break
        if n is not None:
            lines.append(
                f"  - FSDP across {n} GPUs{said}: {sharded.sharded(n).peak / GIB:.1f} GiB per GPU (sharding "
                f"divides the weights, gradients, optimiser states, reference and autocast copies by {n}; "
                f"activations, logits, the KV cache and the generator's full rollout copy stay per GPU; "
                f"rlbench plan --processes {n} --fsdp shows it)"
            )
            break
    else:
        lines.append(
            f"  - FSDP: not even {MAX_FSDP} GPUs suffice: each GPU's activations, logits or KV cache alone are "
            f"too large (lower rollout.micro_batch_size or rollout.generation_batch_size)"
        )
    if not config.lora.rank:
        steps = [({"lora_rank": SUGGESTED_LORA_RANK}, f"lora.rank={SUGGESTED_LORA_RANK}")]
        if ckpt:
            steps.append(({**steps[-1][0], **ckpt}, steps[-1][1] + " + gradient_checkpointing: true"))
        if config.precision != "bf16-pure":
            steps.append(
                (
                    {**steps[-1][0], "precision": "bf16-pure"},
                    steps[-1][1] + " + precision: bf16-pure (a frozen bf16 base; peft keeps the adapters fp32)",
                )
            )
        for changes, said in steps:
            lora_plan = planned(**changes)
            if lora_plan.peak <= limit or changes is steps[-1][0]:
                fits = "fits" if lora_plan.peak <= limit else "still does not fit"
                lines.append(
                    f"  - LoRA ({said}): peak {lora_plan.peak / GIB:.1f} GiB, {fits} (gradients and "
                    f"optimiser states for the adapters only, no reference copy)"
                )
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
    for phase, title in (
        ("resident", "always resident"),
        ("generate", "while generating"),
        ("update", "while updating"),
    ):
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
    host = [t for t in plan.terms if t.phase == "host"]
    if host:
        out.append(f"host (CPU) memory per rank, x {plan.gpus} ranks per machine (GiB):")
        for t in host:
            out.append(f"    {t.name:<34}{_gib(t.bytes)}   {t.how}; {_gib(t.bytes * plan.gpus).strip()} per machine")
    out.append("")
    out.extend(verdict(config, plan, prompt_len, gpu_memory_gib))
    return "\n".join(out)
