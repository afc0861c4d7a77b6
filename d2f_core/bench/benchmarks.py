"""The benchmark registry: prompt format, stop strings, data location and scorer, one entry per benchmark.

Synthetic benchmarks (the tiny profile) carry their prompt template; real ones name an lm-eval task, which supplies
documents, few-shot prompts and stop sequences (`prompts.py` writes them into the test file). Scorers are ours and
follow the paper's conventions: GSM8K exact match under both lm-eval filters (`strict-match`, `flexible-extract` on
the last number), MATH by mathematical equivalence (math-verify), and pass@1 of code post-processed as the paper
does and run against its tests in the sandbox, never in this process.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from d2f_core.bench.code_post import humaneval_program, mbpp_program
from d2f_core.bench.sandbox import Limits, run_untrusted

STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
STRICT_COT = re.compile(r"The answer is (\-?[0-9\.\,]+).")  # lm-eval gsm8k_cot's strict-match
FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")


def normalise_number(s: str) -> str:
    s = s.strip().rstrip(".").replace(",", "").replace("$", "")
    try:
        f = float(s)
    except ValueError:
        return s
    return str(int(f)) if f.is_integer() else str(f)


def extract_strict(text: str, pattern: re.Pattern = STRICT) -> str | None:
    m = pattern.search(text)
    return normalise_number(m.group(1)) if m else None


def extract_flexible(text: str) -> str | None:
    hits = FLEXIBLE.findall(text)
    if not hits:
        return None
    return normalise_number(next(g for g in hits[-1] if g))


def gsm_target(row: dict) -> str:
    """Synthetic rows carry `target`; GSM8K documents end their `answer` with `#### N`."""
    return normalise_number(row["target"] if "target" in row else row["doc"]["answer"].split("####")[-1])


def gsm_scorer(strict: re.Pattern):
    def score(row: dict, output: str, sandbox: str = "bwrap") -> dict:
        target = gsm_target(row)
        return {"correct": extract_strict(output, strict) == target,
                "correct_flexible": extract_flexible(output) == target}

    return score


def math_equivalent(gold: str, output: str) -> bool:
    """math-verify: the output's final answer (boxed first, else the last expression) equals the gold answer."""
    from math_verify import parse, verify

    return bool(verify(parse(f"${gold}$"), parse(output)))


def score_math(row: dict, output: str, sandbox: str = "bwrap") -> dict:
    return {"correct": math_equivalent(row["doc"]["answer"], output)}


# The real sets' reference solutions need up to ~6 CPU-seconds here (MBPP 123); the tiny ones, milliseconds.
REAL_CODE_LIMITS = Limits(wall_s=30, cpu_s=15, memory_mb=1024)


def _sandboxed(program: str, sandbox: str, limits: Limits = Limits()) -> dict:
    outcome = run_untrusted(program, limits, sandbox)
    return {"correct": outcome.passed, "sandbox": outcome.status, "sandbox_detail": outcome.detail}


def score_code(row: dict, output: str, sandbox: str = "bwrap") -> dict:
    return _sandboxed(output.strip() + "\n\n" + "\n".join(row["tests"]) + "\n", sandbox)


def score_humaneval(row: dict, output: str, sandbox: str = "bwrap") -> dict:
    doc = row["doc"]
    program = humaneval_program(doc["prompt"], output, doc["entry_point"])
    return _sandboxed(f"{program}\n\n{doc['test']}\ncheck({doc['entry_point']})\n", sandbox, REAL_CODE_LIMITS)


def score_mbpp(row: dict, output: str, sandbox: str = "bwrap") -> dict:
    """Program, then the task's setup code (objects the asserts use, built from the program's classes), then asserts."""
    doc = row["doc"]
    setup = doc.get("test_setup_code", "")
    program = f"{mbpp_program(output, doc['test_list'])}\n\n{setup}\n" + "\n".join(doc["test_list"]) + "\n"
    return _sandboxed(program, sandbox, REAL_CODE_LIMITS)


@dataclass(frozen=True)
class Benchmark:
    name: str
    score: Callable[..., dict]  # (row, output, sandbox) -> {"correct": bool, ...}; the score is the mean of "correct"
    metric: str
    template: str = ""  # synthetic: the prompt, formatted with the row
    stop: tuple[str, ...] = ()  # synthetic: stop strings
    task: str | None = None  # real: the lm-eval task whose prompts and stop sequences the test file holds

    @property
    def runs_code(self) -> bool:
        """Scored by running the answer (in the sandbox)."""
        return self.score in (score_code, score_humaneval, score_mbpp)

    @property
    def sandbox_limits(self) -> Limits | None:
        """What each sandboxed program of this benchmark may use (recorded in every summary.json)."""
        return REAL_CODE_LIMITS if self.score in (score_humaneval, score_mbpp) else Limits() if self.runs_code else None

    @property
    def synthetic(self) -> bool:
        return self.task is None

    def prompt(self, row: dict) -> str:
        return self.template.format(**row) if self.synthetic else row["context"]

    def stops(self, row: dict) -> list[str]:
        return list(self.stop if self.synthetic else row["stop"])

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
        Benchmark("tiny-gsm", gsm_scorer(STRICT), "exact_match", "Question: {question}\nAnswer:", ("Question:", "\n")),
        Benchmark("tiny-code", score_code, "pass@1", "Task: {question}\nCode:", ("Task:", "\n")),
        Benchmark("gsm8k", gsm_scorer(STRICT), "exact_match", task="gsm8k"),  # LLaDA: 4-shot
        Benchmark("gsm8k_cot", gsm_scorer(STRICT_COT), "exact_match", task="gsm8k_cot"),  # Dream: 8-shot CoT
        Benchmark("minerva_math", score_math, "math_verify", task="minerva_math"),
        Benchmark("minerva_math500", score_math, "math_verify", task="minerva_math500"),
        Benchmark("humaneval", score_humaneval, "pass@1", task="d2f_humaneval"),
        Benchmark("mbpp", score_mbpp, "pass@1", task="d2f_mbpp"),
    )
}
SYNTHETIC = [name for name, b in BENCHMARKS.items() if b.synthetic]


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; valid: {', '.join(sorted(BENCHMARKS))}")
    return BENCHMARKS[name]
