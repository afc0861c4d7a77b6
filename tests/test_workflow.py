"""The DAG's config checks, lint and formatting, and the CLI that every rule calls."""

import copy
import os
import subprocess
import sys

import pytest
import yaml
from snakemake.utils import validate

from d2f_core.config import expand_cells

from conftest import REPO, SHARED_DATA

SCHEMA = str(REPO / "workflow/schemas/config.schema.yaml")
CONFIGS = ["tiny", "ci", "paper", "paper-smoke"]


def load(name):
    return yaml.safe_load((REPO / f"workflow/config/{name}.yaml").read_text())


@pytest.mark.parametrize("name", CONFIGS)
def test_configs_validate_and_expand(name):
    config = load(name)
    validate(config, SCHEMA)
    cells = expand_cells(config)
    assert {c.decoder for c in cells} >= {"ar", "vanilla", "d2f"}
    assert len({c.path(config["profile"]) for c in cells}) == len(cells)


def test_unknown_decoder_is_rejected_with_the_registered_names():
    """The schema cannot list decoders that other packages add; the registry names them when the config is read."""
    config = load("tiny")
    config["cells"][0]["decoder"] = "turbo"
    validate(config, SCHEMA)
    with pytest.raises(ValueError, match=r"cells\[0\].decoder: unknown decoder 'turbo'; valid: ar, d2f"):
        expand_cells(config)


def test_unknown_parameter_and_model_are_named():
    config = load("tiny")
    bad = copy.deepcopy(config)
    bad["cells"][1]["params"]["blocksize"] = 8
    with pytest.raises(ValueError, match="has no parameter 'blocksize'; valid: block_size"):
        expand_cells(bad)
    bad = copy.deepcopy(config)
    bad["cells"][0]["model"] = "gpt-5"
    with pytest.raises(ValueError, match="unknown model 'gpt-5'; valid: tiny-ar"):
        expand_cells(bad)


def test_sweep_axes_expand_to_the_product():
    config = load("tiny")
    config["cells"] = [{"model": "tiny-llada-d2f", "decoder": "d2f", "benchmarks": ["tiny-gsm"],
                        "params": {"tau_add": [0.1, 0.5, 0.9], "tau_conf": [0.9, 0.7], "block_size": 8}}]
    cells = expand_cells(config)
    assert len(cells) == 6 and cells[0].params == "block_size~8,tau_add~0.1,tau_conf~0.9"


def _run(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # the tests never touch the hub, online or not
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, env=env)


def test_snakemake_lint_is_clean():
    out = _run(sys.executable, "-m", "snakemake", "--lint")
    assert out.returncode == 0 and "Congratulations" in out.stdout + out.stderr, out.stdout + out.stderr


def test_snakefmt_check_passes():
    out = _run(sys.executable, "-m", "snakefmt", "--check", "Snakefile", "workflow")
    assert out.returncode == 0, out.stdout + out.stderr


def job_counts(stdout: str) -> dict[str, int]:
    table = stdout.split("Job stats:")[1].split("total")[0]
    return {line.split()[0]: int(line.split()[1]) for line in table.splitlines() if line.strip()[-1:].isdigit()}


@pytest.mark.parametrize("name", ["tiny", "ci"])
def test_dry_run_builds_the_dag(name):
    out = _run(sys.executable, "-m", "snakemake", "-n", "-p", "--forceall", "--nolock", "--configfile",
               f"workflow/config/{name}.yaml")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "decode" in out.stdout and "distill" in out.stdout
    commands = [line for line in out.stdout.splitlines() if "d2f " in line]
    training = [c for c in commands if "d2f train" in c or "d2f distill" in c]
    assert training and all("OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE} d2f" in c for c in training)
    assert not any("OMP_WAIT_POLICY" in c for c in commands if "d2f decode" in c), "timed cells keep spinning threads"
    if name == "ci":
        assert "tau_act~0.7" not in out.stdout, "--configfile replaces the tiny config: no tiny sweeps leak in"


@pytest.mark.parametrize("profile", [None, "slurm", "local"])
def test_paper_dry_run_lists_the_whole_paper_dag(profile):
    if profile == "slurm":
        pytest.importorskip("snakemake_executor_plugin_slurm")
    extra = ["--workflow-profile", f"workflow/profiles/{profile}"] if profile else []
    out = _run(sys.executable, "-m", "snakemake", "-n", "--forceall", "--nolock", "--configfile",
               "workflow/config/paper.yaml", *extra)
    assert out.returncode == 0, out.stderr[-2000:]
    cells, groups = cells_and_groups(load("paper"))
    assert job_counts(out.stdout) == {"fetch_adapter": 2, "fetch_model": 4, "prompts": 5, "decode": groups,
                                      "score": cells, "aggregate": 1, "report": 1, "all": 1}
    if profile == "slurm":  # every decode job (a model on a benchmark) gets a GPU of its own
        decode_jobs = out.stdout.split("rule decode:")[1:]
        assert decode_jobs and all("gpu=1" in job.split("rule ")[0] for job in decode_jobs)


