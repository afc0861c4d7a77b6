"""Batch > 1 is exact: every row of a batch decodes what its prompt decodes alone (tokens, forwards, query positions,
commit trace), for every decoder family and both diffusion conventions (LLaDA unshifted, Dream shifted), in float32
on CPU. The batches hold prompts 5 to ~220 tokens long, a duplicated prompt, two orders of one set, rows that stop at
their first EOS at different steps and rows that never emit one.

Batched float32 matmuls and attention over padded keys round differently from batch 1, so a decision that is a
near-tie alone may flip in a batch. A row that differs is diagnosed: the first step where its commits differ, and the
margin of that step's decisions alone (top-1 minus top-2 probability of a committed token, the gap between
confidences ranked against each other, the distance of a confidence to a threshold). Below 1e-5 it is a numerical
tie, named and counted; anything else fails."""

from __future__ import annotations

import importlib

import pytest
import torch

from d2f_core.decode.base import build_decoder
from d2f_core.model.load import load_model

TIE = 1e-5
LENGTH = 32
CASES = [
    ("ar", "ar", {}),
    ("ar", "ar", {"cache": "static"}),
    ("llada", "vanilla", {"block_size": 8, "steps": 16}),
    ("llada", "vanilla", {"block_size": 8, "remasking": "random"}),
    ("dream", "vanilla", {"block_size": 8, "remasking": "entropy"}),
    ("llada", "fast_dllm", {"block_size": 8, "cache": "prefix", "threshold": 0.3}),
    ("llada", "fast_dllm", {"block_size": 8, "cache": "none", "threshold": 0.3}),
    ("dream", "fast_dllm", {"block_size": 8, "cache": "dual", "rule": "factor", "factor": 2.0}),
    ("dream", "fast_dllm", {"block_size": 8, "cache": "prefix", "threshold": 0.3, "skip_done": True}),
    ("llada", "d2f", {"block_size": 8, "tau_add": 0.3, "tau_act": 0.6, "tau_conf": 0.3}),
    ("dream", "d2f", {"block_size": 8, "tau_add": 0.3, "tau_act": 0.6, "tau_conf": 0.3}),
    ("dream", "d2f", {"block_size": 4, "tau_add": 0.5, "tau_act": 0.9, "tau_conf": 0.5, "cache": False}),
]
# Positions in the prompt pool (two short prefixes, six benchmark prompts, one doubled): batches of 2, 3 and 8,
# ragged (5 vs ~220 tokens), with a duplicate, and one set of 8 in two orders.
BATCHES = [[0, 8], [2, 1, 2], [8, 3, 0, 6, 1, 5, 2, 7], [7, 2, 5, 1, 6, 0, 3, 8]]


@pytest.fixture(scope="module")
def pool(prompts) -> list[list[int]]:
    return [prompts[0][:5], prompts[3][:12], *prompts, prompts[1] * 2]


@pytest.fixture(scope="module")
def sharp(model_dirs, pool) -> dict:
    """The random test models made decisive, so thresholds between 0 and 1 matter (logits x8), and made to end:
    EOS's LM-head row becomes x1.05 the row of a token that about half of the pool's decodings emit, so EOS wins
    where that token would, and rows end at different steps, some never."""
    out = {}
    for family, path in model_dirs.items():
        lm = load_model(path, device="cpu")
        head = lm.model.lm_head.weight
        with torch.no_grad():
            head *= 8
            decoder, params = ("ar", {}) if family == "ar" else ("d2f", CASES[9][2])
            canvases = [set(build_decoder(decoder, lm, **params).generate(q, LENGTH).canvas_tokens) for q in pool]
            half = min(range(len(head)), key=lambda t: abs(sum(t in c for c in canvases) - len(pool) / 2))
            head[lm.eos_id] = head[half] * 1.05
        out[family] = lm
    return out


class Recorder:
    """Keeps what a decoder's confidence (`probabilities`) or AR's `lm_head` returned, call by call: call s is
    forward s of the batch, the step a trace names at batch 1."""

    MODULES = {"probabilities": ["d2f_core.decode.d2f", "baselines.fast_dllm", "d2f_core.decode.primitives"],
               "lm_head": ["baselines.ar"]}

    def __init__(self, monkeypatch):
        self.calls = []
        for name, modules in self.MODULES.items():
            for module in map(importlib.import_module, modules):
                monkeypatch.setattr(module, name, self.wrap(getattr(module, name)))

    def wrap(self, real):
        def recorded(*args, **kwargs):
            out = real(*args, **kwargs)
            self.calls.append(out.detach().clone())
            return out
        return recorded

    def run(self, fn, *args):
        self.calls = []
        return fn(*args), self.calls


def row_slices(decoder: str, params: dict, calls: list, batch: list[int], alone_calls: list, upto: int):
    """(row, call, its slice of the batched call, its record alone) for the calls before `upto`. Lockstep decoders
    hold every row in every forward ([rows, block, V]; Fast-dLLM's rows share the first block's refresh and, in the
    official loop, its first cached forward; AR's static cache keeps final rows); AR (dynamic cache) and D2F drop
    final rows, so call s holds, in batch order, each row still decoding, with as many entries as it has alone."""
    if decoder in ("vanilla", "fast_dllm") or params.get("cache") == "static":
        shared = len(calls) if decoder != "fast_dllm" else 1 if params.get("skip_done") else 2
        for k, i in enumerate(batch):
            for s in range(min(shared, upto, len(alone_calls[i]))):
                yield i, s, calls[s][k:k + 1].flatten(0, -2), alone_calls[i][s].flatten(0, -2)
        return
    for s, call in enumerate(calls[:upto]):
        offset = 0
        for i in (i for i in batch if s < len(alone_calls[i])):
            size = len(alone_calls[i][s])
            yield i, s, call[offset:offset + size], alone_calls[i][s]
            offset += size


