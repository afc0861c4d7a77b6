"""A model built here, exported into the released LLaDA / Dream layouts (with its D2F adapter), loads back through the
paper loaders and computes exactly what it computed before: the round trip the paper-smoke profile runs in its DAG."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file

from d2f_core.model.adapters import peft_wrapping
from d2f_core.model.export import export_adapter, export_model
from d2f_core.model.forward import hidden_states, lm_head
from d2f_core.model.load import load_model

IDS = [5, 17, 42, 9, 88, 60, 3, 33, 71, 12]


def logits_of(lm) -> torch.Tensor:
    attend = torch.ones(len(IDS), len(IDS), dtype=torch.bool)
    with torch.no_grad():
        return lm_head(lm.model, hidden_states(lm.model, torch.tensor([IDS]), attend))[0]


@pytest.fixture(scope="module")
def adapters(model_dirs, tmp_path_factory):
    """A LoRA adapter per diffusion family on q/k/v/o, with B randomised so that it changes the function."""
    out = {}
    for family in ("llada", "dream"):
        lm = load_model(model_dirs[family], device="cpu")
        with peft_wrapping():
            peft_model = get_peft_model(lm.model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj",
                                                                                                   "v_proj", "o_proj"]))
        torch.manual_seed(1)
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.data.normal_(0, 0.2)
        out[family] = tmp_path_factory.mktemp(f"{family}-lora")
        peft_model.save_pretrained(out[family])
    return out


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_an_exported_model_and_adapter_compute_what_they_did(model_dirs, adapters, tmp_path, family):
    base = export_model(model_dirs[family], tmp_path / "base", family)
    adapter = export_adapter(adapters[family], tmp_path / "adapter", family, base)
    for merge in (False, True):
        before = load_model(model_dirs[family], adapter=adapters[family], merge=merge, device="cpu")
        after = load_model(base, adapter=adapter, merge=merge, device="cpu")
        assert (logits_of(after) - logits_of(before)).abs().max() <= 1e-5
    plain_before, plain_after = load_model(model_dirs[family], device="cpu"), load_model(base, device="cpu")
    assert (logits_of(plain_after) - logits_of(plain_before)).abs().max() <= 1e-5
    assert (logits_of(plain_before) - logits_of(before)).abs().max() > 1e-3  # the adapter is not a no-op
    assert (after.family, after.mask_id, after.eos_id, after.shift) == (
        before.family, before.mask_id, before.eos_id, before.shift)
    assert after.tokenizer(" 12 + 3").input_ids == before.tokenizer(" 12 + 3").input_ids


def test_the_llada_layout_is_llada_s(model_dirs, adapters, tmp_path):
    base = export_model(model_dirs["llada"], tmp_path / "base", "llada")
    config = json.loads((base / "config.json").read_text())
    assert config["model_type"] == "llada" and config["block_type"] == "llama" and "d_model" in config
    names = set(load_file(base / "model.safetensors"))
    assert "model.transformer.wte.weight" in names and "model.transformer.blocks.1.attn_out.weight" in names
    assert not any(n.startswith("model.layers") for n in names)
    assert "<|start_header_id|>" in json.loads((base / "tokenizer_config.json").read_text())["chat_template"]
    lm = load_model(base, device="cpu")  # the template renders (it opens with bos_token, which the tiny vocab lacks)
    text = lm.tokenizer.apply_chat_template([{"role": "user", "content": "2+2?"}], add_generation_prompt=True,
                                            tokenize=False)
    assert text == "<pad><|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|><|start_header_id|>assistant" \
                   "<|end_header_id|>\n\n"
    adapter = export_adapter(adapters["llada"], tmp_path / "adapter", "llada", base)
    assert sorted(json.loads((adapter / "adapter_config.json").read_text())["target_modules"]) == [
        "attn_out", "k_proj", "q_proj", "v_proj"]
    assert all(".transformer.blocks." in k for k in load_file(adapter / "adapter_model.safetensors"))


def test_the_dream_layout_is_qwen2_with_zero_qkv_biases(model_dirs, tmp_path):
    base = export_model(model_dirs["dream"], tmp_path / "base", "dream")
    assert json.loads((base / "config.json").read_text())["model_type"] == "Dream"
    weights = load_file(base / "model.safetensors")
    assert not weights["model.layers.0.self_attn.k_proj.bias"].any()
    lm = load_model(base, device="cpu")
    assert type(lm.model).__name__ == "Qwen2ForCausalLM"


def test_export_refuses_a_model_of_another_family(model_dirs, tmp_path):
    with pytest.raises(ValueError, match="family 'ar'; only a llada model exports"):
        export_model(model_dirs["ar"], tmp_path / "x", "llada")
    assert not (tmp_path / "x").exists()
