"""Fast-dLLM (arXiv 2505.22618): approximate block KV caches and confidence-aware parallel decoding, training-free.

Semi-autoregressive blocks as in vanilla decoding, but a block takes as many steps as it needs: each step commits the
masked positions of the current block chosen by `rule` (at least one):
- threshold: every confidence strictly above `threshold`;
- factor: the largest n with (n + 1)(1 - c_n) < `factor` over confidences sorted descending (Theorem 1).
Caches (`cache`), refreshed by one full forward at each block's start, whose predictions also serve its first step:
- none: every step is a full bidirectional forward;
- prefix: the K/V of everything before the block are reused; a step feeds the block and every later position;
- dual: the K/V of the suffix are reused too; a step feeds the current block only.
Reused K/V are stale (computed before the block changed), which is why the cache is approximate, unlike D2F's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from baselines.vanilla import check_blocks, check_diffusion_model
from d2f_core.decode.base import Decoder, Generation, register_decoder
from d2f_core.decode.primitives import commit_factor, commit_threshold
from d2f_core.model.forward import hidden_states, lm_head
from d2f_core.model.masks import bidirectional

CACHES, RULES = ("none", "prefix", "dual"), ("threshold", "factor")


@dataclass(frozen=True)
class FastDLLMParams:
    block_size: int = 8
    cache: str = "prefix"  # none | prefix | dual
    rule: str = "threshold"  # threshold | factor
    threshold: float = 0.9
    factor: float = 1.0


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
        if self.p.cache not in CACHES or self.p.rule not in RULES:
            raise ValueError(f"fast_dllm: cache must be one of {CACHES} and rule one of {RULES}")

    def commit(self, conf: torch.Tensor) -> torch.Tensor:
        return commit_threshold(conf, self.p.threshold) if self.p.rule == "threshold" else commit_factor(
            conf, self.p.factor)

    @torch.inference_mode()
    def generate(self, prompt_ids: list[int], max_new_tokens: int, stop: list[str] = ()) -> Generation:
        lm, p = self.lm, self.p
        n_blocks = check_blocks(max_new_tokens, p.block_size)
        P, B, total = len(prompt_ids), p.block_size, len(prompt_ids) + max_new_tokens
        x = torch.tensor(prompt_ids + [lm.mask_id] * max_new_tokens, device=lm.device)
        forwards, positions, trace = 0, 0, []
        for b in range(n_blocks):
            lo, hi = P + b * B, P + (b + 1) * B
            cache, step_in_block = None, 0
            while (x[lo:hi] == lm.mask_id).any():
                if step_in_block == 0 or p.cache == "none":  # refresh: a full forward over the whole canvas
                    cache = DynamicCache(config=lm.model.config) if p.cache != "none" else None
                    hidden = hidden_states(lm.model, x[None], bidirectional(total), cache)[0]
                    src, first = hidden, 0
                    if p.cache == "prefix":
                        cache.crop(lo - total)
                    elif p.cache == "dual":
                        keep_positions(cache, lo, hi)
                    carry = hidden[lo - 1]  # predicts position lo when logits are shifted (Dream)
                    positions += total
                else:
                    end = total if p.cache == "prefix" else hi
                    cached = cache.get_seq_length()
                    hidden = hidden_states(lm.model, x[None, lo:end], bidirectional(end - lo, cached + end - lo),
                                           cache, start=lo)[0]
                    cache.crop(lo - end)  # the query's K/V are not kept: the cache stays as refreshed
                    src, first = torch.cat([carry[None], hidden]), lo - 1
                    positions += end - lo
                forwards += 1
                rows = torch.arange(lo, hi, device=lm.device) - lm.shift - first
                probs = torch.softmax(lm_head(lm.model, src[rows]), dim=-1)
                conf, x0 = probs.max(dim=-1)
                masked = (x[lo:hi] == lm.mask_id).nonzero().flatten()
                pick = masked[self.commit(conf[masked])]
                x[lo + pick] = x0[pick]
                trace += [(forwards - 1, lo + i - P, b) for i in pick.tolist()]
                step_in_block += 1
        return self.finish(x[P:].tolist(), stop, forwards, positions, trace)
