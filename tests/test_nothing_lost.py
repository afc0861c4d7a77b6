"""Nothing lost, round two, through the real commands: one writer per decode job, canonical cells, and a full or
read-only results disk named with its fix (exit 2, nothing half-written, a rerun after the fix completes)."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from d2f_core.bench.benchmarks import get_benchmark
from d2f_core.bench.io import rewrite_jsonl
from d2f_core.config import expand_cells
from d2f_core.train.corpora import make_split

REPO = Path(__file__).resolve().parents[1]
CELL = "vanilla/block_size~8,steps~16"


def d2f(*args, **kwargs) -> subprocess.Popen | subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "d2f_core.cli", *map(str, args)]
    if kwargs.pop("background", False):
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> Path:
    """A tiny-gsm test file of 60 problems: a decode of it lasts long enough to be caught mid-way."""
    data = tmp_path_factory.mktemp("many")
    _, test = make_split("tiny-gsm", 10, 60, seed=1)
    rewrite_jsonl(get_benchmark("tiny-gsm").test_file(data), test)
    return data


def decode(model_dirs, data, out, background=False, limit=None):
    args = ["decode", "--model", model_dirs["llada"], "--benchmark", "tiny-gsm", "--data", data, "--cells", CELL,
            "--max-new-tokens", 16, "--warmup", 0, "--threads", 1, "--out", out]
    return d2f(*args, *(["--limit", limit] if limit else []), background=background)


def wait_for_rows(path: Path, proc: subprocess.Popen, n: int = 2) -> None:
    deadline = time.monotonic() + 120
    while not (path.exists() and path.read_text().count("\n") >= n):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the decode wrote no rows"
        time.sleep(0.05)


def test_a_second_decode_of_the_same_job_stops_naming_the_first(model_dirs, many, tmp_path):
    out = tmp_path / "job"
    first = decode(model_dirs, many, out, background=True)
    partial = out / CELL / "generations.partial.jsonl"
    wait_for_rows(partial, first)
    os.kill(first.pid, signal.SIGSTOP)  # mid-job, holding its lock
    try:
        second = decode(model_dirs, many, out)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert second.returncode == 2
    assert f"{out}: another d2f decode (pid {first.pid}) is writing this job" in second.stderr
    assert first.wait(timeout=300) == 0, first.communicate()
    ids = [json.loads(line)["id"] for line in (out / CELL / "generations.jsonl").read_text().splitlines()]
    assert len(ids) == 60 == len(set(ids)), "every problem once"


def test_a_killed_decode_leaves_no_lock_that_blocks_the_rerun(model_dirs, many, tmp_path):
    out = tmp_path / "job"
    killed = decode(model_dirs, many, out, background=True)
    wait_for_rows(out / CELL / "generations.partial.jsonl", killed)
    killed.kill()
    killed.wait()
    rerun = decode(model_dirs, many, out)
    assert rerun.returncode == 0, rerun.stderr
    meter = json.loads((out / CELL / "meter.json").read_text())
    assert meter["status"] == "ok" and meter["resumed_from"] >= 2


def config(name="ci"):
    return yaml.safe_load((REPO / f"workflow/config/{name}.yaml").read_text())


def check_config(tmp_path, cfg) -> subprocess.CompletedProcess:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return d2f("check-config", path)


def test_an_integer_parameter_written_as_a_float_names_the_same_cell():
    cfg = config()
    written = copy.deepcopy(cfg)
    written["cells"][1]["params"]["block_size"] = 8.0
    written["cells"][1]["params"]["steps"] = 32.0
    assert expand_cells(written) == expand_cells(cfg)
    assert "tiny-llada/tiny-gsm/vanilla/block_size~8,remasking~low_confidence,steps~32" in [
        c.key for c in expand_cells(written)]


def test_a_fractional_integer_parameter_and_a_duplicate_cell_fail_at_parse_time(tmp_path):
    cfg = config()
    cfg["cells"][1]["params"]["block_size"] = 8.5
    proc = check_config(tmp_path, cfg)
    assert proc.returncode == 1 and "vanilla.block_size: cannot read 8.5 as int" in proc.stderr
    cfg = config()
    cfg["cells"].append({**cfg["cells"][5], "params": {**cfg["cells"][5]["params"], "block_size": 8.0}})
    proc = check_config(tmp_path, cfg)
    assert proc.returncode == 1
    assert re.search(rf"cells\[{len(cfg['cells']) - 1}\] repeats the cell tiny-llada-d2f/tiny-(gsm|code)/d2f/"
                     r"block_size~8,tau_act~0\.95,tau_add~0\.7,tau_conf~0\.9 of cells\[5\]", proc.stderr), proc.stderr


def test_snakemake_refuses_a_duplicate_cell_when_it_parses_the_dag(tmp_path):
    cfg = config()
    cfg["cells"].append(copy.deepcopy(cfg["cells"][0]))
    path = tmp_path / "dup.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert re.search(rf"cells\[{len(cfg['cells']) - 1}\] repeats the cell tiny-ar/tiny-(gsm|code)/ar/default of "
                     r"cells\[0\]", proc.stdout + proc.stderr)


def can_mount() -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    probe = Path(f"/tmp/d2f-mount-probe-{os.getpid()}")
    probe.mkdir(exist_ok=True)
    try:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)], capture_output=True)
        return ok.returncode == 0 and subprocess.run(["umount", str(probe)]).returncode == 0
    finally:
        probe.rmdir()


needs_mount = pytest.mark.skipif(not can_mount(), reason="needs root and mount (a tmpfs and a read-only bind)")


@pytest.fixture
def disk(tmp_path):
    """A 4 MiB tmpfs for results, and `fill()` to leave it without a free byte."""
    root = tmp_path / "disk"
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(root)], check=True)
    filler = root / "filler"

    def fill():
        with open(filler, "wb", buffering=0) as f:
            try:
                while f.write(b"x" * 4096):
                    pass
            except OSError:
                pass

    yield root, fill, filler
    subprocess.run(["umount", "-l", str(root)], check=True)


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The command's one error line (progress bars may precede it on stderr)."""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and proc.stderr.strip().endswith(errors[0]) and "Traceback" not in proc.stderr, proc.stderr
    return errors[0]


