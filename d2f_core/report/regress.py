"""CI regression gate: a run against the reference commit's code on this machine, and against stored scores.

- Speed and behaviour, code against code (`d2f ab`, `bench/ab.py`): the reference commit's decoders and this
  checkout's decode the same trained models, interleaved per problem. Per cell, current / reference TPS with a
  bootstrap CI fails when it drops beyond max(`speed_tolerance`, the CI's relative half-width); a different forward
  count or answer on any problem fails (same models, deterministic decoding: a different algorithm), naming the cell,
  the problems and the score change. Nothing machine-bound is stored, so the gate holds on any CPU.
- Scores against the stored reference (`{reference}.csv` and `.samples.jsonl`): a paired comparison per cell fails
  when the drop exceeds max(`score_tolerance`, 2 x paired standard error); this catches a change of the training
  recipe, which the A/B (same models on both arms) cannot see. Models trained on another CPU type score differently,
  so `score_tolerance` is set from the spread measured across CPU types (ci.yaml says how).
- Ratios to AR and to vanilla (`d2f speed`'s paired files, or per-cell TPS) are shown beside the reference's, not
  gated: how fast a one-token AR step runs against an 8-token block forward is a property of the CPU.
- A reference cell missing from the run fails (named, with the ratios it anchors), as does an ok reference cell
  missing from the A/B run or failed now; a NaN or infinite value fails with its cause; new cells are listed.
Exit codes: 0 pass, 1 regression, 2 unusable input (named in the message).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from d2f_core.bench.ab import ReferenceUnrunnable, meta_path, reference_commit
from d2f_core.bench.environment import CODE
from d2f_core.bench.io import atomic_write_json, atomic_write_text, read_jsonl_tolerant
from d2f_core.bench.runner import params_label, parse_params, split_batch
from d2f_core.report.exports import entry
from d2f_core.report.tables import batch_sizes, reference_cells, single

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


def paired_checks(now: dict, ref: dict) -> list[Check]:
    """Ratios to AR and to vanilla, the run's paired files beside the reference's: shown, not gated."""
    checks = []
    for (num, den), r in sorted(ref.items()):
        n, what = now.get((num, den)), f"paired TPS / {den.split('/')[2]} TPS"
        if n is None:
            checks.append(Check(num, what, r["ratio"], None, "not gated", "not in this run's paired files"))
            continue
        checks.append(Check(num, what, r["ratio"], n["ratio"], "not gated",
                            f"{n['ratio'] / r['ratio'] - 1:+.1%}; now CI [{n['ci'][0]:.3f}, {n['ci'][1]:.3f}], "
                            f"reference run's CI [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"))
    return checks


def speed_ratios(df: pd.DataFrame) -> dict[tuple[str, str], tuple[float, float]]:
    """(cell, 'vanilla' | 'ar') -> (this cell's TPS, its reference cell's TPS), measured in the same run."""
    refs = reference_cells(df.reset_index(drop=True)).set_index(df.index)
    out = {}
    for cell, row in single(df[(df["status"] == "ok") & df["decoder"].isin(SPEED_DECODERS)]).iterrows():
        for kind in ("vanilla", "ar"):
            pos = refs.at[cell, f"{kind}_ref"]
            if pos is not None and not (isinstance(pos, float) and math.isnan(pos)):
                out[(cell, kind)] = (row["tps"], df.iloc[int(pos)]["tps"])
    return out


def ratio_checks(now: pd.DataFrame, ref: pd.DataFrame) -> list[Check]:
    """Per-cell TPS ratios to AR and to vanilla (no paired files), beside the reference's: shown, not gated."""
    now_ratio, ref_ratio = speed_ratios(now), speed_ratios(ref)
    checks = []
    for (cell, kind), (tps, base) in sorted(now_ratio.items()):
        if (cell, kind) in ref_ratio:
            ref_tps, ref_base = ref_ratio[(cell, kind)]
            checks.append(Check(cell, f"TPS / {kind} TPS", divide(ref_tps, ref_base), divide(tps, base), "not gated",
                                f"TPS {tps:.4g} / {base:.4g} (reference {ref_tps:.4g} / {ref_base:.4g})"))
    return checks


def divide(a: float, b: float) -> float:
    return a / b if b else (math.nan if a == 0 else math.inf)


def anchors(ref: pd.DataFrame, cell: str) -> list[str]:
    """The speed ratios of the reference that divide by `cell` (an AR or vanilla cell)."""
    refs = reference_cells(ref.reset_index(drop=True)).set_index(ref.index)
    pos = ref.index.get_loc(cell)
    return [f"{other} / {kind}" for other in ref.index for kind in ("vanilla", "ar")
            if other != cell and ref.at[other, "decoder"] in SPEED_DECODERS and refs.at[other, f"{kind}_ref"] == pos]


