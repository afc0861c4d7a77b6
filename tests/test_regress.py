"""The CI regression gate on hand-made summaries and A/B files: score drops, A/B speed, forwards and answers, missing
cells, non-finite values, failures, bad input."""

import json
import math
import subprocess

import pandas as pd
import pytest

from d2f_core.cli import main

ROWS = [  # model, base, benchmark, decoder, params, score, ci, tps
    ("tiny-ar", "tiny-ar", "tiny-gsm", "ar", "default", 0.98, (0.96, 1.0), 400.0),
    ("tiny-dream", "tiny-dream", "tiny-gsm", "vanilla", "steps~32", 0.60, (0.55, 0.65), 60.0),
    ("tiny-dream-d2f", "tiny-dream", "tiny-gsm", "d2f", "tau_add~0.1", 0.58, (0.53, 0.63), 600.0),
    ("tiny-dream", "tiny-dream", "tiny-gsm", "fast_dllm", "cache~dual", 0.57, (0.52, 0.62), 200.0),
]


def summary(path, edit=None):
    df = pd.DataFrame([dict(model=m, base_model=b, benchmark=bm, decoder=d, params=p, status="ok", score=s,
                            score_ci_lo=ci[0], score_ci_hi=ci[1], tps=t, tokens_mean=20.0, nfe=10.0)
                       for m, b, bm, d, p, s, ci, t in ROWS])
    if edit:  # in place, or returning the edited frame
        edited = edit(df)
        df = df if edited is None else edited
    df.to_csv(path, index=False)
    return str(path)


def run(*args):
    with pytest.raises(SystemExit) as e:
        main(["regress", *args])
    return e.value.code


@pytest.fixture
def ref(tmp_path):
    return summary(tmp_path / "ref.csv")


def test_identical_run_passes(tmp_path, ref):
    assert run("--summary", summary(tmp_path / "now.csv"), "--reference", ref) == 0


def test_score_lowered_beyond_its_ci_fails_naming_the_cell(tmp_path, ref, capsys):
    def lower(df):
        df.loc[2, "score"] = 0.45

    out = tmp_path / "regression.md"
    assert run("--summary", summary(tmp_path / "now.csv", lower), "--reference", ref, "--out", str(out)) == 1
    assert "tiny-dream-d2f/tiny-gsm/d2f/tau_add~0.1" in capsys.readouterr().out
    assert "REGRESSION" in out.read_text()


def test_a_faster_machine_passes(tmp_path, ref):
    def double(df):
        df["tps"] *= 2

    assert run("--summary", summary(tmp_path / "now.csv", double), "--reference", ref) == 0


def test_per_cell_ratios_are_shown_not_gated(tmp_path, ref, capsys):
    """Stored ratios to AR and vanilla bind to the CPU that made them: the A/B gates speed instead."""
    def halve(df):
        df.loc[2, "tps"] /= 2

    assert run("--summary", summary(tmp_path / "now.csv", halve), "--reference", ref) == 0
    out = capsys.readouterr().out
    assert "TPS / vanilla TPS" in out and "not gated" in out and "no A/B run given" in out


D2F, AR = "tiny-dream-d2f/tiny-gsm/d2f/tau_add~0.1", "tiny-ar/tiny-gsm/ar/default"
COMMIT = "a" * 40


def ab_file(path, ref_csv, edit=None, commit=COMMIT):
    """An A/B file where every reference cell runs as fast as the reference code, with equal forwards and answers."""
    from pathlib import Path

    Path(ref_csv).with_suffix(".meta.json").write_text(json.dumps({"commit": COMMIT}))
    cells = {}
    for m, _, bm, d, p, *_ in ROWS:
        cells[f"{m}/{bm}/{d}/{p}"] = {"ratio": 1.0, "ci": [0.97, 1.03], "median": 1.0, "problems": 60,
                                      "tps_current": 100.0, "tps_reference": 100.0, "forwards_differ": [],
                                      "answers_differ": [], "gained": [], "lost": [], "score_change": 0.0}
    data = {"benchmark": "tiny-gsm", "reference_commit": commit, "new": [], "cells": cells}
    if edit:
        edit(data)
    path.write_text(json.dumps(data))
    return str(path)


def gate(tmp_path, ref, edit=None, summary_edit=None, *extra):
    return run("--summary", summary(tmp_path / "now.csv", summary_edit), "--reference", ref,
               "--ab", ab_file(tmp_path / "ab.json", ref, edit), "--speed-tolerance", "0.10", *extra)


