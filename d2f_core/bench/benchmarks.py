"""The benchmark registry: prompt format, stop strings, data location and scorer, one entry per benchmark.

Scorers follow the paper's conventions: GSM8K-style exact match under both lm-eval filters (`strict-match` on
`#### N`, `flexible-extract` on the last number) and pass@1 of code run against hidden asserts in the sandbox.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from d2f_core.bench.sandbox import run_untrusted

STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")


def normalise_number(s: str) -> str:
    s = s.strip().rstrip(".").replace(",", "").replace("$", "")
    try:
        f = float(s)
    except ValueError:
        return s
    return str(int(f)) if f.is_integer() else str(f)


def extract_strict(text: str) -> str | None:
    m = STRICT.search(text)
    return normalise_number(m.group(1)) if m else None


def extract_flexible(text: str) -> str | None:
    hits = FLEXIBLE.findall(text)
    if not hits:
        return None
    return normalise_number(next(g for g in hits[-1] if g))


def score_gsm(row: dict, output: str) -> dict:
    target = normalise_number(row["target"])
    return {"correct": extract_strict(output) == target, "correct_flexible": extract_flexible(output) == target}


def score_code(row: dict, output: str) -> dict:
    outcome = run_untrusted(output.strip() + "\n\n" + "\n".join(row["tests"]) + "\n")
    return {"correct": outcome.passed, "sandbox": outcome.status, "sandbox_detail": outcome.detail}


@dataclass(frozen=True)
class Benchmark:
    name: str
    template: str  # the prompt, formatted with the row
    stop: tuple[str, ...]
    score: Callable[[dict, str], dict]  # -> {"correct": bool, ...}; the cell's score is the mean of "correct"
    metric: str

    def prompt(self, row: dict) -> str:
        return self.template.format(**row)

    @staticmethod
    def completion(row: dict) -> str:
        """The training target that follows the prompt."""
        return " " + row["answer"]

    def test_file(self, data_dir: str | Path) -> Path:
        return Path(data_dir) / f"{self.name}.test.jsonl"

    def train_file(self, data_dir: str | Path) -> Path:
        return Path(data_dir) / f"{self.name}.train.jsonl"


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("tiny-gsm", "Question: {question}\nAnswer:", ("Question:", "\n"), score_gsm, "exact_match"),
        Benchmark("tiny-code", "Task: {question}\nCode:", ("Task:", "\n"), score_code, "pass@1"),
    )
}


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; valid: {', '.join(sorted(BENCHMARKS))}")
    return BENCHMARKS[name]
