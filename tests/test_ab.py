"""The gate's A/B step through real worker processes and a real git worktree of a reference commit.

The reference commits here are made in a throwaway repository from this checkout's own code (so the A/A case is
exact whatever is uncommitted in the checkout), then edited the way a real change would edit them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from d2f_core.bench.ab import REPO, ReferenceUnrunnable, run_ab
from d2f_core.bench.paired import Arm

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]


def reference_repo(root: Path, edit=None) -> tuple[Path, str]:
    """A git repository holding this checkout's decoding code (edited by `edit`), and its one commit."""
    root.mkdir()
    for package in ("d2f_core", "baselines"):
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    if edit:
        edit(root)
    subprocess.run([*GIT, "init", "-q", str(root)], check=True)
    subprocess.run([*GIT, "-C", str(root), "add", "."], check=True)
    subprocess.run([*GIT, "-C", str(root), "commit", "-q", "-m", "reference"], check=True)
    sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    return root, sha.strip()


def reference_csv(tmp_path: Path, commit: str, arms: list[Arm]) -> Path:
    path = tmp_path / "reference" / "ci.csv"
    path.parent.mkdir()
    pd.DataFrame([dict(zip(("model", "benchmark", "decoder", "params"), a.cell.split("/"))) for a in arms]
                 ).to_csv(path, index=False)
    path.with_suffix(".meta.json").write_text(json.dumps({"commit": commit}))
    return path


@pytest.fixture
def arms(model_dirs):
    return [Arm("ar/tiny-gsm/ar/default", str(model_dirs["ar"]), "ar", 8),
            Arm("llada/tiny-gsm/vanilla/x", str(model_dirs["llada"]), "vanilla", 8, {"block_size": "8"}),
            Arm("dream/tiny-gsm/d2f/x", str(model_dirs["dream"]), "d2f", 8, {"block_size": "4"})]


def ab(tmp_path, arms, data_dir, edit=None, limit=3, **kwargs):
    repo, sha = reference_repo(tmp_path / "repo", edit)
    csv = reference_csv(tmp_path, sha, kwargs.pop("known", arms))
    out = tmp_path / "ab" / "tiny-gsm.json"
    return run_ab(arms, "tiny-gsm", str(data_dir), str(csv), str(out), limit=limit, repo=repo), out


def test_the_same_code_on_both_arms_agrees_exactly_interleaved(tmp_path, arms, data_dir):
    s, out = ab(tmp_path, arms, data_dir)
    assert set(s["cells"]) == {a.cell for a in arms} and s["new"] == []
    for c in s["cells"].values():
        assert c["forwards_differ"] == [] and c["answers_differ"] == [] and c["score_change"] == 0
        assert c["problems"] == 3 and c["ci"][0] <= c["ratio"] <= c["ci"][1]
    records = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert len(records) == 3 * 2 * len(arms)  # every (arm, cell) on every problem, once
    orders = {}
    for r in sorted(records, key=lambda r: r["position"]):
        orders.setdefault(r["problem"], []).append((r["side"], r["cell"]))
    assert len({tuple(o) for o in orders.values()}) > 1, "the order is reshuffled between problems"
    assert not subprocess.run(["git", "-C", str(tmp_path / "repo"), "worktree", "list"], capture_output=True,
                              text=True).stdout.count("\n") > 1, "the worktree is removed afterwards"


def test_a_changed_forward_count_is_reported_for_that_cell_only_and_new_cells_are_not_run(tmp_path, arms, data_dir):
    def one_more_forward(root):  # the reference's AR counted one forward fewer than today's
        path = root / "baselines" / "ar.py"
        text = path.read_text()
        assert "self.finish(outs[r], stops[r], k," in text
        path.write_text(text.replace("self.finish(outs[r], stops[r], k,", "self.finish(outs[r], stops[r], k - 1,", 1))

    s, _ = ab(tmp_path, arms, data_dir, one_more_forward, known=arms[:2])
    assert s["new"] == [arms[2].cell], "a cell the reference does not list is reported, not run"
    differ = {cell: c["forwards_differ"] for cell, c in s["cells"].items()}
    assert len(differ.pop("ar/tiny-gsm/ar/default")) == 3
    assert differ == {arms[1].cell: []}


def test_a_reference_that_cannot_decode_fails_with_the_regenerate_command(tmp_path, arms, data_dir):
    def remove_d2f(root):  # as if the reference commit had no D2F decoder
        (root / "d2f_core" / "decode" / "d2f.py").unlink()

    with pytest.raises(ReferenceUnrunnable) as e:
        ab(tmp_path, arms, data_dir, remove_d2f)
    assert "cannot decode" in str(e.value) and "d2f regress --update" in str(e.value)


def test_a_commit_missing_from_the_history_fails_saying_what_to_do(tmp_path, arms, data_dir):
    repo, _ = reference_repo(tmp_path / "repo")
    csv = reference_csv(tmp_path, "0" * 40, arms)
    with pytest.raises(ReferenceUnrunnable) as e:
        run_ab(arms, "tiny-gsm", str(data_dir), str(csv), str(tmp_path / "ab.json"), limit=2, repo=repo)
    assert "is not in the repository" in str(e.value) and "git fetch --unshallow" in str(e.value)
