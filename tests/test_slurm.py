"""The workflow's slurm profile run for real: a slice of the ci profile (data, tokenizer, a trained model, a decode
job, its score, the aggregate) submitted with `sbatch` to a live one-node Slurm (tests/slurm_cluster.py), as a user
on a small CPU-only node runs it: the profile as shipped, its GPU, CPU-count and memory requests overridden on the
command line, `squeue` as the status command (no accounting database here)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from slurm_cluster import Unavailable, one_node_slurm

ROOT = Path(__file__).resolve().parents[1]
SLICE_RULES = ("data", "tokenizer", "train_model", "decode", "score", "aggregate")
TARGET = "results/ci/summary.csv"

plugin = pytest.importorskip("snakemake_executor_plugin_slurm", reason="pip install -e '.[slurm]'")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    try:
        with one_node_slurm(tmp_path_factory.mktemp("cluster")) as up:
            yield up
    except Unavailable as e:
        pytest.skip(f"no live Slurm on this host: {e}")
    left = subprocess.run(["pgrep", "-a", "-x", "munged|slurmctld|slurmd|slurmstepd"], capture_output=True, text=True)
    assert not left.stdout, f"daemons left running: {left.stdout}"


@pytest.fixture(scope="module")
def slice_config(tmp_path_factory) -> Path:
    """ci.yaml cut to one model and one cell on tiny-gsm, trained for fewer steps: every kind of job, minutes."""
    config = yaml.safe_load((ROOT / "workflow/config/ci.yaml").read_text())
    config["data"]["benchmarks"] = {"tiny-gsm": {**config["data"]["benchmarks"]["tiny-gsm"], "test": 30}}
    config["models"] = {"tiny-ar": config["models"]["tiny-ar"]}
    config["models"]["tiny-ar"]["train"]["steps"] = 150
    config.pop("adapters")
    config["cells"] = [{"model": "tiny-ar", "decoder": "ar"}]
    path = tmp_path_factory.mktemp("config") / "slice.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def snakemake(workdir: Path, config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", TARGET, "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
            "--configfile", str(config), *args]


def on_this_node(cpus: int) -> list[str]:
    """The shipped profile with what a CPU-only node of `cpus` cores can grant (README: 'On a cluster'): on the
    command line, `--set-resources` replaces the profile's entries of a rule, so decode restates its partition."""
    return ["--workflow-profile", str(ROOT / "workflow/profiles/slurm"),
            "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2",
            "--set-resources", "decode:slurm_partition=gpu", "decode:gpu=0", f"decode:cpus_per_task={cpus}",
            "decode:mem_mb=4000", f"train_model:cpus_per_task={cpus}", "train_model:mem_mb=4000",
            f"score:cpus_per_task={cpus}",
            "--set-threads", f"decode={cpus}", f"train_model={cpus}", f"score={cpus}"]


def jobs(run_id: str) -> list[dict]:
    out = subprocess.run(["squeue", "--states=all", "-h", "--name", run_id, "-o", "%i|%k|%T|%P"],
                         capture_output=True, text=True, check=True).stdout
    rows = [dict(zip(("id", "comment", "state", "partition"), line.split("|"))) for line in out.splitlines()]
    return [{**r, "rule": rule_of(r["comment"])} for r in rows]


def rule_of(comment: str) -> str:
    """The plugin's job comment is `rule_{name}` or `rule_{name}_wildcards_{values}`."""
    return comment.removeprefix("rule_").split("_wildcards_")[0]


