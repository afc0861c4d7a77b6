"""The paper's Table 1/2 layout from summary.csv: per benchmark, TPS, latency, generation length and score."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from d2f_core.bench.io import atomic_write_text

COLUMNS = {"model": "Model", "decoder": "Decoder", "params": "Params", "tps": "TPS", "tps_ci": "TPS 95% CI",
           "latency_mean": "Latency (s)", "tokens_mean": "Gen. length", "score": "Score", "score_ci": "Score 95% CI",
           "nfe": "NFE", "tpf": "TPF", "status": "Status"}


def table_frame(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    out["tps_ci"] = [_ci(lo, hi, "{:.1f}") for lo, hi in zip(out["tps_ci_lo"], out["tps_ci_hi"])]
    out["score_ci"] = [_ci(lo, hi, "{:.3f}") for lo, hi in zip(out["score_ci_lo"], out["score_ci_hi"])]
    return out[["benchmark", *COLUMNS]]


def _ci(lo, hi, fmt: str) -> str:
    return "" if pd.isna(lo) else f"[{fmt.format(lo)}, {fmt.format(hi)}]"


def to_markdown(df: pd.DataFrame) -> str:
    parts = []
    for bench, group in df.groupby("benchmark", sort=True):
        parts.append(f"### {bench}\n\n" + group.drop(columns="benchmark").rename(columns=COLUMNS)
                     .to_markdown(index=False, floatfmt=".3g", missingval="—"))
    return "\n\n".join(parts) + "\n"


def write_tables(summary_csv: str, out_dir: str) -> None:
    df = table_frame(pd.read_csv(summary_csv))
    out = Path(out_dir)
    atomic_write_text(out / "table.csv", df.to_csv(index=False))
    atomic_write_text(out / "table.md", "# D2F Bench results\n\n" + to_markdown(df))
