"""Batch sizes end to end: config cells, a batched cell's decoding, resume and summary, the gate's batch = batch-1
check and the batch report."""

import copy
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from d2f_core.bench.io import read_jsonl_tolerant
from d2f_core.bench.runner import run_cell
from d2f_core.bench.scoring import score_cell
from d2f_core.config import check_config, expand_cells, speed_pairs
from d2f_core.report.aggregate import aggregate
from d2f_core.report.build import build_reports
from d2f_core.report.regress import regress

REPO = Path(__file__).resolve().parents[1]
D2F = {"block_size": "4", "tau_add": "0.5", "tau_act": "0.6", "tau_conf": "0.3"}


def test_batch_sizes_make_one_cell_each_and_batch_one_keeps_its_label():
    config = yaml.safe_load((REPO / "workflow/config/tiny.yaml").read_text())
    config["cells"] = [{"model": "tiny-ar", "decoder": "ar", "benchmarks": ["tiny-gsm"], "batch_sizes": [1, 4, 16]},
                       {"model": "tiny-llada-d2f", "decoder": "d2f", "benchmarks": ["tiny-gsm"], "batch_sizes": [8],
                        "params": {"block_size": 8, "tau_add": [0.1, 0.7]}}]
    cells = expand_cells(config)
    assert [c.params for c in cells] == ["default", "batch_size~4", "batch_size~16", "batch_size~8,block_size~8,"
                                         "tau_add~0.1", "batch_size~8,block_size~8,tau_add~0.7"]
    assert [c.batch_size for c in cells] == [1, 4, 16, 8, 8]
    group, _ = speed_pairs(config, cells, "tiny-gsm")
    assert [c.params for c in group] == ["default"], "the paired step times one problem at a time"


def test_a_bad_batch_size_fails_at_parse_time_naming_the_field(tmp_path):
    config = yaml.safe_load((REPO / "workflow/config/tiny.yaml").read_text())
    bad = copy.deepcopy(config)
    bad["cells"][0]["batch_sizes"] = [1, 0]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ValueError, match="batch_sizes"):
        check_config(str(path))


def _decode(model_dirs, data_dir, out, params, limit=5):
    run_cell(str(model_dirs["llada"]), "tiny-gsm", str(data_dir), "d2f", params, 16, str(out), limit=limit)
    return score_cell(str(out), str(data_dir), "test", "tiny-llada-d2f")


def test_a_batched_cell_decodes_every_problem_as_batch_one_and_times_each_batch(model_dirs, data_dir, tmp_path):
    one = _decode(model_dirs, data_dir, tmp_path / "one", D2F)
    three = _decode(model_dirs, data_dir, tmp_path / "three", {**D2F, "batch_size": "3"})
    assert one["batch_size"] == 1 and three["batch_size"] == 3
    assert (three["score"], three["nfe"]) == (one["score"], one["nfe"])
    alone = {r["id"]: r for r in read_jsonl_tolerant(tmp_path / "one" / "generations.jsonl")}
    rows = read_jsonl_tolerant(tmp_path / "three" / "generations.jsonl")
    assert sorted(r["id"] for r in rows) == sorted(alone), "every problem once"
    assert sorted(r["batch_size"] for r in rows) == [2, 2, 3, 3, 3], "5 problems in batches of 3 and 2"
    for r in rows:
        assert (r["output"], r["forwards"], r["forward_positions"]) == (
            alone[r["id"]]["output"], alone[r["id"]]["forwards"], alone[r["id"]]["forward_positions"])
        assert 0 < r["latency"] <= r["batch_s"]
    windows = {r["batch"]: r["batch_s"] for r in rows}
    assert len(windows) == 2
    assert three["tps"] == pytest.approx(sum(r["tokens"] for r in rows) / sum(windows.values()))
    assert one["padded_fraction"] == 0 and 0 < three["padded_fraction"] < 1, "ragged prompts pad"
    assert three["latency_p90"] >= three["latency_median"]


