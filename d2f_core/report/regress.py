"""CI regression gate: compare a run's summary.csv with a committed reference, on score and on same-run speed ratios.

- Score: with per-problem results on both sides, a paired comparison fails when the drop exceeds
  max(tolerance, 2 x paired standard error); otherwise, when the new score falls below the reference's bootstrap CI
  by more than the tolerance.
- Speed: absolute TPS is never compared across machines, only ratios: each D2F / Fast-dLLM cell's TPS over the
  vanilla cell's on the same base model and benchmark, and over the AR cell's. Where the run has paired speed files
  (`d2f speed`: the cells interleaved per problem, drift cancels), the gate uses those ratios: a drop beyond
  max(`speed_tolerance`, the combined relative half-width of the two 95% CIs) of a ratio to AR is a regression.
  Ratios to vanilla are shown with the same numbers but do not gate: vanilla recomputes the whole canvas every step
  while AR, D2F and Fast-dLLM run small cached forwards, so how fast the two kinds run relative to each other is a
  property of the machine that day. Same code, same models, 1 thread, quiet: Fast-dLLM / vanilla moved -7% to -13%
  between two occasions on the CI VM (beyond the 10% limit) while every ratio to AR stayed within -6%. Without
  paired files the gate falls back to the per-cell ratios and `speed_tolerance` alone.
- A failed cell that was ok in the reference is a regression; missing and new cells are listed.
Exit codes: 0 pass, 1 regression, 2 unusable input (named in the message).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from d2f_core.bench.io import atomic_write_text, read_jsonl_tolerant
from d2f_core.report.tables import reference_cells

KEY = ["model", "benchmark", "decoder", "params"]
REQUIRED = [*KEY, "base_model", "status", "score", "score_ci_lo", "score_ci_hi", "tps", "tokens_mean", "nfe"]
SPEED_DECODERS = ("d2f", "fast_dllm")  # the cells whose speed-ups the tables, the paired step and the gate report


class UnusableInput(Exception):
    """Missing file, missing column, nothing to compare: exit 2."""


@dataclass
class Check:
    cell: str
    what: str
    reference: float | None
    now: float | None
    verdict: str  # ok | REGRESSION | missing | new | improved
    note: str = ""


def load_summary(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise UnusableInput(f"{path}: file not found")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UnusableInput(f"{path}: not a readable CSV ({e})") from None
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise UnusableInput(f"{path}: missing column(s) {', '.join(missing)}")
    if df.empty:
        raise UnusableInput(f"{path}: a header and no cells; rerun the profile (`snakemake --cores all ...`)")
    bad_status = sorted({str(v) for v in df["status"]} - {"ok", "failed"})
    if bad_status:
        raise UnusableInput(f"{path}: status must be ok or failed, found {', '.join(bad_status)} (a truncated or "
                            f"hand-edited file?); regenerate it with `snakemake --cores all ...`")
    ok = df["status"] == "ok"
    for column in ("score", "score_ci_lo", "score_ci_hi", "tps", "tokens_mean", "nfe"):
        values = pd.to_numeric(df[column], errors="coerce")
        broken = df.loc[ok & values.isna(), KEY]
        if len(broken):
            cell = "/".join(map(str, broken.iloc[0]))
            raise UnusableInput(f"{path}: column {column!r} is not a number for the ok cell {cell} (a truncated or "
                                f"hand-edited file?); regenerate it with `snakemake --cores all ...`")
        df[column] = values
    df["cell"] = df[KEY].astype(str).agg("/".join, axis=1)
    return df.set_index("cell", drop=False)


def samples_path(reference_csv: str | Path) -> Path:
    return Path(reference_csv).with_suffix(".samples.jsonl")


def per_problem(df: pd.DataFrame) -> dict[str, dict[str, float]]:
    """cell -> {problem id: correct} from each cell's samples.jsonl, where the run still has it."""
    out = {}
    for cell, cell_dir in df.get("cell_dir", pd.Series(dtype=str)).items():
        rows = read_jsonl_tolerant(Path(str(cell_dir)) / "samples.jsonl") if isinstance(cell_dir, str) else []
        if rows:
            out[cell] = {r["id"]: float(r["correct"]) for r in rows}
    return out


