"""Greedy autoregressive decoding with a KV cache: the LLaMA3 / Qwen2.5 rows of the paper's tables.

Two modes, so the AR rows are not under-tuned: the plain HF loop (`DynamicCache`, what the baseline papers ran) and
gpt-fast's (`cache: static` preallocates the KV cache; `compile: true` adds `torch.compile` with CUDA graphs for the
one-token decode step, the part that dominates).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache, StaticCache

from d2f_core.decode.base import Decoder, Generation, param
from d2f_core.decode.primitives import pad_token, right_padded
from d2f_core.model.forward import backbone, lm_head
from d2f_core.model.masks import additive


STOP_WINDOW = 16  # tokens decoded to look for a stop string: enough for any stop string, O(1) per step


@dataclass(frozen=True)
class ARParams:
    cache: str = param("dynamic", choices=("dynamic", "static"))
    compile: bool = False  # torch.compile the decode step (static cache only)


class ARDecoder(Decoder):
    Params = ARParams

    def check(self) -> None:
        if self.lm.family != "ar":
            raise ValueError(f"decoder 'ar' needs an autoregressive model; {self.lm.path} is a {self.lm.family} model")
        if self.p.compile and self.p.cache != "static":
            raise ValueError("ar.compile needs ar.cache: static (compiled steps need fixed cache shapes)")
        self._static, self._static_len, self._static_rows = None, 0, 0
        self._step = backbone(self.lm.model).model
        self.mask_dtype, self.pad = backbone(self.lm.model).dtype, pad_token(self.lm)

    def _cache(self, rows: int, length: int):
        if self.p.cache == "dynamic":
            return DynamicCache(config=self.lm.model.config)
        if self._static_len < length or self._static_rows != rows:  # rare; a new shape recompiles
            self._static = StaticCache(config=self.lm.model.config, max_cache_len=length)
            self._static_len, self._static_rows = length, rows
            if self.p.compile:
                self._step = torch.compile(backbone(self.lm.model).model, mode="reduce-overhead", fullgraph=True)
        self._static.reset()
        return self._static

    @torch.inference_mode()
    def generate_batch(self, prompts: list[list[int]], max_new_tokens: int,
                       stops: list[list[str]] | None = None) -> list[Generation]:
        """Greedy per row. The prefill holds every prompt right-padded to the longest (row r's prompt in slots
        0..P_r-1, its pad slots never attended) and each step appends one slot per row, so after the prefill the
        rows' slots are uniform and only the prefill's holes are masked (`kv_valid`); position ids are each row's
        own (P_r + step), never the slot. A row is final at EOS, a stop string or the length cap: with the dynamic
        cache it leaves the batch (cache rows too) and costs nothing after; the static cache keeps its shapes (for
        the compiled step), so a final row stays in the batch, fed a pad, its output ignored."""
        lm, tok, n = self.lm, self.lm.tokenizer, len(prompts)
        stops, body = stops or [()] * n, backbone(lm.model).model
        ids, valid = right_padded(prompts, self.pad, lm.device)  # prefill: [n, width]
        width, static = ids.shape[1], self.p.cache == "static"
        cache = self._cache(n, width + max_new_tokens)
        key_slots = self._static_len if static else width + max_new_tokens  # a static cache's mask covers all of it
        kv_valid = torch.cat([valid, valid.new_zeros(n, key_slots - width)], -1)
        kv_mask = additive(kv_valid[:, None, :], self.mask_dtype)[:, 0]  # [n, 1, slots]: a decode step slices it
        positions = torch.arange(width, device=lm.device).expand(n, -1).masked_fill(~valid, 0)
        lengths = torch.tensor([[len(q)] for q in prompts], device=lm.device)
        batch, outs, done, slots = list(range(n)), [[] for _ in range(n)], [None] * n, 0
        for step in range(max_new_tokens):
            if step == 0:  # the prefill: causal over each row's own prompt
                attend = additive(prefill_mask(kv_valid if static else valid, width), self.mask_dtype)
            else:  # one slot per row, the newest: it sees every valid slot so far (a static cache's later are not)
                attend = (kv_mask if static else kv_mask[..., :width + step])[:, None]
            forward = body if step == 0 else self._step  # the prefill's shape varies: never compiled
            hidden = forward(input_ids=ids, attention_mask=attend, position_ids=positions, cache=cache,
                             use_cache=True).last_hidden_state
            slots += ids.numel()
            last = hidden[torch.arange(len(batch), device=lm.device), lengths[:, 0] - 1] if step == 0 else hidden[:, -1]
            tokens = lm_head(lm.model, last).argmax(-1).tolist()
            for r, token in zip(batch, tokens):
                if done[r] is None:
                    outs[r].append(token)
                    window = tok.decode(outs[r][-STOP_WINDOW:]) if stops[r] else ""
                    if token == lm.eos_id or any(s in window for s in stops[r]) or step == max_new_tokens - 1:
                        k = len(outs[r])
                        done[r] = self.finish(outs[r], stops[r], k, len(prompts[r]) + k - 1,
                                              [(i, i, 0) for i in range(k)], step + 1)
            if all(done[r] is not None for r in batch):
                break
            if not static and any(done[r] is not None for r in batch):  # final rows leave the batch
                keep = [k for k, r in enumerate(batch) if done[r] is None]
                index = torch.tensor(keep, device=lm.device)
                cache.batch_select_indices(index)
                batch, kv_mask, lengths = [batch[k] for k in keep], kv_mask[index], lengths[index]
            kv_mask[..., width + step] = 0  # the slot this step's token goes to
            ids = torch.tensor([[outs[r][-1] if done[r] is None else self.pad] for r in batch], device=lm.device)
            positions = lengths + step
        for row in done:
            row.slots = slots
        return done


def prefill_mask(kv_valid: torch.Tensor, q: int) -> torch.Tensor:
    """bool [B, q, K] for the prefill, the first q slots of K: each query sees the valid slots up to its own, and
    its own slot even when that is a pad (an all-blocked row is NaN under SDPA)."""
    key = torch.arange(kv_valid.shape[1], device=kv_valid.device)[None, :]
    query = torch.arange(q, device=kv_valid.device)[:, None]
    return (key <= query) & kv_valid[:, None, :] | (key == query)
