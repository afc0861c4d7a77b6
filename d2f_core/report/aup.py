"""AUP, accuracy under parallelism (d3LLM, arXiv 2601.07568): a decoder family's score-vs-TPF curve in one number.

Points (rho_i = TPF, y_i = score in %) sorted by TPF, rho_1 = 1 the one-token-per-forward reference:
AUP = rho_1 y_1 + 1/2 sum_{i>1} (rho_i - rho_{i-1}) (y_i W(y_i) + y_{i-1} W(y_{i-1})), W(y) = min(exp(-3 (1 - y/y_max)), 1),
counting only points with y >= y_1 - 5. Here the reference is the base model's vanilla cell with the most forwards
(one token per step), and rho is TPF relative to that cell's: a canvas filled with EOS after a short answer gives
the one-token-per-step cell a TPF below 1, so the ratio is what puts it at rho = 1. A family's points are its cells
(table and sweep) with rho > 1.
"""

from __future__ import annotations

import math

import pandas as pd

ALPHA, WINDOW = 3.0, 5.0


def curve(points: list[tuple[float, float]]) -> tuple[list, list, list[float]]:
    """points: (TPF, score %), the first the reference at TPF 1 -> the points counted (sorted by TPF), the points
    the 5-point window drops, and each counted point's weighted score y W(y), the curve the AUP integrates."""
    ref = points[0][1]
    kept = sorted((p for p in points if p[1] >= ref - WINDOW), key=lambda p: p[0])
    dropped = [p for p in points if p[1] < ref - WINDOW]
    y_max = max(y for _, y in kept)
    weighted = [y * min(math.exp(-ALPHA * (1 - y / y_max)), 1.0) if y_max > 0 else 0.0 for _, y in kept]
    return kept, dropped, weighted


def aup(points: list[tuple[float, float]]) -> float:
    """points: (TPF, score %), the first the reference at TPF 1."""
    kept, _, weighted = curve(points)
    total = kept[0][0] * kept[0][1]
    for (r0, _), (r1, _), w0, w1 in zip(kept, kept[1:], weighted, weighted[1:]):
        total += 0.5 * (r1 - r0) * (w1 + w0)
    return total


def families(df: pd.DataFrame) -> list[dict]:
    """Per benchmark x model x diffusion decoder: its points (relative TPF, score %) with the cells behind them, the
    reference cell first."""
    ok = df[df["status"] == "ok"]
    out = []
    for (benchmark, base), cells in ok.groupby(["benchmark", "base_model"]):
        vanilla = cells[cells["decoder"] == "vanilla"]
        if vanilla.empty:
            continue
        ref = vanilla.loc[vanilla["nfe"].idxmax()]
        for (model, decoder), family in cells[cells["decoder"] != "ar"].groupby(["model", "decoder"]):
            rho = family["tpf"] / ref["tpf"]
            rows = sorted(((float(x), r) for x, (_, r) in zip(rho, family.iterrows())
                           if x > 1 and r["cell_dir"] != ref["cell_dir"]), key=lambda p: p[0])
            cells_used = [(1.0, ref)] + rows
            out.append({"benchmark": benchmark, "model": model, "decoder": decoder, "cells": cells_used,
                        "points": [(r, 100 * float(c["score"])) for r, c in cells_used]})
    return out


def aup_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per benchmark x model x diffusion decoder: its AUP and the points it used."""
    rows = [{"benchmark": f["benchmark"], "model": f["model"], "decoder": f["decoder"], "AUP": round(aup(f["points"]), 1),
             "points (relative TPF, score %)": "; ".join(f"({r:.2f}, {y:.1f})" for r, y in f["points"])}
            for f in families(df)]
    return pd.DataFrame(rows)
