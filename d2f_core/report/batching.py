"""Batch-size sweeps as a server sees them: aggregate throughput (every row's answer tokens over the batch's timed
window) against per-request latency (until the row was final), one line per decoder setting and a point per batch
size (the convention of serving benchmarks, e.g. `vllm bench serve`), and the table of both with the score and the
ratio to AR at the same batch size (cells of one run, not paired)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from d2f_core.bench.io import atomic_write_text  # noqa: E402
from d2f_core.bench.runner import params_label, parse_params, split_batch  # noqa: E402
from d2f_core.report.pareto import STYLE, log_ticks, point_label, whiskers  # noqa: E402
from d2f_core.report.tables import batch_sizes, markdown  # noqa: E402

COLUMNS = {"model": "Model", "decoder": "Decoder", "setting": "Params", "batch_size": "Batch",
           "tps": "TPS (aggregate)", "tps_request": "TPS per request", "latency_mean": "Latency mean (s)",
           "latency_p90": "Latency p90 (s)", "score": "Score", "nfe": "NFE", "padded_fraction": "Padded slots",
           "memory_peak_mb": "Peak memory (MB)", "ratio_ar": "× AR (same batch)"}
NOTE = ("Aggregate TPS: every row's answer tokens over the batch's timed window, summed over the batches. Latency: per "
        "request, until its row was final (AR and D2F drop a final row; vanilla and Fast-dLLM finish a batch in "
        "lockstep). Every row decodes its batch-1 answer, so the score and NFE equal batch 1's (`d2f regress` checks "
        "it). Padded slots: the share of the computed query positions that were padding or rows waiting for the "
        "batch. × AR: TPS over the fastest AR cell's at the same batch size in this run.\n\n")


def batch_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The ok cells of every setting run at more than one batch size, with its setting and the ratio to AR."""
    ok = df[df["status"] == "ok"].copy()
    ok["batch_size"] = batch_sizes(ok).astype(int)
    ok["setting"] = [params_label(split_batch(parse_params(p))[0]) for p in ok["params"]]
    key = ["benchmark", "model", "decoder", "setting"]
    swept = ok[ok.groupby(key)["batch_size"].transform("nunique") > 1].copy()
    ar = ok[ok["decoder"] == "ar"].groupby(["benchmark", "batch_size"])["tps"].max()
    swept["ratio_ar"] = [row.tps / ar.get((row.benchmark, row.batch_size), float("nan")) for row in swept.itertuples()]
    order = {"ar": 0, "vanilla": 1, "fast_dllm": 2, "d2f": 3}
    swept["order"] = swept["decoder"].map(order).fillna(9)
    return swept.sort_values(["benchmark", "order", "model", "setting", "batch_size"]).drop(columns="order")


def marker_area(batch_size: pd.Series) -> pd.Series:
    """Marker area growing with the batch size (log2), so the batch size reads without a text label per point."""
    return 18 + 22 * np.log2(batch_size.astype(float))


def plot_batching(frame: pd.DataFrame, benchmark: str, path: Path) -> None:
    cells = frame[frame["benchmark"] == benchmark]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    if cells.empty:
        ax.text(0.5, 0.5, "no batch sweep completed (see summary.csv)", ha="center", transform=ax.transAxes)
    for (model, decoder, setting), line in cells.groupby(["model", "decoder", "setting"], sort=False):
        colour, marker = STYLE.get(decoder, ("tab:green", "D"))
        style = "-" if "dream" not in model else "--"
        ax.plot(line["latency_mean"], line["tps"], style, color=colour, alpha=0.85,
                label=f"{model} · {decoder} {point_label(setting)}".rstrip())
        ax.scatter(line["latency_mean"], line["tps"], s=marker_area(line["batch_size"]), marker=marker, color=colour,
                   alpha=0.85, zorder=3)
        ax.errorbar(line["latency_mean"], line["tps"], yerr=whiskers(line["tps"], line["tps_ci_lo"], line["tps_ci_hi"]),
                    fmt="none", ecolor=colour, elinewidth=0.8, alpha=0.5, capsize=2)
    for size in sorted(cells["batch_size"].unique()):  # the marker-size key: no per-point label to collide
        ax.scatter([], [], s=marker_area(pd.Series([size])), marker="o", color="gray", label=f"batch {size}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    log_ticks(ax.xaxis)
    log_ticks(ax.yaxis)
    ax.set_xlabel("latency per request, mean (s, log scale)")
    ax.set_ylabel("aggregate tokens per second (log scale)")
    ax.set_title(f"{benchmark}: throughput (95% CI) vs latency; marker size = batch size")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=6.5, loc="best", ncol=2, framealpha=0.85)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def write_batching(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    """batch.md and batch.csv, and a figure per benchmark with a cell of batch > 1 (an empty one where none of its
    sweeps completed); the figures' paths."""
    frame = batch_frame(df)
    atomic_write_text(out_dir / "batch.csv", frame.to_csv(index=False))
    parts, figures = [], []
    for bench, group in frame.groupby("benchmark", sort=True):
        parts.append(f"### {bench}\n\n" + markdown(group, COLUMNS))
    for bench in sorted(df.loc[batch_sizes(df) > 1, "benchmark"].unique()):
        figures.append(out_dir / f"batch_{bench}.png")
        plot_batching(frame, bench, figures[-1])
    body = "\n\n".join(parts) if parts else "No cell of this profile runs at more than one batch size."
    atomic_write_text(out_dir / "batch.md", "# D2F Bench: batch size\n\n" + NOTE + body + "\n")
    return figures
