"""Fast-dLLM (arXiv 2505.22618): approximate block KV caches and confidence-aware parallel decoding, training-free.

Semi-autoregressive blocks as in vanilla decoding, but a block takes as many steps as it needs. The rules follow the
official code (NVlabs/Fast-dLLM `llada/generate.py`, `dream/model/generation_utils_block.py`) line for line:
- commit (`rule`, over the current block's masked positions, in `primitives`): threshold keeps the top confidence
  and every other one >= `threshold` (`get_transfer_index`); factor walks the sorted confidences and stops at the
  first c_n < 1 - factor / (n + 1) (`get_transfer_index_dynamic`, Theorem 1);
- precision: LLaDA takes the softmax in float64, Dream in the model's dtype (`primitives.softmax_dtype`);
- caches (`cache`): each block starts with a refresh, one full forward over the canvas whose K/V are kept (prefix:
  everything before the block; dual: also everything after it); `none` runs a full forward at every step;
- the refresh commits by the rule on LLaDA, and commits the block's first position, whatever its confidence, on
  Dream (`x[:, current_block_start] = x0[:, current_block_start]`);
- after the refresh the official loop runs a cached forward before it tests whether the block is done, so a block
  the refresh completed still costs one forward that commits nothing. `skip_done: true` drops that forward (same
  tokens, fewer forwards); off by default, so the reproduced rows measure what the paper measured.
Reused K/V are stale (computed before the block changed), which is why the cache is approximate, unlike D2F's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from d2f_core.decode.base import Decoder, Generation, param, register_decoder
from d2f_core.decode.primitives import (check_blocks, check_diffusion_model, commit_factor, commit_threshold,
                                        probabilities, softmax_dtype)
from d2f_core.model.forward import hidden_states, lm_head
from d2f_core.model.masks import bidirectional

CACHES, RULES = ("none", "prefix", "dual"), ("threshold", "factor")


@dataclass(frozen=True)
class FastDLLMParams:
    block_size: int = param(8, low=1, length="divides")
    cache: str = param("prefix", choices=CACHES)
    rule: str = param("threshold", choices=RULES)
    threshold: float = param(0.9, low=0, high=1)
    factor: float = param(1.0, low=0)
    skip_done: bool = False  # True: no cached forward after a refresh that completed its block (not the official loop)


def keep_positions(cache: DynamicCache, lo: int, hi: int) -> None:
    """Drop positions [lo, hi) from every layer: the dual cache keeps prefix and suffix around the current block."""
    for layer in cache.layers:
        layer.keys = torch.cat([layer.keys[..., :lo, :], layer.keys[..., hi:, :]], dim=-2)
        layer.values = torch.cat([layer.values[..., :lo, :], layer.values[..., hi:, :]], dim=-2)


@register_decoder("fast_dllm")
class FastDLLMDecoder(Decoder):
    Params = FastDLLMParams

    def check(self) -> None:
        check_diffusion_model(self)
        self.dtype = softmax_dtype("fast_dllm", self.lm.family)

    @torch.inference_mode()
    def generate(self, prompt_ids: list[int], max_new_tokens: int, stop: list[str] = ()) -> Generation:
        lm, p = self.lm, self.p
        n_blocks = check_blocks(max_new_tokens, p.block_size)
        P, B, total = len(prompt_ids), p.block_size, len(prompt_ids) + max_new_tokens
        x = torch.tensor(prompt_ids + [lm.mask_id] * max_new_tokens, device=lm.device)
        self.forwards, self.positions, self.trace = 0, 0, []
        for b in range(n_blocks):
            lo, hi = P + b * B, P + (b + 1) * B
            if p.cache == "none":  # Fast-dLLM's `generate`: a full forward per step until the block is done
                while self.masked(x, lo, hi).numel():
                    self.commit(x, lo, hi, self.refresh(x, lo, hi, total)[1], 0, P, b)
                continue
            cache, src = self.refresh(x, lo, hi, total)
            self.commit(x, lo, hi, src, 0, P, b, first_only=lm.family == "dream")
            carry = src[lo - 1]  # predicts position lo when logits are shifted (Dream)
            while True:  # the official loop: a cached forward first, then the test
                if p.skip_done and not self.masked(x, lo, hi).numel():
                    break
                end = total if p.cache == "prefix" else hi
                hidden = hidden_states(lm.model, x[None, lo:end],
                                       bidirectional(end - lo, cache.get_seq_length() + end - lo), cache, start=lo)[0]
                cache.crop(lo - end)  # the query's K/V are not kept: the cache stays as refreshed
                self.forwards, self.positions = self.forwards + 1, self.positions + end - lo
                self.commit(x, lo, hi, torch.cat([carry[None], hidden]), lo - 1, P, b)
                if not self.masked(x, lo, hi).numel():
                    break
        return self.finish(x[P:].tolist(), stop, self.forwards, self.positions, self.trace)

    def masked(self, x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        return (x[lo:hi] == self.lm.mask_id).nonzero().flatten()

    def refresh(self, x: torch.Tensor, lo: int, hi: int, total: int):
        """A full forward over the canvas; keeps the K/V the cache mode reuses. Returns (cache, hidden)."""
        cache = DynamicCache(config=self.lm.model.config) if self.p.cache != "none" else None
        hidden = hidden_states(self.lm.model, x[None], bidirectional(total), cache)[0]
        if self.p.cache == "prefix":
            cache.crop(lo - total)
        elif self.p.cache == "dual":
            keep_positions(cache, lo, hi)
        self.forwards, self.positions = self.forwards + 1, self.positions + total
        return cache, hidden

    def commit(self, x, lo: int, hi: int, src: torch.Tensor, first: int, P: int, b: int,
               first_only: bool = False) -> None:
        """Commit block [lo, hi)'s chosen masked positions from `src` (row 0 is position `first`); `first_only`: the
        Dream refresh, which commits the block's first position whatever its confidence."""
        masked = self.masked(x, lo, hi)
        if not len(masked):  # the forward after a completed block commits nothing
            return
        conf, x0 = probabilities(lm_head(self.lm.model, src[lo + masked - self.lm.shift - first]),
                                 self.dtype).max(dim=-1)
        if first_only:
            pick = torch.zeros(1, dtype=torch.long, device=x.device)
        elif self.p.rule == "threshold":
            pick = commit_threshold(conf, self.p.threshold)
        else:
            pick = commit_factor(conf, self.p.factor)
        x[lo + masked[pick]] = x0[pick]
        self.trace += [(self.forwards - 1, int(i) - P, b) for i in (lo + masked[pick]).tolist()]
