"""Decode the cells of one model on one benchmark (decoder x params each): warm up, then time every `generate` call.

One process serves every cell of a model x benchmark: Python's imports (torch and transformers: ~7.5 s of a CPU
process's start) and the model load are paid once, and the prompts are checked once, while each cell keeps its own
decoder, warm-up, timing, resume and failure record in its own directory.

Every finished problem is appended to the cell's `generations.partial.jsonl` at once, so a killed run resumes where
it stopped; the file becomes `generations.jsonl` when the cell is complete. `generations.partial.identity.json`
records what produced the rows (model and adapter fingerprints, decoder, parameters, data hash, generation length);
a resume continues them, and a complete cell is kept as it is, only when all of it matches, so a cell never
mixes two models and a rerun never decodes a finished cell twice. A cell that cannot run (bad model path, bad
parameter, a prompt longer than the model's context, non-finite logits) is recorded as failed in `meter.json` with
its error, and the other cells go on.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from d2f_core.bench.benchmarks import get_benchmark
from d2f_core.bench.environment import device_info, git_sha, versions
from d2f_core.bench.gpu_slot import claim_gpu
from d2f_core.bench.io import (DISK_FIXES, JsonlAppender, atomic_write_json, exclusive, read_jsonl_tolerant,
                               rewrite_jsonl)
from d2f_core.bench.meter import Meter, timed_call
from d2f_core.decode.base import build_decoder, check_params
from d2f_core.model.load import LoadedModel, load_model
from d2f_core.train.corpora import read_jsonl


def parse_params(label: str) -> dict[str, str]:
    """`block_size~16,steps~48` -> {"block_size": "16", "steps": "48"}; `default` -> {}."""
    if label in ("", "default"):
        return {}
    pairs = [p.split("~", 1) for p in label.split(",")]
    if any(len(p) != 2 for p in pairs):
        raise ValueError(f"bad params label {label!r}; expected key~value pairs joined by ','")
    return dict(pairs)


def params_label(params: dict) -> str:
    return ",".join(f"{k}~{params[k]}" for k in sorted(params)) or "default"


def split_batch(params: dict) -> tuple[dict, int]:
    """A cell's parameters -> (the decoder's, its batch size): `batch_size` (absent: 1) names how many problems
    one `generate_batch` decodes; it is the cell's, not the decoder's."""
    rest = {k: v for k, v in params.items() if k != "batch_size"}
    value = params.get("batch_size", 1)
    if isinstance(value, bool) or not str(value).isdigit() or int(value) < 1:
        raise ValueError(f"batch_size = {value!r}: must be a whole number >= 1")
    return rest, int(value)


def batches_of(n: int, batch_size: int, seed: int = 0) -> list[list[int]]:
    """Problem indices grouped into batches: in file order at batch 1 (one problem per batch, as always), else in a
    seeded shuffled order, so a batch mixes lengths as a server's arrivals would and every run forms the same ones."""
    order = list(range(n))
    if batch_size > 1:
        random.Random(seed).shuffle(order)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


@dataclass
class Shared:
    """What the cells of one model x benchmark share."""
    lm: LoadedModel
    rows: list[dict]
    prompts: list[list[int]]  # each checked to fit the model's positions and to give finite logits


class Prepared:
    """`prepare`'s result, made on the first cell that needs it and reused by the others; its error too, so a
    model that fails to load fails every cell of the process without being loaded again."""

    def __init__(self, *args):
        self.args, self.value, self.error = args, None, None

    def get(self) -> Shared:
        if self.value is None and self.error is None:
            try:
                self.value = prepare(*self.args)
            except Exception as e:
                self.error = e
        if self.error is not None:
            raise self.error
        return self.value


