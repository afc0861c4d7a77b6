"""D2F pipelined parallel decoding with an exact block-causal KV cache (arXiv 2508.09192, Alg. 1).

The answer grows block by block while earlier blocks are still being decoded. One loop iteration is one forward:
1. add at most one block of `block_size` masks, when the last block's decoded fraction is >= tau_add, while fewer
   than max_new_tokens // block_size blocks exist and no EOS has been committed;
2. block i+1 becomes fully activated (sticky) once block i's decoded fraction is >= tau_act; the prompt is complete,
   so the first block is fully activated at once;
3. forward every uncached position under the block-causal mask (the cache holds the prompt and finished blocks);
4. in every active block, commit each masked position whose confidence is strictly > tau_conf; if none passes, a
   fully activated block commits its single most confident position and a semi-activated block commits nothing
   (confidences are a softmax in the model's dtype, compared with tau_conf in that dtype, as the reference does);
5. a finished block becomes `to_cache` once every earlier block is finished; its K/V enter the cache through the
   next step's forward, so caching costs no extra forward.
Under block-causal attention a block's K/V depend only on the prompt, earlier blocks and itself, so the cache is
exact: `cache=False` recomputes everything every step and yields the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from d2f_core.decode.base import Decoder, Generation, param, register_decoder
from d2f_core.decode.primitives import check_diffusion_model, probabilities, softmax_dtype
from d2f_core.model.forward import backbone, hidden_states, lm_head
from d2f_core.model.masks import additive, block_causal

MAX_STEPS = 10_000  # the reference implementation's safety limit


@dataclass(frozen=True)
class D2FParams:
    block_size: int = param(16, low=1, length="at_most")  # the canvas stops at the last whole block (Dream MBPP: 240)
    tau_add: float = param(0.1, low=0, high=1)  # add a block when the last one is this decoded
    tau_act: float = param(0.95, low=0, high=1)  # fully activate block i+1 when block i is this decoded
    tau_conf: float = param(0.9, low=0, high=1)  # commit every masked position more confident than this (strict)
    cache: bool = True  # False: recompute the whole canvas every step (the exactness reference)


@dataclass
class Block:
    start: int
    end: int
    masks: int
    state: str = "active"  # active -> to_cache -> in_cache
    full: bool = False  # fully activated: commits its top-1 when nothing passes tau_conf

    def decoded_fraction(self) -> float:
        return 1 - self.masks / (self.end - self.start)


@register_decoder("d2f")
class D2FDecoder(Decoder):
    Params = D2FParams

    def check(self) -> None:
        check_diffusion_model(self)
        self.dtype = softmax_dtype("d2f", self.lm.family)
        self.mask_dtype = backbone(self.lm.model).dtype
        self.cache = None

    def empty_cache(self) -> DynamicCache:
        """One cache per decoder, emptied for each generation: building a DynamicCache costs ~0.4 ms, about 2% of a
        tiny model's whole generation."""
        if self.cache is None:
            self.cache = DynamicCache(config=self.lm.model.config)
        elif self.cache.get_seq_length():
            self.cache.crop(-self.cache.get_seq_length())
        return self.cache

    @torch.inference_mode()
    def generate(self, prompt_ids: list[int], max_new_tokens: int, stop: list[str] = ()) -> Generation:
        lm, p = self.lm, self.p
        max_blocks = max_new_tokens // p.block_size  # the reference's cap: floor, so a block size need not divide
        P, B, mask_id = len(prompt_ids), p.block_size, lm.mask_id
        canvas = list(prompt_ids)
        blocks = [Block(0, P, 0, state="to_cache", full=True)]  # the prompt: complete, cached by the first forward
        attend_all = additive(block_causal(P, P + max_new_tokens, B).to(lm.device), self.mask_dtype)  # once
        cache = self.empty_cache() if p.cache else None
        cached = 0  # positions whose K/V are in the cache
        carry = None  # hidden state of the last cached position: it predicts the next position when shift = 1
        eos_seen, forwards, positions, trace = False, 0, 0, []
        for step in range(MAX_STEPS):
            if len(blocks) - 1 < max_blocks and not eos_seen and blocks[-1].decoded_fraction() >= p.tau_add:
                blocks.append(Block(len(canvas), len(canvas) + B, B))
                canvas += [mask_id] * B
            for prev, nxt in zip(blocks, blocks[1:]):
                nxt.full |= prev.decoded_fraction() >= p.tau_act
            active = [b for b in blocks if b.state == "active" and b.masks]
            if not active:
                break

            # Forward every uncached position: [1, len(canvas) - start] against cache + query.
            start = cached if cache is not None else 0
            ids = torch.tensor([canvas[start:]], device=lm.device)
            hidden = hidden_states(lm.model, ids, attend_all[..., start:len(canvas), :len(canvas)].contiguous(),
                                   cache, start)[0]
            forwards, positions = forwards + 1, positions + ids.shape[1]

            # Predictions for the masked positions of active blocks only (position t from hidden t - shift).
            targets = [t for b in active for t in range(b.start, b.end) if canvas[t] == mask_id]
            src = hidden if carry is None else torch.cat([carry[None], hidden])  # row 0 of src is position `first`
            first = start - (carry is not None)
            rows = torch.tensor([t - lm.shift - first for t in targets], device=lm.device)
            conf, x0 = probabilities(lm_head(lm.model, src[rows]), self.dtype).max(dim=-1)
            passed = (conf > p.tau_conf).tolist()  # in conf's dtype, as the reference compares (bf16 on a GPU)
            x0 = x0.tolist()

            if cache is not None:  # keep the K/V of to_cache blocks only; everything else is recomputed next step
                keep = max((b.end for b in blocks if b.state == "to_cache"), default=cached)
                if keep > cached and lm.shift:
                    carry = hidden[keep - 1 - start]
                if keep < len(canvas):
                    cache.crop(keep - len(canvas))
                cached = keep
                for b in blocks:
                    b.state = "in_cache" if b.state == "to_cache" else b.state

            i = 0
            for b in active:
                n = b.masks
                cand, pos, ok = x0[i:i + n], targets[i:i + n], passed[i:i + n]
                chosen = [j for j in range(n) if ok[j]]
                if not chosen and b.full:
                    chosen = [int(conf[i:i + n].argmax())]  # the first of equal maxima, as max() over a list
                i += n
                for j in chosen:
                    canvas[pos[j]] = cand[j]
                    trace.append((step, pos[j] - P, (b.start - P) // B))
                    eos_seen |= cand[j] == lm.eos_id
                b.masks -= len(chosen)

            for b in blocks[1:]:  # finished blocks queue for the cache, in order
                if b.state != "active":
                    continue
                if b.masks:
                    break
                b.state = "to_cache"
        return self.finish(canvas[P:], stop, forwards, positions, trace)
