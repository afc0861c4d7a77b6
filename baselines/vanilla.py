"""Vanilla dLLM decoding (LLaDA `generate`, Dream-style confidences): semi-autoregressive denoising, no cache.

The answer is a canvas of `max_new_tokens` masks split into blocks of `block_size`, decoded left to right. `steps`
are spread evenly over the blocks, and within a block LLaDA's linear schedule fixes how many positions each step
commits: the most confident masked positions of the current block (Eq. 8 of the LLaDA paper). Every step is one
bidirectional forward over prompt + canvas. Committed tokens are never remasked. Temperature 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from d2f_core.decode.base import Decoder, Generation, register_decoder
from d2f_core.decode.primitives import greedy_with_confidence, transfer_schedule
from d2f_core.model.forward import hidden_states, lm_head
from d2f_core.model.masks import bidirectional


@dataclass(frozen=True)
class VanillaParams:
    block_size: int = 16
    steps: int = 0  # total denoising steps; 0 = max_new_tokens (one token per step, the paper's baseline rows)
    remasking: str = "low_confidence"  # low_confidence | random (LLaDA); entropy | maskgit_plus | topk_margin (Dream)
    seed: int = 0  # for random remasking


def check_diffusion_model(decoder: Decoder) -> None:
    lm = decoder.lm
    if lm.family not in ("llada", "dream") or lm.mask_id is None:
        raise ValueError(f"decoder {decoder.name!r} needs a masked-diffusion model (llada or dream) with a mask "
                         f"token; {lm.path} is a {lm.family} model")


def check_blocks(max_new_tokens: int, block_size: int) -> int:
    if block_size <= 0 or max_new_tokens % block_size:
        raise ValueError(f"block_size {block_size} must divide max_new_tokens {max_new_tokens}")
    return max_new_tokens // block_size


@register_decoder("vanilla")
class VanillaDecoder(Decoder):
    Params = VanillaParams

    def check(self) -> None:
        check_diffusion_model(self)

    @torch.inference_mode()
    def generate(self, prompt_ids: list[int], max_new_tokens: int, stop: list[str] = ()) -> Generation:
        lm, p = self.lm, self.p
        n_blocks = check_blocks(max_new_tokens, p.block_size)
        steps = p.steps or max_new_tokens
        if steps % n_blocks:
            raise ValueError(f"steps {steps} must be a multiple of the number of blocks {n_blocks}")
        P, L, B = len(prompt_ids), max_new_tokens, p.block_size
        x = torch.tensor(prompt_ids + [lm.mask_id] * L, device=lm.device)
        attend = bidirectional(P + L)
        rng = torch.Generator().manual_seed(p.seed)
        trace, step = [], 0
        for b in range(n_blocks):
            lo, hi = P + b * B, P + (b + 1) * B
            for k in transfer_schedule(B, steps // n_blocks):
                hidden = hidden_states(lm.model, x[None], attend)  # [1, P + L, H]
                logits = lm_head(lm.model, hidden[0, lo - lm.shift: hi - lm.shift])  # the block's predictions
                x0, conf = greedy_with_confidence(logits, p.remasking, rng)
                conf = conf.masked_fill(x[lo:hi] != lm.mask_id, -torch.inf)  # committed tokens stay
                pick = conf.topk(k).indices
                x[lo + pick] = x0[pick]
                trace += [(step, lo + i - P, b) for i in pick.tolist()]
                step += 1
        return self.finish(x[P:].tolist(), stop, steps, steps * (P + L), trace)
