"""Scorers, code post-processing and the sandbox on the real benchmarks (skipped where ../shared/data is absent)."""

from __future__ import annotations

import gzip
import json
import random
from concurrent.futures import ThreadPoolExecutor

import pytest

from d2f_core.bench.benchmarks import get_benchmark, math_equivalent
from d2f_core.bench.code_post import extract_code, humaneval_program, mbpp_program

from conftest import SHARED_DATA


def shared(name: str):
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real data {path} not available")
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rt") as f:
        return [json.loads(line) for line in f]


def score_all(benchmark: str, rows: list[dict], outputs: list[str]) -> list[dict]:
    score = get_benchmark(benchmark).score
    with ThreadPoolExecutor(4) as pool:  # each verdict is its own sandboxed subprocess
        return list(pool.map(score, rows, outputs))


@pytest.mark.parametrize("name", ["gsm8k", "gsm8k_cot"])
def test_gsm8k_reference_answers_extract_under_both_filters(name):
    rows = [{"doc": doc} for doc in shared("gsm8k_test.jsonl")]
    outputs = [doc["doc"]["answer"] for doc in rows]
    if name == "gsm8k_cot":  # the CoT format ends "The answer is N."
        outputs = [a.split("####")[0] + "The answer is " + a.split("#### ")[-1] + "." for a in outputs]
    verdicts = [get_benchmark(name).score(r, o) for r, o in zip(rows, outputs)]
    assert len(verdicts) == 1319
    assert all(v == {"correct": True, "correct_flexible": True} for v in verdicts)


def test_humaneval_canonical_solutions_pass_post_processing_and_sandbox():
    rows = [{"doc": doc} for doc in shared("HumanEval.jsonl.gz")]
    verdicts = score_all("humaneval", rows, [r["doc"]["canonical_solution"] for r in rows])
    failed = [r["doc"]["task_id"] for r, v in zip(rows, verdicts) if not v["correct"]]
    assert len(rows) == 164 and not failed


def test_humaneval_wrong_solutions_fail():
    rows = [{"doc": doc} for doc in shared("HumanEval.jsonl.gz")[:20]]
    verdicts = score_all("humaneval", rows, ["    return None\n"] * len(rows))
    assert not any(v["correct"] for v in verdicts)


def test_mbpp_reference_solutions_pass_their_asserts_in_the_sandbox():
    rows = [{"doc": doc} for doc in shared("mbpp.jsonl")]
    verdicts = score_all("mbpp", rows, [r["doc"]["code"] + "\n[DONE]" for r in rows])
    failed = [r["doc"]["task_id"] for r, v in zip(rows, verdicts) if not v["correct"]]
    assert len(rows) == 974 and not failed


def test_code_post_processing_takes_the_fence_and_drops_trailing_prose():
    answer = "Sure! Here it is:\n```python\ndef add(a, b):\n    return a + b\n```\nThis adds two numbers."
    assert extract_code(answer) == "def add(a, b):\n    return a + b\n"
    assert mbpp_program(answer, ["assert add(1, 2) == 3"]) == "def add(a, b):\n    return a + b"
    truncated = "    return a + b\n\nThe function returns the sum."
    assert humaneval_program("def add(a, b):\n", truncated, "add") == "def add(a, b):\n    return a + b"


def test_math500_equivalence_accepts_answers_and_rejects_shuffled_pairs():
    rows = shared("math500_test.jsonl")
    accepted = sum(math_equivalent(r["answer"], r["solution"]) for r in rows)
    rng = random.Random(0)
    pairs = []
    while len(pairs) < len(rows):
        a, b = rng.sample(rows, 2)
        if a["answer"].replace(" ", "") != b["answer"].replace(" ", ""):
            pairs.append((a["answer"], b["solution"]))
    rejected = sum(not math_equivalent(gold, solution) for gold, solution in pairs)
    print(f"MATH-500: accepted {accepted}/{len(rows)}, rejected {rejected}/{len(pairs)} shuffled pairs")
    assert accepted >= 0.99 * len(rows) and rejected >= 0.99 * len(pairs)
