"""Run configuration: the typed sections of a run (rollout, optimiser, budget, evaluation, model, LoRA, tiny lab)
and their checks; :mod:`rlbench.core.configure` builds one from a YAML file and `--set key=value` overrides.

Every error is a :class:`ConfigError` whose message names the offending key; the CLI turns it into exit code 2.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass, field
from typing import Any, Literal

# an old precision value -> (its new name, why): the old one stops with exit 2 rather than silently meaning another
RENAMED_PRECISIONS = {
    "bf16-mixed": ("bf16", "bf16 autocast over fp32 master weights; bf16 weights updated in place are now bf16-pure")
}
MAX_CONFIG_BYTES = 1 << 20  # 1 MiB: a config is a few hundred bytes; anything near this is a mistake or an attack
# RunConfig keys that say how a run is executed or watched, not what it computes: never part of "the same run" or
# "comparable". A thread count changes only the order of float sums (the bits, as another machine would), not the
# experiment: `rlbench reproduce` compares results run with different ones.
EXECUTION_KEYS = ("report_to", "threads")


class ConfigError(ValueError):
    """A bad configuration key or value; the message names the key."""


@dataclass
class SamplingConfig:
    temperature: float = 1.0  # rollouts and sampled evaluation; the trainer's log-probs use the same temperature
    top_p: float = 1.0  # nucleus sampling; 1.0 = off
    max_new_tokens: int = 40  # a completion that reaches it without a stop token is truncated (and usually wrong)

    def validate(self) -> None:
        _check(
            self.temperature > 0, "sampling.temperature", self.temperature, "must be > 0 (use eval greedy for argmax)"
        )
        _check(0 < self.top_p <= 1, "sampling.top_p", self.top_p, "must be in (0, 1]")
        _check(self.max_new_tokens >= 1, "sampling.max_new_tokens", self.max_new_tokens, "must be >= 1")


@dataclass
class RolloutConfig:
    batch_size: int = 64  # completions per optimiser step (prompts per step x samples per prompt)
    samples_per_prompt: int = 4  # completions per prompt (GRPO's group size)
    generation_batch_size: int = 256  # rows decoded at once (rollouts and evaluation)
    micro_batch_size: int | None = None  # rows per forward/backward; None = a whole minibatch at once
    # 0 draws rollouts from the run seed's stream; another value from an independent one with the same prompts
    # (the A/A control of `rlbench compare --control` measures how far two such runs drift apart)
    sample_stream: int = 0
    # who generates: rlbench (the static-KV decoder), hf (transformers' model.generate), vllm (GPU only)
    backend: Literal["rlbench", "hf", "vllm"] = "rlbench"
    # truncated importance sampling: each token's advantage times min(pi_trainer / pi_sampler, tis_cap), correcting
    # for the sampler's numerics differing from the trainer's (verl, TRL do it for vLLM rollouts); null = off
    tis_cap: float | None = None
    gpu_memory_utilization: float = 0.4  # vllm: the share of the GPU its engine (weights + KV cache) may take
    max_model_len: int | None = None  # vllm: the longest prompt + completion it plans for; null = the model's own
    enforce_eager: bool = False  # vllm: no CUDA graphs (less memory and start-up time, slower decoding)
    # each completion samples from its own seed (derived from the step's and its row): its draws then do not depend on
    # which rows share its batch, so N data-parallel processes sample exactly what one process would (required there)
    seed_rows: bool = False

    @property
    def prompts_per_step(self) -> int:
        return self.batch_size // self.samples_per_prompt

    def validate(self) -> None:
        _check(self.samples_per_prompt >= 1, "rollout.samples_per_prompt", self.samples_per_prompt, "must be >= 1")
        _check(self.batch_size >= 1, "rollout.batch_size", self.batch_size, "must be >= 1")
        _check(
            self.generation_batch_size >= 1, "rollout.generation_batch_size", self.generation_batch_size, "must be >= 1"
        )
        _check(
            self.micro_batch_size is None or self.micro_batch_size >= 1,
            "rollout.micro_batch_size",
            self.micro_batch_size,
            "must be >= 1 or null",
        )
        _check(self.sample_stream >= 0, "rollout.sample_stream", self.sample_stream, "must be >= 0")
        _check(
            self.tis_cap is None or self.tis_cap >= 1,
            "rollout.tis_cap",
            self.tis_cap,
            "must be >= 1 or null: a cap below 1 would shrink every on-policy token's weight",
        )
        _check(
            0 < self.gpu_memory_utilization <= 1,
            "rollout.gpu_memory_utilization",
            self.gpu_memory_utilization,
            "must be in (0, 1]",
        )
        _check(
            self.max_model_len is None or self.max_model_len >= 1,
            "rollout.max_model_len",
            self.max_model_len,
            "must be >= 1 or null",
        )
        _check(
            self.batch_size % self.samples_per_prompt == 0,
            "rollout.batch_size",
            self.batch_size,
            f"must be a multiple of rollout.samples_per_prompt={self.samples_per_prompt}",
        )


@dataclass
class OptimConfig:
    # adamw: torch's AdamW; adamw-8bit: bitsandbytes' AdamW8bit (CUDA only; optimiser states in 8 bits, 1/4 the memory)
    name: Literal["adamw", "adamw-8bit"] = "adamw"
    lr: float = 1e-4  # the tiny lab's; 7B-class models want about 1e-6 (see configs/)
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.999
    grad_clip: float = 1.0  # 0 disables clipping
    warmup_steps: int = 0

    def validate(self) -> None:
        _check(self.lr > 0, "optim.lr", self.lr, "must be > 0")
        _check(self.weight_decay >= 0, "optim.weight_decay", self.weight_decay, "must be >= 0")
        _check(0 <= self.beta1 < 1, "optim.beta1", self.beta1, "must be in [0, 1)")
        _check(0 <= self.beta2 < 1, "optim.beta2", self.beta2, "must be in [0, 1)")
        _check(self.grad_clip >= 0, "optim.grad_clip", self.grad_clip, "must be >= 0")
        _check(self.warmup_steps >= 0, "optim.warmup_steps", self.warmup_steps, "must be >= 0")


@dataclass
class BudgetConfig:
    """Stop at whichever limit comes first; at least one must be set."""

    samples: int | None = None  # completions generated
    tokens: int | None = None  # completion tokens generated
    steps: int | None = None  # optimiser steps
    seconds: float | None = None  # wall time of the training loop

    def validate(self) -> None:
        limits = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        _check(
            any(v is not None for v in limits.values()),
            "budget",
            None,
            "set at least one of samples, tokens, steps, seconds",
        )
        for name, value in limits.items():
            _check(value is None or value > 0, f"budget.{name}", value, "must be > 0")


@dataclass
class EvalConfig:
    split: str = "test"
    limit: int | None = 500  # held-out problems; None = all
    # The paper's protocol: evaluate every `every` optimiser steps (plus before training and at the end of the
    # budget) and score a run by the mean of its last `final_mean_of` evaluations, which averages out the
    # step-to-step wobble a single final evaluation would rank on.
    every: int = 25  # optimiser steps between evaluations; 0 = only before training and at the end
    final_mean_of: int = 1  # K: a run's score is the mean over its last K evaluations after training started
    samples: int = 4  # sampled completions per problem (at the training temperature) besides the greedy one
    greedy: bool = True
    # The evaluations that do not enter the score (before training, and before the last K) only draw the learning
    # curve: they may use the first `curve_limit` problems and `curve_samples` samples (None = the scored settings).
    # Applies where the budget fixes the number of steps (samples or steps); otherwise every evaluation is full size.
    curve_limit: int | None = None
    curve_samples: int | None = None
    # the accuracy a comparison ranks by unless `rlbench report --metric` says otherwise (the paper's is greedy)
    rank_by: Literal["greedy", "sampled"] = "greedy"

    def validate(self) -> None:
        _check(self.limit is None or self.limit >= 1, "eval.limit", self.limit, "must be >= 1 or null")
        _check(self.every >= 0, "eval.every", self.every, "must be >= 0 (0 = only before training and at the end)")
        _check(self.final_mean_of >= 1, "eval.final_mean_of", self.final_mean_of, "must be >= 1")
        _check(self.samples >= 0, "eval.samples", self.samples, "must be >= 0")
        _check(
            self.samples == 0 or self.samples >= 4,
            "eval.samples",
            self.samples,
            "must be 0 (greedy only) or >= 4: one sample per problem makes sampled accuracy mostly sampling noise",
        )
        _check(
            self.curve_limit is None or self.curve_limit >= 1,
            "eval.curve_limit",
            self.curve_limit,
            "must be >= 1 or null",
        )
        _check(
            self.curve_limit is None or self.limit is None or self.curve_limit <= self.limit,
            "eval.curve_limit",
            self.curve_limit,
            f"must be <= eval.limit={self.limit} (the curve's problems are the first of the scored)",
        )
        _check(
            self.curve_samples is None or self.curve_samples >= 0,
            "eval.curve_samples",
            self.curve_samples,
            "must be >= 0 or null",
        )
        _check(
            self.rank_by != "sampled" or self.samples > 0,
            "eval.rank_by",
            self.rank_by,
            "needs eval.samples > 0 (no sampled evaluation to rank by)",
        )


@dataclass
class ModelArgs:
    """How a hub id or local folder is loaded: passed to ``AutoTokenizer`` and ``AutoModelForCausalLM``."""

    revision: str | None = None  # a hub branch, tag or commit; None = the default branch
    attn_implementation: str | None = None  # eager, sdpa, flash_attention_2, ...; None = transformers' choice
    trust_remote_code: bool = False  # run the repository's own modelling code (off: only transformers' classes)

    def validate(self) -> None:
        _check(
            self.revision is None or bool(self.revision.strip()),
            "model_args.revision",
            self.revision,
            "must be a branch, tag or commit, or null",
        )
        _check(
            self.attn_implementation is None or bool(self.attn_implementation.strip()),
            "model_args.attn_implementation",
            self.attn_implementation,
            "must be a name or null",
        )


# the attention and MLP projections of Llama, Mistral, Qwen2/3 (what TRL's and verl's LoRA examples target)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoraConfig:
    """LoRA adapters through peft (``pip install 'rlbench[lora]'``); rank 0 trains every weight."""

    rank: int = 0  # 0 = off
    alpha: float | None = None  # the adapters' scale is alpha / rank; None = 2 x rank (scale 2)
    dropout: float = 0.0  # > 0 puts the model in training mode, so the log-probs a loss sees are noisy
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))

    @property
    def scale_alpha(self) -> float:
        return self.alpha if self.alpha is not None else 2.0 * self.rank

    def validate(self) -> None:
        _check(self.rank >= 0, "lora.rank", self.rank, "must be >= 0 (0 = off)")
        _check(self.alpha is None or self.alpha > 0, "lora.alpha", self.alpha, "must be > 0 or null")
        _check(0 <= self.dropout < 1, "lora.dropout", self.dropout, "must be in [0, 1)")
        _check(
            self.rank == 0 or bool(self.target_modules),
            "lora.target_modules",
            self.target_modules,
            "must name at least one module (e.g. q_proj,v_proj)",
        )


@dataclass
class TinyConfig:
    """The tiny lab's model and its SFT warm-start (used when ``model: tiny``)."""

    # reference: the pinned warm-start that ships with rlbench (rlbench/run/tiny/reference, checked by its sha256), the
    # same bits on every machine; build: SFT with the recipe below, cached (float rounding differs between machines,
    # so a build is a different model on another machine: use it to study the recipe, not to reproduce a result)
    warmstart: Literal["reference", "build"] = "reference"
    layers: int = 4
    hidden: int = 128
    heads: int = 4
    mlp: int = 512
    sft_lr: float = 3e-3
    sft_batch: int = 32
    sft_warmup: int = 50
    # a fixed number of steps: no stop rule that a noisy check can move by hundreds of steps
    sft_steps: int = 500
    # constant: the learning rate stays at sft_lr after the warm-up; cosine: it follows a cosine that reaches 0 at
    # step sft_horizon (None: at sft_steps, fully annealed; longer: SFT stops with the rate still above 0)
    sft_schedule: Literal["constant", "cosine"] = "cosine"
    sft_horizon: int | None = 1200
    check_every: int = 50  # SFT steps between validation checks; they draw the learning curve, they never stop it
    seed: int = 0

    def validate(self) -> None:
        for name in ("layers", "hidden", "heads", "mlp", "sft_batch", "check_every", "sft_steps"):
            _check(getattr(self, name) >= 1, f"tiny.{name}", getattr(self, name), "must be >= 1")
        _check(self.sft_warmup >= 0, "tiny.sft_warmup", self.sft_warmup, "must be >= 0")
        _check(
            self.sft_horizon is None or self.sft_horizon >= self.sft_steps,
            "tiny.sft_horizon",
            self.sft_horizon,
            f"must be >= tiny.sft_steps={self.sft_steps} or null",
        )
        _check(
            self.hidden % self.heads == 0, "tiny.hidden", self.hidden, f"must be divisible by tiny.heads={self.heads}"
        )
        _check(self.sft_lr > 0, "tiny.sft_lr", self.sft_lr, "must be > 0")


