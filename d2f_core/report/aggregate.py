"""Collect every cell's summary.json into summary.csv: one row per cell, the table every report reads."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from d2f_core.bench.io import atomic_write_text

LIST_COLUMNS = ("score_ci", "tps_ci", "score_flexible_ci")


def flatten(summary: dict) -> dict:
    row = {k: v for k, v in summary.items()
           if k not in ("device", "versions", "params", "sandbox_limits", *LIST_COLUMNS)}
    row["params"] = ",".join(f"{k}~{v}" for k, v in sorted(summary["params"].items())) or "default"
    for key in LIST_COLUMNS:
        lo, hi = summary.get(key) or (None, None)
        row[f"{key}_lo"], row[f"{key}_hi"] = lo, hi
    device = summary.get("device") or {}
    row["hardware"] = device.get("gpu") or device.get("cpu")
    row["torch"] = (summary.get("versions") or {}).get("torch")
    return row


def aggregate(summary_files: list[str], out_csv: str, sweep_files: list[str] = ()) -> pd.DataFrame:
    """One row per cell; `in_table` marks the paper-table cells, the others come from sweeps (Pareto plots only)."""
    table = set(summary_files)
    files = list(dict.fromkeys([*summary_files, *sweep_files]))
    rows = [{**flatten(json.loads(Path(f).read_text())), "in_table": f in table} for f in files]
    df = pd.DataFrame(rows).sort_values(["benchmark", "model", "decoder", "params"]).reset_index(drop=True)
    atomic_write_text(out_csv, df.to_csv(index=False))
    return df
