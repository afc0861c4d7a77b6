"""The CI regression gate on hand-made summaries: score drops, machine speed, ratio drops, failures, bad input."""

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
    if edit:
        edit(df)
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


def test_d2f_halved_with_vanilla_unchanged_fails(tmp_path, ref, capsys):
    def halve(df):
        df.loc[2, "tps"] /= 2

    assert run("--summary", summary(tmp_path / "now.csv", halve), "--reference", ref) == 1
    assert "TPS / vanilla TPS" in capsys.readouterr().out


def test_failed_cell_fails(tmp_path, ref):
    def fail(df):
        df.loc[3, "status"] = "failed"

    assert run("--summary", summary(tmp_path / "now.csv", fail), "--reference", ref) == 1


def test_missing_and_new_cells_are_listed(tmp_path, ref, capsys):
    def rename(df):
        df.loc[3, "params"] = "cache~prefix"

    assert run("--summary", summary(tmp_path / "now.csv", rename), "--reference", ref) == 0
    out = capsys.readouterr().out
    assert "missing" in out and "new" in out


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


def test_update_writes_the_reference(tmp_path):
    now = summary(tmp_path / "now.csv")
    target = tmp_path / "reference" / "ci.csv"
    main(["regress", "--summary", now, "--reference", str(target), "--update"])
    assert target.exists()
    assert run("--summary", now, "--reference", str(target)) == 0
