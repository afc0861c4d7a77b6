"""lm-eval plumbing offline: prompts from task definitions over local copies of the real data, and a tiny model
evaluated end to end through the registered `d2f` lm-eval model."""

from __future__ import annotations

import pytest
from lm_eval.api.model import LM

from conftest import SHARED_DATA

GSM8K = {"train": str(SHARED_DATA / "gsm8k_train.jsonl"), "test": str(SHARED_DATA / "gsm8k_test.jsonl")}
needs_data = pytest.mark.skipif(not (SHARED_DATA / "gsm8k_test.jsonl").exists(), reason="real data not available")


@pytest.fixture(scope="module")
def datasets_cache(tmp_path_factory):
    """One datasets cache for the module: each test converting the same jsonl files to Arrow again cost seconds."""
    return tmp_path_factory.mktemp("datasets")


@pytest.fixture(autouse=True)
def offline(monkeypatch, datasets_cache):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(datasets_cache))


@needs_data
def test_prompts_follow_the_task_definition():
    from d2f_core.bench.prompts import build_rows

    rows = build_rows("gsm8k", 4, GSM8K, limit=2)
    assert len(rows) == 2 and rows[0]["stop"][0] == "Question:"
    assert rows[0]["context"].count("Question:") == 5 and rows[0]["context"].endswith("\nAnswer:")
    turns = rows[0]["messages"]  # the 4 exemplars as user/assistant turns, then the question
    assert [t["role"] for t in turns][-3:] == ["user", "assistant", "user"] and len(turns) == 9
    mbpp = build_rows("mbpp", 3, {"test": str(SHARED_DATA / "mbpp.jsonl")}, limit=2, docs=(10, 510))
    assert mbpp[0]["doc"]["task_id"] == 11 and mbpp[0]["context"].count("[BEGIN]") == 4
    assert build_rows("humaneval", 0, {"test": str(SHARED_DATA / "HumanEval.jsonl.gz")}, limit=1,
                      until=False)[0]["stop"] == []


def test_missing_local_data_names_the_file(tmp_path):
    from d2f_core.bench.prompts import load_tasks

    with pytest.raises(FileNotFoundError, match="gsm8k: data file.*nope.jsonl"):
        load_tasks("gsm8k", {"test": str(tmp_path / "nope.jsonl")})


@needs_data
def test_lm_eval_runs_a_tiny_model_through_the_registered_model(model_dirs):
    import lm_eval

    from d2f_core.bench.lm_eval_model import D2FLM
    from d2f_core.bench.prompts import load_tasks

    lm = D2FLM(model=str(model_dirs["dream"]), decoder="d2f",
               params="block_size~8,tau_act~0.9,tau_add~0.5,tau_conf~0.9", max_new_tokens=16)
    tasks = list(load_tasks("gsm8k", GSM8K).values())
    out = lm_eval.simple_evaluate(model=lm, tasks=tasks, num_fewshot=1, limit=3, log_samples=True)
    metrics = out["results"]["gsm8k"]
    assert "exact_match,strict-match" in metrics and "exact_match,flexible-extract" in metrics
    assert {s["doc_id"] for s in out["samples"]["gsm8k"]} == {0, 1, 2}
    assert [s["id"] for s in lm.samples] == ["gsm8k/0", "gsm8k/1", "gsm8k/2"]
    assert all(s["tokens"] <= 16 and s["latency"] > 0 and s["forwards"] >= 1 for s in lm.samples)
    assert all("Question:" not in s["output"] for s in lm.samples), "outputs are cut at the stop sequences"


class RecordingLM(LM):
    """An lm-eval model that answers nothing and records what lm-eval sends it: the context of every request."""

    def __init__(self):
        super().__init__()
        self.contexts = {}

    def generate_until(self, requests, disable_tqdm=False):
        self.contexts |= {f"{r.task_name}/{r.doc_id}": r.args[0] for r in requests}
        return [""] * len(requests)

    def loglikelihood(self, requests, disable_tqdm=False):
        raise NotImplementedError

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        raise NotImplementedError


class NoCodeEval:
    """Stands in for HF `code_eval`, which lm-eval's own HumanEval/MBPP modules load (and run) at import; nothing here
    executes code: the test compares prompts only."""

    def compute(self, **_):
        return {"pass@1": 0.0}, {}


# benchmark -> (lm-eval's own task, shots, local data, documents); our humaneval and mbpp tasks are project copies
OWN_TASKS = {
    "gsm8k": ("gsm8k", 4, GSM8K, None),
    "gsm8k_cot": ("gsm8k_cot", 8, GSM8K, None),
    "minerva_math500": ("minerva_math500", 4, {"test": str(SHARED_DATA / "math500_test.jsonl")}, None),
    "humaneval": ("humaneval", 0, {"test": str(SHARED_DATA / "HumanEval.jsonl.gz")}, None),
    "mbpp": ("mbpp", 3, {"test": str(SHARED_DATA / "mbpp.jsonl")}, (10, 13)),
}


@needs_data
@pytest.mark.parametrize("name", OWN_TASKS)
def test_rendered_prompts_are_what_lm_eval_itself_sends(name, monkeypatch):
    """The context in our test file equals the one lm-eval's own task (not our copy) hands a model, document by
    document, with the same shots."""
    import evaluate
    import lm_eval

    from d2f_core.bench.benchmarks import get_benchmark
    from d2f_core.bench.prompts import build_rows, load_tasks

    monkeypatch.setattr(evaluate, "load", lambda *a, **k: NoCodeEval())
    task, shots, files, docs = OWN_TASKS[name]
    ours = build_rows(name, shots, files, limit=3, docs=docs)
    model = RecordingLM()
    lm_eval.simple_evaluate(model=model, tasks=list(load_tasks(name, files, task=task).values()),
                            num_fewshot=shots, limit=None if docs else 3,
                            samples={task: list(range(*docs))} if docs else None, confirm_run_unsafe_code=True)
    assert len(ours) == len(model.contexts) == 3
    for row in ours:
        theirs = model.contexts[row["id"].replace(get_benchmark(name).task, task, 1)]
        assert row["context"] == theirs, row["id"]
        assert all(turn["content"].strip() in theirs for turn in row["messages"]), "chat turns: the same exemplars"
