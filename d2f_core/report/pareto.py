"""Speed-quality Pareto plots: TPS (log x) against score for every batch-1 cell, each point with its 95% CIs on both
axes, the frontier drawn and its points named in a key beside the plot (stacked rows joined to their points by
leader lines, so no two labels can overlap); every other point is a row of table.md."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import ConnectionPatch  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402
from matplotlib.transforms import offset_copy  # noqa: E402

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


def style_of(decoder: str, model: str) -> dict:
    """Colour and marker per decoder family; Dream-based models hollow, the others filled."""
    colour, marker = STYLE.get(decoder, ("tab:green", "D"))
    return {"colour": colour, "marker": marker, "face": "none" if "dream" in model else colour}


def whiskers(values: pd.Series, lo: pd.Series, hi: pd.Series) -> list:
    """Asymmetric error bars from a CI (none where the CI is missing)."""
    return [(values - lo).clip(lower=0).fillna(0), (hi - values).clip(lower=0).fillna(0)]


def log_ticks(axis) -> None:
    """Plain numbers at 1, 2 and 5 per decade: no exponents, no crowded minor labels."""
    axis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


ROW_POINTS = 22  # one key row: two lines of 7-point text, with room to spare


def pareto_figure(df: pd.DataFrame, benchmark: str):
    """The figure (not saved) and the frontier; the figure grows with the frontier so every key row fits."""
    cells = df[(df["benchmark"] == benchmark) & (df["status"] == "ok")]
    frontier = pareto_frontier(cells)
    height = max(5.5, len(frontier) * ROW_POINTS / 72 / 0.8 + 1)
    fig, (ax, key) = plt.subplots(1, 2, figsize=(11, height), gridspec_kw={"width_ratios": [2.6, 1]})
    for (decoder, model), group in cells.groupby(["decoder", "model"], sort=True):
        s = style_of(decoder, model)
        ax.errorbar(group["tps"], group["score"], fmt="none", ecolor=s["colour"], elinewidth=0.8, alpha=0.5,
                    capsize=2, zorder=2, xerr=whiskers(group["tps"], group["tps_ci_lo"], group["tps_ci_hi"]),
                    yerr=whiskers(group["score"], group["score_ci_lo"], group["score_ci_hi"]))
        ax.scatter(group["tps"], group["score"], s=45, marker=s["marker"], label=f"{model} · {decoder}",
                   facecolors=s["face"], edgecolors=s["colour"], linewidths=1.3, zorder=3)
    ax.plot(frontier["tps"], frontier["score"], "--", color="tab:red", alpha=0.5, lw=1.2, label="Pareto frontier",
            zorder=1)
    ax.set_xscale("log")
    log_ticks(ax.xaxis)
    ax.set_xlabel("tokens per second (batch 1, log scale)")
    ax.set_ylabel(cells["metric"].iloc[0] if len(cells) else "score")
    unplotted = int((cells["tps"] <= 0).sum())  # no answer tokens: a log axis has no place for them
    ax.set_title(f"{benchmark}: speed vs quality, 95% CIs ({len(cells)} cells"
                 + (f"; {unplotted} at 0 TPS not shown)" if unplotted else ")"))
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", alpha=0.1)
    ax.legend(fontsize=7, loc="best", ncol=2, framealpha=0.85)
    fig.tight_layout()
    frontier_key(fig, ax, key, frontier.sort_values("score", ascending=False))
    return fig, frontier


def plot_pareto(df: pd.DataFrame, benchmark: str, out_stem: Path) -> pd.DataFrame:
    fig, frontier = pareto_figure(df, benchmark)
    for ext in ("png", "svg"):
        fig.savefig(f"{out_stem}.{ext}", dpi=150)
    plt.close(fig)
    return frontier


def frontier_key(fig, ax, key, frontier: pd.DataFrame) -> None:
    """The frontier's points as rows of the key, a fixed height apart from the top (so they cannot overlap), best
    score first as on the plot, each joined to its point by a leader line."""
    key.set_axis_off()
    key.set_title("Pareto frontier", fontsize=9, loc="left")
    for i, row in enumerate(frontier.itertuples()):
        at = offset_copy(key.transAxes, fig, y=-(i + 0.5) * ROW_POINTS, units="points")
        text = (f"{row.model} · {row.decoder} {point_label(row.params)}".rstrip()
                + f"\n{row.tps:.0f} tok/s, {row.score:.3f}")
        key.text(0.06, 1, text, fontsize=7, va="center", transform=at)
        fig.add_artist(ConnectionPatch((row.tps, row.score), (0.04, 1), coordsA=ax.transData, coordsB=at,
                                       color=style_of(row.decoder, row.model)["colour"], lw=0.6, alpha=0.6))
    key.text(0.06, 0.0, "every other point: a row of table.md", fontsize=6.5, style="italic",
             transform=key.transAxes)


def write_pareto(df: pd.DataFrame, out_dir: Path) -> None:
    frontiers = [plot_pareto(df, b, out_dir / f"pareto_{b}") for b in sorted(df["benchmark"].unique())]
    cols = ["benchmark", "model", "decoder", "params", "tps", "score", "tpf", "tokens_mean"]
    atomic_write_text(out_dir / "pareto.csv", pd.concat(frontiers)[cols].to_csv(index=False))