@dataclass
class RunConfig:
    model: str = "tiny"  # "tiny" (the tiny lab's warm-start), a hub id, or a local directory
    algo: dict[str, Any] = field(default_factory=lambda: {"name": "reinforce"})  # name + hyperparameters
    task: dict[str, Any] = field(default_factory=lambda: {"name": "arith"})  # name + task options
    seed: int = 0  # every random choice of the run derives from it (prompt order, sampling, minibatches)
    model_args: ModelArgs = field(default_factory=ModelArgs)
    # fp32; bf16 = bf16 autocast over fp32 master weights; bf16-pure = bf16 weights updated in place (docs/real-models.md)
    precision: Literal["fp32", "bf16", "bf16-pure"] = "fp32"
    allow_stuck_bf16: bool = False  # run bf16-pure even when optim.lr is too small to change most bf16 weights
    gradient_checkpointing: bool = False  # recompute each layer's activations in the backward pass: memory for time
    lora: LoraConfig = field(default_factory=LoraConfig)
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    threads: int | None = None  # torch CPU threads; None leaves torch's default
    checkpoint_every: int = 10  # optimiser steps between resumable checkpoints (0 = only at the end)
    # also write a from_pretrained-loadable checkpoint-N/ every checkpoint_every steps, keeping the last K (0 = none)
    keep_checkpoints: int = 0
    out: str | None = None  # run directory; None = runs/<task>-<algo>-s<seed>
    # experiment trackers the run also logs to (rlbench.run.tracking): where its numbers are sent, not what it computes,
    # so they are left out of its fingerprint and of every "is this the same run?" check (EXECUTION_KEYS)
    report_to: list[Literal["tensorboard", "wandb", "trackio"]] = field(default_factory=list)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    budget: BudgetConfig = field(default_factory=lambda: BudgetConfig(samples=6400))
    eval: EvalConfig = field(default_factory=EvalConfig)
    tiny: TinyConfig = field(default_factory=TinyConfig)

    @property
    def algo_name(self) -> str:
        return self.algo["name"]

    @property
    def task_name(self) -> str:
        return self.task["name"]

    @property
    def algorithm(self) -> Any:
        """The algorithm :func:`build_run_config` validated: its typed options are the very object the loss reads."""
        built = getattr(self, "_algorithm", None)
        if built is None:
            raise ConfigError("algo: this config was not built by build_run_config, so its options are not validated")
        if {"name": built.name, **dataclasses.asdict(built.config)} != self.algo:
            raise ConfigError("algo: changed after validation; build the config again with build_run_config")
        return built

    def validate(self) -> None:
        for section in (
            self.rollout,
            self.sampling,
            self.optim,
            self.budget,
            self.eval,
            self.tiny,
            self.model_args,
            self.lora,
        ):
            section.validate()
        _check(self.keep_checkpoints >= 0, "keep_checkpoints", self.keep_checkpoints, "must be >= 0 (0 = none)")
        _check(
            self.keep_checkpoints == 0 or self.checkpoint_every > 0,
            "keep_checkpoints",
            self.keep_checkpoints,
            "needs checkpoint_every > 0 (checkpoint-N/ folders are written every checkpoint_every steps)",
        )
        _check(
            self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
            "device",
            self.device,
            "must be auto, cpu or cuda[:N]",
        )
        _check(self.threads is None or self.threads >= 1, "threads", self.threads, "must be >= 1")
        _check(self.checkpoint_every >= 0, "checkpoint_every", self.checkpoint_every, "must be >= 0")
        for name in self.report_to:  # each tracker's package (and extra) is named after it; found, not imported
            _check(
                importlib.util.find_spec(name) is not None,
                "report_to",
                self.report_to,
                f"{name} is not installed; pip install 'rlbench[{name}]'",
            )
        for key in ("algo", "task"):
            name = getattr(self, key).get("name")
            _check(
                isinstance(name, str) and bool(name),
                f"{key}.name",
                name,
                "must name a registered " + ("algorithm" if key == "algo" else "task"),
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check(ok: bool, key: str, value: Any, why: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r}: {why}" if value is not None else f"{key}: {why}")
