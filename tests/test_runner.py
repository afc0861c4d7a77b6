"""The cell runner: metered decoding, resume after a kill, failures recorded without losing other cells."""

import json

import pytest

from d2f_core.bench.io import read_jsonl_tolerant
from d2f_core.bench.runner import params_label, parse_params, run_cell
from d2f_core.bench.scoring import score_cell
from d2f_core.report.aggregate import aggregate
from d2f_core.report.tables import write_tables


def test_params_label_round_trip():
    params = {"steps": 48, "block_size": 16, "remasking": "low_confidence"}
    label = params_label(params)
    assert label == "block_size~16,remasking~low_confidence,steps~48"
    assert parse_params(label) == {k: str(v) for k, v in params.items()} and parse_params("default") == {}
    with pytest.raises(ValueError, match="key~value"):
        parse_params("block_size=16")


def test_no_garbage_collection_inside_a_timed_generate():
    """A full collection over torch's and transformers' objects takes 0.1-0.3 s: inside a timed call it made one
    problem of a tiny cell five times slower than its neighbours."""
    import gc

    import torch

    from d2f_core.bench.meter import timed_generate

    class Spy:
        def generate(self, *args):
            self.args, self.collector_on = args, gc.isenabled()
            return "gen"

    spy = Spy()
    assert timed_generate(spy, torch.device("cpu"), [1, 2], 8)[0] == "gen" and spy.args == ([1, 2], 8)
    assert not spy.collector_on and gc.isenabled()


def _cell(model_dirs, data_dir, out, decoder="vanilla", params=None, model="llada", **kw):
    return run_cell(str(model_dirs[model]), "tiny-gsm", str(data_dir), decoder, params or {"block_size": "8"}, 16,
                    str(out), **kw)


def test_cell_summary_on_cpu(model_dirs, data_dir, tmp_path):
    rec = _cell(model_dirs, data_dir, tmp_path / "cell", limit=4)
    assert rec["status"] == "ok" and rec["meter"]["energy_j"] is None and rec["meter"]["memory_peak_mb"] is None
    s = score_cell(str(tmp_path / "cell"), str(data_dir), "test", "tiny-llada")
    assert s["status"] == "ok" and s["n"] == 4 and s["nfe"] == 16
    assert s["tps"] > 0 and s["tps_ci"][0] <= s["tps"] <= s["tps_ci"][1]
    assert s["energy_j"] is None and s["j_per_token"] is None and s["power_mean_w"] is None
    assert len(read_jsonl_tolerant(tmp_path / "cell" / "samples.jsonl")) == 4


def test_killed_cell_resumes_from_its_partial_log(model_dirs, data_dir, tmp_path):
    out = tmp_path / "cell"
    _cell(model_dirs, data_dir, out, limit=2)
    done = read_jsonl_tolerant(out / "generations.jsonl")
    # simulate a kill after two problems, mid-way through writing the third line
    (out / "generations.jsonl").rename(out / "generations.partial.jsonl")
    with open(out / "generations.partial.jsonl", "a") as f:
        f.write('{"id": "torn')
    rec = _cell(model_dirs, data_dir, out, limit=5)
    rows = read_jsonl_tolerant(out / "generations.jsonl")
    assert rec["resumed_from"] == 2 and [r["id"] for r in rows[:2]] == [r["id"] for r in done]
    assert len(rows) == 5 and len({r["id"] for r in rows}) == 5


def test_failed_cell_is_recorded_and_aggregated_beside_ok_cells(model_dirs, data_dir, tmp_path):
    ok, bad = tmp_path / "ok", tmp_path / "bad"
    _cell(model_dirs, data_dir, ok, limit=2)
    rec = _cell(model_dirs, data_dir, bad, decoder="vanilla", model="ar", limit=2)  # vanilla cannot drive an AR model
    assert rec["status"] == "failed" and "masked-diffusion" in rec["error"]
    summaries = [score_cell(str(d), str(data_dir), "test", name) for d, name in ((ok, "tiny-llada"), (bad, "tiny-ar"))]
    assert [s["status"] for s in summaries] == ["ok", "failed"]
    df = aggregate([str(ok / "summary.json"), str(bad / "summary.json")], str(tmp_path / "summary.csv"))
    assert sorted(df["status"]) == ["failed", "ok"]
    write_tables(str(tmp_path / "summary.csv"), str(tmp_path / "report"))
    table = (tmp_path / "report" / "table.md").read_text()
    assert "failed" in table and "tiny-llada" in table


def test_missing_model_names_the_path(data_dir, tmp_path):
    rec = run_cell(str(tmp_path / "nowhere"), "tiny-gsm", str(data_dir), "ar", {}, 8, str(tmp_path / "cell"))
    assert rec["status"] == "failed" and "nowhere" in rec["error"] and "snakemake" in rec["error"]
    assert json.loads((tmp_path / "cell" / "meter.json").read_text())["status"] == "failed"


def test_one_process_decodes_a_models_cells_and_a_rerun_keeps_the_finished_ones(model_dirs, data_dir, tmp_path):
    from d2f_core.bench.runner import run_cells

    def run(cells, model="llada"):
        return run_cells(str(model_dirs[model]), "tiny-gsm", str(data_dir), cells, 16, str(tmp_path / "group"),
                         limit=2)

    first = run([("vanilla", {"block_size": "8"}), ("d2f", {"block_size": "8", "tau_add": "0.5"}),
                 ("vanilla", {"block_size": "7"})])  # the last cannot run: 7 does not divide 16
    assert [r["status"] for r in first] == ["ok", "ok", "failed"] and "must divide" in first[2]["error"]
    manifest = json.loads((tmp_path / "group" / "decoded.json").read_text())
    assert [c["cell"] for c in manifest["cells"]] == ["vanilla/block_size~8", "d2f/block_size~8,tau_add~0.5",
                                                      "vanilla/block_size~7"]
    cell = tmp_path / "group" / "vanilla" / "block_size~8"
    stamp = (cell / "generations.jsonl").stat().st_mtime_ns
    again = run([("vanilla", {"block_size": "8"}), ("vanilla", {"block_size": "4"})])  # one kept, one new
    assert again[0] == first[0] and (cell / "generations.jsonl").stat().st_mtime_ns == stamp
    assert again[1]["status"] == "ok" and again[1]["resumed_from"] == 0
    other = run([("vanilla", {"block_size": "8"})], model="dream")  # another model: decoded again, not kept
    assert other[0]["model"] == str(model_dirs["dream"]) and (cell / "generations.jsonl").stat().st_mtime_ns != stamp


def test_a_model_that_cannot_load_fails_each_cell_of_the_process(data_dir, tmp_path):
    from d2f_core.bench.runner import run_cells

    records = run_cells(str(tmp_path / "nowhere"), "tiny-gsm", str(data_dir), [("ar", {}), ("ar", {"cache": "static"})],
                        8, str(tmp_path / "group"))
    assert [r["status"] for r in records] == ["failed", "failed"] and all("nowhere" in r["error"] for r in records)
