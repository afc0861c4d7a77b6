"""The paper's Table 1/2 layout from summary.csv: per benchmark, TPS, latency, generation length, score, speed-ups.

Speed-ups are ratios of cells measured in the same run: against the vanilla cell on the same base model with the most
forwards (one token per step, the paper's baseline row) and against the AR cell. Beside each, the answer-length ratio
to that reference: a faster cell whose answers are under 90% of the reference length is flagged, so shorter answers
never pass as speed (MLPerf's output-length rule).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from d2f_core.bench.io import atomic_write_text
from d2f_core.report.aup import aup_table

LENGTH_GUARD = 0.9
COLUMNS = {"model": "Model", "decoder": "Decoder", "params": "Params", "tps": "TPS", "tps_ci": "TPS 95% CI",
           "latency_mean": "Latency (s)", "tokens_mean": "Gen. length", "score": "Score", "score_ci": "Score 95% CI",
           "nfe": "NFE", "tpf": "TPF", "speedup_vanilla": "× vanilla", "speedup_ar": "× AR", "status": "Status"}


def batch_sizes(df: pd.DataFrame) -> pd.Series:
    """Each cell's batch size (1 where a summary predates batches)."""
    return pd.to_numeric(df["batch_size"], errors="coerce").fillna(1) if "batch_size" in df else pd.Series(
        1, index=df.index)


def single(df: pd.DataFrame) -> pd.DataFrame:
    """The batch-1 cells: the paper's tables, the Pareto plots and the speed-ups compare requests decoded one at a
    time (the batch report compares batch sizes)."""
    return df[batch_sizes(df) == 1]


def reference_cells(df: pd.DataFrame) -> pd.DataFrame:
    """Per row, the index of its vanilla reference (same base model and benchmark) and of its AR reference, both
    batch-1 cells."""
    ok = single(df[df["status"] == "ok"])
    vanilla = ok[ok["decoder"] == "vanilla"].sort_values("nfe").groupby(["benchmark", "base_model"]).tail(1)
    ar = ok[ok["decoder"] == "ar"].sort_values("tps").groupby("benchmark").tail(1)
    out = pd.DataFrame(index=df.index)
    out["vanilla_ref"] = [_lookup(vanilla, benchmark=b, base_model=m) for b, m in zip(df["benchmark"], df["base_model"])]
    out["ar_ref"] = [_lookup(ar, benchmark=b) for b in df["benchmark"]]
    return out


def _lookup(frame: pd.DataFrame, **keys):
    hit = frame
    for k, v in keys.items():
        hit = hit[hit[k] == v]
    return hit.index[0] if len(hit) else None


