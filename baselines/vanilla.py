"""Vanilla dLLM decoding (LLaDA `generate`, Dream-style confidences): semi-autoregressive denoising, no cache.

The answer is a canvas of `max_new_tokens` masks split into blocks of `block_size`, decoded left to right. `steps`
are spread evenly over the blocks, and within a block LLaDA's linear schedule fixes how many positions each step
commits: the most confident masked positions of the current block (Eq. 8 of the LLaDA paper). Every step is one
bidirectional forward over prompt + canvas. Committed tokens are never remasked. Temperature 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from d2f_core.decode.base import Decoder, Generation, param
from d2f_core.decode.primitives import (CONFIDENCES, check_blocks, check_diffusion_model, greedy_with_confidence,
                                        canvas_mask, left_padded, pad_token, softmax_dtype, transfer_schedule)
from d2f_core.model.forward import backbone, hidden_states, lm_head


@dataclass(frozen=True)
class VanillaParams:
    block_size: int = param(16, low=1, length="divides")
    steps: int = param(0, low=0)  # total denoising steps; 0 = max_new_tokens (one token per step, the paper's rows)
    # low_confidence | random (LLaDA); entropy | maskgit_plus | topk_margin (Dream)
    remasking: str = param("low_confidence", choices=CONFIDENCES)
    seed: int = 0  # for random remasking

    def check_length(self, max_new_tokens: int) -> None:
        steps, n_blocks = self.steps or max_new_tokens, max_new_tokens // self.block_size
        if steps % n_blocks:
            raise ValueError(f"vanilla.steps = {steps}: must be a multiple of the number of blocks {n_blocks} "
                             f"(generation length {max_new_tokens} / block_size {self.block_size})")


class VanillaDecoder(Decoder):
    Params = VanillaParams

    def check(self) -> None:
        check_diffusion_model(self)
        self.dtype = softmax_dtype("vanilla", self.lm.family)

    @torch.inference_mode()
    def generate_batch(self, prompts: list[list[int]], max_new_tokens: int,
                       stops: list[list[str]] | None = None) -> list[Generation]:
        """Lockstep, exact per row: the prompts are left-padded (a pad id that is neither EOS nor the mask, pad keys
        never attended, per-row position ids counting real tokens only), so every canvas sits in the same columns and
        every row commits its own top-k of the block at the same step. There is no early exit at batch 1 either, so
        a row is final at the last step with the others: nothing is spent on finished rows."""
        lm, p = self.lm, self.p
        n_blocks = check_blocks(max_new_tokens, p.block_size)
        p.check_length(max_new_tokens)
        steps = p.steps or max_new_tokens
        L, B = max_new_tokens, p.block_size
        x, valid, positions = left_padded(prompts, pad_token(lm), [lm.mask_id] * L, lm.device)
        P = x.shape[1] - L  # the padded prompt width: the canvas starts here in every row
        attend = canvas_mask(valid, backbone(lm.model).dtype)
        rngs = [torch.Generator().manual_seed(p.seed) for _ in prompts]
        traces, step = [[] for _ in prompts], 0
        for b in range(n_blocks):
            lo, hi = P + b * B, P + (b + 1) * B
            for k in transfer_schedule(B, steps // n_blocks):
                hidden = hidden_states(lm.model, x, attend, positions=positions)  # [batch, P + L, H]
                logits = lm_head(lm.model, hidden[:, lo - lm.shift: hi - lm.shift])  # the block's predictions
                x0, conf = greedy_with_confidence(logits, p.remasking, rngs, self.dtype)
                conf = conf.masked_fill(x[:, lo:hi] != lm.mask_id, -torch.inf)  # committed tokens stay
                pick = conf.topk(k).indices  # [batch, k]: every row has the same number of masks left
                x[:, lo:hi].scatter_(-1, pick, x0.gather(-1, pick))
                for trace, row in zip(traces, pick.tolist()):
                    trace += [(step, b * B + i, b) for i in row]
                step += 1
        rows = [self.finish(row[P:], stop, steps, steps * (len(prompt) + L), trace)
                for row, prompt, stop, trace in zip(x.tolist(), prompts, stops or [()] * len(prompts), traces)]
        for row in rows:
            row.slots = steps * x.numel()
        return rows
