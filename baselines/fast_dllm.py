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

from d2f_core.decode.base import Decoder, Generation, param
from d2f_core.decode.primitives import (canvas_mask, check_blocks, check_diffusion_model, commit_factor,
                                        commit_threshold, left_padded, pad_token, probabilities, softmax_dtype)
from d2f_core.model.forward import backbone, hidden_states, lm_head
from d2f_core.model.masks import additive

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


class FastDLLMDecoder(Decoder):
    Params = FastDLLMParams

    def check(self) -> None:
        check_diffusion_model(self)
        self.dtype = softmax_dtype("fast_dllm", self.lm.family)
        self.mask_dtype = backbone(self.lm.model).dtype

    @torch.inference_mode()
    def generate_batch(self, prompts: list[list[int]], max_new_tokens: int,
                       stops: list[list[str]] | None = None) -> list[Generation]:
        """Lockstep per block, exact per row. Prompts are left-padded (pad id neither EOS nor the mask, pad keys never
        attended, per-row position ids counting real tokens), so every row's block is the same column slice and the
        rows share each refresh and each cached forward. A row takes part in (and counts) exactly the forwards it runs
        alone; a row whose block is done waits, frozen, while the others finish theirs: it costs its share of those
        forwards and commits nothing. A row is final when its last block is."""
        lm, p = self.lm, self.p
        n_blocks = check_blocks(max_new_tokens, p.block_size)
        L, B, n = max_new_tokens, p.block_size, len(prompts)
        stops = stops or [()] * n
        x, valid, positions = left_padded(prompts, pad_token(lm), [lm.mask_id] * L, lm.device)
        total = x.shape[1]
        P = total - L  # the padded prompt width: the canvas starts here in every row
        full = canvas_mask(valid, self.mask_dtype)
        self.run = Run(n, [len(q) + L for q in prompts])
        done: list[Generation | None] = [None] * n
        for b in range(n_blocks):
            lo, hi = P + b * B, P + (b + 1) * B
            last = b == n_blocks - 1
            if p.cache == "none":  # Fast-dLLM's `generate`: a full forward per step until the block is done
                live = self.masked_rows(x, lo, hi)
                while live.any():
                    hidden = self.refresh(x, full, positions, live, lo, hi)[1]
                    live = self.commit(x, lo, hi, hidden, 0, b, live)
                    self.finish_rows(done, last, live, x, P, stops)
                continue
            everyone = torch.ones(n, dtype=torch.bool, device=x.device)
            cache, src = self.refresh(x, full, positions, everyone, lo, hi)
            self.commit(x, lo, hi, src, 0, b, everyone, first_only=lm.family == "dream")
            carry = src[:, lo - 1: lo]  # predicts position lo when logits are shifted (Dream)
            live = self.masked_rows(x, lo, hi) if p.skip_done else everyone  # the official loop: a cached forward
            end = total if p.cache == "prefix" else hi
            keys = torch.ones(n, cache.get_seq_length() + end - lo, dtype=torch.bool, device=x.device)
            keys[:, :lo] = valid[:, :lo]  # the prompt's pads; everything from the canvas on is real
            attend = additive(keys[:, None, :].expand(-1, end - lo, -1), self.mask_dtype)  # the block's forwards'
            while live.any():  # first, then the test
                hidden = hidden_states(lm.model, x[:, lo:end], attend, cache, positions=positions[:, lo:end])
                cache.crop(lo - end)  # the query's K/V are not kept: the cache stays as refreshed
                self.run.forward(live, end - lo, x.shape[0] * (end - lo))
                live = self.commit(x, lo, hi, torch.cat([carry, hidden], 1), lo - 1, b, live)
                self.finish_rows(done, last, live, x, P, stops)
        self.finish_rows(done, True, torch.zeros_like(valid[:, 0]), x, P, stops)  # rows the loop never ran for
        for row in done:
            row.slots = self.run.slots
        return done

    def masked_rows(self, x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        return (x[:, lo:hi] == self.lm.mask_id).any(-1)

    def refresh(self, x: torch.Tensor, full: torch.Tensor, positions: torch.Tensor, live: torch.Tensor, lo: int,
                hi: int):
        """A full forward over the canvas; keeps the K/V the cache mode reuses. Returns (cache, hidden)."""
        cache = DynamicCache(config=self.lm.model.config) if self.p.cache != "none" else None
        hidden = hidden_states(self.lm.model, x, full, cache, positions=positions)
        if self.p.cache == "prefix":
            cache.crop(lo - x.shape[1])
        elif self.p.cache == "dual":
            keep_positions(cache, lo, hi)
        self.run.forward(live, None, x.numel())
        return cache, hidden

    def commit(self, x, lo: int, hi: int, src: torch.Tensor, first: int, b: int, live: torch.Tensor,
               first_only: bool = False) -> torch.Tensor:
        """Commit, in each live row, block [lo, hi)'s chosen masked positions from `src` (column 0 is position
        `first`); `first_only`: the Dream refresh, which commits the block's first position whatever its
        confidence. Returns the rows whose block still has masks."""
        block = x[:, lo:hi]
        masked = (block == self.lm.mask_id) & live[:, None]
        shifted = lo - self.lm.shift - first
        conf, x0 = probabilities(lm_head(self.lm.model, src[:, shifted: shifted + hi - lo]), self.dtype).max(-1)
        conf = conf.masked_fill(~masked, -torch.inf)
        if first_only:
            pick = torch.zeros_like(masked)
            pick[:, 0] = masked[:, 0]
        elif self.p.rule == "threshold":
            pick = commit_threshold(conf, self.p.threshold)
        else:
            pick = commit_factor(conf, self.p.factor)
        block[pick] = x0[pick]
        for r, i in pick.nonzero().tolist():
            self.run.trace[r].append((self.run.forwards[r] - 1, b * (hi - lo) + i, b))
        return (block == self.lm.mask_id).any(-1) & live

    def finish_rows(self, done: list, last: bool, live: torch.Tensor, x: torch.Tensor, P: int, stops) -> None:
        """Rows of the last block that left the loop are final: their Generations, stamped now."""
        if not last:
            return
        for r in (~live).nonzero().flatten().tolist():
            if done[r] is None:
                done[r] = self.finish(x[r, P:].tolist(), stops[r], self.run.forwards[r],
                                      self.run.positions[r], self.run.trace[r], self.run.batch_forwards)


class Run:
    """Per-row counts of one batch: the forwards each row took part in, the query positions it sent, its commits;
    and the batch's forwards and query slots."""

    def __init__(self, n: int, lengths: list[int]):
        self.lengths, self.batch_forwards, self.slots = lengths, 0, 0
        self.forwards, self.positions, self.trace = [0] * n, [0] * n, [[] for _ in range(n)]

    def forward(self, live: torch.Tensor, query: int | None, slots: int) -> None:
        """One batch forward of `slots` query slots: each live row counts it, with `query` positions (None: its
        whole unpadded canvas)."""
        self.batch_forwards, self.slots = self.batch_forwards + 1, self.slots + slots
        for r in live.nonzero().flatten().tolist():
            self.forwards[r] += 1
            self.positions[r] += self.lengths[r] if query is None else query
