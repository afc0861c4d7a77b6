"""What a finished run must show before anyone reads its tables (CI checks the paper-smoke run with it):

- every cell, table and sweep, is `ok`;
- every benchmark was scored by its own scorer: the registry's metric and a verdict on every problem, which for
  answer-matching benchmarks is re-scored here and must agree, and for code is the bwrap sandbox's recorded outcome;
- with published numbers in the config, tables.md shows the published columns.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from d2f_core.bench.benchmarks import get_benchmark
from d2f_core.bench.io import read_jsonl_tolerant
from d2f_core.report.tables import PUBLISHED
from d2f_core.train.corpora import read_jsonl


def verify_run(summary_csv: str, data_dir: str, tables_md: str, published: bool) -> list[str]:
    """The problems found (empty: the run is complete and scored as the benchmarks define)."""
    df = pd.read_csv(summary_csv, keep_default_na=False, na_values=[""])
    problems = []
    for row in df.itertuples():
        where = f"{row.model}/{row.benchmark}/{row.decoder}/{row.params}"
        if row.status != "ok":
            problems.append(f"{where}: {row.status} ({row.error})")
            continue
        bench = get_benchmark(row.benchmark)
        if row.metric != bench.metric:
            problems.append(f"{where}: scored as {row.metric}, but {row.benchmark}'s metric is {bench.metric}")
        summary = json.loads((Path(row.cell_dir) / "summary.json").read_text())
        if bench.runs_code and summary.get("sandbox") != "bwrap":
            problems.append(f"{where}: code ran in the {summary.get('sandbox')!r} sandbox, not bwrap")
        samples = read_jsonl_tolerant(Path(row.cell_dir) / "samples.jsonl")
        if len(samples) != row.n:
            problems.append(f"{where}: {len(samples)} samples for n = {row.n}")
        docs = {r["id"]: r for r in read_jsonl(bench.test_file(data_dir))}
        for s in (s for s in samples if not s.get("error")):
            if bench.runs_code:
                wrong = "sandbox" not in s
            else:
                wrong = {k: v for k, v in bench.score(docs[s["id"]], s["output"]).items() if s.get(k) != v}
            if wrong:
                problems.append(f"{where}, problem {s['id']}: its verdict is not the {row.benchmark} scorer's "
                                f"({wrong if wrong is not True else 'no sandbox outcome'})")
    if published:
        text = Path(tables_md).read_text()
        absent = [name for name in PUBLISHED.values() if name not in text]
        if absent:
            problems.append(f"{tables_md}: no published column(s) {', '.join(absent)}")
    return problems
