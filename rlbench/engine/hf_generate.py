"""The ``hf`` rollout backend: ``model.generate`` from ``transformers`` on the training model (the reference).

Slower than the ``rlbench`` decoder, but it is the implementation everyone trusts: greedy completions of the two
backends must be identical (tests/test_backends.py). Every generation setting is passed explicitly, so a checkpoint's
``generation_config.json`` (Qwen2.5-Instruct ships top_k 20, top_p 0.8, repetition_penalty 1.05) cannot change what
the comparison samples; only its EOS ids are kept, as stop tokens.

Sampling log-probs are taken as decoding goes (:class:`SampledLogprobs`): each step's raw logits are held until the
next step reveals the token drawn from them, so memory holds one ``(batch, vocab)`` step, never one per new token
(``output_logits=True`` kept them all: tens of GiB at 1,024 new tokens and a 152k vocabulary).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from rlbench.engine.generation import Generation, PolicyBackend, assemble, concat, left_pad, stop_ids, token_logprobs


class SampledLogprobs(LogitsProcessor):
    """Records ``log softmax(logits / temperature)`` of each sampled token, one step behind: called with step t's
    logits, it scores the token step t-1 drew (now the last column of ``input_ids``) on step t-1's logits, then keeps
    step t's. :meth:`finish` scores the last token. It returns the scores unchanged.

    ``model.generate`` runs custom processors after its own default ones (identity at the explicit settings
    :class:`HFGenerate` passes) and before the sampling warpers (temperature, top-p): what it sees is the raw logits
    ``output_logits`` returned."""

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature
        self.previous: torch.Tensor | None = None
        self.steps: list[torch.Tensor] = []

    def _score(self, tokens: torch.Tensor) -> None:
        if self.previous is not None:
            self.steps.append(token_logprobs(self.previous, tokens, self.temperature))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._score(input_ids[:, -1])
        self.previous = scores.detach().clone()  # a copy: a later processor may write into ``scores``
        return scores

    def finish(self, last_tokens: torch.Tensor) -> torch.Tensor:
        """``[batch, steps]`` log-probs of every sampled token, the last one (``last_tokens``) included."""
        self._score(last_tokens)
        self.previous = None
        return torch.stack(self.steps, dim=1)


class HFGenerate(PolicyBackend):
    seeds_rows = False  # model.generate draws every row from one stream

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
        if not greedy and isinstance(seed, Sequence):
            raise ValueError(
                "rollout.backend=hf: model.generate draws every row from one stream and cannot seed rows "
                "one by one (rollout.seed_rows); use the rlbench or vllm backend"
            )
        chunk = self.batch_size or len(prompt_ids)
        device = self.policy.device
        # model.generate samples from torch's global generator: seed a forked one, leaving the caller's untouched
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed if seed is not None else torch.seed())
            parts = [
                self._generate(prompt_ids[i : i + chunk], temperature, top_p, max_new_tokens, greedy)
                for i in range(0, len(prompt_ids), chunk)
            ]
        return concat(parts, self.policy.tokenizer.pad_token_id)

    def _generate(self, prompt_ids, temperature, top_p, max_new_tokens, greedy) -> Generation:
        policy, tok = self.policy, self.policy.tokenizer
        model = policy.model
        stops, pad = stop_ids(tok, model), tok.pad_token_id
        ids, mask = left_pad(prompt_ids, pad, policy.device)
        sampling = {} if greedy else {"temperature": temperature, "top_p": top_p, "top_k": 0}  # 0: no top-k cut
        settings = GenerationConfig(
            do_sample=not greedy,
            repetition_penalty=1.0,
            max_new_tokens=max_new_tokens,
            min_new_tokens=0,
            eos_token_id=list(stops),
            pad_token_id=pad,
            bos_token_id=tok.bos_token_id,
            return_dict_in_generate=True,
            **sampling,
        )
        # the raw logits of each step, tempered as the trainer tempers them (top-p does not renormalise)
        recorder = None if greedy else SampledLogprobs(temperature)
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode(), policy.autocast():
                out = model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    generation_config=settings,
                    logits_processor=LogitsProcessorList([recorder] if recorder else []),
                )
        finally:
            model.train(was_training)
        tokens = out.sequences[:, ids.shape[1] :]
        logprobs = None if recorder is None else recorder.finish(tokens[:, -1])
        return assemble(ids, mask, tokens, stops, pad, tok, logprobs)
