"""Paired, interleaved speed: every decoder of a group on the same problem, back to back, in a fresh random order.

Cells timed in jobs minutes apart carry the machine's drift into their ratios. Here each model is loaded once and
warmed up, then for every problem (and `rounds` times over) the group's decoders run one after another in a newly
shuffled order, so drift hits all of them alike (Kalibera & Jones; the A/B interleaving of browser perf bots). A
ratio is TPS_a / TPS_b, each a ratio of sums over the problems, with a bootstrap 95% CI that resamples problems
(pairs stay together) and the per-problem median ratio. Timing is device-synchronised as in every cell.

`D2F_INJECT_SLOWDOWN=decoder=fraction` (tests and the gate's sensitivity check only) makes every model forward of
that decoder's arms sleep `fraction` of the forward's own time (in `d2f ab`, the current code's arm only).
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from d2f_core.bench.benchmarks import get_benchmark
from d2f_core.bench.environment import device_info, git_sha, versions
from d2f_core.bench.io import atomic_write_json, rewrite_jsonl
from d2f_core.bench.meter import timed, timed_generate
from d2f_core.bench.runner import batches_of_longest, prompt_ids
from d2f_core.bench.stats import RESAMPLES
from d2f_core.decode.base import build_decoder
from d2f_core.model.forward import backbone
from d2f_core.model.load import load_model
from d2f_core.train.corpora import read_jsonl

SLOWDOWN_ENV = "D2F_INJECT_SLOWDOWN"


@dataclass(frozen=True)
class Arm:
    cell: str  # the cell key, model/benchmark/decoder/params, as summary.csv and the gate name it
    model: str
    decoder: str
    max_new_tokens: int
    params: dict = field(default_factory=dict)
    adapter: str | None = None
    merge: bool = False
    chat: bool = False


def injected_slowdown() -> dict[str, float]:
    spec = os.environ.get(SLOWDOWN_ENV, "")
    return {name: float(frac) for name, _, frac in (item.partition("=") for item in spec.split(",") if item)}


def slow_down(lm, fraction: float) -> None:
    """Every forward of this model sleeps `fraction` of its own time (the sensitivity check's injected slowdown)."""
    inner = backbone(lm.model).model
    forward = inner.forward

    def slower(*args, **kwargs):
        start = timed(lm.device)
        out = forward(*args, **kwargs)
        time.sleep(fraction * (timed(lm.device) - start))
        return out

    inner.forward = slower


def ratio_stats(num: list[tuple[int, float]], den: list[tuple[int, float]], seed: int = 0) -> dict:
    """TPS_num / TPS_den from per-problem (tokens, latency) pairs: ratio of sums, bootstrap CI, per-problem median."""
    a, b = np.asarray(num, dtype=float), np.asarray(den, dtype=float)

    def ratio(idx):
        return (a[idx, 0].sum(-1) / a[idx, 1].sum(-1)) / (b[idx, 0].sum(-1) / b[idx, 1].sum(-1))

    idx = np.random.default_rng(seed).integers(0, len(a), (RESAMPLES, len(a)))
    lo, hi = np.percentile(ratio(idx), [2.5, 97.5])
    usable = (a[:, 0] > 0) & (b[:, 0] > 0)
    per_problem = (a[usable, 0] / a[usable, 1]) / (b[usable, 0] / b[usable, 1])
    return {"ratio": float(ratio(np.arange(len(a)))), "ci": [float(lo), float(hi)],
            "median": float(np.median(per_problem)) if usable.any() else None, "problems": len(a)}


def run_paired(arms: list[Arm], ratios: list[tuple[str, str]], benchmark: str, data_dir: str, out: str,
               limit: int | None = None, warmup: int = 1, rounds: int = 1, seed: int = 0) -> dict:
    """Time every arm on every problem, interleaved; write `out` (summary) and `out` .jsonl (every timing)."""
    bench = get_benchmark(benchmark)
    rows = read_jsonl(bench.test_file(data_dir))[:limit]
    loaded, slowdown = {}, injected_slowdown()
    decoders, prompts = {}, {}
    for arm in arms:
        key = (arm.model, arm.adapter, arm.merge, arm.decoder if arm.decoder in slowdown else None)
        if key not in loaded:
            loaded[key] = load_model(arm.model, adapter=arm.adapter, merge=arm.merge)
            if arm.decoder in slowdown:  # its own model object: only this decoder's forwards slow down
                slow_down(loaded[key], slowdown[arm.decoder])
        lm = loaded[key]
        decoders[arm.cell] = (lm, build_decoder(arm.decoder, lm, **arm.params), arm.max_new_tokens)
        prompts[arm.cell] = [prompt_ids(lm, bench, r, arm.chat) for r in rows]
    for cell, (lm, dec, length) in decoders.items():  # never recorded; the longest prompt sizes every buffer
        for [(row, ids)] in batches_of_longest(list(zip(rows, prompts[cell])), 1)[:warmup]:
            dec.generate(ids, length, bench.stops(row))
    rng, records = random.Random(seed), []
    for i, row in enumerate(tqdm(rows, desc=f"paired speed {benchmark}", mininterval=5)):
        for r in range(rounds):
            order = [arm.cell for arm in arms]
            rng.shuffle(order)
            for position, cell in enumerate(order):
                lm, dec, length = decoders[cell]
                gen, latency = timed_generate(dec, lm.device, prompts[cell][i], length, bench.stops(row))
                records.append({"problem": row["id"], "round": r, "position": position, "cell": cell,
                                "tokens": len(gen.tokens), "latency": latency, "forwards": gen.forwards})
    summary = summarize_paired(records, ratios, [arm.cell for arm in arms])
    summary.update(benchmark=benchmark, rounds=rounds, warmup=warmup, injected_slowdown=slowdown or None,
                   device=device_info(next(iter(loaded.values())).device), versions=versions(), git_sha=git_sha())
    rewrite_jsonl(Path(out).with_suffix(".jsonl"), records)
    atomic_write_json(out, summary)
    return summary


def summarize_paired(records: list[dict], ratios: list[tuple[str, str]], cells: list[str]) -> dict:
    """Per cell: TPS (ratio of sums), forwards; per ratio: ratio_stats over problems (rounds summed per problem)."""
    per = {c: {} for c in cells}  # cell -> problem -> [tokens, latency, forwards]
    for rec in records:
        t = per[rec["cell"]].setdefault(rec["problem"], [0, 0.0, 0])
        t[0], t[1], t[2] = t[0] + rec["tokens"], t[1] + rec["latency"], t[2] + rec["forwards"]
    problems = sorted(set.intersection(*(set(p) for p in per.values())), key=str)
    arms = {c: {"tps": sum(per[c][p][0] for p in problems) / sum(per[c][p][1] for p in problems),
                "nfe": sum(per[c][p][2] for p in problems) / len(problems)} for c in cells}
    out = [{"num": a, "den": b, **ratio_stats([per[a][p][:2] for p in problems], [per[b][p][:2] for p in problems])}
           for a, b in ratios]
    return {"problems": len(problems), "arms": arms, "ratios": out}


def load_arms(spec: str) -> tuple[list[Arm], list[tuple[str, str]]]:
    """The `--group` JSON the speed rule passes: {"arms": [...Arm fields], "ratios": [[num, den], ...]}."""
    group = json.loads(spec)
    return [Arm(**a) for a in group["arms"]], [tuple(r) for r in group["ratios"]]