def add_speedups(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    refs = reference_cells(df)
    tps, length = (pd.to_numeric(df[c], errors="coerce") for c in ("tps", "tokens_mean"))
    for kind in ("vanilla", "ar"):
        ref = refs[f"{kind}_ref"]
        df[f"speedup_{kind}"] = tps / pd.to_numeric(ref.map(tps.get), errors="coerce")
        df[f"length_ratio_{kind}"] = length / pd.to_numeric(ref.map(length.get), errors="coerce")
    return df


def table_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The table's columns, numeric (speed-ups and length ratios included), for the CSV."""
    out = add_speedups(df)
    out["tps_ci"] = [_ci(lo, hi, "{:.1f}") for lo, hi in zip(out["tps_ci_lo"], out["tps_ci_hi"])]
    out["score_ci"] = [_ci(lo, hi, "{:.3f}") for lo, hi in zip(out["score_ci_lo"], out["score_ci_hi"])]
    return out[["benchmark", "base_model", "in_table", *COLUMNS, "length_ratio_vanilla", "length_ratio_ar"]]


def displayed(df: pd.DataFrame) -> pd.DataFrame:
    """Speed-ups as text, flagged where the answers are shorter than the length guard allows."""
    out = df.copy()
    for kind in ("vanilla", "ar"):
        out[f"speedup_{kind}"] = [_speedup(x, r) for x, r in zip(out[f"speedup_{kind}"], out[f"length_ratio_{kind}"])]
    return out


def _ci(lo, hi, fmt: str) -> str:
    return "" if pd.isna(lo) else f"[{fmt.format(lo)}, {fmt.format(hi)}]"


def _speedup(x, length_ratio) -> str:
    if pd.isna(x):
        return ""
    flag = f" ⚠ length {length_ratio:.2f}" if length_ratio < LENGTH_GUARD else ""
    return f"{x:.2f}{flag}"


def plain(value) -> str:
    """A number as a table reader wants it: whole from 100 up (TPS 1664, not 1.66e+03), else 3 significant digits,
    never an exponent; a missing value is a dash."""
    if isinstance(value, str):
        return value
    if pd.isna(value):
        return "—"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return np.format_float_positional(value, precision=3, unique=False, fractional=False, trim="-")


def markdown(frame: pd.DataFrame, columns: dict[str, str]) -> str:
    """`frame[columns]` as a Markdown table under the columns' titles, numbers written `plain`."""
    shown = frame[list(columns)].rename(columns=columns).copy()
    align = ["right" if pd.api.types.is_numeric_dtype(shown[c]) else "left" for c in shown]
    for column in shown:
        if pd.api.types.is_float_dtype(shown[column]):
            shown[column] = shown[column].map(plain)
    return shown.to_markdown(index=False, missingval="—", disable_numparse=True, colalign=align)


def to_markdown(df: pd.DataFrame, columns: dict[str, str]) -> str:
    parts = [f"### {bench}\n\n" + markdown(group, columns) for bench, group in df.groupby("benchmark", sort=True)]
    return "\n\n".join(parts) + "\n"


NOTE = (f"Speed-ups are same-run TPS ratios against the vanilla cell on the same base model with the most forwards "
        f"and against the AR cell; ⚠ marks answers shorter than {LENGTH_GUARD:.0%} of the reference's.\n\n")
PAPER = {"base_model": "Base model", "model": "Model", "decoder": "Decoder", "params": "Params", "tps": "TPS",
         "latency_mean": "Latency (s)", "tokens_mean": "Gen. length", "score": "Score", "speedup_vanilla": "× vanilla",
         "speedup_ar": "× AR"}
ORDER = {"vanilla": 0, "fast_dllm": 1, "d2f": 2, "ar": 3}


def paper_layout(df: pd.DataFrame) -> pd.DataFrame:
    """The paper's Table 1/2: per benchmark and base model, vanilla, Fast-dLLM and D2F rows, then the AR row."""
    rows = df[df["in_table"]].copy()
    rows["order"] = rows["decoder"].map(ORDER).fillna(9)
    return rows.sort_values(["benchmark", "order", "base_model", "params"])


PUBLISHED = {"published_tps": "TPS (paper)", "published_latency": "Latency (paper)",
             "published_gen_length": "Gen. length (paper)", "published_score": "Score (paper)"}


def with_published(paper: pd.DataFrame, published_csv: str) -> pd.DataFrame:
    """The paper's own numbers beside each reproduced row: matched on model, benchmark, decoder and a params
    substring (`cache~dual`); scores converted from percent to the harness's fractions."""
    pub = pd.read_csv(published_csv, keep_default_na=False, na_values=[""])
    out = paper.copy()
    for column in PUBLISHED:
        out[column] = float("nan")
    for _, p in pub.iterrows():
        match = "" if pd.isna(p["match"]) else p["match"]
        hit = ((out["model"] == p["model"]) & (out["benchmark"] == p["benchmark"]) & (out["decoder"] == p["decoder"])
               & out["params"].str.contains(match, regex=False))
        out.loc[hit, list(PUBLISHED)] = [p["tps"], p["latency"], p["gen_length"], p["score"] / 100]
    return out


PAIRED = {"paired_vanilla": "× vanilla (paired)", "paired_ar": "× AR (paired)"}
PAIRED_NOTE = ("The paired columns come from `d2f speed`: the cells of a benchmark timed back to back on every "
               "problem in a shuffled order (drift cancels); ratio of TPS with its bootstrap 95% CI over problems.\n\n")


def with_paired(df: pd.DataFrame, paired: dict) -> pd.DataFrame:
    """The paired ratios beside each D2F / Fast-dLLM row (keyed by cell: model/benchmark/decoder/params)."""
    out = df.copy()
    keys = out[["model", "benchmark", "decoder", "params"]].astype(str).agg("/".join, axis=1)
    for column in PAIRED:
        out[column] = ""
    for (num, den), r in paired.items():
        column = "paired_ar" if den.split("/")[2] == "ar" else "paired_vanilla"
        out.loc[keys == num, column] = f"{r['ratio']:.2f} [{r['ci'][0]:.2f}, {r['ci'][1]:.2f}]"
    return out


def write_tables(summary_csv: str, out_dir: str, published_csv: str | None = None,
                 paired: dict | None = None) -> pd.DataFrame:
    raw = single(pd.read_csv(summary_csv))
    df = table_frame(raw)
    out = Path(out_dir)
    atomic_write_text(out / "table.csv", df.to_csv(index=False))
    atomic_write_text(out / "table.md", "# D2F Bench: every cell\n\n" + NOTE + to_markdown(displayed(df), COLUMNS))
    paper, columns, note = paper_layout(df), PAPER, NOTE
    if paired:
        paper, columns, note = with_paired(paper, paired), {**columns, **PAIRED}, NOTE + PAIRED_NOTE
    if published_csv:
        paper, columns = with_published(paper, published_csv), {**columns, **PUBLISHED}
    aup = aup_table(raw)
    atomic_write_text(out / "tables.csv", paper.drop(columns="order").to_csv(index=False))
    atomic_write_text(out / "aup.csv", aup.to_csv(index=False))
    atomic_write_text(out / "tables.md", "# D2F Bench: the paper's table layout\n\n" + note
                      + to_markdown(displayed(paper), columns) + "\n\n## AUP (accuracy under parallelism)\n\n"
                      + AUP_NOTE + (markdown(aup, {c: c for c in aup}) if len(aup) else "no diffusion family to rate"))
    return raw


AUP_NOTE = ("d3LLM's AUP per decoder family, from its table and sweep cells: the reference point is the base model's "
            "vanilla cell with the most forwards, and parallelism is TPF relative to that cell's (so it sits at 1); "
            "points more than 5 points below it do not count (`d2f_core/report/aup.py`).\n\n")
