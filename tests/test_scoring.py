"""Scorers on known right and wrong answers, and the sandbox against hostile code."""

import pytest

from d2f_core.bench.benchmarks import extract_flexible, extract_strict, get_benchmark, score_code
from d2f_core.bench.sandbox import Limits, run_untrusted


@pytest.mark.parametrize("output,strict,flexible", [
    (" 3 + 4 = 7. 7 * 2 = 14. #### 14", True, True),
    (" 3 + 4 = 7. 7 * 2 = 14. #### 15", False, False),
    (" 3 + 4 = 7. 7 * 2 = 14.", False, True),  # no '####': only the flexible filter finds 14
    (" #### 14 and then 15", True, False),
    (" #### 1,4", True, True),  # thousands separators are normalised
    ("", False, False),
])
def test_gsm_filters(output, strict, flexible):
    assert get_benchmark("tiny-gsm").score({"target": "14"}, output) == {"correct": strict, "correct_flexible": flexible}


def test_extractors():
    assert extract_strict("a #### -3") == "-3" and extract_flexible("x 12. y 7.") == "7"
    assert extract_strict("no answer") is None and extract_flexible("none") is None


def test_code_scorer_right_and_wrong():
    row = {"tests": ["assert f(2) == 7", "assert f(0) == 1", "assert f(5) == 16"]}
    assert score_code(row, " def f(x): return x * 3 + 1")["correct"]
    wrong = score_code(row, " def f(x): return x * 3 + 2")
    assert not wrong["correct"] and wrong["sandbox"] == "failed"
    assert score_code(row, " def f(x) return")["sandbox"] == "error"


def test_sandbox_kills_an_infinite_loop():
    out = run_untrusted("while True:\n    pass\n", Limits(wall_s=3, cpu_s=1))
    assert not out.passed and out.status == "timeout"


def test_sandbox_kills_a_sleeping_hang():
    out = run_untrusted("import time\ntime.sleep(60)\n", Limits(wall_s=1, cpu_s=1))
    assert not out.passed and out.status == "timeout"


def test_sandbox_stops_a_memory_bomb():
    out = run_untrusted("x = bytearray(8 * 1024**3)\n", Limits(memory_mb=256))
    assert not out.passed and "MemoryError" in out.detail


def test_sandbox_has_no_network_and_a_private_cwd():
    out = run_untrusted("import socket\nsocket.create_connection(('127.0.0.1', 9))\n")
    assert not out.passed
    out = run_untrusted("import os\nassert os.getcwd() == '/sandbox'\n"
                        "assert set(os.environ) <= {'PATH', 'HOME', 'PWD', 'LC_CTYPE'}, os.environ\n")
    assert out.passed, out.detail


def test_tiny_code_reference_answers_pass(data_dir):
    from d2f_core.train.corpora import read_jsonl

    bench = get_benchmark("tiny-code")
    for row in read_jsonl(bench.test_file(data_dir)):
        assert bench.score(row, bench.completion(row))["correct"], row


def test_tiny_gsm_reference_answers_pass(data_dir):
    from d2f_core.train.corpora import read_jsonl

    bench = get_benchmark("tiny-gsm")
    for row in read_jsonl(bench.test_file(data_dir)):
        assert bench.score(row, bench.completion(row)) == {"correct": True, "correct_flexible": True}
