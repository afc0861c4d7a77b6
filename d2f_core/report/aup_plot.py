"""The AUP behind its number: per benchmark, each diffusion family's score-vs-parallelism points (95% CI whiskers),
the weighted curve y W(y) that AUP integrates (on a linear axis, as it integrates), the points the 5-point window
drops (crossed out), and the AUP value in the legend."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from d2f_core.report.aup import WINDOW, aup, curve, families  # noqa: E402
from d2f_core.report.pareto import style_of, whiskers  # noqa: E402


def plot_aup(df: pd.DataFrame, benchmark: str, out_stem: Path) -> None:
    fams = [f for f in families(df) if f["benchmark"] == benchmark]
    fig, ax = plt.subplots(figsize=(9, 5.5))
    if not fams:
        ax.text(0.5, 0.5, "no diffusion family with a vanilla reference", ha="center", transform=ax.transAxes)
    for fam in fams:
        s = style_of(fam["decoder"], fam["model"])
        kept, dropped, weighted = curve(fam["points"])
        rho = [r for r, _ in fam["points"]]
        score = pd.Series([y for _, y in fam["points"]])
        lo = pd.Series([100 * c["score_ci_lo"] for _, c in fam["cells"]])
        hi = pd.Series([100 * c["score_ci_hi"] for _, c in fam["cells"]])
        ax.errorbar(rho, score, yerr=whiskers(score, lo, hi), fmt="none", ecolor=s["colour"], elinewidth=0.8,
                    alpha=0.45, capsize=2)
        ax.scatter([r for r, _ in kept], [y for _, y in kept], marker=s["marker"], s=40, facecolors=s["face"],
                   edgecolors=s["colour"], linewidths=1.3, zorder=3)
        if dropped:
            ax.scatter([r for r, _ in dropped], [y for _, y in dropped], marker="x", s=45, color=s["colour"],
                       zorder=3)
        line = "-" if s["face"] != "none" else "--"
        ax.plot([r for r, _ in kept], weighted, line, color=s["colour"], lw=1.3,
                label=f"{fam['model']} · {fam['decoder']}: AUP {aup(fam['points']):.1f}")
    ax.scatter([], [], marker="x", color="gray", label=f"dropped: over {WINDOW:g} points below the reference")
    ax.set_xlabel("parallelism: TPF relative to the one-token-per-forward vanilla cell (AUP integrates over it)")
    ax.set_ylabel("score (%); lines: the weighted score y·W(y) AUP integrates")
    ax.set_title(f"{benchmark}: accuracy under parallelism (AUP), 95% CIs")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="best", framealpha=0.85)
    fig.tight_layout()
    for ext in ("png", "svg"):
        fig.savefig(f"{out_stem}.{ext}", dpi=150)
    plt.close(fig)
