"""`d2f verify-run`: a finished run is complete only when every cell is ok, every verdict is its benchmark's scorer's
and the published columns are shown."""

from __future__ import annotations

import json

import pandas as pd

from d2f_core.bench.io import rewrite_jsonl
from d2f_core.report.tables import PUBLISHED
from d2f_core.report.verify import verify_run

DOCS = [{"id": f"gsm8k/{i}", "doc": {"question": "q", "answer": f"so #### {i + 5}"}} for i in range(3)]
OUTPUTS = ["#### 5", "it is 6", "#### 9"]  # strict right / flexible right / both wrong


def write_run(tmp_path, samples, status="ok", tables="| Model | " + " | ".join(PUBLISHED.values()) + " |\n"):
    data, cell = tmp_path / "data", tmp_path / "cell"
    data.mkdir(exist_ok=True)
    cell.mkdir(exist_ok=True)
    rewrite_jsonl(data / "gsm8k.test.jsonl", DOCS)
    rewrite_jsonl(cell / "samples.jsonl", samples)
    (cell / "summary.json").write_text(json.dumps({"sandbox": None}))
    pd.DataFrame([{"model": "llada-instruct", "benchmark": "gsm8k", "decoder": "vanilla", "params": "steps~32",
                   "status": status, "error": None if status == "ok" else "boom", "metric": "exact_match",
                   "cell_dir": str(cell), "n": len(samples)}]).to_csv(tmp_path / "summary.csv", index=False)
    (tmp_path / "tables.md").write_text(tables)
    return [str(tmp_path / "summary.csv"), str(data), str(tmp_path / "tables.md")]


def scored(outputs):
    return [{"id": d["id"], "output": o, "correct": o == f"#### {i + 5}", "correct_flexible": o.endswith(str(i + 5))}
            for i, (d, o) in enumerate(zip(DOCS, outputs))]


def test_a_complete_run_scored_by_its_scorer_passes(tmp_path):
    assert verify_run(*write_run(tmp_path, scored(OUTPUTS)), published=True) == []


def test_a_verdict_that_is_not_the_scorers_is_named(tmp_path):
    samples = scored(OUTPUTS)
    samples[2]["correct"] = True  # "#### 9" is not 7
    problems = verify_run(*write_run(tmp_path, samples), published=True)
    assert len(problems) == 1 and "problem gsm8k/2: its verdict is not the gsm8k scorer's" in problems[0]


def test_a_failed_cell_and_missing_published_columns_are_named(tmp_path):
    problems = verify_run(*write_run(tmp_path, scored(OUTPUTS), status="failed", tables="| Model | TPS |\n"),
                          published=True)
    assert problems[0] == "llada-instruct/gsm8k/vanilla/steps~32: failed (boom)"
    assert "no published column(s) TPS (paper)" in problems[1]