def prepare(model: str, benchmark: str, data_dir: str, max_new_tokens: int, adapter: str | None, merge: bool,
            limit: int | None, chat: bool) -> Shared:
    """Load the model and the test rows; tokenize and check every prompt once (an untimed forward each)."""
    bench = get_benchmark(benchmark)
    rows = read_jsonl(bench.test_file(data_dir))[:limit]
    claim_gpu()
    lm = load_model(model, adapter=adapter, merge=merge)
    prompts = [prompt_ids(lm, bench, r, chat) for r in rows]
    for row, ids in zip(rows, prompts):
        check_fits(lm, row["id"], ids, max_new_tokens)
        check_finite(lm, row["id"], ids)
    return Shared(lm, rows, prompts)


def run_cells(model: str, benchmark: str, data_dir: str, cells: list[tuple[str, dict]], max_new_tokens: int,
              out_dir: str, adapter: str | None = None, merge: bool = False, limit: int | None = None,
              warmup: int = 1, threads: int | None = None, chat: bool = False) -> list[dict]:
    """Decode each (decoder, params) cell into `out_dir`/decoder/params and list them in `out_dir`/decoded.json."""
    if threads:
        torch.set_num_threads(threads)
    with exclusive(out_dir, "d2f decode"):  # two writers of one job would interleave or steal its partial files
        shared = Prepared(model, benchmark, data_dir, max_new_tokens, adapter, merge, limit, chat)
        records = [run_cell(model, benchmark, data_dir, decoder, params, max_new_tokens,
                            str(Path(out_dir) / decoder / params_label(params)), adapter, merge, limit, warmup,
                            chat=chat, shared=shared) for decoder, params in cells]
        atomic_write_json(Path(out_dir) / "decoded.json", {
            "model": model, "adapter": adapter, "benchmark": benchmark,
            "cells": [{"cell": f"{r['decoder']}/{params_label(r['params'])}", "status": r["status"],
                       "error": r["error"]} for r in records]})
    return records