def ab_checks(ab: dict, ref: pd.DataFrame, now: pd.DataFrame, speed_tolerance: float) -> list[Check]:
    """The A/B of each reference table cell: speed (current / reference code, CI-derived limit), forward counts and
    answers (exact)."""
    checks = [Check(cell, "A/B", None, None, "new", "not in the reference: its commit was not asked to run it")
              for cell in ab["new"]]
    table = ref["in_table"].astype(str) != "False" if "in_table" in ref else pd.Series(True, index=ref.index)
    for cell in ref.index[(ref["status"] == "ok") & table & (batch_sizes(ref) == 1)]:  # batches: batch_checks
        if cell not in now.index:
            continue  # failed as missing from the run
        a = ab["cells"].get(cell)
        if a is None:
            checks.append(Check(cell, "A/B", None, None, "REGRESSION",
                                "not in the A/B run: the gate cannot compare its speed and behaviour"))
            continue
        half = (a["ci"][1] - a["ci"][0]) / (2 * a["ratio"]) if a["ratio"] else math.inf
        limit, change = max(speed_tolerance, half), a["ratio"] - 1
        checks.append(Check(cell, "A/B TPS current / reference code", 1.0, a["ratio"],
                            "REGRESSION" if change < -limit else "ok",
                            f"{change:+.1%}, CI [{a['ci'][0]:.3f}, {a['ci'][1]:.3f}], limit -{limit:.1%}; TPS "
                            f"{a['tps_current']:.4g} vs {a['tps_reference']:.4g} on {a['problems']} problems"))
        fwd = a["forwards_differ"]
        checks.append(Check(cell, "A/B forwards", None, None, "REGRESSION" if fwd else "ok",
                            f"differ on {len(fwd)} of {a['problems']} problems, e.g. {fwd[0]['problem']}: "
                            f"{fwd[0]['current']} now vs {fwd[0]['reference']} (a different algorithm)" if fwd
                            else f"equal on all {a['problems']} problems"))
        moved = a["answers_differ"]
        checks.append(Check(cell, "A/B score", None, a["score_change"], "REGRESSION" if moved else "ok",
                            f"{len(moved)} answers differ (e.g. {moved[0]}): score {a['score_change']:+.3f}, "
                            f"{len(a['gained'])} gained, {len(a['lost'])} lost" if moved
                            else f"every answer equal on {a['problems']} problems"))
    return checks


def batch_checks(now: pd.DataFrame, now_samples: dict) -> list[Check]:
    """Each batch > 1 cell against its batch-1 twin in this run: every row of a batch is its batch-1 decoding, so
    every answer's verdict and the forwards per problem must be equal (a difference is a batching bug)."""
    checks = []
    for cell in now.index[(batch_sizes(now) > 1) & (now["status"] == "ok")]:
        row = now.loc[cell]
        twin = "/".join([row["model"], row["benchmark"], row["decoder"],
                         params_label(split_batch(parse_params(row["params"]))[0])])
        if twin not in now.index or now.at[twin, "status"] != "ok":
            checks.append(Check(cell, "batch = batch 1", None, None, "not gated", f"no ok batch-1 cell {twin}"))
            continue
        ours, theirs = now_samples.get(cell, {}), now_samples.get(twin, {})
        moved = sorted(p for p in set(ours) | set(theirs) if ours.get(p) != theirs.get(p))
        nfe = now.at[twin, "nfe"]
        bad = moved or abs(row["nfe"] - nfe) > 1e-9
        checks.append(Check(cell, "batch = batch 1", nfe, row["nfe"], "REGRESSION" if bad else "ok",
                            f"NFE {row['nfe']:.4g} vs {nfe:.4g} at batch 1; {len(moved)} verdicts differ"
                            + (f" (e.g. {moved[0]})" if moved else f" of {len(ours)} problems")))
    return checks


def load_ab(paths: list[str | Path], reference_csv: str | Path) -> dict:
    """The A/B files of a run, checked to be against the reference's own commit (a stale file is unusable)."""
    try:
        commit = reference_commit(reference_csv)
    except ReferenceUnrunnable as e:
        raise UnusableInput(str(e)) from None
    out = {"cells": {}, "new": []}
    for path in map(Path, paths):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UnusableInput(f"{path}: not a readable A/B file ({e}); run `snakemake regress --cores all ...`")
        if data["reference_commit"] != commit:
            raise UnusableInput(f"{path}: an A/B against commit {data['reference_commit']}, but the reference is "
                                f"{commit}; rerun it with `snakemake regress --cores all --forcerun ab ...`")
        out["cells"].update(data["cells"])
        out["new"] += data["new"]
    return out