def cells_and_groups(config) -> tuple[int, int]:
    """Score jobs (one per cell, table and sweep) and decode jobs (one per model x benchmark)."""
    cells = set(expand_cells(config)) | set(expand_cells(config, "sweeps"))
    return len(cells), len({(c.model, c.benchmark) for c in cells})


def test_paper_profile_without_the_hub_names_the_model_and_the_fix(tmp_path):
    out = _run(sys.executable, "-m", "d2f_core.cli", "fetch", "--name", "llada-instruct", "--repo",
               "GSAI-ML/LLaDA-8B-Instruct", "--revision", "main", "--out", str(tmp_path / "m"))
    assert out.returncode == 1
    assert "llada-instruct: cannot download GSAI-ML/LLaDA-8B-Instruct@main" in out.stderr
    assert "set `path: DIR` for llada-instruct in the config" in out.stderr


def test_cli_help_lists_every_step():
    out = _run(sys.executable, "-m", "d2f_core.cli", "--help")
    for step in ("data", "prompts", "fetch", "smollm2", "export", "tokenizer", "train", "distill", "decode", "speed",
                 "score", "check-config", "aggregate", "report", "verify-run", "regress", "selfcheck", "generate",
                 "lm-eval", "overhead"):
        assert step in out.stdout


def test_paper_adapter_can_be_distilled_here_with_the_papers_settings(tmp_path):
    config = load("paper")
    pairs = tmp_path / "bs17k.jsonl"
    pairs.write_text('{"question": "q", "qwen7b_answer": "a"}\n')
    config["adapters"]["llada-d2f"] = {
        "base": "llada-instruct", "pairs": str(pairs), "block_size": 16, "gen_length": 768,
        "lora": {"r": 32, "alpha": 32, "dropout": 0.1},
        "train": {"steps": 50000, "batch_size": 1, "lr": 1.0e-5, "warmup": 0, "weight_decay": 0.05,
                  "schedule": "constant"}}
    validate(copy.deepcopy(config), SCHEMA)
    path = tmp_path / "paper-trained.yaml"
    path.write_text(yaml.safe_dump(config))
    out = _run(sys.executable, "-m", "snakemake", "-n", "-p", "--forceall", "--nolock", "--configfile", str(path))
    assert out.returncode == 0, out.stderr[-2000:]
    assert job_counts(out.stdout)["distill"] == 1 and job_counts(out.stdout)["fetch_adapter"] == 1
    command = next(line for line in out.stdout.splitlines() if "d2f distill" in line)
    assert f"--pairs {pairs} --chat" in command and "lr=1e-05" in command and "schedule=constant" in command


def test_a_local_model_path_without_a_checkpoint_fails_before_any_job(tmp_path):
    config = load("paper")
    config["models"]["dream-base"] = {"family": "dream", "path": str(tmp_path / "empty"), "gen_length": 256}
    path = tmp_path / "paper-local.yaml"
    path.write_text(yaml.safe_dump(config))
    out = _run(sys.executable, "-m", "snakemake", "-n", "--nolock", "--configfile", str(path))
    assert out.returncode != 0
    assert f"dream-base: local copy {tmp_path / 'empty'} has no config.json" in out.stderr + out.stdout


needs_data = pytest.mark.skipif(not (SHARED_DATA / "gsm8k_test.jsonl").exists(), reason="real data not available")


@needs_data
def test_paper_smoke_dry_run_runs_every_kind_of_paper_job():
    out = _run(sys.executable, "-m", "snakemake", "-n", "--forceall", "--nolock", "--configfile",
               "workflow/config/paper-smoke.yaml")
    assert out.returncode == 0, out.stderr[-2000:]
    config = load("paper-smoke")
    cells, groups = cells_and_groups(config)
    assert job_counts(out.stdout) == {
        "data": 2, "tokenizer": 1, "train_model": 3, "distill": 2, "export_model": 2, "export_adapter": 2,
        "build_model": 1, "prompts": 5, "decode": groups, "score": cells, "aggregate": 1, "report": 1, "all": 1}
    assert {c.decoder for c in expand_cells(config)} == {"ar", "vanilla", "fast_dllm", "d2f"}


def test_missing_local_data_and_a_bad_export_fail_at_parse_naming_the_field(tmp_path):
    config = load("paper-smoke")
    config["data"]["benchmarks"]["gsm8k"]["data_files"] = {"test": str(tmp_path / "gsm8k_test.jsonl")}
    path = tmp_path / "no-data.yaml"
    path.write_text(yaml.safe_dump(config))
    out = _run(sys.executable, "-m", "snakemake", "-n", "--nolock", "--configfile", str(path))
    assert out.returncode != 0
    assert f"data.benchmarks.gsm8k.data_files.test: {tmp_path / 'gsm8k_test.jsonl'} not found; put the real gsm8k " \
           "test split there" in out.stderr + out.stdout
    config = load("paper-smoke")
    config["models"]["llada-instruct"]["export"] = "tiny-dream"
    path.write_text(yaml.safe_dump(config))
    out = _run(sys.executable, "-m", "d2f_core.cli", "check-config", str(path))
    assert out.returncode == 1 and "models.llada-instruct.export: a llada model cannot be exported from tiny-dream" \
        in out.stderr
