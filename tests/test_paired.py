"""Paired speed: the interleaving, the ratio's CI, the gate on paired ratios, and AUP."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from d2f_core.bench.paired import Arm, ratio_stats, run_paired
from d2f_core.report.aup import aup

from test_regress import ref, run, summary  # noqa: F401  (the fixture and helpers of the score/speed gate)


def test_every_decoder_sees_every_problem_in_a_changing_order(model_dirs, data_dir, tmp_path):
    arms = [Arm("llada/tiny-gsm/vanilla/x", str(model_dirs["llada"]), "vanilla", 8, {"block_size": "8"}),
            Arm("llada/tiny-gsm/fast_dllm/x", str(model_dirs["llada"]), "fast_dllm", 8, {"block_size": "8"}),
            Arm("ar/tiny-gsm/ar/default", str(model_dirs["ar"]), "ar", 8)]
    out = tmp_path / "speed.json"
    s = run_paired(arms, [(arms[1].cell, arms[0].cell), (arms[1].cell, arms[2].cell)], "tiny-gsm", str(data_dir),
                   str(out), limit=6, rounds=2)
    records = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert len(records) == 6 * 2 * 3
    problems = {r["problem"] for r in records}
    for cell in (a.cell for a in arms):  # each decoder: every problem, once per round
        assert Counter(r["problem"] for r in records if r["cell"] == cell) == {p: 2 for p in problems}
    orders = {(r["problem"], r["round"]): [] for r in records}
    for r in sorted(records, key=lambda r: r["position"]):
        orders[(r["problem"], r["round"])].append(r["cell"])
    assert len({tuple(o) for o in orders.values()}) > 1, "the order is reshuffled between problems"
    assert s["problems"] == 6 and len(s["ratios"]) == 2
    assert all(r["ci"][0] <= r["ratio"] <= r["ci"][1] for r in s["ratios"])


def test_the_ratio_ci_covers_a_known_ratio():
    rng = np.random.default_rng(1)
    tokens = rng.integers(10, 30, 200)
    slow = tokens * 0.01 * rng.lognormal(0, 0.3, 200)  # B: 100 tokens/s with per-problem noise
    drift = rng.lognormal(0, 0.5, 200)  # the machine's drift hits both arms of a problem alike
    a = list(zip(tokens, slow * drift / 2 * rng.lognormal(0, 0.05, 200)))  # A: twice as fast
    b = list(zip(tokens, slow * drift))
    s = ratio_stats(a, b)
    assert s["ci"][0] < 2.0 < s["ci"][1] and abs(s["ratio"] - 2) < 0.1 and s["ci"][1] - s["ci"][0] < 0.3


def test_aup_reproduces_the_worked_example():
    assert round(aup([(1.0, 74.98), (2.88, 74.39)]), 1) == 213.8
    assert aup([(1.0, 74.98), (2.88, 60.0)]) == pytest.approx(74.98), "a point 5 below the reference does not count"


def _speed(path, to_ar, to_vanilla, half_width=0.02):
    dens = {"tiny-ar/tiny-gsm/ar/default": to_ar, "tiny-dream/tiny-gsm/vanilla/steps~32": to_vanilla}
    path.write_text(json.dumps({"benchmark": "tiny-gsm", "ratios": [
        {"num": "tiny-dream-d2f/tiny-gsm/d2f/tau_add~0.1", "den": den, "ratio": r,
         "ci": [r * (1 - half_width), r * (1 + half_width)]} for den, r in dens.items()]}))
    return str(path)


@pytest.mark.parametrize("to_ar,to_vanilla", [(2.0, 10.0), (1.66, 8.3), (2.0, 5.0)])
def test_paired_ratios_are_shown_beside_the_reference_not_gated(tmp_path, ref, to_ar, to_vanilla,
                                                                 capsys):  # noqa: F811
    """Ratios to AR and vanilla move with the CPU type: the A/B of the code gates speed, these are reported."""
    _speed(tmp_path / "ref.speed.json", 2.0, 10.0)
    now_file = _speed(tmp_path / "now.json", to_ar, to_vanilla)
    assert run("--summary", summary(tmp_path / "now.csv"), "--reference", ref, "--speed", now_file) == 0
    report = capsys.readouterr().out
    for kind in ("ar", "vanilla"):
        line = next(x for x in report.splitlines() if f"paired TPS / {kind} TPS" in x)
        assert "not gated" in line and "now CI" in line


def test_aup_table_measures_parallelism_relative_to_the_one_token_per_step_cell():
    import pandas as pd

    from d2f_core.report.aup import aup_table

    rows = [("m", "vanilla", 32, 0.5, 0.80, "a"), ("m-d2f", "d2f", 10, 1.5, 0.79, "b"),
            ("z", "vanilla", 32, 0.5, 0.0, "c"), ("z-d2f", "d2f", 10, 1.5, 0.0, "d")]
    df = pd.DataFrame([dict(benchmark="b", base_model=m.split("-")[0], model=m, decoder=d, nfe=n, tpf=t, score=s,
                            cell_dir=c, status="ok") for m, d, n, t, s, c in rows])
    table = aup_table(df).set_index("model")
    assert table.loc["m-d2f", "points (relative TPF, score %)"] == "(1.00, 80.0); (3.00, 79.0)"
    assert table.loc["m-d2f", "AUP"] == pytest.approx(round(aup([(1, 80.0), (3.0, 79.0)]), 1))
    assert table.loc["z-d2f", "AUP"] == 0.0  # all-zero scores: 0, not NaN
