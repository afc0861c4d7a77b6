"""peft LoRA adapters: the D2F student is the base model plus an adapter, unmerged by default.

The released LLaDA adapter was trained on LLaDA's own module names (`transformer.blocks.{i}.q_proj`, `attn_out`);
it is renamed onto the Llama layout `checkpoints.py` loads LLaDA into, key by key, and must load completely.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

from peft import LoraConfig, PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file

from d2f_core.model.checkpoints import LLADA_TARGETS, llada_module

PEFT_PREFIX = "base_model.model."


@contextlib.contextmanager
def peft_wrapping():
    """Around peft's model wrappers: peft 0.21 (the newest) reads transformers' `is_gradient_checkpointing`, which
    transformers 5.x deprecates for removal in v6 (hence `transformers<6` in pyproject.toml). The warning is peft's
    to fix and says nothing about this run, so it is not shown; any other warning is."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def apply_adapter(model, adapter: str | Path, merge: bool = False):
    adapter = Path(adapter)
    if not (adapter / "adapter_config.json").exists():
        raise FileNotFoundError(f"no peft adapter at {adapter} (adapter_config.json missing); build it with "
                                f"`snakemake --cores all` (rule distill) or `d2f distill`, or download it")
    config = json.loads((adapter / "adapter_config.json").read_text())
    if "attn_out" in config.get("target_modules", []):
        model = _load_llada_adapter(model, adapter, config)
    else:
        with peft_wrapping():
            model = PeftModel.from_pretrained(model, adapter)
    return model.merge_and_unload() if merge else model


def _load_llada_adapter(model, adapter: Path, config: dict):
    targets = sorted({LLADA_TARGETS.get(t, t) for t in config["target_modules"]})
    lora = LoraConfig(r=config["r"], lora_alpha=config["lora_alpha"], lora_dropout=config.get("lora_dropout", 0.0),
                      target_modules=targets, bias=config.get("bias", "none"), task_type="CAUSAL_LM")
    with peft_wrapping():
        peft_model = PeftModel(model, lora)
    state = {}
    for key, tensor in load_file(adapter / "adapter_model.safetensors").items():
        module, leaf = key.removeprefix(PEFT_PREFIX).split(".lora_", 1)
        state[f"{PEFT_PREFIX}{llada_module(module)}.lora_{leaf}"] = tensor
    result = set_peft_model_state_dict(peft_model, state)
    missing = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or missing:
        raise ValueError(f"{adapter}: LLaDA adapter does not map onto the Llama layout: "
                         f"unexpected {result.unexpected_keys[:5]}, missing {missing[:5]}")
    return peft_model
