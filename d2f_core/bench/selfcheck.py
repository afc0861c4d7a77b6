"""`d2f selfcheck`: what a user with a GPU runs first, in minutes, before trusting any number the harness prints.

It loads the paper-smoke models (the released layouts, through the paper loaders) on CUDA in bf16, runs every decoder
family on a few GSM8K questions, and prints one screen of verdicts:
- timing: every generate call is device-synchronised and its latency is positive, finite and not all alike;
- NVML: energy, power and peak memory over a window long enough for the energy counter (or the exact reason not);
- D2F's exact cache in bf16: cached vs recomputed tokens (bf16 kernels may differ by query length, so this reports
  the agreement rate rather than failing);
- `ar`: the compiled static-cache step equals the dynamic loop token for token;
- batches: every family decodes 16 ragged prompts at batch 1, 4 and 16; per batch size, the share of rows whose tokens
  equal batch 1's (a rate: bf16 kernels differ by shape; float32 on a CPU must agree) and the aggregate TPS;
- device and versions.
Without CUDA it says so, runs the same decoders on the CPU (float32; the cache check also in bf16) and skips what
only a GPU can show.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from d2f_core.bench.environment import device_info, versions
from d2f_core.bench.meter import Meter, timed, timed_call, timed_generate
from d2f_core.decode.base import build_decoder
from d2f_core.model.load import load_model

MODELS = "results/paper-smoke/models"
BUILD = "snakemake models --cores all --configfile workflow/config/paper-smoke.yaml"
NEW_TOKENS = 32
MIN_ENERGY_WINDOW_S = 1.5  # NVML's counter updates every ~100 ms: a longer window than the meter's 1 s minimum
PROMPTS = [  # GSM8K test questions, zero-shot: the decoders' speed and agreement, not the models' accuracy
    "Question: Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for "
    "her friends every day with four. She sells the remainder at the farmers' market daily for $2 per fresh duck egg. "
    "How much in dollars does she make every day at the farmers' market?\nAnswer:",
    "Question: A robe takes 2 bolts of blue fiber and half that much white fiber. How many bolts in total does it "
    "take?\nAnswer:",
    "Question: Josh decides to try flipping a house. He buys a house for $80,000 and then puts in $50,000 in repairs. "
    "This increased the value of the house by 150%. How much profit did he make?\nAnswer:",
]
ARMS = [  # (model, adapter, decoder, params): every decoder family on the model it runs on in the paper profile
    ("smollm2-instruct", None, "ar", {"cache": "dynamic"}),
    ("smollm2-instruct", None, "ar", {"cache": "static"}),
    ("llada-instruct", None, "vanilla", {"block_size": 8, "steps": 32, "remasking": "low_confidence"}),
    ("llada-instruct", None, "fast_dllm", {"block_size": 8, "cache": "dual"}),
    ("llada-instruct", "llada-d2f", "d2f", {"block_size": 8, "tau_add": 0.1}),
    ("dream-base", None, "vanilla", {"block_size": 8, "steps": 32, "remasking": "entropy"}),
    ("dream-base", None, "fast_dllm", {"block_size": 8, "cache": "prefix"}),
    ("dream-base", "dream-d2f", "d2f", {"block_size": 8, "tau_add": 0.1}),
]


@dataclass
class Report:
    lines: list[tuple[str, str]] = field(default_factory=list)  # (status, text)

    def add(self, status: str, text: str) -> None:
        self.lines.append((status, text))
        print(f"[{status}] {text}", flush=True)

    @property
    def failed(self) -> bool:
        return any(s == "FAIL" for s, _ in self.lines)


def _label(model: str, adapter: str | None, decoder: str, params: dict) -> str:
    return f"{decoder} {adapter or model} " + ",".join(f"{k}={v}" for k, v in params.items())


def _generate_all(dec, lm, prompts: list[list[int]]) -> list[tuple[list[int], float]]:
    out = []
    for ids in prompts:
        gen, seconds = timed_generate(dec, lm.device, ids, NEW_TOKENS)
        out.append((gen.tokens, seconds))
    return out


def run_selfcheck(models_dir: str = MODELS) -> Report:
    report = Report()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    info = device_info(device)
    report.add("info", f"device {info['gpu'] or info['cpu']} ({device}, driver {info['gpu_driver']}, "
                       f"{info['torch_threads']} torch threads); " + ", ".join(f"{k} {v}" for k, v in versions().items()))
    if not cuda:
        report.add("info", "no CUDA device (torch.cuda.is_available() is False): CPU checks only; the GPU checks "
                           "(bf16 kernels, NVML, CUDA-synchronised timing, compiled AR) are skipped")
    root = Path(models_dir)
    needed = {m: "config.json" for m, *_ in ARMS} | {a: "adapter_config.json" for _, a, *_ in ARMS if a}
    missing = sorted(name for name, marker in needed.items() if not (root / name / marker).exists())
    arms = [arm for arm in ARMS if arm[0] not in missing and arm[1] not in missing]
    if missing:
        report.add("FAIL" if not arms else "skip", f"not built in {root}: {', '.join(missing)}; build them with "
                                                   f"`{BUILD}`")
    if not arms:
        return report
    loaded, ready = {}, []
    for model, adapter, decoder, params in arms:  # load, build and warm up everything before the metered window
        if (model, adapter) not in loaded:
            loaded[model, adapter] = load_model(root / model, adapter=root / adapter if adapter else None,
                                                device=device, dtype=torch.bfloat16 if cuda else torch.float32)
        lm = loaded[model, adapter]
        dec, prompts = build_decoder(decoder, lm, **params), [lm.tokenizer(p).input_ids for p in PROMPTS]
        dec.generate(prompts[0], NEW_TOKENS)
        ready.append((_label(model, adapter, decoder, params), lm, dec, prompts))
    meter, timings = Meter(device), []
    meter.start()
    for label, lm, dec, prompts in ready:
        runs = _generate_all(dec, lm, prompts)
        tokens, latencies = sum(len(t) for t, _ in runs), [s for _, s in runs]
        timings += latencies
        ok = all(math.isfinite(s) and s > 0 for s in latencies) and tokens > 0
        report.add("ok" if ok else "FAIL", f"{label}: {len(runs)} prompts, {tokens} tokens, "
                                           f"{tokens / sum(latencies):.1f} tok/s, latency "
                                           f"{min(latencies) * 1e3:.1f}-{max(latencies) * 1e3:.1f} ms")
    _check_meter(report, meter, ready, timings, cuda)
    _check_d2f_cache(report, root, arms, device)
    _check_ar_compile(report, loaded, arms, cuda)
    _check_batches(report, ready, cuda)
    return report


def _check_meter(report: Report, meter: Meter, ready: list, timings: list[float], cuda: bool) -> None:
    """Keep decoding until NVML's energy counter has a window it can report, then read energy, power, memory."""
    _, lm, dec, prompts = ready[-1]
    while cuda and timed(lm.device) - meter.t0 < MIN_ENERGY_WINDOW_S:
        dec.generate(prompts[0], NEW_TOKENS)
    m = meter.stop()
    distinct = len({round(s, 6) for s in timings})
    degenerate = distinct < max(2, len(timings) // 2)
    report.add("FAIL" if degenerate else "ok",
               f"timing: {len(timings)} generate calls between device synchronisations ({'CUDA' if cuda else 'CPU'}), "
               f"{distinct} distinct latencies, {min(timings) * 1e3:.2f}-{max(timings) * 1e3:.2f} ms")
    if not cuda:
        report.add("skip", "NVML energy/power/memory: null without a CUDA device (never 0)")
        return
    filled = {k: m[k] for k in ("energy_j", "power_mean_w", "power_peak_w", "memory_peak_mb")}
    reason = getattr(meter, "error", None) or m.get("energy_source")
    status = "ok" if all(v is not None for v in filled.values()) else "FAIL"
    report.add(status, "NVML over {:.1f} s: ".format(m["window_s"]) + ", ".join(
        f"{k} {v:.1f}" if v is not None else f"{k} null" for k, v in filled.items()) + f" ({reason})")


def _check_d2f_cache(report: Report, root: Path, arms: list, device: torch.device) -> None:
    """D2F's cache is exact in exact arithmetic; in bf16 the cached and full forwards use kernels of different query
    lengths, so the rate of token-identical answers is reported (a float32 mismatch would be a bug)."""
    for model, adapter, decoder, params in (a for a in arms if a[2] == "d2f"):
        for dtype in dict.fromkeys([torch.bfloat16, torch.float32 if device.type == "cpu" else torch.bfloat16]):
            lm = load_model(root / model, adapter=root / adapter, device=device, dtype=dtype)
            prompts = [lm.tokenizer(p).input_ids for p in PROMPTS]
            cached = build_decoder("d2f", lm, **params)
            full = build_decoder("d2f", lm, **params, cache=False)
            same = sum(cached.generate(ids, NEW_TOKENS).canvas_tokens == full.generate(ids, NEW_TOKENS).canvas_tokens
                       for ids in prompts)
            exact = dtype == torch.float32
            report.add("ok" if same == len(prompts) else ("FAIL" if exact else "info"),
                       f"D2F cache vs recompute, {adapter} in {str(dtype).removeprefix('torch.')}: {same}/{len(prompts)} "
                       f"canvases identical" + ("" if exact else " (bf16: kernels differ by query length)"))


def _check_ar_compile(report: Report, loaded: dict, arms: list, cuda: bool) -> None:
    ar = [loaded[m, a] for m, a, d, _ in arms if d == "ar"]
    if not ar:
        return
    if not cuda:
        report.add("skip", "ar compile: torch.compile with CUDA graphs is a GPU mode (checked on CUDA only)")
        return
    lm = ar[0]
    prompts = [lm.tokenizer(p).input_ids for p in PROMPTS]
    dynamic = build_decoder("ar", lm, cache="dynamic")
    compiled = build_decoder("ar", lm, cache="static", compile=True)
    start = time.perf_counter()
    same = sum(compiled.generate(ids, NEW_TOKENS).tokens == dynamic.generate(ids, NEW_TOKENS).tokens for ids in prompts)
    report.add("ok" if same == len(prompts) else "FAIL",
               f"ar compile (static cache, torch.compile): {same}/{len(prompts)} answers equal the dynamic loop's "
               f"({time.perf_counter() - start:.0f} s with compilation)")


BATCH_SIZES = (1, 4, 16)


def _check_batches(report: Report, ready: list, cuda: bool) -> None:
    """Does the speed-up survive a batch? Per family: 16 prompts of different lengths (the GSM8K questions and their
    shorter prefixes) decoded in batches of 1, 4 and 16 after a warm-up at each shape; aggregate TPS (all answer
    tokens over the timed windows) and the share of rows equal to batch 1's."""
    for label, lm, dec, prompts in ready:
        ragged = [ids[: max(8, len(ids) - 7 * (i // len(prompts)))] for i, ids in enumerate(prompts * 6)][:max(BATCH_SIZES)]
        tps, answers = {}, {}
        for size in BATCH_SIZES:
            batches = [ragged[i:i + size] for i in range(0, len(ragged), size)]
            dec.generate_batch(batches[0], NEW_TOKENS)  # warm-up at this shape
            rows, seconds = [], 0.0
            for batch in batches:
                gens, _, took = timed_call(dec.generate_batch, lm.device, batch, NEW_TOKENS)
                rows, seconds = rows + gens, seconds + took
            answers[size], tps[size] = [g.tokens for g in rows], sum(len(g.tokens) for g in rows) / seconds
        agree = {n: sum(a == b for a, b in zip(answers[n], answers[1])) for n in BATCH_SIZES[1:]}
        exact = not cuda and lm.model.dtype == torch.float32
        status = "ok" if all(v == len(ragged) for v in agree.values()) else ("FAIL" if exact else "info")
        report.add(status, f"{label} batches: aggregate TPS "
                   + ", ".join(f"{tps[n]:.1f} at {n}" for n in BATCH_SIZES)
                   + f" ({tps[BATCH_SIZES[-1]] / tps[1]:.1f}x at {BATCH_SIZES[-1]}); rows equal to batch 1: "
                   + ", ".join(f"{agree[n]}/{len(ragged)} at {n}" for n in agree)
                   + ("" if exact else " (bf16: kernels differ by shape)"))