@pytest.mark.parametrize("ratio,ci,verdict", [
    (1.0, (0.97, 1.03), 0),
    (0.93, (0.90, 0.96), 0),  # inside the 10% floor
    (0.85, (0.82, 0.88), 1),  # a 15% slowdown
    (0.85, (0.70, 1.00), 0),  # as far down, but the CI is too wide to tell
])
def test_the_ab_speed_ratio_gates_with_a_ci_derived_limit(tmp_path, ref, ratio, ci, verdict, capsys):
    def slower(data):
        data["cells"][D2F].update(ratio=ratio, ci=list(ci))

    assert gate(tmp_path, ref, slower) == verdict
    if verdict:
        assert f"regression(s): {D2F}" in capsys.readouterr().out


def test_a_changed_forward_count_fails_naming_the_cell_and_problem(tmp_path, ref, capsys):
    def forwards(data):
        data["cells"][D2F]["forwards_differ"] = [{"problem": "gsm-7", "current": 12, "reference": 11}]

    assert gate(tmp_path, ref, forwards) == 1
    out = capsys.readouterr().out
    assert "A/B forwards" in out and "gsm-7: 12 now vs 11" in out and f"regression(s): {D2F}" in out


def test_a_moved_answer_fails_with_the_score_change(tmp_path, ref, capsys):
    def answers(data):
        data["cells"][D2F].update(answers_differ=["gsm-3", "gsm-9"], lost=["gsm-3"], score_change=-1 / 60)

    assert gate(tmp_path, ref, answers) == 1
    assert "2 answers differ (e.g. gsm-3): score -0.017, 0 gained, 1 lost" in capsys.readouterr().out


def test_a_reference_cell_missing_from_the_ab_run_fails(tmp_path, ref, capsys):
    def drop(data):
        del data["cells"][D2F]

    assert gate(tmp_path, ref, drop) == 1
    assert "not in the A/B run" in capsys.readouterr().out


def test_an_ab_against_another_commit_is_unusable(tmp_path, ref, capsys):
    ab = ab_file(tmp_path / "ab.json", ref, commit="b" * 40)
    assert run("--summary", summary(tmp_path / "now.csv"), "--reference", ref, "--ab", ab) == 2
    assert "--forcerun ab" in capsys.readouterr().err


def test_a_new_cell_in_the_ab_run_is_listed_not_gated(tmp_path, ref, capsys):
    def new(data):
        data["new"] = ["tiny-dream/tiny-gsm/fast_dllm/cache~prefix"]

    assert gate(tmp_path, ref, new) == 0
    assert "its commit was not asked to run it" in capsys.readouterr().out


def test_failed_cell_fails(tmp_path, ref):
    def fail(df):
        df.loc[3, "status"] = "failed"

    assert run("--summary", summary(tmp_path / "now.csv", fail), "--reference", ref) == 1


def test_a_missing_cell_fails_and_a_new_one_is_listed(tmp_path, ref, capsys):
    def rename(df):
        df.loc[3, "params"] = "cache~prefix"

    assert run("--summary", summary(tmp_path / "now.csv", rename), "--reference", ref) == 1
    out = capsys.readouterr().out
    assert "in the reference, not in this run" in out and "not in the reference" in out


@pytest.mark.parametrize("speed", [False, True])
def test_a_missing_ar_cell_fails_naming_the_ratios_it_anchors(tmp_path, ref, capsys, speed):
    def drop_ar(df):
        return df.drop(index=0)

    args = ["--ab", ab_file(tmp_path / "ab.json", ref)] if speed else []
    assert run("--summary", summary(tmp_path / "now.csv", drop_ar), "--reference", ref, *args) == 1
    out = capsys.readouterr().out
    assert f"regression(s): {AR}" in out and f"anchors {D2F} / ar" in out