def run_cell(model: str, benchmark: str, data_dir: str, decoder: str, params: dict, max_new_tokens: int,
             out_dir: str, adapter: str | None = None, merge: bool = False, limit: int | None = None,
             warmup: int = 1, threads: int | None = None, chat: bool = False,
             shared: Prepared | None = None) -> dict:
    """One cell into `out_dir`: kept as it is when already complete with the same identity, else resumed or decoded
    (with `shared`, the model and prompts the other cells of this process use)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    partial, final = out / "generations.partial.jsonl", out / "generations.jsonl"
    record = {"model": model, "adapter": adapter, "merge": merge, "benchmark": benchmark, "decoder": decoder,
              "params": params, "max_new_tokens": max_new_tokens, "limit": limit, "warmup": warmup, "chat": chat,
              "status": "ok", "error": None, "versions": versions(), "git_sha": git_sha()}
    if threads:
        torch.set_num_threads(threads)
    try:
        decoder_params, batch_size = split_batch(params)
        record["batch_size"] = batch_size
        check_params(decoder, decoder_params, max_new_tokens)  # before any model is loaded
        bench = get_benchmark(benchmark)
        identity = {"model": fingerprint(model), "adapter": fingerprint(adapter) if adapter else None,
                    "merge": merge, "decoder": decoder, "params": params, "max_new_tokens": max_new_tokens,
                    "data": file_hash(bench.test_file(data_dir)), "chat": chat}
        kept = complete(out, identity, limit)
        if kept:
            print(f"{out}: complete with the same model, decoder, parameters and data; kept")
            return kept
        done = resumable(partial, identity)
        shared = (shared or Prepared(model, benchmark, data_dir, max_new_tokens, adapter, merge, limit, chat)).get()
        lm = shared.lm
        dec = build_decoder(decoder, lm, **decoder_params)
        record["gpu_index"] = torch.cuda.current_device() if lm.device.type == "cuda" else None
        record["device_info"] = device_info(lm.device)
        pairs = list(zip(shared.rows, shared.prompts))
        todo, done = pending(batches_of(len(pairs), batch_size), [row["id"] for row in shared.rows], done, partial)
        record["resumed_from"] = len(done)
        for size in sorted({len(batch) for batch in todo}):  # never recorded: first-call allocations, lazy init,
            for batch in batches_of_longest(pairs, size)[:warmup]:  # and buffers sized for the longest (a static
                dec.generate_batch([ids for _, ids in batch], max_new_tokens,  # cache), at every batch shape
                                   [bench.stops(row) for row, _ in batch])
        meter, log = Meter(lm.device), JsonlAppender(partial)
        meter.start()
        for batch in tqdm(todo, desc=f"{decoder} {Path(model).name} {benchmark}", mininterval=5):
            rows = [pairs[i] for i in batch]
            for sample in decode_batch(dec, lm, [row["id"] for row, _ in rows], [ids for _, ids in rows],
                                       max_new_tokens, [bench.stops(row) for row, _ in rows],
                                       first=not done and batch is todo[0], batch=batch[0]):
                log.write(sample)
        record["meter"] = meter.stop()
        record["meter"]["window_samples"] = sum(map(len, todo))
        log.close()
        os.replace(partial, final)
    except Exception as e:  # the cell is recorded as failed; other cells go on
        if isinstance(e, OSError) and e.errno in DISK_FIXES:  # the disk's fault: stop, named; resume after the fix
            raise
        record.update(status="failed", error=f"{type(e).__name__}: {e}",
                      traceback="".join(traceback.format_exception(e)))
        final.touch()
    atomic_write_json(out / "meter.json", record)
    return record


def batches_of_longest(pairs: list[tuple[dict, list[int]]], size: int) -> list[list[tuple[dict, list[int]]]]:
    """(row, prompt ids) pairs, the longest prompts first, in batches of `size`: warming up on them sizes every
    buffer a decoder grows (the compiled AR step's static cache recompiles when a longer prompt outgrows it: never
    inside a timed call)."""
    ranked = sorted(pairs, key=lambda pair: len(pair[1]), reverse=True)
    return [ranked[i:i + size] for i in range(0, len(ranked), size)]


def pending(batches: list[list[int]], ids: list, done: list[dict], partial: Path) -> tuple[list, list[dict]]:
    """The batches still to decode, and the finished rows to keep: those of whole batches (a batch's rows are
    appended together; a kill between two of them leaves a part, which is decoded again)."""
    finished, todo, kept = {row["id"] for row in done}, [], set()
    for batch in batches:
        if all(ids[i] in finished for i in batch):
            kept.update(ids[i] for i in batch)
        else:
            todo.append(batch)
    if len(kept) != len(done):
        done = [row for row in done if row["id"] in kept]
        rewrite_jsonl(partial, done)
    return todo, done


def fingerprint(path: str) -> dict:
    """What identifies a model or adapter directory without hashing gigabytes: its config's hash and the name, size
    and modification time of every weight file."""
    root = Path(path)
    config = next((root / n for n in ("config.json", "adapter_config.json") if (root / n).exists()), None)
    weights = sorted(p for p in root.glob("*") if p.suffix in (".safetensors", ".bin", ".pth", ".pt"))
    return {"config": file_hash(config) if config else None,
            "weights": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in weights]}


def file_hash(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def complete(out: Path, identity: dict, limit: int | None) -> dict | None:
    """The cell's record if it finished ok with this identity and problem limit (a rerun keeps it), else None."""
    meta, meter = out / "generations.partial.identity.json", out / "meter.json"
    if not ((out / "generations.jsonl").exists() and meter.exists() and meta.exists()):
        return None
    record = json.loads(meter.read_text())
    same = json.loads(meta.read_text()) == json.loads(json.dumps(identity))
    return record if same and record.get("status") == "ok" and record.get("limit") == limit else None


def resumable(partial: Path, identity: dict) -> list[dict]:
    """The partial rows to continue, if the same model, adapter, decoder, parameters and data wrote them; else []."""
    meta = partial.with_name("generations.partial.identity.json")
    done = read_jsonl_tolerant(partial)
    if done and (not meta.exists() or json.loads(meta.read_text()) != json.loads(json.dumps(identity))):
        print(f"discarding {len(done)} partial generations in {partial}: written by another model, adapter, decoder, "
              f"parameters or data than this run's")
        done = []
    rewrite_jsonl(partial, done)  # also drops a line torn by a kill
    atomic_write_json(meta, identity)
    return done