def compare(now: pd.DataFrame, ref: pd.DataFrame, now_samples: dict, ref_samples: dict, tolerance: float,
            speed_tolerance: float, now_paired: dict | None = None, ref_paired: dict | None = None,
            ab: dict | None = None) -> list[Check]:
    common = [c for c in ref.index if c in now.index]
    if not common:
        raise UnusableInput("no cell is in both the summary and the reference")
    checks = []
    for c in ref.index.difference(now.index, sort=False):
        anchored = anchors(ref, c)
        checks.append(Check(c, "cell", None, None, "REGRESSION", "in the reference, not in this run"
                            + (f"; it anchors {', '.join(anchored)}" if anchored else "")))
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
    checks += ab_checks(ab, ref, now, speed_tolerance) if ab is not None else [
        Check("(every cell)", "speed", None, None, "not gated", "no A/B run given (--ab): speed is not gated")]
    checks += batch_checks(now, now_samples)
    checks += paired_checks(now_paired, ref_paired) if now_paired and ref_paired else ratio_checks(now, ref)
    for c in checks:
        bad = [v for v in (c.reference, c.now) if v is not None and not math.isfinite(v)]
        if bad:
            c.verdict, c.note = "REGRESSION", f"{bad[0]} is not a finite number: {c.note}"
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
    def number(v):
        return "" if v is None else f"{v:.4g}"

    rows = [{"cell": c.cell, "check": c.what, "reference": number(c.reference), "now": number(c.now),
             "verdict": c.verdict, "note": c.note} for c in checks]
    return pd.DataFrame(rows).to_markdown(index=False, colalign=("left", "left", "right", "right", "left", "left"))


def benchmark_json(checks: list[Check], now: pd.DataFrame) -> str:
    """github-action-benchmark's custom format: one entry per score, A/B speed and ratio; strict JSON (a value that
    is not a finite number is null, with the reason in `extra`)."""
    out = []
    for cell, row in now[now["status"] == "ok"].iterrows():
        ci = f"[{row['score_ci_lo']:.4f}, {row['score_ci_hi']:.4f}]"
        out.append(entry(f"{cell} score", "score", row["score"], ci))
    for c in checks:
        if "TPS" in c.what and c.now is not None:
            out.append(entry(f"{c.cell} {c.what}", "x", c.now, None,
                             c.note if c.what.startswith("A/B") else f"reference {c.reference}"))
    return json.dumps(out, indent=2, allow_nan=False) + "\n"


def regress(summary: str, reference: str, out_md: str | None = None, out_json: str | None = None,
            tolerance: float = 0.02, speed_tolerance: float = 0.10, speed: list[str] | None = None,
            ab: list[str] | None = None) -> int:
    now, ref = load_summary(summary), load_summary(reference)
    ref_speed = speed_path(reference)
    now_paired = load_paired(speed) if speed else None
    ref_paired = load_paired([ref_speed]) if speed and ref_speed.exists() else None
    checks = compare(now, ref, per_problem(now), load_reference_samples(reference), tolerance, speed_tolerance,
                     now_paired, ref_paired, load_ab(ab, reference) if ab else None)
    bad = [c for c in checks if c.verdict == "REGRESSION"]
    text = render(checks)
    verdict = f"{len(bad)} regression(s): " + ", ".join(sorted({c.cell for c in bad})) if bad else "no regression"
    print(text + "\n\n" + verdict)
    if out_md:
        atomic_write_text(out_md, f"# Regression check\n\n{summary} against {reference}\n\n{text}\n\n**{verdict}**\n")
    if out_json:
        atomic_write_text(out_json, benchmark_json(checks, now))
    return 1 if bad else 0


def update_reference(summary: str, reference: str, speed: list[str] | None = None) -> None:
    """Make this run the reference: its summary.csv, per-problem results, paired speed and the commit whose decoders
    made it, which the gate's A/B runs (a deliberate, reviewed commit)."""
    now = load_summary(summary)
    commit = decoded_at(summary, now)
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
    atomic_write_json(meta_path(reference), {"commit": commit, "hardware": str(now["hardware"].iloc[0]) if
                                             "hardware" in now else None})


def decoded_at(summary: str, now: pd.DataFrame) -> str:
    """The one commit every cell was decoded at, whose decoders are still the ones in this checkout."""
    commits = sorted({str(s) for s in now["git_sha"].dropna()}) if "git_sha" in now else []
    if len(commits) != 1:
        listed = ", ".join(commits) or "none recorded"
        raise UnusableInput(f"{summary}: cells decoded at {len(commits)} commits ({listed}); a reference names the "
                            f"one commit whose decoders the gate reruns: rerun the profile from one commit")
    changed = subprocess.run(["git", "-C", CODE, "diff", "--name-only", commits[0], "--", ":/d2f_core",
                              ":/baselines"], capture_output=True, text=True)
    if changed.returncode or changed.stdout.strip():
        raise UnusableInput(f"{summary}: decoded at {commits[0][:12]}, but the code here differs from it "
                            f"({changed.stdout.split() or changed.stderr.strip()}): commit, rerun the profile, "
                            f"then update the reference")
    return commits[0]