def test_a_killed_batched_cell_resumes_at_a_whole_batch(model_dirs, data_dir, tmp_path):
    out = tmp_path / "cell"
    _decode(model_dirs, data_dir, out, {**D2F, "batch_size": "2"})
    rows = read_jsonl_tolerant(out / "generations.jsonl")
    (out / "generations.jsonl").unlink()
    keep = rows[:3]  # the first batch, and one row of the second: a kill between two rows of one batch
    (out / "generations.partial.jsonl").write_text("".join(json.dumps(r) + "\n" for r in keep))
    record = run_cell(str(model_dirs["llada"]), "tiny-gsm", str(data_dir), "d2f", {**D2F, "batch_size": "2"}, 16,
                      str(out), limit=5)
    again = read_jsonl_tolerant(out / "generations.jsonl")
    assert record["resumed_from"] == 2 and [r["id"] for r in again[:2]] == [r["id"] for r in rows[:2]]
    assert sorted(r["id"] for r in again) == sorted(r["id"] for r in rows)


def _summary(tmp_path, model_dirs, data_dir):
    cells = [("one", D2F), ("three", {**D2F, "batch_size": "3"})]
    files = []
    for name, params in cells:
        _decode(model_dirs, data_dir, tmp_path / name, params)
        files.append(str(tmp_path / name / "summary.json"))
    return aggregate(files, str(tmp_path / "summary.csv"))


def test_the_gate_fails_a_batch_cell_that_differs_from_batch_one(model_dirs, data_dir, tmp_path, capsys):
    df = _summary(tmp_path, model_dirs, data_dir)
    df.to_csv(tmp_path / "reference.csv", index=False)
    assert regress(str(tmp_path / "summary.csv"), str(tmp_path / "reference.csv")) == 0
    assert "batch = batch 1" in capsys.readouterr().out
    df.loc[df["params"].str.contains("batch_size"), "nfe"] += 0.5
    df.to_csv(tmp_path / "summary.csv", index=False)
    assert regress(str(tmp_path / "summary.csv"), str(tmp_path / "reference.csv")) == 1
    out = capsys.readouterr().out
    assert "1 regression(s)" in out and "batch_size~3" in out.split("regression(s)")[1]


def test_the_batch_report_has_its_table_and_figure(model_dirs, data_dir, tmp_path):
    _summary(tmp_path, model_dirs, data_dir)
    figures = build_reports(str(tmp_path / "summary.csv"), str(tmp_path / "report"))
    assert tmp_path / "report" / "batch_tiny-gsm.png" in figures
    text = (tmp_path / "report" / "batch.md").read_text()
    assert "TPS (aggregate)" in text and text.count("| d2f ") == 2
    table = pd.read_csv(tmp_path / "report" / "table.csv")
    assert len(table) == 1, "the paper's tables keep batch 1"


def test_overhead_reports_tps_per_batch_size_and_the_share_outside_forwards(model_dirs, data_dir, tmp_path, capsys):
    from d2f_core.cli import main

    main(["overhead", "--model", str(model_dirs["llada"]), "--benchmark", "tiny-gsm", "--data", str(data_dir),
          "--decoder", "d2f", "--param", "block_size=4", "--batch-sizes", "1", "4", "--limit", "6",
          "--max-new-tokens", "16", "--out", str(tmp_path / "o.json")])
    rows = json.loads((tmp_path / "o.json").read_text())["rows"]
    assert [r["batch_size"] for r in rows] == [1, 4] and rows[0]["tps_vs_batch_1"] == 1
    assert all(0 < r["outside_forwards"] < 1 and r["tokens"] > 0 for r in rows)
    assert "outside model forwards" in capsys.readouterr().out


def test_the_ab_asks_only_for_batch_one_cells(model_dirs, data_dir, tmp_path):
    """The A/B times one problem at a time: a reference's batch cells are the batch check's, never 'missing'."""
    from d2f_core.report.regress import ab_checks, load_summary

    _summary(tmp_path, model_dirs, data_dir)
    ref = load_summary(tmp_path / "summary.csv")
    missing = [c.cell for c in ab_checks({"cells": {}, "new": []}, ref, ref, 0.1) if c.verdict == "REGRESSION"]
    assert missing == [c for c in ref.index if "batch_size" not in c] and len(missing) == 1