def load_reference_samples(reference_csv: str | Path) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for row in read_jsonl_tolerant(samples_path(reference_csv)):
        out.setdefault(row["cell"], {})[row["id"]] = float(row["correct"])
    return out


def speed_path(reference_csv: str | Path) -> Path:
    return Path(reference_csv).with_suffix(".speed.json")


def load_paired(paths: list[str | Path]) -> dict[tuple[str, str], dict]:
    """(num cell, den cell) -> ratio record, from the speed files of a run (or a reference's combined file)."""
    out = {}
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise UnusableInput(f"{path}: file not found (run `snakemake --cores all ...` for the paired speed files)")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise UnusableInput(f"{path}: not valid JSON ({e})") from None
        for group in data if isinstance(data, list) else [data]:
            out.update({(r["num"], r["den"]): r for r in group["ratios"]})
    return out


def paired_checks(now: dict, ref: dict, speed_tolerance: float) -> list[Check]:
    checks = []
    for (num, den), r in sorted(ref.items()):
        n = now.get((num, den))
        if n is None:
            checks.append(Check(num, f"paired TPS / {den.split('/')[2]}", r["ratio"], None, "missing"))
            continue
        spread = math.hypot(*((x["ci"][1] - x["ci"][0]) / (2 * x["ratio"]) for x in (n, r)))
        limit = max(speed_tolerance, spread)
        change = n["ratio"] / r["ratio"] - 1
        kind = "ar" if den.split("/")[2] == "ar" else "vanilla"
        verdict = ("REGRESSION" if change < -limit else "ok") if kind == "ar" else "not gated"
        checks.append(Check(num, f"paired TPS / {kind} TPS", r["ratio"], n["ratio"], verdict,
                            f"{change:+.1%}; now CI [{n['ci'][0]:.3f}, {n['ci'][1]:.3f}], reference CI "
                            f"[{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]; limit -{limit:.1%}"))
    return checks


def speed_ratios(df: pd.DataFrame) -> dict[tuple[str, str], float]:
    """(cell, 'vanilla' | 'ar') -> this cell's TPS over its reference cell's TPS, measured in the same run."""
    refs = reference_cells(df.reset_index(drop=True)).set_index(df.index)
    out = {}
    for cell, row in df[(df["status"] == "ok") & df["decoder"].isin(SPEED_DECODERS)].iterrows():
        for kind in ("vanilla", "ar"):
            pos = refs.at[cell, f"{kind}_ref"]
            if pos is not None and not (isinstance(pos, float) and math.isnan(pos)):
                out[(cell, kind)] = row["tps"] / df.iloc[int(pos)]["tps"]
    return out


def compare(now: pd.DataFrame, ref: pd.DataFrame, now_samples: dict, ref_samples: dict, tolerance: float,
            speed_tolerance: float, now_paired: dict | None = None, ref_paired: dict | None = None) -> list[Check]:
    common = [c for c in ref.index if c in now.index]
    if not common:
        raise UnusableInput("no cell is in both the summary and the reference")
    checks = [Check(c, "cell", None, None, "missing", "in the reference, not in this run")
              for c in ref.index if c not in now.index]
    checks += [Check(c, "cell", None, None, "new", "not in the reference") for c in now.index if c not in ref.index]
    for cell in common:
        r, n = ref.loc[cell], now.loc[cell]
        if n["status"] != "ok":
            verdict = "REGRESSION" if r["status"] == "ok" else "ok"
            checks.append(Check(cell, "status", None, None, verdict, f"failed now (reference: {r['status']})"))
            continue
        if r["status"] != "ok":
            checks.append(Check(cell, "status", None, None, "improved", "failed in the reference, ok now"))
            continue
        checks.append(score_check(cell, r, n, now_samples.get(cell), ref_samples.get(cell), tolerance))
    if now_paired and ref_paired:
        return checks + paired_checks(now_paired, ref_paired, speed_tolerance)
    now_ratio, ref_ratio = speed_ratios(now), speed_ratios(ref)
    for (cell, kind), value in sorted(now_ratio.items()):
        if (cell, kind) not in ref_ratio:
            continue
        change = value / ref_ratio[(cell, kind)] - 1
        verdict = "REGRESSION" if change < -speed_tolerance else "ok"
        checks.append(Check(cell, f"TPS / {kind} TPS", ref_ratio[(cell, kind)], value, verdict,
                            f"{change:+.1%} (limit -{speed_tolerance:.0%})"))
    return checks


