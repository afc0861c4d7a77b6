"""Greedy autoregressive decoding with a KV cache: the LLaMA3 / Qwen2.5 rows of the paper's tables.

Two modes, so the AR rows are not under-tuned: the plain HF loop (`DynamicCache`, what the baseline papers ran) and
gpt-fast's (`cache: static` preallocates the KV cache; `compile: true` adds `torch.compile` with CUDA graphs for the
one-token decode step, the part that dominates).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache, StaticCache

from d2f_core.decode.base import Decoder, Generation, param, register_decoder


STOP_WINDOW = 16  # tokens decoded to look for a stop string: enough for any stop string, O(1) per step


@dataclass(frozen=True)
class ARParams:
    cache: str = param("dynamic", choices=("dynamic", "static"))
    compile: bool = False  # torch.compile the decode step (static cache only)


@register_decoder("ar")
class ARDecoder(Decoder):
    Params = ARParams

    def check(self) -> None:
        if self.lm.family != "ar":
            raise ValueError(f"decoder 'ar' needs an autoregressive model; {self.lm.path} is a {self.lm.family} model")
        if self.p.compile and self.p.cache != "static":
            raise ValueError("ar.compile needs ar.cache: static (compiled steps need fixed cache shapes)")
        self._static, self._static_len, self._step = None, 0, self.lm.model

    def _cache(self, length: int):
        if self.p.cache == "dynamic":
            return DynamicCache(config=self.lm.model.config)
        if self._static_len < length:  # grows rarely; a new shape recompiles
            self._static = StaticCache(config=self.lm.model.config, max_cache_len=length)
            self._static_len = length
            if self.p.compile:
                self._step = torch.compile(self.lm.model, mode="reduce-overhead", fullgraph=True)
        self._static.reset()
        return self._static

    @torch.inference_mode()
    def generate(self, prompt_ids: list[int], max_new_tokens: int, stop: list[str] = ()) -> Generation:
        model, tok = self.lm.model, self.lm.tokenizer
        cache = self._cache(len(prompt_ids) + max_new_tokens)
        ids = torch.tensor([prompt_ids], device=self.lm.device)  # prefill: [1, P]
        out: list[int] = []
        for step in range(max_new_tokens):
            forward = model if step == 0 else self._step  # the prefill's shape varies: never compiled
            start = len(prompt_ids) + step - 1 if step else 0
            logits = forward(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1,
                             cache_position=torch.arange(start, start + ids.shape[1], device=ids.device)).logits
            out.append(int(logits[0, -1].argmax()))
            if out[-1] == self.lm.eos_id or (stop and any(s in tok.decode(out[-STOP_WINDOW:]) for s in stop)):
                break
            ids = ids.new_tensor([[out[-1]]])  # decode step: [1, 1]
        forwards = len(out)
        trace = [(i, i, 0) for i in range(len(out))]
        return self.finish(out, stop, forwards, len(prompt_ids) + forwards - 1, trace)
