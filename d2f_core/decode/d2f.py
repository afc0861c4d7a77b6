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

from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from d2f_core.decode.base import Decoder, Generation, param, register_decoder
from d2f_core.decode.primitives import (check_diffusion_model, pad_token, probabilities, right_padded, softmax_dtype,
                                        with_own_slot)
from d2f_core.model.forward import backbone, hidden_states, lm_head
from d2f_core.model.masks import additive

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


@dataclass
class Row:
    """One prompt's own pipeline in a batch: its canvas (logical positions), blocks, cache extent and counts."""
    index: int  # in the batch as given
    canvas: list[int]
    blocks: list[Block]
    prompt_len: int
    cached: int = 0  # logical positions whose K/V are in the cache
    eos_seen: bool = False
    forwards: int = 0
    positions: int = 0
    trace: list = field(default_factory=list)


@register_decoder("d2f")
class D2FDecoder(Decoder):
    Params = D2FParams

    def check(self) -> None:
        check_diffusion_model(self)
        self.dtype = softmax_dtype("d2f", self.lm.family)
        self.mask_dtype = backbone(self.lm.model).dtype
        self.cache = None

    def empty_cache(self, rows: int) -> DynamicCache:
        """One cache per decoder, emptied for each generation (building a DynamicCache costs ~0.4 ms, about 2% of a
        tiny model's whole generation); a new one when the batch size differs from where the last one ended."""
        cache = self.cache
        if cache is not None and cache.get_seq_length():
            cache.crop(-cache.get_seq_length())
        if cache is None or cache.layers[0].keys is not None and cache.layers[0].keys.shape[0] != rows:
            cache = self.cache = DynamicCache(config=self.lm.model.config)
        return cache

    @torch.inference_mode()
    def generate_batch(self, prompts: list[list[int]], max_new_tokens: int,
                       stops: list[list[str]] | None = None) -> list[Generation]:
        """Every row runs its own pipeline (add, activate, commit, cache: the steps above) while the batch shares one
        forward per step. Rows' uncached windows differ in length and position, so each forward's query holds every
        row's window right-padded to the longest, at explicit logical position ids; pad slots are never attended
        (each pad query sees only itself, its output is discarded). The cache grows by the same number of slots in
        every row: after a step each row keeps the K/V of its to_cache positions (a prefix of its window) and the
        slots up to the step's longest such prefix stay in the cache as masked holes (`kv_valid`), so positions
        never come from physical cache indices. A row is final when it has no active block left: it is dropped from
        the batch (cache rows included), so a finished row costs nothing after it finishes."""
        lm, p = self.lm, self.p
        max_blocks = max_new_tokens // p.block_size  # the reference's cap: floor, so a block size need not divide
        B, mask_id, pad = p.block_size, lm.mask_id, pad_token(lm)
        rows = [Row(i, list(q), [Block(0, len(q), 0, state="to_cache", full=True)], len(q))  # the prompt: complete,
                for i, q in enumerate(prompts)]  # cached by the first forward
        stops = stops or [()] * len(rows)
        cache = self.empty_cache(len(rows)) if p.cache else None
        kv_valid = torch.ones(len(rows), 0, dtype=torch.bool, device=lm.device)  # False: a hole in that row
        carry = None  # [rows, 1, H]: hidden state of each row's last cached position (predicts the next; shift 1)
        done: list[Generation | None] = [None] * len(rows)
        slots = 0
        for step in range(MAX_STEPS):
            finished = []
            for k, row in enumerate(rows):
                blocks = row.blocks
                if len(blocks) - 1 < max_blocks and not row.eos_seen and blocks[-1].decoded_fraction() >= p.tau_add:
                    blocks.append(Block(len(row.canvas), len(row.canvas) + B, B))
                    row.canvas += [mask_id] * B
                for prev, nxt in zip(blocks, blocks[1:]):
                    nxt.full |= prev.decoded_fraction() >= p.tau_act
                if not any(b.state == "active" and b.masks for b in blocks):
                    finished.append(k)
            if finished:  # final rows leave the batch
                for k in finished:
                    row = rows[k]
                    done[row.index] = self.finish(row.canvas[row.prompt_len:], stops[row.index], row.forwards,
                                                  row.positions, row.trace, step)
                keep = [k for k in range(len(rows)) if k not in finished]
                rows, kv_valid = [rows[k] for k in keep], kv_valid[keep]
                if not rows:
                    break
                index = torch.tensor(keep, device=lm.device)
                carry = None if carry is None else carry[index]
                if cache is not None:
                    cache.batch_select_indices(index)

            # One forward over every row's uncached window: [rows, U] against cache + query.
            windows = [row.canvas[row.cached:] for row in rows]
            ids, q_valid = right_padded(windows, pad, lm.device)
            U = ids.shape[1]
            offsets = torch.arange(U, device=lm.device)
            starts = torch.tensor([row.cached for row in rows], device=lm.device)[:, None]
            prompt_lens = torch.tensor([row.prompt_len for row in rows], device=lm.device)[:, None]
            logical = starts + offsets
            q_block = torch.where(logical < prompt_lens, 0, 1 + (logical - prompt_lens) // B).masked_fill(~q_valid, -1)
            k_block = q_block.masked_fill(~q_valid, MAX_STEPS * B)  # a pad key is in no query's past
            window = with_own_slot(k_block[:, None, :] <= q_block[:, :, None])
            attend = torch.cat([kv_valid[:, None, :].expand(-1, U, -1), window], -1)
            hidden = hidden_states(lm.model, ids, additive(attend, self.mask_dtype), cache,
                                   positions=logical.masked_fill(~q_valid, 0))
            slots += ids.numel()
            for row, w in zip(rows, windows):
                row.forwards, row.positions = row.forwards + 1, row.positions + len(w)

            # Predictions for the masked positions of active blocks only (position t from hidden t - shift; column 0
            # of src is the carry, the position before each row's window).
            actives = [[b for b in row.blocks if b.state == "active" and b.masks] for row in rows]
            targets = [[t for b in active for t in range(b.start, b.end) if row.canvas[t] == mask_id]
                       for row, active in zip(rows, actives)]
            src = torch.cat([hidden[:, :1] if carry is None else carry, hidden], 1)
            flat = [k * (U + 1) + t - lm.shift - row.cached + 1
                    for k, (row, ts) in enumerate(zip(rows, targets)) for t in ts]
            conf, x0 = probabilities(lm_head(lm.model, src.flatten(0, 1)[torch.tensor(flat, device=lm.device)]),
                                     self.dtype).max(dim=-1)
            passed = (conf > p.tau_conf).tolist()  # in conf's dtype, as the reference compares (bf16 on a GPU)
            x0 = x0.tolist()

            if cache is not None:  # keep the K/V of to_cache blocks only; everything else is recomputed next step
                kept = [max((b.end for b in row.blocks if b.state == "to_cache"), default=row.cached) - row.cached
                        for row in rows]
                longest = max(kept)
                if longest < U:
                    cache.crop(longest - U)
                new = offsets[None, :longest] < torch.tensor(kept, device=lm.device)[:, None]
                kv_valid = torch.cat([kv_valid, new], -1)  # a row keeping fewer than `longest` leaves holes
                if lm.shift and longest:
                    last = torch.tensor([max(n, 1) for n in kept], device=lm.device) - 1
                    moved = torch.tensor(kept, device=lm.device)[:, None, None] > 0
                    fresh = hidden[torch.arange(len(rows), device=lm.device), last][:, None]
                    carry = fresh if carry is None else torch.where(moved, fresh, carry)
                for row, n in zip(rows, kept):
                    row.cached += n
                    for b in row.blocks:
                        b.state = "in_cache" if b.state == "to_cache" else b.state

            i, flat_targets = 0, [t for ts in targets for t in ts]
            for row, active in zip(rows, actives):
                for b in active:
                    n = b.masks
                    cand, pos, ok = x0[i:i + n], flat_targets[i:i + n], passed[i:i + n]
                    chosen = [j for j in range(n) if ok[j]]
                    if not chosen and b.full:
                        chosen = [int(conf[i:i + n].argmax())]  # the first of equal maxima, as max() over a list
                    i += n
                    for j in chosen:
                        row.canvas[pos[j]] = cand[j]
                        row.trace.append((row.forwards - 1, pos[j] - row.prompt_len, (b.start - row.prompt_len) // B))
                        row.eos_seen |= cand[j] == lm.eos_id
                    b.masks -= len(chosen)

                for b in row.blocks[1:]:  # finished blocks queue for the cache, in order
                    if b.state != "active":
                        continue
                    if b.masks:
                        break
                    b.state = "to_cache"
        for row in done:
            row.slots = slots
        return done