def commits(gen) -> dict[int, set]:
    """step -> {(answer position, token)} committed then."""
    out = {}
    for step, pos, _ in gen.trace:
        out.setdefault(step, set()).add((pos, gen.canvas_tokens[pos]))
    return out


def margin(record: torch.Tensor, alone, step: int, decoder: str, params: dict) -> tuple[float, int]:
    """The smallest margin among the decisions of `step` alone, and the answer position it belongs to."""
    thresholds = [params[k] for k in ("tau_conf", "threshold") if k in params]
    if decoder == "fast_dllm" and params.get("rule") == "factor":
        thresholds += [1 - params["factor"] / (n + 1) for n in range(2, 64)]
    if decoder == "ar":
        record = torch.softmax(record.double(), -1)
    record = record.reshape(-1, record.shape[-1]).double()
    positions = list(range(len(record)))
    if decoder in ("vanilla", "fast_dllm"):  # a block's columns: only those still masked at this step decide
        steps = {pos: s for s, pos, _ in alone.trace}
        block = min(pos for s, pos, _ in alone.trace if s == step) // params["block_size"]
        first = block * params["block_size"]
        positions = [i for i in positions if steps.get(first + i, -1) >= step]
    if decoder == "ar":
        positions = [len(record) - 1]
    probs = record[positions]
    top2 = probs.topk(2, dim=-1).values
    conf = (probs * probs.clamp_min(1e-12).log()).sum(-1) if params.get("remasking") == "entropy" else top2[:, 0]
    gaps = [(float(top2[i, 0] - top2[i, 1]), i) for i in range(len(positions))]
    ranked = conf.argsort()
    gaps += [(float(conf[b] - conf[a]), int(a)) for a, b in zip(ranked, ranked[1:])]
    gaps += [(abs(float(conf[i]) - t), i) for t in thresholds for i in range(len(positions))]
    value, i = min(gaps)
    return value, positions[i]


@pytest.mark.parametrize("family,decoder,params", CASES, ids=lambda v: v if isinstance(v, str) else "")
def test_every_row_of_a_batch_decodes_what_it_decodes_alone(sharp, pool, monkeypatch, family, decoder, params):
    dec = build_decoder(decoder, sharp[family], **params)
    recorder, ties = Recorder(monkeypatch), []
    alone, alone_calls = zip(*(recorder.run(dec.generate, prompt, LENGTH) for prompt in pool))
    for batch in BATCHES:
        rows, calls = recorder.run(dec.generate_batch, [pool[i] for i in batch], LENGTH)
        assert len(rows) == len(batch)
        diverged = len(calls)  # the first step any row's commits differ at
        for i, row in zip(batch, rows):
            a = alone[i]
            assert row.finished_at <= len(calls) and a.finished_at == a.forwards
            if (row.canvas_tokens, row.forwards, row.forward_positions, row.trace) == (
                    a.canvas_tokens, a.forwards, a.forward_positions, a.trace):
                continue
            theirs, ours = commits(a), commits(row)
            step = next((s for s in sorted(set(theirs) | set(ours)) if theirs.get(s) != ours.get(s)), None)
            assert step is not None, f"batch {batch} row {i}: same commits, different counts ({row.forwards} " \
                                     f"forwards vs {a.forwards} alone)"
            value, position = margin(alone_calls[i][step], a, step, decoder, params)
            assert value < TIE, f"batch {batch} row {i} (prompt of {len(pool[i])} tokens) differs from its batch-1 " \
                                f"decoding at step {step}, where no decision is a near-tie (smallest margin " \
                                f"{value:.2e} at position {position})"
            ties.append(f"prompt {i} in batch {batch}: step {step}, position {position}, margin {value:.1e}")
            diverged = min(diverged, step)
        # Numerically, too: a row's confidences in the batch are its own alone (a leak from another row or from
        # a masked slot moves them by ~1e-2 while its decisions may hold; batched rounding stays near 1e-7).
        for i, s, ours, theirs in row_slices(decoder, params, calls, batch, alone_calls, diverged):
            assert ours.shape == theirs.shape and (ours - theirs).abs().max() < 1e-4, \
                f"batch {batch} row {i}, forward {s}: confidences differ from batch 1 by " \
                f"{(ours - theirs).abs().max() if ours.shape == theirs.shape else 'shape'}"
    print(f"{decoder} {family} {params}: {len(ties)} numerical ties" + "".join(f"\n  {t}" for t in ties))
    if decoder in ("ar", "d2f"):  # the EOS cases are really there: rows end at different steps, some never
        ended = [sharp[family].eos_id in a.canvas_tokens for a in alone]
        assert len({a.forwards for a in alone}) > 1 and any(ended) and not all(ended)


def test_a_finished_row_leaves_the_batch(sharp, pool):
    """AR (dynamic cache) and D2F drop a final row: its finish comes before the batch's last forward."""
    for family, decoder, params in (CASES[0], CASES[9]):
        rows = build_decoder(decoder, sharp[family], **params).generate_batch([pool[i] for i in BATCHES[2]], LENGTH)
        ends = sorted({row.finished_at for row in rows})
        assert len(ends) > 1, f"{decoder}: every row ended at forward {ends}"
        assert [r.finished_s for r in sorted(rows, key=lambda r: r.finished_at)] == sorted(r.finished_s for r in rows)
