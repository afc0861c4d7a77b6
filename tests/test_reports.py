"""Reports from a fixture summary: Pareto frontier, tables with speed-ups, timeline, Pareto and AUP figures, and the
exports in the layouts of d3LLM's AUP leaderboard and github-action-benchmark."""

import itertools
import json
import math

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import yaml
from matplotlib.text import Text

from d2f_core.report.aup import aup
from d2f_core.report.build import build_reports
from d2f_core.report.pareto import pareto_figure, pareto_frontier, point_label
from d2f_core.report.tables import plain


def test_pareto_frontier_on_a_hand_made_table():
    df = pd.DataFrame({"tps": [10, 20, 30, 40, 25, 40], "score": [0.9, 0.8, 0.85, 0.5, 0.6, 0.4]})
    front = pareto_frontier(df)
    assert front.index.tolist() == [0, 2, 3], "(20, .8) and (25, .6) are dominated by (30, .85); (40, .4) by (40, .5)"


def test_point_labels_keep_the_swept_thresholds():
    assert point_label("block_size~8,tau_act~0.95,tau_add~0.1,tau_conf~0.9") == "a0.1 c0.9"
    assert point_label("block_size~8,cache~dual,rule~threshold,threshold~0.9") == "dual thr0.9"
    assert point_label("default") == ""


