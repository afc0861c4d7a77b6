"""Bad input fails early and names itself; a degraded model or a mixed cell is never an `ok` result."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
import yaml

from d2f_core.bench.io import read_jsonl_tolerant
from d2f_core.bench.runner import run_cell
from d2f_core.cli import main
from d2f_core.config import expand_cells
from d2f_core.decode.base import check_params
from d2f_core.model.load import load_model
from d2f_core.train.corpora import read_jsonl
from d2f_core.train.pretrain import TrainConfig, TrainingCutShort, fit

from conftest import REPO


@pytest.mark.parametrize("decoder,params,message", [
    ("d2f", {"tau_conf": 1.5}, r"d2f.tau_conf = 1.5: must be in \[0, 1\]"),
    ("d2f", {"tau_add": -0.1}, r"d2f.tau_add = -0.1: must be in \[0, 1\]"),
    ("d2f", {"tau_conf": "high"}, "d2f.tau_conf: cannot read 'high' as float"),
    ("d2f", {"block_size": 0}, r"d2f.block_size = 0: must be in \[1, inf\]"),
    ("d2f", {"block_size": -8}, r"d2f.block_size = -8: must be in \[1, inf\]"),
    ("fast_dllm", {"block_size": 7}, "fast_dllm.block_size = 7: must divide the generation length 32"),
    ("d2f", {"block_size": 64}, "d2f.block_size = 64: must be at most the generation length 32"),
    ("fast_dllm", {"cache": "both"}, "fast_dllm.cache = 'both': valid values are none, prefix, dual"),
    ("fast_dllm", {"threshold": float("nan")}, "fast_dllm.threshold = nan: must be in"),
    ("vanilla", {"block_size": 8, "steps": 6}, "vanilla.steps = 6: must be a multiple of the number of blocks 4"),
    ("vanilla", {"remasking": "lowest"}, "vanilla.remasking = 'lowest': valid values are low_confidence"),
    ("ar", {"cache": "paged"}, "ar.cache = 'paged': valid values are dynamic, static"),
])
def test_each_decoder_declares_its_valid_values_once(decoder, params, message):
    with pytest.raises(ValueError, match=message):
        check_params(decoder, params, 32)


def test_a_bad_sweep_value_fails_at_parse_time_naming_the_cell():
    config = yaml.safe_load((REPO / "workflow/config/tiny.yaml").read_text())
    bad = copy.deepcopy(config)
    bad["sweeps"][0]["params"][1]["tau_conf"] = 1.5
    with pytest.raises(ValueError, match=r"sweeps\[0\] \(tiny-llada-d2f, d2f .*d2f.tau_conf = 1.5: must be in"):
        expand_cells(bad, "sweeps")
    bad = copy.deepcopy(config)
    bad["cells"][1]["params"]["block_size"] = 7
    with pytest.raises(ValueError, match=r"cells\[1\].*must divide the generation length 32"):
        expand_cells(bad)


def test_snakemake_parse_names_the_bad_parameter(tmp_path):
    import subprocess
    import sys

    config = yaml.safe_load((REPO / "workflow/config/ci.yaml").read_text())
    config["cells"][5]["params"]["tau_add"] = -0.1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "d2f.tau_add = -0.1: must be in [0, 1]" in proc.stdout + proc.stderr


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path):
    from d2f_core.config import check_yaml

    path = tmp_path / "broken.yaml"
    path.write_text("profile: ci\ncells: [\n  - {model: x\n")
    with pytest.raises(ValueError, match=r"broken.yaml, line \d+: not valid YAML"):
        check_yaml(str(path))


def test_check_config_names_what_snakemake_configfile_cannot(tmp_path, capsys):
    """`snakemake --configfile` says only "not valid JSON or YAML"; `d2f check-config` names the file, line and field."""
    from d2f_core.cli import main

    def check(text):  # (exit status, what the user reads)
        path = tmp_path / "mine.yaml"
        path.write_text(text)
        try:
            main(["check-config", str(path)])
        except SystemExit as e:  # a message: printed to stderr, exit status 1
            return 1, str(e.code)
        return 0, capsys.readouterr().out

    tiny = (REPO / "workflow/config/tiny.yaml").read_text()
    assert check(tiny) == (0, f"{tmp_path / 'mine.yaml'}: valid (76 cells and sweep points)\n")
    code, out = check("profile: ci\nseed: [0\ngen_length: 32\n")
    assert code == 1 and "mine.yaml, line 3: not valid YAML" in out
    code, out = check(tiny.replace("seed: 0", "seed: zero"))
    assert code == 1 and "mine.yaml" in out and "schema['properties']['seed']" in out
    code, out = check(tiny.replace("tau_conf: 0.9}}", "tau_conf: 1.5}}"))
    assert code == 1 and "cells[7] (tiny-llada-d2f, d2f" in out and "d2f.tau_conf = 1.5: must be in [0, 1]" in out


def test_training_cut_short_by_its_time_cap_fails_with_the_measured_speed():
    model = torch.nn.Linear(2, 1)

    def slow_loss(m, batch):
        import time

        time.sleep(0.05)
        return m(torch.ones(1, 2)).sum()

    cfg = TrainConfig(steps=1000, batch_size=1, warmup=0, max_minutes=0.002)  # 0.12 s for 1000 steps
    with pytest.raises(TrainingCutShort, match=r"ended training at step \d+ of 1000: 0\.\d+ s per step, where the "
                                               r"cap allows 0\.00 s.*quiet machine.*fewer threads.*max_minutes"):
        fit(model, slow_loss, [[0]], cfg, "train tiny-ar")


def test_d2f_train_cut_short_saves_no_model(data_dir, tokenizer_dir, tmp_path, capsys):
    out = tmp_path / "tiny-ar"
    with pytest.raises(SystemExit, match="ended training at step"):
        main(["train", "--family", "ar", "--data", str(data_dir), "--tokenizer", str(tokenizer_dir),
              "--benchmarks", "tiny-gsm", "--out", str(out), "--arch", "hidden_size=16", "layers=1", "heads=2",
              "intermediate_size=32", "--set", "steps=100000", "batch_size=2", "max_minutes=0.001"])
    assert not (out / "model.safetensors").exists()


def _cell(model_dir, data_dir, out, **kw):
    return run_cell(str(model_dir), "tiny-gsm", str(data_dir), "vanilla", {"block_size": "8"}, 16, str(out), **kw)


def test_a_killed_cell_rerun_after_its_model_changed_holds_only_the_new_model(model_dirs, data_dir, tmp_path):
    out = tmp_path / "cell"
    _cell(model_dirs["llada"], data_dir, out, limit=2)  # model A finishes 2 problems, then is "killed"
    (out / "generations.jsonl").rename(out / "generations.partial.jsonl")
    retrained = tmp_path / "retrained"
    shutil.copytree(model_dirs["dream"], retrained)  # model B at a new fingerprint
    rec = _cell(retrained, data_dir, out, limit=4)
    fresh = _cell(retrained, data_dir, tmp_path / "fresh", limit=4)
    assert rec["status"] == "ok" and rec["resumed_from"] == 0
    assert [r["output"] for r in read_jsonl_tolerant(out / "generations.jsonl")] == \
        [r["output"] for r in read_jsonl_tolerant(tmp_path / "fresh" / "generations.jsonl")]
    assert fresh["status"] == "ok"


def test_a_killed_cell_of_the_same_model_still_resumes(model_dirs, data_dir, tmp_path):
    out = tmp_path / "cell"
    _cell(model_dirs["llada"], data_dir, out, limit=2)
    (out / "generations.jsonl").rename(out / "generations.partial.jsonl")
    assert _cell(model_dirs["llada"], data_dir, out, limit=4)["resumed_from"] == 2


def test_nan_weights_give_a_failed_cell_naming_the_cause(model_dirs, data_dir, tmp_path):
    broken = tmp_path / "nan-model"
    lm = load_model(model_dirs["llada"], device="cpu")
    with torch.no_grad():
        lm.model.model.layers[0].mlp.down_proj.weight.fill_(float("nan"))
    lm.model.save_pretrained(broken)
    lm.tokenizer.save_pretrained(broken)
    rec = _cell(broken, data_dir, tmp_path / "cell", limit=2)
    assert rec["status"] == "failed" and "logits are not finite" in rec["error"]


def test_an_overlong_prompt_gives_a_failed_cell(model_dirs, data_dir, tmp_path):
    short = tmp_path / "short-context"
    shutil.copytree(model_dirs["llada"], short)
    config = json.loads((short / "config.json").read_text())
    config["max_position_embeddings"] = 20
    (short / "config.json").write_text(json.dumps(config))
    rec = _cell(short, data_dir, tmp_path / "cell", limit=2)
    assert rec["status"] == "failed" and "exceeds the model's 20 positions" in rec["error"]


def test_a_bad_decoder_parameter_fails_the_cell_before_the_model_loads(data_dir, tmp_path):
    rec = run_cell(str(tmp_path / "no-model-needed"), "tiny-gsm", str(data_dir), "d2f", {"tau_conf": "1.5"}, 16,
                   str(tmp_path / "cell"))
    assert rec["status"] == "failed" and "d2f.tau_conf = 1.5: must be in [0, 1]" in rec["error"]


@pytest.mark.parametrize("args,message", [
    (["--prompt", ""], "the prompt is empty"),
    (["--prompt", "caf\udce9"], "not valid UTF-8"),
    (["--prompt", "x", "--max-new-tokens", "0"], "0 must be at least 1"),
])
def test_generate_rejects_degenerate_input_before_loading(model_dirs, capsys, args, message):
    with pytest.raises(SystemExit):
        main(["generate", "--model", str(model_dirs["ar"]), "--decoder", "ar", *args])
    assert message in capsys.readouterr().err


def test_generate_checks_parameters_against_the_length(model_dirs):
    with pytest.raises(SystemExit, match="fast_dllm.block_size = 7: must divide the generation length 48"):
        main(["generate", "--model", str(model_dirs["llada"]), "--decoder", "fast_dllm", "--param", "block_size=7",
              "--prompt", "Question: 1 + 1?\nAnswer:"])


def test_data_files_name_the_file_and_line(tmp_path):
    empty = tmp_path / "tiny-gsm.test.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="tiny-gsm.test.jsonl: no rows"):
        read_jsonl(empty)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1}\n{"id": 2}\n\n{"id": 3, "question": "x" "y"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl, line 4: not valid JSON"):
        read_jsonl(bad)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"q": "caf\xe9"}\n')
    with pytest.raises(ValueError, match="latin.jsonl: not UTF-8"):
        read_jsonl(latin)


def test_a_truncated_checkpoint_names_the_file_and_the_fix(model_dirs, tmp_path):
    broken = tmp_path / "truncated"
    shutil.copytree(model_dirs["ar"], broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"truncated/model.safetensors: unreadable weights .*truncated or corrupt.*"
                                         r"rebuild it"):
        load_model(broken, device="cpu")


def test_a_checkpoint_that_disagrees_with_its_config_is_named(model_dirs, tmp_path):
    broken = tmp_path / "mismatched"
    shutil.copytree(model_dirs["ar"], broken)
    config = json.loads((broken / "config.json").read_text())
    config["hidden_size"] *= 2
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="mismatched: the checkpoint does not load"):
        load_model(broken, device="cpu")