def test_a_zero_reference_tps_fails_as_not_finite_and_the_json_stays_strict(tmp_path, capsys):
    def zero_ar(df):
        df.loc[0, "tps"] = 0.0

    ref = summary(tmp_path / "ref.csv", zero_ar)
    out_json = tmp_path / "benchmark.json"
    assert run("--summary", summary(tmp_path / "now.csv", zero_ar), "--reference", ref, "--json", str(out_json)) == 1
    assert "inf is not a finite number" in capsys.readouterr().out
    entries = json.loads(out_json.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in benchmark.json"))
    unset = [e for e in entries if e["value"] is None]
    assert unset and all("not a finite number" in e["extra"] for e in unset)


def test_a_nan_paired_ratio_fails(tmp_path, ref, capsys):
    def speed_file(path, ratio):
        path.write_text(json.dumps({"benchmark": "tiny-gsm", "ratios": [
            {"num": D2F, "den": AR, "ratio": ratio, "ci": [ratio, ratio]}]}))
        return str(path)

    speed_file(tmp_path / "ref.speed.json", 2.0)
    now = speed_file(tmp_path / "now.json", math.nan)
    assert run("--summary", summary(tmp_path / "now.csv"), "--reference", ref, "--speed", now) == 1
    assert "nan is not a finite number" in capsys.readouterr().out


def test_paired_comparison_uses_per_problem_results(tmp_path, ref):
    """A drop within the CI still fails when the paired test says it is beyond noise."""
    cell = tmp_path / "cell"
    cell.mkdir()
    ids = [f"p{i}" for i in range(200)]
    (cell / "samples.jsonl").write_text("".join(f'{{"id": "{i}", "correct": {str(k >= 20).lower()}}}\n'
                                                for k, i in enumerate(ids)))  # 20 right answers lost, none gained
    ref_samples = tmp_path / "ref.samples.jsonl"
    key = "tiny-dream-d2f/tiny-gsm/d2f/tau_add~0.1"
    ref_samples.write_text("".join(f'{{"cell": "{key}", "id": "{i}", "correct": true}}\n' for i in ids))

    def drop(df):
        df["cell_dir"] = None
        df.loc[2, ["cell_dir", "score"]] = [str(cell), 0.53]  # 0.58 -> 0.53: inside the reference CI

    assert run("--summary", summary(tmp_path / "now.csv", drop), "--reference", ref) == 1


def _edited(tmp_path, edit) -> str:
    """A summary.csv damaged the way a kill or a hand edit damages it: header only, truncated, non-numeric."""
    path = tmp_path / "now.csv"
    path.write_text(edit(open(summary(path)).read()))
    return str(path)


@pytest.mark.parametrize("make,message", [
    (lambda p: str(p / "absent.csv"), "absent.csv: file not found"),
    (lambda p: (p / "bad.csv").write_text("model,benchmark\nx,y\n") and str(p / "bad.csv"), "missing column"),
    (lambda p: _edited(p, lambda text: text.splitlines()[0] + "\n"), "a header and no cells"),
    (lambda p: _edited(p, lambda text: text[: text.rindex(",ok,") + 4]), "not a number for the ok cell"),
    (lambda p: _edited(p, lambda text: text[: text.rindex(",ok,")]), "status must be ok or failed"),
    (lambda p: _edited(p, lambda text: text.replace(",400.0,", ",fast,")), "column 'tps' is not a number"),
    (lambda p: _edited(p, lambda text: text[: len(text) // 2]), "now.csv"),
])
def test_unusable_input_exits_2_naming_it(tmp_path, ref, capsys, make, message):
    assert run("--summary", make(tmp_path), "--reference", ref) == 2
    assert message in capsys.readouterr().err


def test_no_common_cells_exits_2(tmp_path, ref, capsys):
    def rename(df):
        df["model"] = "other"

    assert run("--summary", summary(tmp_path / "now.csv", rename), "--reference", ref) == 2
    assert "no cell is in both" in capsys.readouterr().err


def test_update_writes_the_reference_with_the_commit_that_decoded_it(tmp_path):
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    changed = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "d2f_core", "baselines"]).returncode
    now = summary(tmp_path / "now.csv", lambda df: df.insert(0, "git_sha", head))
    target = tmp_path / "reference" / "ci.csv"
    if changed:  # uncommitted decoder changes here: the reference cannot name the code that made it
        with pytest.raises(SystemExit):
            main(["regress", "--summary", now, "--reference", str(target), "--update"])
        return
    main(["regress", "--summary", now, "--reference", str(target), "--update"])
    assert json.loads(target.with_suffix(".meta.json").read_text())["commit"] == head
    assert run("--summary", now, "--reference", str(target)) == 0


def test_update_refuses_a_run_decoded_at_two_commits(tmp_path, capsys):
    now = summary(tmp_path / "now.csv", lambda df: df.insert(0, "git_sha", ["a" * 40, "b" * 40] * 2))
    assert run("--summary", now, "--reference", str(tmp_path / "ci.csv"), "--update") == 2
    assert "cells decoded at 2 commits" in capsys.readouterr().err
