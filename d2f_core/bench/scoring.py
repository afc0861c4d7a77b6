"""Score a decoded cell and write its `samples.jsonl` and `summary.json` (DESIGN §5-6).

Kept apart from decoding so a scorer fix re-scores without re-decoding, and so untrusted code runs in a sandboxed
job of its own, never in the timed process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from d2f_core.bench.benchmarks import get_benchmark
from d2f_core.bench.io import atomic_write_json, read_jsonl_tolerant, rewrite_jsonl
from d2f_core.bench.sandbox import DETAIL_CHARS, check_sandbox
from d2f_core.bench.stats import bootstrap_mean, bootstrap_ratio
from d2f_core.train.corpora import read_jsonl


def score_cell(cell_dir: str, data_dir: str, profile: str, model_name: str, base_model: str | None = None,
               sandbox: str = "bwrap", workers: int = 1) -> dict:
    """Score every sample; code runs in `sandbox` (checked first: a sandbox that cannot start stops here), `workers`
    programs at a time (each in its own sandbox: separate scratch dirs, uids and process trees)."""
    cell = Path(cell_dir)
    run = json.loads((cell / "meter.json").read_text())
    bench = get_benchmark(run["benchmark"])
    if bench.runs_code:
        check_sandbox(sandbox)
    rows = {r["id"]: r for r in read_jsonl(bench.test_file(data_dir))}
    generations = read_jsonl_tolerant(cell / "generations.jsonl")
    with ThreadPoolExecutor(workers if bench.runs_code else 1) as pool:  # a verdict waits on its sandbox process
        verdicts = pool.map(lambda s: verdict_of(bench, rows[s["id"]], s, sandbox), generations)
        samples = [{**s, **v} for s, v in zip(generations, tqdm(verdicts, total=len(generations),
                                                                 desc=f"score {cell}", mininterval=5))]
    rewrite_jsonl(cell / "samples.jsonl", samples)
    summary = summarize(samples, run, profile, model_name, base_model or model_name, bench.metric, cell_dir)
    summary["sandbox"] = sandbox if bench.runs_code else None
    summary["sandbox_limits"] = dataclasses.asdict(bench.sandbox_limits) if bench.runs_code else None
    atomic_write_json(cell / "summary.json", summary)
    return summary


def verdict_of(bench, row: dict, sample: dict, sandbox: str) -> dict:
    """One problem's verdict; whatever its output does to post-processing or scoring fails that problem alone."""
    if sample.get("error"):
        return {"correct": False}
    try:
        return bench.score(row, sample["output"], sandbox)
    except Exception as e:  # RecursionError or MemoryError on a pathological answer, a decode error, ...
        return {"correct": False, "score_error": f"{type(e).__name__}: {e}"[:DETAIL_CHARS]}


def summarize(samples: list[dict], run: dict, profile: str, model_name: str, base_model: str, metric: str,
              cell_dir: str) -> dict:
    identity = {"profile": profile, "model": model_name, "base_model": base_model, "adapter": run["adapter"],
                "benchmark": run["benchmark"],
                "decoder": run["decoder"], "params": run["params"], "max_new_tokens": run["max_new_tokens"]}
    out = {**identity, "config_hash": hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12],
           "metric": metric, "cell_dir": str(cell_dir), "status": run["status"], "error": run["error"],
           "n": len(samples), "batch_size": run.get("batch_size", 1),
           "device": run.get("device_info"), "versions": run["versions"], "git_sha": run["git_sha"]}
    ok = [s for s in samples if not s.get("error")]
    if run["status"] != "ok" or not ok:
        reasons = sorted({s["error"] for s in samples if s.get("error")})[:3]
        why = f"all {len(samples)} samples failed" + (f" ({'; '.join(reasons)})" if reasons else "")
        out.update(status="failed", error=run["error"] or (why if samples else "the cell has no samples"))
        return out
    if not sum(s["latency"] for s in ok) or not sum(s["forwards"] for s in ok):
        out.update(status="failed", error="no time or no forward was recorded (a generation length of 0?)")
        return out
    correct = [float(s["correct"]) for s in samples]
    tokens, latency = [s["tokens"] for s in ok], [s["latency"] for s in ok]
    forwards = [s["forwards"] for s in ok]
    batch_tokens, windows, slots = batches(ok)
    meter = run.get("meter", {})
    out.update(
        errors=len(samples) - len(ok),
        score=statistics.fmean(correct), score_ci=bootstrap_mean(correct),
        tps=sum(batch_tokens) / sum(windows), tps_ci=bootstrap_ratio(batch_tokens, windows),
        tps_median=statistics.median(t / l for t, l in zip(tokens, latency)),
        tps_request=statistics.fmean(t / l for t, l in zip(tokens, latency)),
        latency_mean=statistics.fmean(latency), latency_median=statistics.median(latency),
        latency_p90=float(np.percentile(latency, 90)),
        padded_fraction=1 - sum(s["forward_positions"] for s in ok) / slots if slots else None,
        tokens_mean=statistics.fmean(tokens), tokens_llada_mean=statistics.fmean(s["tokens_llada"] for s in ok),
        tokens_canvas_mean=statistics.fmean(s["tokens_canvas"] for s in ok),
        nfe=statistics.fmean(forwards), tpf=sum(tokens) / sum(forwards),
        energy_j=meter.get("energy_j"), energy_source=meter.get("energy_source"),
        power_mean_w=meter.get("power_mean_w"), power_peak_w=meter.get("power_peak_w"),
        memory_peak_mb=meter.get("memory_peak_mb"), resumed_from=run.get("resumed_from", 0),
    )
    window_tokens = sum(s["tokens"] for s in ok[out["resumed_from"]:])
    out["j_per_token"] = out["energy_j"] / window_tokens if out["energy_j"] is not None and window_tokens else None
    if "correct_flexible" in samples[0]:
        flexible = [float(s.get("correct_flexible", False)) for s in samples]
        out.update(score_flexible=statistics.fmean(flexible), score_flexible_ci=bootstrap_mean(flexible))
    return out


def batches(ok: list[dict]) -> tuple[list[int], list[float], int | None]:
    """Per batch: its rows' answer tokens and its timed window; and the query slots all batches computed (None for
    rows written before batches were recorded: each was a batch of one, its window its latency)."""
    tokens, windows, slots = {}, {}, {}
    for i, s in enumerate(ok):
        key = s.get("batch", f"problem {i}")
        tokens[key] = tokens.get(key, 0) + s["tokens"]
        windows[key], slots[key] = s.get("batch_s", s["latency"]), s.get("batch_slots")
    known = None if None in slots.values() else sum(slots.values())
    return list(tokens.values()), list(windows.values()), known