def all_job_ids() -> set[str]:
    out = subprocess.run(["squeue", "--states=all", "-h", "-o", "%i"], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def cancel_first_training(cancelled: list[str], stop: threading.Event) -> None:
    """scancel the first train_model job a few seconds into its run, as an admin or a preemption would."""
    running_since = {}
    while not stop.is_set():
        out = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i|%k"], capture_output=True, text=True).stdout
        for job_id, comment in (line.split("|") for line in out.splitlines()):
            if comment.startswith("rule_train_model"):
                running_since.setdefault(job_id, time.monotonic())
                if time.monotonic() - running_since[job_id] > 5:
                    subprocess.run(["scancel", job_id], check=True)
                    cancelled.append(job_id)
                    return
        time.sleep(0.5)


@pytest.fixture(scope="module")
def slurm_run(cluster, slice_config, tmp_path_factory):
    """The slice through sbatch (one training job cancelled on the way), and the same target run locally beside it."""
    local, remote = tmp_path_factory.mktemp("local"), tmp_path_factory.mktemp("slurm")
    local_run = subprocess.Popen(snakemake(local, slice_config, "--cores", "all"), stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
    cancelled, stop = [], threading.Event()
    canceller = threading.Thread(target=cancel_first_training, args=(cancelled, stop))
    canceller.start()
    start = time.monotonic()
    try:
        done = subprocess.run(snakemake(remote, slice_config, *on_this_node(cluster.cpus)), capture_output=True,
                              text=True, timeout=1200)
    finally:
        stop.set()
        canceller.join()
        local_out = local_run.communicate(timeout=1200)[0]
    wall = time.monotonic() - start
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    assert local_run.returncode == 0, local_out[-3000:]
    run_id = log.split("SLURM run ID: ")[1].split()[0]
    print(f"slurm slice: {wall:.0f} s; jobs {[(j['id'], j['rule'], j['state']) for j in jobs(run_id)]}")
    return {"local": local, "remote": remote, "log": log, "run_id": run_id, "cancelled": cancelled}


def test_every_job_of_the_slice_went_through_sbatch_and_completed(slurm_run):
    ran = jobs(slurm_run["run_id"])
    completed = {j["rule"] for j in ran if j["state"] == "COMPLETED"}
    assert completed == set(SLICE_RULES), ran
    for j in ran:
        assert f"submitted with SLURM jobid {j['id']} " in slurm_run["log"]
        assert j["partition"] == ("gpu" if j["rule"] == "decode" else "cpu")
    assert "guess" not in slurm_run["log"].lower(), "no account is guessed"


def test_a_cancelled_job_is_reported_failed_and_rerun(slurm_run):
    assert slurm_run["cancelled"], "the training job was never seen running"
    job_id = slurm_run["cancelled"][0]
    assert f"SLURM-job '{job_id}' failed, SLURM status is: 'CANCELLED'" in slurm_run["log"]
    training = [j for j in jobs(slurm_run["run_id"]) if j["rule"] == "train_model"]
    assert [j["state"] for j in training] == ["CANCELLED", "COMPLETED"], training


def test_the_slurm_run_agrees_with_the_local_run(slurm_run, tmp_path):
    reference = tmp_path / "reference/ci.csv"
    local, remote = slurm_run["local"] / TARGET, slurm_run["remote"] / TARGET
    d2f = ["d2f", "regress"]
    made = subprocess.run([*d2f, "--summary", str(local), "--reference", str(reference), "--update"],
                          capture_output=True, text=True)
    assert made.returncode == 0, made.stdout + made.stderr
    gate = subprocess.run([*d2f, "--summary", str(remote), "--reference", str(reference)], capture_output=True,
                          text=True)
    assert gate.returncode == 0 and "no regression" in gate.stdout, gate.stdout + gate.stderr


def test_the_decode_job_records_the_node_and_job_it_ran_on(slurm_run, cluster):
    decode = next(j for j in jobs(slurm_run["run_id"]) if j["rule"] == "decode")
    summary = json.loads((slurm_run["remote"] / "results/ci/tiny-ar/tiny-gsm/ar/default/summary.json").read_text())
    assert summary["device"]["node"] == cluster.node
    assert summary["device"]["slurm_job_id"] == decode["id"]
    assert summary["device"]["gpu"] is None and summary["device"]["gpu_uuid"] is None  # null, never 0
    local = json.loads((slurm_run["local"] / "results/ci/tiny-ar/tiny-gsm/ar/default/summary.json").read_text())
    assert local["device"]["slurm_job_id"] is None


def test_a_second_run_reuses_the_finished_outputs(slurm_run, slice_config, cluster):
    before = all_job_ids()
    again = subprocess.run(snakemake(slurm_run["remote"], slice_config, *on_this_node(cluster.cpus)),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "Nothing to be done" in again.stdout + again.stderr
    assert all_job_ids() == before, "nothing submitted"


def test_a_status_command_that_cannot_work_stops_the_run_before_submitting(slurm_run, slice_config, cluster):
    """`sacct` without an accounting database: the plugin would wait forever; the run stops at once, naming the fix."""
    before = all_job_ids()
    args = [*on_this_node(cluster.cpus), "--slurm-status-command", "sacct", "--forcerun", "aggregate"]
    start = time.monotonic()
    done = subprocess.run(snakemake(slurm_run["remote"], slice_config, *args), capture_output=True, text=True,
                          timeout=300)
    log = done.stdout + done.stderr
    assert done.returncode != 0
    assert "the Slurm status command fails here" in log and "slurm-status-command: squeue" in log, log[-2000:]
    assert all_job_ids() == before, "nothing submitted"
    assert time.monotonic() - start < 120


class FailingQueries:
    def __init__(self, fail: list[bool]):
        self.fail = fail

    async def __call__(self, cmd, logger):
        return (None, None) if self.fail.pop(0) else ({"1": "RUNNING"}, 0.01)


def test_failed_status_queries_end_the_run_at_the_plugins_attempt_count():
    import asyncio

    from snakemake_interface_common.exceptions import WorkflowError

    from d2f_core.slurm import bounded

    query = bounded(FailingQueries([True, True, False, True, True, True]), attempts=3)
    for _ in range(5):  # a success in between resets the count
        asyncio.run(query("true", None))
    with pytest.raises(WorkflowError, match="3 Slurm status queries in a row failed"):
        asyncio.run(query("false", None))


def test_no_account_given_means_none_passed_and_a_given_one_is_the_plugins():
    from d2f_core.slurm import without_guessing

    class Job:
        def __init__(self, **resources):
            self.resources = type("R", (dict,), {"__getattr__": dict.__getitem__})(resources)

    def plugin_arg(self, job):
        yield f" -A {job.resources.slurm_account}"

    arg = without_guessing(plugin_arg)
    assert next(arg(None, Job(slurm_account=""))) == ""
    assert next(arg(None, Job())) == ""
    assert next(arg(None, Job(slurm_account="lab"))) == " -A lab"