def half_written(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.name.endswith(".tmp")]


@needs_mount
def test_a_full_disk_stops_decode_score_and_aggregate_with_the_fix_and_a_rerun_completes(model_dirs, data_dir,
                                                                                         disk):
    root, fill, filler = disk
    out, cell = root / "job", root / "job" / CELL
    fill()
    proc = decode(model_dirs, data_dir, out, limit=4)
    assert proc.returncode == 2 and "No space left on device; free space" in error_line(proc)
    assert str(root) in error_line(proc) and not half_written(root)
    filler.unlink()
    assert decode(model_dirs, data_dir, out, limit=4).returncode == 0
    assert json.loads((cell / "meter.json").read_text())["status"] == "ok"

    score = ["score", "--cell", cell, "--data", data_dir, "--profile", "t", "--model-name", "llada"]
    fill()
    proc = d2f(*score)
    assert proc.returncode == 2 and f"{cell}/samples.jsonl: No space left" in error_line(proc)
    assert not (cell / "summary.json").exists() and not half_written(root)
    filler.unlink()
    assert d2f(*score).returncode == 0
    fill()
    proc = d2f("aggregate", "--out", root / "summary.csv", cell / "summary.json")
    assert proc.returncode == 2 and f"{root}/summary.csv: No space left" in error_line(proc)
    assert not (root / "summary.csv").exists()
    filler.unlink()
    assert d2f("aggregate", "--out", root / "summary.csv", cell / "summary.json").returncode == 0


@needs_mount
def test_a_read_only_results_dir_stops_score_and_aggregate_with_the_fix(model_dirs, data_dir, tmp_path):
    src, ro = tmp_path / "results", tmp_path / "read-only"
    score = ["score", "--data", data_dir, "--profile", "t", "--model-name", "llada", "--cell"]
    assert decode(model_dirs, data_dir, src / "job", limit=2).returncode == 0
    assert d2f(*score, src / "job" / CELL).returncode == 0
    ro.mkdir()
    subprocess.run(["mount", "--bind", str(src), str(ro)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)
        cell = ro / "job" / CELL
        proc = d2f(*score, cell)
        assert proc.returncode == 2
        assert f"{cell}/samples.jsonl: Read-only file system; the file system is read-only" in error_line(proc)
        proc = d2f("aggregate", "--out", ro / "summary.csv", cell / "summary.json")
        assert proc.returncode == 2 and f"{ro}/summary.csv: Read-only file system" in error_line(proc)
    finally:
        subprocess.run(["umount", str(ro)], check=True)
