"""A run in the layouts other tools read: d3LLM's AUP leaderboard points (`AUP_leaderboard/data_*.yaml`: benchmark ->
method -> [[TPF, accuracy %], ...]) and github-action-benchmark's `customBiggerIsBetter` JSON (a list of
{name, unit, value, range, extra}), so a leaderboard can rate the families and a CI can chart every cell over commits."""

from __future__ import annotations

import json
import math

import pandas as pd

from d2f_core.report.aup import families

AUP_HEADER = """\
# AUP points of this run in the layout of d3LLM's AUP leaderboard (AUP_leaderboard/data_*.yaml):
# benchmark -> family (model/decoder) -> [[TPF, accuracy %], ...]. TPF is relative to the family's reference, its
# base model's vanilla cell with the most forwards (the first point, at 1), as reports/{profile}/aup.csv computes
# AUP; each point's comment names its cell (model, decoder, settings) and its raw TPF.
"""


def aup_points_yaml(df: pd.DataFrame) -> str:
    lines = [AUP_HEADER.rstrip("\n")]
    benchmark = None
    for fam in families(df):
        if fam["benchmark"] != benchmark:
            benchmark = fam["benchmark"]
            lines.append(f"{json.dumps(benchmark)}:")
        lines.append(f"  {json.dumps(fam['model'] + '/' + fam['decoder'])}:")
        for (rho, score), (_, cell) in zip(fam["points"], fam["cells"]):
            lines.append(f"  - [{rho:.4g}, {score:.2f}]  # {cell['model']} {cell['decoder']} {cell['params']}, "
                         f"TPF {cell['tpf']:.3g}")
    return "\n".join(lines) + "\n"


def entry(name: str, unit: str, value: float, range_: str | None = None, extra: str | None = None) -> dict:
    """One github-action-benchmark entry; a value that is not a finite number is null, the reason in `extra`."""
    e = {"name": name, "unit": unit, "value": float(value) if math.isfinite(value) else None}
    if range_ and e["value"] is not None:
        e["range"] = range_
    if e["value"] is None:
        extra = f"not a finite number ({value}); {extra or ''}".rstrip("; ")
    return {**e, **({"extra": extra} if extra else {})}


def benchmark_json(df: pd.DataFrame, paired: dict | None = None) -> str:
    """Per ok cell: TPS (its bootstrap 95% CI as the range), score (its CI), and the paired TPS ratio to AR (`d2f
    speed`, with its CI) where the run has one; strict JSON."""
    out = []
    ratios = {num: r for (num, den), r in (paired or {}).items() if den.split("/")[2] == "ar"}
    for _, row in df[df["status"] == "ok"].iterrows():
        cell = "/".join(str(row[k]) for k in ("model", "benchmark", "decoder", "params"))
        hardware = f"{row.get('hardware')}, batch {row.get('batch_size', 1):.0f}"
        out.append(entry(f"{cell} TPS", "tokens/s", row["tps"], _range(row["tps_ci_lo"], row["tps_ci_hi"], 1),
                         hardware))
        n = row.get("n")
        out.append(entry(f"{cell} {row['metric']}", row["metric"], row["score"],
                         _range(row["score_ci_lo"], row["score_ci_hi"], 3), f"{n:.0f} problems" if pd.notna(n) else None))
        if cell in ratios:
            r = ratios[cell]
            out.append(entry(f"{cell} TPS / AR (paired)", "x", r["ratio"], _range(*r["ci"], 3),
                             "same problems, interleaved in one job"))
    return json.dumps(out, indent=1, allow_nan=False) + "\n"


def _range(lo, hi, digits: int) -> str | None:
    return None if pd.isna(lo) or pd.isna(hi) else f"95% CI [{lo:.{digits}f}, {hi:.{digits}f}]"
