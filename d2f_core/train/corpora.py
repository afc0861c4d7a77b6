"""Synthetic, seeded benchmarks for the tiny profile.

Calibrated (../shared/notes/calibration.md) so that a ~2M-parameter model learns them in minutes on two CPU cores while
keeping sequential dependencies: every step of a `tiny-gsm` answer reuses the previous step's result, and every
`tiny-code` body must agree token by token with numbers and operators stated in the spec. Parallel decoding that
commits dependent tokens together therefore visibly costs accuracy.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

NAMES = ["Ann", "Ben", "Cara", "Dan", "Eva", "Finn", "Gia", "Hugo", "Ivy", "Jack", "Kim", "Leo", "Mia", "Ned", "Oli",
         "Pam", "Quin", "Rosa", "Sam", "Tia"]
ITEMS = ["pens", "apples", "cards", "coins", "books", "shells", "stamps", "marbles", "cookies", "stickers", "toys",
         "rocks"]
FUNC_NAMES = ["f", "g", "h", "calc", "solve", "score", "value", "check", "step", "apply", "total", "pick"]
MAX_TOTAL = 20


def gsm_problem(rng: random.Random) -> dict:
    """A 2-3 step word problem over single-digit operands; the running total stays in 0..MAX_TOTAL."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    total = rng.randint(1, 9)
    clauses, steps = [f"{name} has {total} {item}"], []
    for _ in range(rng.randint(2, 3)):
        move = rng.choice([m for m in ("add", "sub", "double") if _allowed(m, total)])
        if move == "add":
            n = rng.randint(1, min(9, MAX_TOTAL - total))
            clauses.append(f"gets {n} more")
            steps.append(f"{total} + {n} = {total + n}.")
            total += n
        elif move == "sub":
            n = rng.randint(1, min(9, total))
            clauses.append(f"gives away {n}")
            steps.append(f"{total} - {n} = {total - n}.")
            total -= n
        else:
            clauses.append("doubles them")
            steps.append(f"{total} * 2 = {total * 2}.")
            total *= 2
    question = ", then ".join(clauses) + f". How many {item} now?"
    return {"question": question, "answer": " ".join(steps) + f" #### {total}", "target": str(total)}


def _allowed(move: str, total: int) -> bool:
    return {"add": total < MAX_TOTAL, "sub": total > 0, "double": 0 < total <= MAX_TOTAL // 2}[move]


# Each template: (spec in words, body, reference implementation, argument kind).
CODE_TEMPLATES = [
    ("returns x times {a} plus {b}", "x * {a} + {b}", lambda a, b, c: lambda x: x * a + b, "int"),
    ("returns x plus {a}, times {b}", "(x + {a}) * {b}", lambda a, b, c: lambda x: (x + a) * b, "int"),
    ("returns x minus {a}", "x - {a}", lambda a, b, c: lambda x: x - a, "int"),
    ("returns {a} if x is greater than {b}, else {c}", "{a} if x > {b} else {c}",
     lambda a, b, c: lambda x: a if x > b else c, "int"),
    ("returns {a} if x is less than {b}, else x", "{a} if x < {b} else x",
     lambda a, b, c: lambda x: a if x < b else x, "int"),
    ("returns the sum of the items of xs greater than {a}", "sum(v for v in xs if v > {a})",
     lambda a, b, c: lambda xs: sum(v for v in xs if v > a), "list"),
    ("returns the number of items of xs equal to {a}", "xs.count({a})",
     lambda a, b, c: lambda xs: xs.count(a), "list"),
    ("returns the largest item of xs plus {a}", "max(xs) + {a}", lambda a, b, c: lambda xs: max(xs) + a, "list"),
    ("returns the sum of the items of xs times {a}", "sum(xs) * {a}", lambda a, b, c: lambda xs: sum(xs) * a, "list"),
]


def code_problem(rng: random.Random) -> dict:
    """A one-line function from a spec in words, with three hidden asserts computed from a reference implementation."""
    spec, body, make_ref, kind = rng.choice(CODE_TEMPLATES)
    a, b, c = (rng.randint(1, 9) for _ in range(3))
    name = rng.choice(FUNC_NAMES)
    arg = "x" if kind == "int" else "xs"
    ref = make_ref(a, b, c)
    if kind == "int":
        inputs = [rng.randint(0, 12) for _ in range(3)]
        inputs[0], inputs[1] = b + 1 + rng.randint(0, 3), max(0, b - 1 - rng.randint(0, 3))  # both sides of a branch
    else:
        inputs = [[rng.randint(1, 9) for _ in range(rng.randint(2, 5))] + [a] for _ in range(3)]
    tests = [f"assert {name}({x!r}) == {ref(x)!r}" for x in inputs]
    return {
        "question": f"Write a function {name}({arg}) that {spec.format(a=a, b=b, c=c)}.",
        "answer": f"def {name}({arg}): return {body.format(a=a, b=b, c=c)}",
        "entry_point": name,
        "tests": tests,
    }


GENERATORS = {"tiny-gsm": gsm_problem, "tiny-code": code_problem}


def make_split(benchmark: str, n_train: int, n_test: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Test problems are unique and drawn first; train problems may repeat but never share a test question."""
    rng = random.Random(f"{benchmark}:{seed}")
    generate, test, held_out = GENERATORS[benchmark], [], set()
    for _ in range(100 * n_test):
        if len(test) == n_test:
            break
        row = generate(rng)
        if row["question"] not in held_out:
            held_out.add(row["question"])
            test.append({"id": f"{benchmark}/test/{len(test)}", **row})
    if len(test) < n_test:  # a training corpus alone (`train_data`) asks for no test problems
        raise ValueError(f"{benchmark}: only {len(test)} unique test problems; lower data.{benchmark}.test")
    train = []
    while len(train) < n_train:
        row = generate(rng)
        if row["question"] not in held_out:
            train.append({"id": f"{benchmark}/train/{len(train)}", **row})
    return train, test


def read_jsonl(path: Path) -> list[dict]:
    """Every row of a jsonl file; a bad line or an empty file is an error naming the file (and line)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; build it with `snakemake --cores all` or `d2f data`")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e}); regenerate it (`snakemake --cores all` or `d2f data`)") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {n}: not valid JSON ({e.msg} at column {e.colno}); fix or "
                                 f"regenerate the file") from None
    if not rows:
        raise ValueError(f"{path}: no rows; regenerate it (`snakemake --cores all`, `d2f data` or `d2f prompts`)")
    return rows
