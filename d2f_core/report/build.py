"""Every report of a profile from its summary.csv: tables, Pareto and AUP plots, decoding timelines, the batch-size
report, and the exports for a leaderboard and a CI dashboard."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from d2f_core.bench.io import atomic_write_text
from d2f_core.report.aup_plot import plot_aup
from d2f_core.report.batching import write_batching
from d2f_core.report.exports import aup_points_yaml, benchmark_json
from d2f_core.report.pareto import write_pareto
from d2f_core.report.regress import load_paired
from d2f_core.report.tables import write_tables
from d2f_core.report.timeline import load_trace, plot_timeline

TIMELINE_DECODERS = ("ar", "vanilla", "fast_dllm", "d2f")


def build_reports(summary_csv: str, out_dir: str, published_csv: str | None = None,
                  speed: list[str] | None = None) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paired = load_paired(speed) if speed else None
    df = write_tables(summary_csv, out_dir, published_csv, paired)
    write_pareto(df, out)
    for benchmark in sorted(df["benchmark"].unique()):
        plot_aup(df, benchmark, out / f"aup_{benchmark}")
    atomic_write_text(out / "aup_points.yaml", aup_points_yaml(df))
    atomic_write_text(out / "benchmark.json", benchmark_json(pd.read_csv(summary_csv), paired))
    figures = []
    ok = df[df["status"] == "ok"].sort_values(["benchmark", "in_table", "model", "params"],
                                              ascending=[False, False, True, True])
    for decoder in TIMELINE_DECODERS:
        cells = ok[ok["decoder"] == decoder]
        if len(cells):
            row = cells.iloc[0]
            trace, _ = load_trace(row["cell_dir"])
            path = out / f"timeline_{decoder}.png"
            plot_timeline(trace, f"{row['model']} · {decoder} · {row['benchmark']}\n{row['params']}", path)
            figures.append(path)
    return figures + write_batching(pd.read_csv(summary_csv), out)
