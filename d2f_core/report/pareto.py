"""Speed-quality Pareto plots: TPS (log x) against score for every cell, the frontier drawn and listed."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import ScalarFormatter  # noqa: E402

from d2f_core.bench.io import atomic_write_text  # noqa: E402

STYLE = {  # decoder family -> (colour, marker)
    "ar": ("black", "*"), "vanilla": ("tab:gray", "s"), "fast_dllm": ("tab:blue", "^"), "d2f": ("tab:red", "o"),
}
SHORT = {"tau_add": "a", "tau_act": "act", "tau_conf": "c", "threshold": "thr", "factor": "f", "steps": "steps",
         "block_size": "B", "cache": "", "rule": ""}


def pareto_frontier(df: pd.DataFrame, x: str = "tps", y: str = "score", eps: float = 1e-9) -> pd.DataFrame:
    """Cells no other cell beats on both x and y: scan by x descending, keep those raising the best y so far."""
    best, keep = float("-inf"), []
    for idx, row in df.sort_values([x, y], ascending=[False, False]).iterrows():
        if row[y] > best + eps:
            keep.append(idx)
            best = row[y]
    return df.loc[keep].sort_values(x)


def point_label(params: str) -> str:
    """`block_size~8,tau_add~0.1,...` -> a short label of the thresholds that vary across a sweep."""
    if params == "default":
        return ""
    parts = []
    for item in params.split(","):
        key, value = item.split("~", 1)
        if key in ("tau_add", "tau_conf", "threshold", "factor", "steps", "cache"):
            parts.append(f"{SHORT[key]}{value}" if SHORT[key] else value)
    return " ".join(parts)


def plot_pareto(df: pd.DataFrame, benchmark: str, out_stem: Path) -> pd.DataFrame:
    cells = df[(df["benchmark"] == benchmark) & (df["status"] == "ok")]
    frontier = pareto_frontier(cells)
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for (decoder, model), group in cells.groupby(["decoder", "model"], sort=True):
        colour, marker = STYLE.get(decoder, ("tab:green", "D"))
        filled = "dream" not in model
        ax.scatter(group["tps"], group["score"], s=60, marker=marker, label=f"{model} · {decoder}",
                   facecolors=colour if filled else "none", edgecolors=colour, linewidths=1.4, zorder=3)
        for _, row in group.iterrows():
            ax.annotate(point_label(row["params"]), (row["tps"], row["score"]), fontsize=6.5, alpha=0.8,
                        xytext=(4, 3), textcoords="offset points")
    ax.plot(frontier["tps"], frontier["score"], "--o", color="tab:red", alpha=0.5, lw=1.2, ms=13, mfc="none",
            label="Pareto frontier", zorder=2)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(ScalarFormatter())
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel("tokens per second (batch 1, log scale)")
    ax.set_ylabel(cells["metric"].iloc[0] if len(cells) else "score")
    ax.set_title(f"{benchmark}: speed vs quality ({len(cells)} cells)")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="lower left", ncol=2, framealpha=0.85)
    fig.tight_layout()
    for ext in ("png", "svg"):
        fig.savefig(f"{out_stem}.{ext}", dpi=150)
    plt.close(fig)
    return frontier


def write_pareto(df: pd.DataFrame, out_dir: Path) -> None:
    frontiers = [plot_pareto(df, b, out_dir / f"pareto_{b}") for b in sorted(df["benchmark"].unique())]
    cols = ["benchmark", "model", "decoder", "params", "tps", "score", "tpf", "tokens_mean"]
    atomic_write_text(out_dir / "pareto.csv", pd.concat(frontiers)[cols].to_csv(index=False))
