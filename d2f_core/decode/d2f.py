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

from d2f_core.decode.base import Decoder, Generation, param
from d2f_core.decode.primitives import check_diffusion_model, pad_token, probabilities, softmax_dtype
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


@dataclass
class Row:
    """One prompt's own pipeline in a batch: its canvas (logical positions), blocks, cache extent and counts."""
    index: int  # in the batch as given
    canvas: list[int]
    blocks: list[Block]
    prompt_len: int
    attend: torch.Tensor  # additive block-causal mask over the row's logical positions, built once
    cached: int = 0  # logical positions whose K/V are in the cache
    eos_seen: bool = False
    forwards: int = 0
    positions: int = 0
    trace: list = field(default_factory=list)


class D2FDecoder(Decoder):
    Params = D2FParams

    def check(self) -> None:
        check_diffusion_model(self)
        self.dtype = softmax_dtype("d2f", self.lm.family)
        self.mask_dtype, self.pad = backbone(self.lm.model).dtype, pad_token(self.lm)
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
        slots up to the step's longest such prefix stay in the cache as masked holes (`kv_mask`), so positions
        never come from physical cache indices. A row is final when it has no active block left: it is dropped from
        the batch (cache rows included), so a finished row costs nothing after it finishes."""
        lm, p = self.lm, self.p
        max_blocks = max_new_tokens // p.block_size  # the reference's cap: floor, so a block size need not divide
        rows = [Row(i, list(q), [Block(0, len(q), 0, state="to_cache", full=True)], len(q),  # the prompt: complete,
                    additive(block_causal(len(q), len(q) + max_new_tokens, p.block_size).to(lm.device),  # cached by
                             self.mask_dtype)[0, 0]) for i, q in enumerate(prompts)]  # the first forward
        stops = stops or [()] * len(rows)
        cache = self.empty_cache(len(rows)) if p.cache else None
        kv_mask = torch.zeros(len(rows), 0, dtype=self.mask_dtype, device=lm.device)  # additive: holes are blocked
        carry = None  # [rows, 1, H]: hidden state of each row's last cached position (predicts the next; shift 1)
        done: list[Generation | None] = [None] * len(rows)
        slots = 0
        for step in range(MAX_STEPS):
            live = [self.schedule(row, max_blocks) for row in rows]
            if not all(live):  # final rows leave the batch
                for row in (r for r, on in zip(rows, live) if not on):
                    done[row.index] = self.finish(row.canvas[row.prompt_len:], stops[row.index], row.forwards,
                                                  row.positions, row.trace, step)
                keep = [k for k, on in enumerate(live) if on]
                if not keep:
                    break
                rows, kv_mask = [rows[k] for k in keep], kv_mask[keep]
                index = torch.tensor(keep, device=lm.device)
                carry = None if carry is None else carry[index]
                if cache is not None:
                    cache.batch_select_indices(index)

            hidden = self.forward(rows, kv_mask, cache)
            slots += hidden.shape[0] * hidden.shape[1]

            # Predictions for the masked positions of active blocks only (position t from hidden t - shift; with a
            # carry, column 0 of src is the position before each row's window).
            actives = [[b for b in row.blocks if b.state == "active" and b.masks] for row in rows]
            targets = [[t for b in active for t in range(b.start, b.end) if row.canvas[t] == lm.mask_id]
                       for row, active in zip(rows, actives)]
            src = hidden if carry is None else torch.cat([carry, hidden], 1)
            width, first = src.shape[1], lm.shift - (carry is not None)  # src column of position t: t - cached - first
            flat = [k * width + t - row.cached - first for k, (row, ts) in enumerate(zip(rows, targets)) for t in ts]
            conf, x0 = probabilities(lm_head(lm.model, src.flatten(0, 1)[torch.tensor(flat, device=lm.device)]),
                                     self.dtype).max(dim=-1)
            passed = (conf > p.tau_conf).tolist()  # in conf's dtype, as the reference compares (bf16 on a GPU)
            x0 = x0.tolist()

            if cache is not None:
                kv_mask, carry = self.keep_finished(rows, hidden, cache, kv_mask, carry)
            i = 0
            for row, active, ts in zip(rows, actives, targets):
                self.commit(row, active, ts, x0[i:i + len(ts)], conf[i:i + len(ts)], passed[i:i + len(ts)])
                i += len(ts)
        for row in done:
            row.slots = slots
        return done

    def schedule(self, row: Row, max_blocks: int) -> bool:
        """Steps 1 and 2 for one row: add a block, activate; False once the row has no active block (final)."""
        p, blocks = self.p, row.blocks
        if len(blocks) - 1 < max_blocks and not row.eos_seen and blocks[-1].decoded_fraction() >= p.tau_add:
            blocks.append(Block(len(row.canvas), len(row.canvas) + p.block_size, p.block_size))
            row.canvas += [self.lm.mask_id] * p.block_size
        for prev, nxt in zip(blocks, blocks[1:]):
            nxt.full |= prev.decoded_fraction() >= p.tau_act
        return any(b.state == "active" and b.masks for b in blocks)

    def forward(self, rows: list[Row], kv_mask: torch.Tensor, cache) -> torch.Tensor:
        """Step 3: one forward over every row's uncached window, [rows, U] against cache + query; hidden [rows, U, H].
        Inside the query each row's mask is its own block-causal one (a slice of `Row.attend`); a pad slot sees only
        itself."""
        lm = self.lm
        windows = [row.canvas[row.cached:] for row in rows]
        U = max(map(len, windows))
        ids = torch.tensor([w + [self.pad] * (U - len(w)) for w in windows], device=lm.device)
        positions = torch.tensor([range(row.cached, row.cached + U) for row in rows], device=lm.device)  # logical
        if all(len(w) == U for w in windows):
            window = torch.stack([row.attend[row.cached:len(row.canvas), row.cached:len(row.canvas)] for row in rows])
        else:
            window = torch.full((len(rows), U, U), torch.finfo(self.mask_dtype).min, dtype=self.mask_dtype,
                                device=lm.device)
            window.diagonal(dim1=1, dim2=2).zero_()  # each slot sees itself: a pad query its only key
            for k, (row, w) in enumerate(zip(rows, windows)):
                window[k, :len(w), :len(w)] = row.attend[row.cached:len(row.canvas), row.cached:len(row.canvas)]
        attend = torch.cat([kv_mask[:, None, :].expand(-1, U, -1), window], -1)[:, None]
        for row, w in zip(rows, windows):
            row.forwards, row.positions = row.forwards + 1, row.positions + len(w)
        return hidden_states(lm.model, ids, attend, cache, positions=positions)

    def keep_finished(self, rows: list[Row], hidden: torch.Tensor, cache, kv_mask: torch.Tensor, carry):
        """Step 5's cache half: each row keeps the K/V of its to_cache blocks (a prefix of its window), the cache
        keeps the step's longest such prefix, and the slots a row did not keep are holes (blocked in `kv_mask`).
        Returns the new `kv_mask` and carry."""
        U = hidden.shape[1]
        kept = [max((b.end for b in row.blocks if b.state == "to_cache"), default=row.cached) - row.cached
                for row in rows]
        longest = max(kept)
        if longest < U:
            cache.crop(longest - U)
        if longest:
            piece = torch.zeros(len(rows), longest, dtype=kv_mask.dtype, device=kv_mask.device)
            for k, n in enumerate(kept):
                piece[k, n:] = torch.finfo(kv_mask.dtype).min  # a hole: this row kept fewer
            kv_mask = torch.cat([kv_mask, piece], -1)
            if self.lm.shift:  # the hidden state of each row's new last cached position
                carry = torch.stack([hidden[k, n - 1] if n else carry[k, 0] for k, n in enumerate(kept)])[:, None]
        for row, n in zip(rows, kept):
            row.cached += n
            for b in row.blocks:
                b.state = "in_cache" if b.state == "to_cache" else b.state
        return kv_mask, carry

    def commit(self, row: Row, active: list[Block], targets: list[int], x0: list[int], conf: torch.Tensor,
               passed: list[bool]) -> None:
        """Step 4 for one row, then step 5's queue: in each active block commit the masked positions above tau_conf,
        or a fully activated block's top-1; finished blocks become to_cache in order."""
        i, B = 0, self.p.block_size
        for b in active:
            n = b.masks
            chosen = [j for j in range(i, i + n) if passed[j]]
            if not chosen and b.full:
                chosen = [i + int(conf[i:i + n].argmax())]  # the first of equal maxima, as max() over a list
            for j in chosen:
                row.canvas[targets[j]] = x0[j]
                row.trace.append((row.forwards - 1, targets[j] - row.prompt_len, (b.start - row.prompt_len) // B))
                row.eos_seen |= x0[j] == self.lm.eos_id
            b.masks -= len(chosen)
            i += n
        for b in row.blocks[1:]:
            if b.state != "active":
                continue
            if b.masks:
                break
            b.state = "to_cache"
