"""The gate's A/B step: the reference commit's decoders against this checkout's, on the same models, interleaved.

A reference of stored numbers binds to the CPU that made it: models trained on another CPU type decode with other
forward counts, and a one-token AR step and an 8-token block forward do not cost the same relative to each other on
two CPUs. So speed and behaviour are compared code against code on the machine at hand (Kalibera & Jones; the A/B
of browser perf bots): the reference commit is checked out into a git worktree, and two worker processes
(`ab_worker.py`), one importing that tree's `d2f_core` and `baselines` and one importing this checkout's, load the
same trained models. For every problem, every (arm, cell) pair runs one `generate` in a newly shuffled order, one at
a time, so drift and whatever else the machine runs hit both arms alike. Each worker times its own `generate`
(device-synchronised, GC paused) with the same instrument.

Per cell it records current / reference TPS (ratio of sums, bootstrap CI over problems), the problems whose forward
count or answer differs (same models, deterministic decoding: any difference is a different algorithm), and the
score change those answers make (scored by the benchmark's own scorer, in the sandbox for code).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from d2f_core.bench.benchmarks import get_benchmark
from d2f_core.bench.environment import git_sha, versions
from d2f_core.bench.io import atomic_write_json, rewrite_jsonl
from d2f_core.bench.paired import SLOWDOWN_ENV, Arm, injected_slowdown, ratio_stats
from d2f_core.bench.sandbox import check_sandbox
from d2f_core.train.corpora import read_jsonl

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("ab_worker.py")
SIDES = ("reference", "current")


class ReferenceUnrunnable(Exception):
    """The reference commit cannot be checked out or cannot decode today's models: the gate fails, saying how to
    make a new reference."""


def meta_path(reference_csv: str | Path) -> Path:
    return Path(reference_csv).with_suffix(".meta.json")


def regenerate_hint(reference_csv: str | Path) -> str:
    profile = Path(reference_csv).stem
    return (f"make a new reference from a quiet run of this commit: `snakemake --cores all --configfile "
            f"workflow/config/{profile}.yaml && d2f regress --update --summary results/{profile}/summary.csv "
            f"--reference {reference_csv} --speed results/{profile}/speed/*.json`, then commit results/reference/ "
            f"saying why the reference moved")


def reference_commit(reference_csv: str | Path) -> str:
    path = meta_path(reference_csv)
    try:
        return json.loads(path.read_text())["commit"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ReferenceUnrunnable(f"{path}: no readable reference commit ({type(e).__name__}: {e}); "
                                  f"{regenerate_hint(reference_csv)}") from None


def reference_keys(reference_csv: str | Path, benchmark: str) -> set[str]:
    """The cell keys (model/benchmark/decoder/params) the reference holds for `benchmark`."""
    df = pd.read_csv(reference_csv, dtype=str)
    df = df[df["benchmark"] == benchmark]
    return set(df[["model", "benchmark", "decoder", "params"]].agg("/".join, axis=1))


@contextmanager
def worktree(commit: str, reference_csv: str | Path, repo: Path = REPO):
    """A detached git worktree of `commit` in a temporary directory, removed (and unregistered) afterwards."""
    git = ["git", "-C", str(repo)]
    found = subprocess.run([*git, "cat-file", "-e", f"{commit}^{{commit}}"], capture_output=True)
    if found.returncode != 0:
        raise ReferenceUnrunnable(f"the reference commit {commit} (from {meta_path(reference_csv)}) is not in the "
                                  f"repository at {repo}: in a shallow clone run `git fetch --unshallow`; if it "
                                  f"is gone from the history, {regenerate_hint(reference_csv)}")
    subprocess.run([*git, "worktree", "prune"], check=True, capture_output=True)  # a killed run's leftover
    tmp = Path(tempfile.mkdtemp(prefix="d2f-ab-"))
    tree = tmp / "reference"
    try:
        subprocess.run([*git, "worktree", "add", "--detach", str(tree), commit], check=True, capture_output=True)
        yield tree
    finally:
        subprocess.run([*git, "worktree", "remove", "--force", str(tree)], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run([*git, "worktree", "prune"], capture_output=True)


class Worker:
    """One arm's process: `ab_worker.py` with `code` first on PYTHONPATH, one JSON request and reply a line."""

    def __init__(self, side: str, code: Path):
        self.side, self.code = side, code.resolve()
        env = {k: v for k, v in os.environ.items() if k != SLOWDOWN_ENV}  # the slowdown goes to `current` only
        env["PYTHONPATH"] = os.pathsep.join([str(self.code), *filter(None, [os.environ.get("PYTHONPATH")])])
        self.proc = subprocess.Popen([sys.executable, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=env, text=True, bufsize=1)

    def call(self, **msg) -> dict:
        try:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:
            return {"error": f"the worker process exited (code {self.proc.wait()}); its output is above"}
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def checked(worker: Worker, reply: dict, commit: str, reference_csv: str | Path) -> dict:
    """A reply, or the reason the arm cannot go on: the reference's is a ReferenceUnrunnable, ours an error."""
    if "error" not in reply:
        return reply
    print(reply.get("traceback", ""), file=sys.stderr)
    if worker.side == "reference":
        raise ReferenceUnrunnable(f"the reference commit {commit[:12]}'s code cannot decode this run's models and "
                                  f"cells ({reply['error']}); {regenerate_hint(reference_csv)}")
    raise RuntimeError(f"the current code failed in the A/B step: {reply['error']}")


def run_ab(arms: list[Arm], benchmark: str, data_dir: str, reference_csv: str, out: str, limit: int | None = None,
           warmup: int = 1, threads: int = 1, sandbox: str = "bwrap", seed: int = 0, repo: Path = REPO) -> dict:
    """Both arms on every problem, interleaved; write `out` (per-cell verdict material) and `out` .jsonl. The
    reference arm decodes with `repo` at the reference commit, the current arm with this checkout."""
    commit = reference_commit(reference_csv)
    known = reference_keys(reference_csv, benchmark)
    new = [a.cell for a in arms if a.cell not in known]  # the reference commit may not know them: reported only
    arms = [a for a in arms if a.cell in known]
    bench = get_benchmark(benchmark)
    rows = read_jsonl(bench.test_file(data_dir))[:limit]
    setup = {"op": "setup", "arms": [vars(a) for a in arms], "benchmark": benchmark, "data_dir": str(data_dir),
             "limit": limit, "warmup": warmup, "threads": threads}
    records, rng = [], random.Random(seed)
    with ExitStack() as stack:
        tree = stack.enter_context(worktree(commit, reference_csv, repo))
        workers = {side: Worker(side, code) for side, code in zip(SIDES, (tree, REPO))}
        for w in workers.values():
            stack.callback(w.close)
        for side, w in workers.items():
            reply = checked(w, w.call(**setup, slowdown=injected_slowdown() if side == "current" else None),
                            commit, reference_csv)
            if Path(reply["code"]) != w.code:
                raise RuntimeError(f"the {side} arm imported d2f_core from {reply['code']}, not {w.code}: "
                                   f"something on sys.path shadows PYTHONPATH")
        for i, row in enumerate(tqdm(rows, desc=f"A/B {benchmark}", mininterval=5)):
            order = [(side, arm.cell) for side in SIDES for arm in arms]
            rng.shuffle(order)
            for position, (side, cell) in enumerate(order):
                w = workers[side]
                r = checked(w, w.call(op="run", cell=cell, problem=i), commit, reference_csv)
                records.append({"problem": row["id"], "position": position, "side": side, "cell": cell,
                                "answer": r["tokens"], "text": r["text"], "tokens": len(r["tokens"]),
                                "latency": r["latency"], "forwards": r["forwards"]})
    if bench.runs_code:
        check_sandbox(sandbox)
    summary = {"benchmark": benchmark, "reference_commit": commit, "current_commit": git_sha(), "new": new,
               "problems": len(rows), "threads": threads, "injected_slowdown": injected_slowdown() or None,
               "versions": versions(), "cells": summarize_ab(records, rows, bench, sandbox)}
    rewrite_jsonl(Path(out).with_suffix(".jsonl"), records)
    atomic_write_json(out, summary)
    return summary


def summarize_ab(records: list[dict], rows: list[dict], bench, sandbox: str) -> dict:
    """Per cell: current/reference TPS with its CI, TPS of each arm, and every problem whose forwards or answer
    differ, with the score change of the differing answers."""
    by = {}  # cell -> side -> problem -> record
    for rec in records:
        by.setdefault(rec["cell"], {}).setdefault(rec["side"], {})[rec["problem"]] = rec
    row_of = {row["id"]: row for row in rows}
    problems = list(row_of)
    out = {}
    for cell, sides in by.items():
        cur, ref = sides["current"], sides["reference"]
        stats = ratio_stats([(cur[p]["tokens"], cur[p]["latency"]) for p in problems],
                            [(ref[p]["tokens"], ref[p]["latency"]) for p in problems])
        forwards = [{"problem": p, "current": cur[p]["forwards"], "reference": ref[p]["forwards"]}
                    for p in problems if cur[p]["forwards"] != ref[p]["forwards"]]
        answers = [p for p in problems if cur[p]["answer"] != ref[p]["answer"]]
        verdicts = {p: [bool(bench.score(row_of[p], side[p]["text"], sandbox)["correct"]) for side in (cur, ref)]
                    for p in answers}
        gained = [p for p, (now, before) in verdicts.items() if now and not before]
        lost = [p for p, (now, before) in verdicts.items() if before and not now]
        out[cell] = {**stats, "tps_current": tps(cur.values()), "tps_reference": tps(ref.values()),
                     "forwards_differ": forwards, "answers_differ": answers, "gained": gained, "lost": lost,
                     "score_change": (len(gained) - len(lost)) / len(problems)}
    return out


def tps(records) -> float:
    records = list(records)
    return sum(r["tokens"] for r in records) / sum(r["latency"] for r in records)