def check_fits(lm, sample_id, ids: list[int], max_new_tokens: int) -> None:
    """A prompt that leaves no room for the generation would decode silently past the model's positions."""
    if not ids:
        raise ValueError(f"problem {sample_id}: the prompt is empty (no tokens); check the test file")
    limit = getattr(lm.model.config, "max_position_embeddings", None)
    if limit is not None and len(ids) + max_new_tokens > limit:
        raise ValueError(f"problem {sample_id}: prompt of {len(ids)} tokens + generation length {max_new_tokens} "
                         f"exceeds the model's {limit} positions (max_position_embeddings); use fewer shots, a "
                         f"shorter generation length or `limit`-ed documents")


@torch.inference_mode()
def check_finite(lm, sample_id, ids: list[int]) -> None:
    """NaN or infinite weights, or an overflow, give garbage answers that would be scored as a model's; fail instead."""
    logits = lm.model(input_ids=torch.tensor([ids], device=lm.device), logits_to_keep=1).logits
    if not torch.isfinite(logits).all():
        raise FloatingPointError(f"problem {sample_id}: the model's logits are not finite (NaN or inf) on this "
                                 f"prompt; the checkpoint {lm.path} (adapter {lm.adapter}) is broken or overflows "
                                 f"in {lm.model.dtype}")


def prompt_ids(lm, bench, row: dict, chat: bool) -> list[int]:
    """A real benchmark's few-shot turns go through the model's chat template when the model is chat-tuned and the
    benchmark is run as chat (LLaDA-Instruct on GSM8K, not on HumanEval); everything else is plain text."""
    if chat and row.get("messages"):
        text = lm.tokenizer.apply_chat_template(row["messages"], add_generation_prompt=True, tokenize=False)
        return lm.tokenizer(text, add_special_tokens=False).input_ids  # the template writes its own BOS
    return lm.tokenizer(bench.prompt(row)).input_ids


def decode_one(dec, lm, sample_id, ids, max_new_tokens, stop, first: bool) -> dict:
    """One problem decoded alone (a batch of one)."""
    return decode_batch(dec, lm, [sample_id], [ids], max_new_tokens, [stop], first)[0]


def decode_batch(dec, lm, sample_ids: list, prompts: list[list[int]], max_new_tokens: int, stops: list,
                 first: bool, batch: int = 0) -> list[dict]:
    """Time one `generate_batch` (one device-synchronised window for the whole batch) and count each row's tokens
    the ways DESIGN §5 defines. A row's latency is the time until it was final (`Generation.finished_s`; the whole
    window at batch 1, as always); `batch_s` is the window, which the batch's aggregate TPS divides by. A batch that
    fails is an error row per problem, not a crashed cell."""
    samples = [{"id": i, "prompt_hash": hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]}
               for i, ids in zip(sample_ids, prompts)]
    try:
        gens, start, seconds = timed_call(dec.generate_batch, lm.device, prompts, max_new_tokens,
                                          [list(s) for s in stops])
    except Exception as e:
        return [{**s, "output": "", "tokens": 0, "latency": None, "forwards": 0, "error": f"{type(e).__name__}: {e}"}
                for s in samples]
    for sample, gen in zip(samples, gens):
        canvas = [t for t in gen.canvas_tokens if t != lm.eos_id]
        sample.update(
            output=gen.text, tokens=len(gen.tokens),
            latency=seconds if len(gens) == 1 else min(gen.finished_s - start, seconds),
            forwards=gen.forwards, forward_positions=gen.forward_positions, canvas_length=len(gen.canvas_tokens),
            tokens_llada=sum(t != lm.eos_id for t in lm.tokenizer(gen.text).input_ids), tokens_canvas=len(canvas),
            batch=batch, batch_size=len(gens), batch_s=seconds, batch_forwards=gen.finished_at,
            batch_slots=gen.slots, error=None,
        )
    if first and gens[0].trace is not None:
        samples[0]["trace"] = gens[0].trace  # one problem per cell, for the timeline figure
    return samples
