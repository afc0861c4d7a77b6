"""Turn a model's answer into the program that is run: the paper's post-processing of code completions.

Without it, chat-style answers score near zero on HumanEval (D2F issue #6): take the fenced code block if there is
one, prepend the prompt for HumanEval (the model completes a function body), then keep the longest prefix that
parses and defines the entry point, so trailing prose or a truncated last line does not fail a correct function.
"""

from __future__ import annotations

import ast
import re
import warnings

FENCE = re.compile(r"```(?:python|py|Python)?[ \t]*\n(.*?)(?:```|\Z)", re.S)
CALLED = re.compile(r"assert\s+(?:not\s+)?\(?\s*(?:math\.isclose\()?\s*(?:set\()?\s*([A-Za-z_]\w*)\s*\(")


def extract_code(text: str) -> str:
    match = FENCE.search(text)
    return match.group(1) if match else text


def defines(tree: ast.Module, name: str) -> bool:
    return any(isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name
               for node in tree.body)


def longest_valid_program(code: str, entry_point: str | None) -> str:
    """The longest line prefix that is valid Python and defines `entry_point` (if given); else the code as is."""
    lines = code.rstrip().splitlines()
    for n in range(len(lines), 0, -1):
        candidate = "\n".join(lines[:n])
        try:
            with warnings.catch_warnings():  # invalid escapes in generated code are the program's problem
                warnings.simplefilter("ignore", (SyntaxWarning, DeprecationWarning))
                tree = ast.parse(candidate)
        except (SyntaxError, ValueError, RecursionError, MemoryError):  # null bytes, nesting past the parser's depth
            continue
        if entry_point is None or defines(tree, entry_point):
            return candidate.rstrip()
    return code


def humaneval_program(prompt: str, completion: str, entry_point: str) -> str:
    return longest_valid_program(prompt + extract_code(completion), entry_point)


def mbpp_program(completion: str, tests: list[str]) -> str:
    """The entry point is the function the first assert calls."""
    match = CALLED.search(tests[0]) if tests else None
    return longest_valid_program(extract_code(completion.split("[DONE]")[0]), match.group(1) if match else None)
