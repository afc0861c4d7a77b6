"""Write a model or adapter built here in a released layout, the inverse of `checkpoints.py` and `adapters.py`.

- LLaDA (LLaDA-8B-Instruct's layout): OLMo-style tensor names, its config keys (`d_model`, `n_layers`, ...,
  `model_type: llada`, the remote-code `auto_map`) and its tokenizer_config (`PreTrainedTokenizerFast`, its chat
  template); its D2F adapter keyed by LLaDA module names (`transformer.blocks.{i}.attn_out`).
- Dream (Dream-v0-Base-7B's layout): Qwen2 tensor names with q/k/v biases (zero: a Llama attention has none, so the
  function is unchanged), `model_type: Dream`, the remote-code `DreamTokenizer` named in tokenizer_config; its adapter
  keeps peft's Qwen2 keys.

The paper-smoke profile exports the tiny models and loads them back through the paper loaders, so the real loading
path runs inside the DAG. A directory is written beside `out` and renamed into place: complete or not at all.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from d2f_core.model.adapters import PEFT_PREFIX
from d2f_core.model.checkpoints import LLADA_TARGETS, llada_name

FORMATS = ("llada", "dream")
# The released configs' context lengths: a real benchmark prompt fits, as it does in the released models.
LLADA_POSITIONS, DREAM_POSITIONS = 4096, 131072
LLADA_CHAT_TEMPLATE = (  # LLaDA-8B-Instruct's tokenizer_config.json (it always appends the assistant header)
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
)


def _write_atomically(out: Path, files: dict[str, object]) -> Path:
    """files: name -> dict (JSON), tensors ({name: Tensor} as safetensors) or a Path to copy."""
    partial = out.parent / f".{out.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for name, content in files.items():
        if isinstance(content, Path):
            shutil.copy(content, partial / name)
        elif name.endswith(".safetensors"):
            save_file({k: v.contiguous() for k, v in content.items()}, partial / name, metadata={"format": "pt"})
        else:
            (partial / name).write_text(json.dumps(content, indent=2))
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return out


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown released format {fmt!r}; valid: {', '.join(FORMATS)}")


def export_model(src: str | Path, out: str | Path, fmt: str) -> Path:
    """A model directory saved here (`LlamaForCausalLM` with the diffusion facts) -> the released `fmt` layout."""
    src, out = Path(src), Path(out)
    cfg = json.loads((src / "config.json").read_text())
    _check_format(fmt)
    if cfg.get("d2f_family") != fmt:
        raise ValueError(f"{src} is a model of family {cfg.get('d2f_family', 'ar')!r}; only a {fmt} model exports to "
                         f"the {fmt} layout")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise ValueError(f"{src}: a model with attention or MLP biases has no LLaDA/Dream counterpart here")
    weights = load_file(src / "model.safetensors")
    tied = bool(cfg.get("tie_word_embeddings"))
    if tied:
        weights.pop("lm_head.weight", None)
    theta = (cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta", 10000.0))
    tok = json.loads((src / "tokenizer_config.json").read_text())
    specials = {k: tok[k] for k in ("bos_token", "eos_token", "pad_token") if tok.get(k)}
    shape = {"vocab_size": cfg["vocab_size"], "rms_norm_eps": cfg["rms_norm_eps"], "rope_theta": theta,
             "mask_token_id": cfg["mask_token_id"], "eos_token_id": cfg["eos_token_id"],
             "pad_token_id": cfg.get("pad_token_id"), "bos_token_id": cfg.get("bos_token_id")}
    if fmt == "llada":
        config = {"model_type": "llada", "architectures": ["LLaDAModelLM"],
                  "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig",
                               "AutoModel": "modeling_llada.LLaDAModelLM",
                               "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM"},
                  "d_model": cfg["hidden_size"], "n_layers": cfg["num_hidden_layers"],
                  "n_heads": cfg["num_attention_heads"], "n_kv_heads": cfg["num_key_value_heads"],
                  "mlp_hidden_size": cfg["intermediate_size"], "embedding_size": cfg["vocab_size"],
                  "weight_tying": tied, "max_sequence_length": LLADA_POSITIONS, "block_type": "llama",
                  "include_bias": False, "include_qkv_bias": False, "activation_type": "silu",
                  "layer_norm_type": "rms", "rope": True, **shape}
        weights = {f"{llada_name(k.rpartition('.')[0])}.{k.rpartition('.')[2]}": v for k, v in weights.items()}
        # The chat template opens with bos_token; a vocabulary without a start token lends its pad token.
        specials.setdefault("bos_token", specials.get("pad_token"))
        tokenizer_config = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": False,
                            "add_eos_token": False, "clean_up_tokenization_spaces": False,
                            "chat_template": LLADA_CHAT_TEMPLATE, **specials}
    else:
        config = {"model_type": "Dream", "architectures": ["DreamModel"],
                  "auto_map": {"AutoConfig": "configuration_dream.DreamConfig",
                               "AutoModel": "modeling_dream.DreamModel"},
                  "hidden_size": cfg["hidden_size"], "intermediate_size": cfg["intermediate_size"],
                  "num_hidden_layers": cfg["num_hidden_layers"], "num_attention_heads": cfg["num_attention_heads"],
                  "num_key_value_heads": cfg["num_key_value_heads"], "hidden_act": "silu",
                  "max_position_embeddings": DREAM_POSITIONS, "tie_word_embeddings": tied,
                  "use_sliding_window": False, "sliding_window": None, "attention_dropout": 0.0, **shape}
        for i in range(cfg["num_hidden_layers"]):  # Qwen2 attention has q/k/v biases
            for proj in ("q_proj", "k_proj", "v_proj"):
                w = weights[f"model.layers.{i}.self_attn.{proj}.weight"]
                weights[f"model.layers.{i}.self_attn.{proj}.bias"] = torch.zeros(w.shape[0], dtype=w.dtype)
        tokenizer_config = {"tokenizer_class": "DreamTokenizer",
                            "auto_map": {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]}, **specials}
    return _write_atomically(out, {"config.json": config, "model.safetensors": weights,
                                   "tokenizer.json": src / "tokenizer.json",
                                   "tokenizer_config.json": tokenizer_config})


def export_adapter(src: str | Path, out: str | Path, fmt: str, base: str | Path) -> Path:
    """A peft LoRA adapter distilled here -> the released D2F adapter layout of `fmt`, for the exported `base`."""
    src, out = Path(src), Path(out)
    config = json.loads((src / "adapter_config.json").read_text())
    _check_format(fmt)
    weights = load_file(src / "adapter_model.safetensors")
    config["base_model_name_or_path"] = str(base)
    if fmt == "llada":  # module names as the released LLaDA adapter has them (`attn_out` under transformer.blocks)
        renamed = {}
        for key, tensor in weights.items():
            module, leaf = key.removeprefix(PEFT_PREFIX).split(".lora_", 1)
            renamed[f"{PEFT_PREFIX}{llada_name(module)}.lora_{leaf}"] = tensor
        weights = renamed
        inverse = {llama: llada for llada, llama in LLADA_TARGETS.items()}
        config["target_modules"] = sorted(inverse.get(t, t) for t in config["target_modules"])
    return _write_atomically(out, {"adapter_config.json": config, "adapter_model.safetensors": weights})
