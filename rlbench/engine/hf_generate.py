"""The ``hf`` rollout backend: ``model.generate`` from ``transformers`` on the training model (the reference).

Slower than the ``rlbench`` decoder, but it is the implementation everyone trusts: greedy completions of the two
backends must be identical (tests/test_backends.py). Every generation setting is passed explicitly, so a checkpoint's
``generation_config.json`` (Qwen2.5-Instruct ships top_k 20, top_p 0.8, repetition_penalty 1.05) cannot change what
the comparison samples; only its EOS ids are kept, as stop tokens.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import GenerationConfig, PreTrainedTokenizerBase

from rlbench.engine.generation import Generation, assemble, concat, left_pad, stop_ids, token_logprobs
from rlbench.engine.policy import Policy


class HFGenerate:
    def __init__(self, policy: Policy, batch_size: int | None = None, model_path: str | None = None) -> None:
        self.policy = policy
        self.batch_size = batch_size

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.policy.tokenizer

    def sync_weights(self, policy: Policy) -> None:
        self.policy = policy

    def sleep(self) -> None:
        pass

    def generate(
        self, prompt_ids: Sequence[list[int]], *, temperature: float, top_p: float, max_new_tokens: int,
        greedy: bool = False, seed: int | Sequence[int] | None = None,
    ) -> Generation:
        if not greedy and isinstance(seed, Sequence):
            raise ValueError("rollout.backend=hf: model.generate draws every row from one stream and cannot seed rows "
                             "one by one (rollout.seed_rows); use the rlbench or vllm backend")
        chunk = self.batch_size or len(prompt_ids)
        device = self.policy.device
        # model.generate samples from torch's global generator: seed a forked one, leaving the caller's untouched
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed if seed is not None else torch.seed())
            parts = [self._generate(prompt_ids[i : i + chunk], temperature, top_p, max_new_tokens, greedy)
                     for i in range(0, len(prompt_ids), chunk)]
        return concat(parts, self.policy.tokenizer.pad_token_id)

    def _generate(self, prompt_ids, temperature, top_p, max_new_tokens, greedy) -> Generation:
        policy, tok = self.policy, self.policy.tokenizer
        model = policy.model
        stops, pad = stop_ids(tok, model), tok.pad_token_id
        ids, mask = left_pad(prompt_ids, pad, policy.device)
        sampling = {} if greedy else {"temperature": temperature, "top_p": top_p, "top_k": 0}  # 0: no top-k cut
        settings = GenerationConfig(
            do_sample=not greedy, repetition_penalty=1.0, max_new_tokens=max_new_tokens, min_new_tokens=0,
            eos_token_id=list(stops), pad_token_id=pad, bos_token_id=tok.bos_token_id,
            return_dict_in_generate=True, output_logits=not greedy, **sampling,
        )
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode(), policy.autocast():
                out = model.generate(input_ids=ids, attention_mask=mask, generation_config=settings)
        finally:
            model.train(was_training)
        tokens = out.sequences[:, ids.shape[1] :]
        logprobs = None
        if not greedy:  # the raw logits of each step, tempered as the trainer tempers them (top-p does not renormalise)
            logprobs = torch.stack([token_logprobs(step, tokens[:, t], temperature)
                                    for t, step in enumerate(out.logits)], dim=1)
        return assemble(ids, mask, tokens, stops, pad, tok, logprobs)