def _fixture(tmp_path):
    rows = []
    specs = [("tiny-ar", "tiny-ar", "ar", "default", 0.97, 400, 1.0),
             ("tiny-dream", "tiny-dream", "vanilla", "block_size~8,steps~32", 0.6, 60, 0.6),
             ("tiny-dream", "tiny-dream", "fast_dllm", "block_size~8,cache~dual,threshold~0.9", 0.58, 200, 2.0),
             ("tiny-dream-d2f", "tiny-dream", "d2f", "block_size~8,tau_add~0.1,tau_conf~0.9", 0.59, 700, 3.5),
             ("tiny-dream-d2f", "tiny-dream", "d2f", "block_size~8,tau_add~0.1,tau_conf~0.7", 0.50, 900, 4.5)]
    for i, (model, base, dec, params, score, tps, tpf) in enumerate(specs):
        cell = tmp_path / f"cell{i}"
        cell.mkdir()
        trace = [[s, p, p // 8] for p, s in enumerate([k // 2 for k in range(16)])]
        (cell / "samples.jsonl").write_text(json.dumps({"id": "x", "trace": trace}) + "\n")
        rows.append(dict(profile="t", model=model, base_model=base, benchmark="tiny-gsm", decoder=dec, params=params,
                         status="ok", score=score, score_ci_lo=score - 0.05, score_ci_hi=score + 0.05, tps=tps,
                         tps_ci_lo=tps * 0.9, tps_ci_hi=tps * 1.1, latency_mean=20 / tps,
                         tokens_mean=17.0 if dec == "d2f" and tps == 900 else 20.0, nfe=20 / tpf, tpf=tpf,
                         metric="exact_match", cell_dir=str(cell), in_table=tps != 900))
    pd.DataFrame(rows).to_csv(tmp_path / "summary.csv", index=False)
    return tmp_path / "summary.csv"


def test_reports_from_a_fixture_summary(tmp_path):
    out = tmp_path / "reports"
    figures = build_reports(str(_fixture(tmp_path)), str(out))
    assert {f.name for f in figures} == {f"timeline_{d}.png" for d in ("ar", "vanilla", "fast_dllm", "d2f")}
    for name in ("pareto_tiny-gsm.png", "pareto_tiny-gsm.svg", "tables.md", "table.md"):
        assert (out / name).stat().st_size > 0
    frontier = pd.read_csv(out / "pareto.csv")
    assert frontier["tps"].tolist() == [400, 700, 900], "AR (best score) and the two D2F cells (fastest)"

    tables = pd.read_csv(out / "tables.csv")
    d2f = tables[tables["decoder"] == "d2f"].iloc[0]
    assert round(d2f["speedup_vanilla"], 2) == 11.67 and d2f["speedup_ar"] == 1.75
    assert len(tables) == 4, "the sweep cell is in table.md and the Pareto plot, not in the paper table"
    every = (out / "table.md").read_text()
    assert "15.00 ⚠ length 0.85" in every, "a faster cell with shorter answers is flagged"


def test_tables_show_the_published_numbers_beside_the_reproduced_ones(tmp_path):
    published = tmp_path / "published.csv"
    published.write_text("model,benchmark,decoder,match,tps,latency,gen_length,score,source\n"
                         "tiny-dream,tiny-gsm,fast_dllm,cache~dual,49.8,5.1,255,75.0,t\n"
                         "tiny-dream-d2f,tiny-gsm,d2f,tau_conf~0.9,91.2,2.8,256,77.6,t\n")
    build_reports(str(_fixture(tmp_path)), str(tmp_path / "r"), str(published))
    tables = pd.read_csv(tmp_path / "r" / "tables.csv")
    d2f = tables[tables["decoder"] == "d2f"].iloc[0]
    assert d2f["published_tps"] == 91.2 and round(d2f["published_score"], 3) == 0.776
    assert tables[tables["decoder"] == "vanilla"]["published_tps"].isna().all()
    assert "TPS (paper)" in (tmp_path / "r" / "tables.md").read_text()


def test_every_published_row_matches_a_paper_cell():
    import yaml

    from conftest import REPO
    from d2f_core.config import expand_cells

    config = yaml.safe_load((REPO / "workflow/config/paper.yaml").read_text())
    cells = expand_cells(config)
    published = pd.read_csv(REPO / config["published"], keep_default_na=False)
    for _, p in published.iterrows():
        assert any(c.model == p["model"] and c.benchmark == p["benchmark"] and c.decoder == p["decoder"]
                   and p["match"] in c.params for c in cells), p.to_dict()


def undrawn_tick(fig, text: Text) -> bool:
    """A tick label matplotlib keeps but does not draw: its axes is off, or its tick is outside the view."""
    for ax in fig.axes:
        for axis, limits, i in ((ax.xaxis, ax.get_xlim(), 0), (ax.yaxis, ax.get_ylim(), 1)):
            if any(text is t for t in axis.get_ticklabels(which="both")):
                return not ax.axison or not min(limits) <= text.get_position()[i] <= max(limits)
    return False


def overlapping_texts(fig) -> list[tuple[str, str]]:
    """Pairs of drawn, non-empty texts of a figure whose boxes intersect."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip() and not undrawn_tick(fig, t)]
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
    return [(a, b) for (a, ba), (b, bb) in itertools.combinations(boxes, 2) if ba.overlaps(bb)]


def crowded(tmp_path, n: int = 24):
    """A sweep whose every point is on the frontier, all within 3% of each other in speed: the labels' worst case."""
    summary = pd.read_csv(_fixture(tmp_path))
    d2f = summary[summary["decoder"] == "d2f"].iloc[0]
    sweep = [{**d2f, "tps": 1000 + 1.2 * i, "tps_ci_lo": 990 + i, "tps_ci_hi": 1010 + 2 * i, "score": 0.6 - 0.001 * i,
              "params": f"block_size~8,tau_add~0.{i:02d},tau_conf~0.9", "in_table": False} for i in range(n)]
    return pd.concat([summary, pd.DataFrame(sweep)], ignore_index=True)


def test_pareto_points_all_have_whiskers_and_no_labels_overlap(tmp_path):
    df = crowded(tmp_path)
    fig, frontier = pareto_figure(df, "tiny-gsm")
    try:
        assert len(frontier) >= 24
        ax = fig.axes[0]
        bars = [c for c in ax.containers if c.has_xerr and c.has_yerr]
        x_segments = sum(len(c.lines[2][0].get_segments()) for c in bars)
        y_segments = sum(len(c.lines[2][1].get_segments()) for c in bars)
        assert x_segments == y_segments == len(df), "a TPS and a score whisker on every point"
        assert overlapping_texts(fig) == []
        ticks = [t.get_text() for t in ax.get_xticklabels() if t.get_visible() and t.get_text()]
        assert ticks and all("e" not in t and "^" not in t for t in ticks), ticks
    finally:
        plt.close(fig)


def test_tables_write_plain_numbers():
    assert [plain(v) for v in (1663.7, 425.0, 99.96, 12.345, 0.0123456, 0.00001234, 1.0)] == [
        "1664", "425", "100", "12.3", "0.0123", "0.0000123", "1"]


def test_reports_write_the_aup_figure_and_both_exports(tmp_path):
    out = tmp_path / "reports"
    build_reports(str(_fixture(tmp_path)), str(out))
    assert (out / "aup_tiny-gsm.png").stat().st_size > 0 and (out / "aup_tiny-gsm.svg").stat().st_size > 0
    assert "e+" not in (out / "tables.md").read_text() + (out / "table.md").read_text()

    # d3LLM's AUP_leaderboard/data_*.yaml: {task: {method: [[TPF, accuracy %], ...]}}
    points = yaml.safe_load((out / "aup_points.yaml").read_text())
    table = pd.read_csv(out / "aup.csv")
    assert set(points) == {"tiny-gsm"}
    for family, pairs in points["tiny-gsm"].items():
        assert all(len(p) == 2 and all(isinstance(v, (int, float)) for v in p) for p in pairs)
        assert pairs[0][0] == 1, "the reference first, at TPF 1"
        model, decoder = family.split("/")
        row = table[(table["model"] == model) & (table["decoder"] == decoder)].iloc[0]
        assert round(aup([tuple(p) for p in pairs]), 1) == row["AUP"], "the points recompute the table's AUP"

    # github-action-benchmark's customBiggerIsBetter: a list of {name, unit, value[, range][, extra]}
    entries = json.loads((out / "benchmark.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert isinstance(entries, list) and entries
    for e in entries:
        assert {"name", "unit", "value"} <= set(e) <= {"name", "unit", "value", "range", "extra"}
        assert isinstance(e["name"], str) and isinstance(e["unit"], str)
        assert isinstance(e["value"], float) and math.isfinite(e["value"])
        assert all(isinstance(e[k], str) for k in ("range", "extra") if k in e)
    names = [e["name"] for e in entries]
    assert len(names) == len(set(names)), "a series per name"
    assert "tiny-dream-d2f/tiny-gsm/d2f/block_size~8,tau_add~0.1,tau_conf~0.9 TPS" in names
    tps = next(e for e in entries if e["name"] == "tiny-ar/tiny-gsm/ar/default TPS")
    assert tps["unit"] == "tokens/s" and tps["value"] == 400 and tps["range"] == "95% CI [360.0, 440.0]"