def score_check(cell: str, r, n, now_s: dict | None, ref_s: dict | None, tolerance: float) -> Check:
    ids = sorted(set(now_s or {}) & set(ref_s or {}))
    if ids:
        diffs = pd.Series([now_s[i] - ref_s[i] for i in ids])
        drop = -diffs.mean()
        se = diffs.std(ddof=1) / math.sqrt(len(ids)) if len(ids) > 1 else 0.0
        limit = max(tolerance, 2 * (0.0 if math.isnan(se) else se))
        verdict = "REGRESSION" if drop > limit + 1e-12 else "ok"
        return Check(cell, "score (paired)", r["score"], n["score"], verdict,
                     f"drop {drop:+.3f} on {len(ids)} problems, limit {limit:.3f}")
    drop = r["score"] - n["score"]
    below = n["score"] < r["score_ci_lo"] - 1e-12
    verdict = "REGRESSION" if below and drop > tolerance else "ok"
    return Check(cell, "score (CI)", r["score"], n["score"], verdict,
                 f"reference CI [{r['score_ci_lo']:.3f}, {r['score_ci_hi']:.3f}], tolerance {tolerance:.3f}")


def render(checks: list[Check]) -> str:
    rows = [{"cell": c.cell, "check": c.what, "reference": c.reference, "now": c.now, "verdict": c.verdict,
             "note": c.note} for c in checks]
    return pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4g", missingval="")


def benchmark_json(checks: list[Check], now: pd.DataFrame) -> list[dict]:
    """github-action-benchmark's custom format: one entry per score and per speed ratio."""
    out = []
    for cell, row in now[now["status"] == "ok"].iterrows():
        out.append({"name": f"{cell} score", "unit": "score", "value": float(row["score"]),
                    "range": f"[{row['score_ci_lo']:.4f}, {row['score_ci_hi']:.4f}]"})
    for c in checks:
        if "TPS /" in c.what and c.now is not None:
            out.append({"name": f"{c.cell} {c.what}", "unit": "x", "value": float(c.now),
                        "extra": f"reference {c.reference:.4f}"})
    return out


def regress(summary: str, reference: str, out_md: str | None = None, out_json: str | None = None,
            tolerance: float = 0.02, speed_tolerance: float = 0.25, speed: list[str] | None = None) -> int:
    now, ref = load_summary(summary), load_summary(reference)
    ref_speed = speed_path(reference)
    now_paired = load_paired(speed) if speed else None
    ref_paired = load_paired([ref_speed]) if speed and ref_speed.exists() else None
    checks = compare(now, ref, per_problem(now), load_reference_samples(reference), tolerance, speed_tolerance,
                     now_paired, ref_paired)
    bad = [c for c in checks if c.verdict == "REGRESSION"]
    text = render(checks)
    verdict = f"{len(bad)} regression(s): " + ", ".join(sorted({c.cell for c in bad})) if bad else "no regression"
    print(text + "\n\n" + verdict)
    if out_md:
        atomic_write_text(out_md, f"# Regression check\n\n{summary} against {reference}\n\n{text}\n\n**{verdict}**\n")
    if out_json:
        atomic_write_text(out_json, json.dumps(benchmark_json(checks, now), indent=2) + "\n")
    return 1 if bad else 0


def update_reference(summary: str, reference: str, speed: list[str] | None = None) -> None:
    """Make this run the reference: its summary.csv, per-problem results and paired speed (a deliberate, reviewed
    commit)."""
    now = load_summary(summary)
    if speed:
        load_paired(speed)  # readable
        groups = [json.loads(Path(p).read_text()) for p in speed]
        atomic_write_text(speed_path(reference), json.dumps(
            [{"benchmark": g["benchmark"], "ratios": g["ratios"]} for g in groups], indent=1) + "\n")
    Path(reference).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(summary, reference)
    rows = [{"cell": cell, "id": pid, "correct": c} for cell, probs in per_problem(now).items()
            for pid, c in probs.items()]
    atomic_write_text(samples_path(reference), "".join(json.dumps(r) + "\n" for r in rows))
