"""The released diffusion checkpoints, loaded into plain transformers classes without remote code.

- LLaDA (`model_type: llada`, OLMo-style names) maps onto `LlamaForCausalLM`: the same RMSNorm, rotate-half RoPE and
  SwiGLU, only renamed; `ff_proj` is the SiLU-gated projection, the block's `ff_out` the down projection and the
  top-level `ff_out` the LM head.
- Dream (`model_type: Dream`) is the Qwen2 layout under another name: `Qwen2ForCausalLM`, q/k/v with biases.

Attention is bidirectional in both because our decoders always pass an explicit 4D mask. The diffusion facts
(`d2f_family`, `mask_token_id`, `logit_shift`) go on the config, as for the tiny models.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM


FAMILIES = ("ar", "llada", "dream")
LLADA_MASK, LLADA_EOS = 126336, 126081  # LLaDA-Instruct ends turns with <|eot_id|> (126348), looked up by name
DREAM_MASK = 151666

# LLaDA module path <-> Llama module path ({i}: the layer); module paths (not tensor names), so peft adapter keys map
# the same way. One table serves both directions: loading (LLaDA -> Llama) and export (Llama -> LLaDA, `export.py`).
LLADA_LAYOUT = [
    ("model.transformer.wte", "model.embed_tokens"),
    ("model.transformer.ln_f", "model.norm"),
    ("model.transformer.ff_out", "lm_head"),
    ("model.transformer.blocks.{i}.attn_norm", "model.layers.{i}.input_layernorm"),
    ("model.transformer.blocks.{i}.ff_norm", "model.layers.{i}.post_attention_layernorm"),
    ("model.transformer.blocks.{i}.q_proj", "model.layers.{i}.self_attn.q_proj"),
    ("model.transformer.blocks.{i}.k_proj", "model.layers.{i}.self_attn.k_proj"),
    ("model.transformer.blocks.{i}.v_proj", "model.layers.{i}.self_attn.v_proj"),
    ("model.transformer.blocks.{i}.attn_out", "model.layers.{i}.self_attn.o_proj"),
    ("model.transformer.blocks.{i}.ff_proj", "model.layers.{i}.mlp.gate_proj"),
    ("model.transformer.blocks.{i}.up_proj", "model.layers.{i}.mlp.up_proj"),
    ("model.transformer.blocks.{i}.ff_out", "model.layers.{i}.mlp.down_proj"),
]
LLADA_TARGETS = {"attn_out": "o_proj", "ff_proj": "gate_proj", "ff_out": "down_proj"}  # peft target_modules


def _rename(path: str, pairs, what: str) -> str:
    for src, dst in pairs:
        m = re.fullmatch(re.escape(src).replace(r"\{i\}", r"(\d+)"), path)
        if m:
            return dst.replace("{i}", m.group(1)) if m.groups() else dst
    raise KeyError(f"no {what} counterpart for module {path!r}")


def llada_module(path: str) -> str:
    """`model.transformer.blocks.3.attn_out` -> `model.layers.3.self_attn.o_proj`; unknown paths raise."""
    return _rename(path, LLADA_LAYOUT, "Llama")


def llada_name(path: str) -> str:
    """The inverse: `model.layers.3.self_attn.o_proj` -> `model.transformer.blocks.3.attn_out`."""
    return _rename(path, [(b, a) for a, b in LLADA_LAYOUT], "LLaDA")


def llada_tensor(name: str) -> str:
    module, _, leaf = name.rpartition(".")
    return f"{llada_module(module)}.{leaf}"


def set_diffusion_facts(config, family: str, mask_token_id: int | None) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; valid: {', '.join(FAMILIES)}")
    config.d2f_family = family
    config.mask_token_id = mask_token_id
    config.logit_shift = family in ("ar", "dream")


def checkpoint_format(path: str | Path) -> str:
    """`llada`, `dream` or `hf` (anything transformers' Auto classes read, such as the tiny models and AR models)."""
    model_type = json.loads((Path(path) / "config.json").read_text()).get("model_type", "")
    return {"llada": "llada", "dream": "dream"}.get(model_type.lower(), "hf")


def llada_config(raw: dict) -> LlamaConfig:
    if raw.get("block_type", "llama") != "llama" or raw.get("include_bias") or raw.get("include_qkv_bias"):
        raise ValueError("only LLaDA checkpoints with block_type 'llama' and no biases map onto Llama "
                         f"(got block_type={raw.get('block_type')!r}, include_bias={raw.get('include_bias')})")
    cfg = LlamaConfig(
        vocab_size=raw.get("embedding_size") or raw["vocab_size"],
        hidden_size=raw["d_model"],
        intermediate_size=raw["mlp_hidden_size"],
        num_hidden_layers=raw["n_layers"],
        num_attention_heads=raw["n_heads"],
        num_key_value_heads=raw.get("n_kv_heads") or raw["n_heads"],
        max_position_embeddings=raw.get("max_sequence_length", 4096),
        rms_norm_eps=raw.get("rms_norm_eps", 1e-5),
        rope_parameters={"rope_type": "default", "rope_theta": raw.get("rope_theta", 10000.0)},
        tie_word_embeddings=bool(raw.get("weight_tying", False)),
        bos_token_id=raw.get("bos_token_id"), eos_token_id=raw.get("eos_token_id", LLADA_EOS),
        pad_token_id=raw.get("pad_token_id"),
    )
    set_diffusion_facts(cfg, "llada", raw.get("mask_token_id", LLADA_MASK))
    return cfg


def dream_config(raw: dict) -> Qwen2Config:
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings",
            "bos_token_id", "eos_token_id", "pad_token_id", "hidden_act")
    cfg = Qwen2Config(**{k: raw[k] for k in keys if k in raw},
                      rope_parameters={"rope_type": "default", "rope_theta": raw.get("rope_theta", 10000.0)})
    set_diffusion_facts(cfg, "dream", raw.get("mask_token_id", DREAM_MASK))
    return cfg


def load_released(path: str | Path, fmt: str, dtype: torch.dtype):
    """A LLaDA or Dream checkpoint as a Llama / Qwen2 model. Every tensor must map and every weight be set: a
    renamed or missing tensor is an error, never a silently random weight."""
    path = Path(path)
    raw = json.loads((path / "config.json").read_text())
    cls, cfg, rename = ((LlamaForCausalLM, llada_config(raw), llada_tensor) if fmt == "llada"
                        else (Qwen2ForCausalLM, dream_config(raw), str))
    state = {}
    for shard in sorted(path.glob("*.safetensors")):
        state.update({rename(k): v for k, v in load_file(shard).items()})
    if not state:
        raise FileNotFoundError(f"{path}: no *.safetensors weights next to config.json")
    with torch.device("meta"):
        model = cls(cfg)
    if cfg.tie_word_embeddings:
        state.setdefault("lm_head.weight", state.get("model.embed_tokens.weight"))
    model.load_state_dict(state, strict=True, assign=True)
    model.model.rotary_emb = type(model.model.rotary_emb)(config=cfg)  # a non-persistent buffer, left on meta
    return model.to(dtype)


def load_tokenizer(path: str | Path):
    """The released tokenizers name remote-code classes; their files are plain `tokenizers` / BPE files."""
    path = Path(path)
    if (path / "tokenizer.json").exists():
        return PreTrainedTokenizerFast.from_pretrained(path)
    from transformers import Qwen2Tokenizer

    return Qwen2Tokenizer.from_pretrained(path)
