"""Greedy autoregressive decoding with a KV cache: the LLaMA3 / Qwen2.5 rows of the paper's tables."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from d2f_core.decode.base import Decoder, Generation, register_decoder


STOP_WINDOW = 16  # tokens decoded to look for a stop string: enough for any stop string, O(1) per step


@dataclass(frozen=True)
class ARParams:
    pass


@register_decoder("ar")
class ARDecoder(Decoder):
    Params = ARParams

    def check(self) -> None:
        if self.lm.family != "ar":
            raise ValueError(f"decoder 'ar' needs an autoregressive model; {self.lm.path} is a {self.lm.family} model")

    @torch.inference_mode()
    def generate(self, prompt_ids: list[int], max_new_tokens: int, stop: list[str] = ()) -> Generation:
        model, tok = self.lm.model, self.lm.tokenizer
        cache = DynamicCache(config=model.config)
        ids = torch.tensor([prompt_ids], device=self.lm.device)  # prefill: [1, P]
        out: list[int] = []
        for step in range(max_new_tokens):
            logits = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
            out.append(int(logits[0, -1].argmax()))
            if out[-1] == self.lm.eos_id or (stop and any(s in tok.decode(out[-STOP_WINDOW:]) for s in stop)):
                break
            ids = ids.new_tensor([[out[-1]]])  # decode step: [1, 1]
        forwards = len(out)
        trace = [(i, i, 0) for i in range(len(out))]
        return self.finish(out, stop, forwards, len(prompt_ids) + forwards - 1, trace)
