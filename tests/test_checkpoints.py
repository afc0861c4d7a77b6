"""Released-format checkpoints (LLaDA, Dream, their D2F adapters) load into Llama / Qwen2 and compute what the raw
weights say: checked against a forward written here from the weights alone (RMSNorm, RoPE, SwiGLU, bidirectional
attention, LoRA as W + (alpha/r) BA)."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import save_file

from d2f_core.model.forward import hidden_states, lm_head
from d2f_core.model.load import load_model

V, D, LAYERS, HEADS, FFN = 256, 32, 2, 4, 48  # V covers the test tokenizer
CHAT_TEMPLATE = ("{% for m in messages %}<|start|>{{ m['role'] }}\n{{ m['content'] }}<|eot|>{% endfor %}"
                 "{% if add_generation_prompt %}<|start|>assistant\n{% endif %}")
R, ALPHA = 4, 8


def _randn(*shape, gen):
    return torch.randn(*shape, generator=gen) * 0.2


def write_llada(out, tokenizer_dir, gen) -> dict:
    """A LLaDA-8B-Instruct-format checkpoint: its config keys, its tensor names, its tokenizer files."""
    out.mkdir()
    w = {"model.transformer.wte.weight": _randn(V, D, gen=gen), "model.transformer.ln_f.weight": 1 + _randn(D, gen=gen),
         "model.transformer.ff_out.weight": _randn(V, D, gen=gen)}
    for i in range(LAYERS):
        p = f"model.transformer.blocks.{i}."
        w |= {p + "attn_norm.weight": 1 + _randn(D, gen=gen), p + "ff_norm.weight": 1 + _randn(D, gen=gen),
              p + "q_proj.weight": _randn(D, D, gen=gen), p + "k_proj.weight": _randn(D, D, gen=gen),
              p + "v_proj.weight": _randn(D, D, gen=gen), p + "attn_out.weight": _randn(D, D, gen=gen),
              p + "ff_proj.weight": _randn(FFN, D, gen=gen), p + "up_proj.weight": _randn(FFN, D, gen=gen),
              p + "ff_out.weight": _randn(D, FFN, gen=gen)}
    save_file(w, out / "model.safetensors", metadata={"format": "pt"})
    config = {"model_type": "llada", "architectures": ["LLaDAModelLM"],
              "auto_map": {"AutoModel": "modeling_llada.LLaDAModelLM"}, "d_model": D, "n_layers": LAYERS,
              "n_heads": HEADS, "n_kv_heads": HEADS, "mlp_hidden_size": FFN, "vocab_size": V, "embedding_size": V,
              "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "weight_tying": False, "max_sequence_length": 128,
              "block_type": "llama", "include_bias": False, "include_qkv_bias": False, "activation_type": "silu",
              "mask_token_id": V - 1, "eos_token_id": V - 2}
    (out / "config.json").write_text(json.dumps(config))
    shutil.copy(tokenizer_dir / "tokenizer.json", out / "tokenizer.json")
    (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                                           "eos_token": "<eos>", "chat_template": CHAT_TEMPLATE}))
    return {"embed": w["model.transformer.wte.weight"], "norm": w["model.transformer.ln_f.weight"],
            "head": w["model.transformer.ff_out.weight"], "theta": 500000.0, "eps": 1e-5, "kv_heads": HEADS,
            "layers": [{k: w[f"model.transformer.blocks.{i}.{name}.weight"] for k, name in
                        (("attn_norm", "attn_norm"), ("ffn_norm", "ff_norm"), ("q", "q_proj"), ("k", "k_proj"),
                         ("v", "v_proj"), ("o", "attn_out"), ("gate", "ff_proj"), ("up", "up_proj"),
                         ("down", "ff_out"))} for i in range(LAYERS)]}


def write_dream(out, tokenizer_dir, gen) -> dict:
    """A Dream-v0-Base-format checkpoint: Qwen2 names with q/k/v biases, GQA, `model_type: Dream`, remote-code
    tokenizer class named in tokenizer_config.json."""
    out.mkdir()
    kv = 2
    w = {"model.embed_tokens.weight": _randn(V, D, gen=gen), "model.norm.weight": 1 + _randn(D, gen=gen),
         "lm_head.weight": _randn(V, D, gen=gen)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        w |= {p + "input_layernorm.weight": 1 + _randn(D, gen=gen),
              p + "post_attention_layernorm.weight": 1 + _randn(D, gen=gen),
              p + "self_attn.q_proj.weight": _randn(D, D, gen=gen), p + "self_attn.q_proj.bias": _randn(D, gen=gen),
              p + "self_attn.k_proj.weight": _randn(D * kv // HEADS, D, gen=gen),
              p + "self_attn.k_proj.bias": _randn(D * kv // HEADS, gen=gen),
              p + "self_attn.v_proj.weight": _randn(D * kv // HEADS, D, gen=gen),
              p + "self_attn.v_proj.bias": _randn(D * kv // HEADS, gen=gen),
              p + "self_attn.o_proj.weight": _randn(D, D, gen=gen),
              p + "mlp.gate_proj.weight": _randn(FFN, D, gen=gen), p + "mlp.up_proj.weight": _randn(FFN, D, gen=gen),
              p + "mlp.down_proj.weight": _randn(D, FFN, gen=gen)}
    save_file(w, out / "model.safetensors", metadata={"format": "pt"})
    config = {"model_type": "Dream", "architectures": ["DreamModel"],
              "auto_map": {"AutoModel": "modeling_dream.DreamModel"}, "hidden_size": D, "intermediate_size": FFN,
              "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "num_key_value_heads": kv,
              "vocab_size": V, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": False,
              "max_position_embeddings": 128, "mask_token_id": V - 1, "pad_token_id": V - 3, "eos_token_id": V - 2,
              "hidden_act": "silu"}
    (out / "config.json").write_text(json.dumps(config))
    shutil.copy(tokenizer_dir / "tokenizer.json", out / "tokenizer.json")
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "DreamTokenizer",
         "auto_map": {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]}}))
    return {"embed": w["model.embed_tokens.weight"], "norm": w["model.norm.weight"], "head": w["lm_head.weight"],
            "theta": 1000000.0, "eps": 1e-6, "kv_heads": kv,
            "layers": [{k: w[f"model.layers.{i}.{name}"] for k, name in
                        (("attn_norm", "input_layernorm.weight"), ("ffn_norm", "post_attention_layernorm.weight"),
                         ("q", "self_attn.q_proj.weight"), ("k", "self_attn.k_proj.weight"),
                         ("v", "self_attn.v_proj.weight"), ("o", "self_attn.o_proj.weight"),
                         ("q_bias", "self_attn.q_proj.bias"), ("k_bias", "self_attn.k_proj.bias"),
                         ("v_bias", "self_attn.v_proj.bias"), ("gate", "mlp.gate_proj.weight"),
                         ("up", "mlp.up_proj.weight"), ("down", "mlp.down_proj.weight"))} for i in range(LAYERS)]}


def write_adapter(out, module_paths: dict[str, list[str]], targets: list[str], gen) -> dict:
    """A peft LoRA adapter in the released layout; B is random (not peft's zero init) so the adapter matters.
    `module_paths[k]` are the checkpoint's own module paths for our weight key k in each layer."""
    out.mkdir()
    tensors, deltas = {}, [{} for _ in range(LAYERS)]
    for i in range(LAYERS):
        for key, path in module_paths.items():
            a, b = _randn(R, D, gen=gen), _randn(D, R, gen=gen)
            if key in ("k", "v") and path.startswith("model.layers"):  # Dream GQA: k/v project to 2 heads
                b = _randn(D // 2, R, gen=gen)
            prefix = f"base_model.model.{path.format(i=i)}"
            tensors[prefix + ".lora_A.weight"], tensors[prefix + ".lora_B.weight"] = a, b
            deltas[i][key] = (ALPHA / R) * b @ a
    save_file(tensors, out / "adapter_model.safetensors", metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": R, "lora_alpha": ALPHA, "lora_dropout": 0.1,
         "bias": "none", "target_modules": targets, "base_model_name_or_path": "released/base"}))
    return deltas


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope(x, theta):
    """Rotate-half RoPE over [heads, T, head_dim] at positions 0..T-1."""
    dim = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angles = torch.arange(x.shape[1], dtype=torch.float64)[:, None] * inv[None]
    cos, sin = torch.cat([angles.cos()] * 2, -1).float(), torch.cat([angles.sin()] * 2, -1).float()
    rotated = torch.cat([-x[..., dim // 2:], x[..., : dim // 2]], -1)
    return x * cos + rotated * sin


def reference_logits(w: dict, ids: list[int], deltas=None) -> torch.Tensor:
    x = w["embed"][torch.tensor(ids)]
    hd = D // HEADS
    for i, layer in enumerate(w["layers"]):
        lw = {k: v + (deltas[i].get(k, 0) if deltas else 0) for k, v in layer.items()}
        h = rms_norm(x, lw["attn_norm"], w["eps"])
        q, k, v = (h @ lw[n].T + lw.get(f"{n}_bias", 0) for n in ("q", "k", "v"))
        q = q.view(-1, HEADS, hd).transpose(0, 1)
        k, v = (t.view(-1, w["kv_heads"], hd).transpose(0, 1).repeat_interleave(HEADS // w["kv_heads"], 0)
                for t in (k, v))
        q, k = rope(q, w["theta"]), rope(k, w["theta"])
        att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(hd), -1)  # bidirectional: no mask
        x = x + (att @ v).transpose(0, 1).reshape(-1, D) @ lw["o"].T
        h = rms_norm(x, lw["ffn_norm"], w["eps"])
        x = x + (torch.nn.functional.silu(h @ lw["gate"].T) * (h @ lw["up"].T)) @ lw["down"].T
    return rms_norm(x, w["norm"], w["eps"]) @ w["head"].T


def our_logits(lm, ids: list[int]) -> torch.Tensor:
    attend = torch.ones(len(ids), len(ids), dtype=torch.bool)
    with torch.no_grad():
        return lm_head(lm.model, hidden_states(lm.model, torch.tensor([ids]), attend))[0]


IDS = [3, 17, 42, 5, 88, 60, 1, 9, 33, 71, 12]
LLADA_PATHS = {"q": "model.transformer.blocks.{i}.q_proj", "k": "model.transformer.blocks.{i}.k_proj",
               "v": "model.transformer.blocks.{i}.v_proj", "o": "model.transformer.blocks.{i}.attn_out"}
DREAM_PATHS = {k: f"model.layers.{{i}}.self_attn.{k}_proj" for k in "qkvo"}


@pytest.fixture(scope="module")
def released(tokenizer_dir, tmp_path_factory):
    root, gen = tmp_path_factory.mktemp("released"), torch.Generator().manual_seed(0)
    return {
        "llada": (root / "llada", write_llada(root / "llada", tokenizer_dir, gen),
                  root / "llada-lora", write_adapter(root / "llada-lora", LLADA_PATHS,
                                                     ["q_proj", "k_proj", "v_proj", "attn_out"], gen)),
        "dream": (root / "dream", write_dream(root / "dream", tokenizer_dir, gen),
                  root / "dream-lora", write_adapter(root / "dream-lora", DREAM_PATHS,
                                                     ["q_proj", "k_proj", "v_proj", "o_proj"], gen)),
    }


@pytest.mark.parametrize("fmt", ["llada", "dream"])
def test_released_checkpoint_matches_independent_forward(released, fmt):
    path, weights, _, _ = released[fmt]
    lm = load_model(path, device="cpu", dtype=torch.float32)
    assert type(lm.model).__name__ == {"llada": "LlamaForCausalLM", "dream": "Qwen2ForCausalLM"}[fmt]
    assert (lm.family, lm.mask_id, lm.shift) == (fmt, V - 1, int(fmt == "dream"))
    assert lm.eos_id == V - 2
    assert (our_logits(lm, IDS) - reference_logits(weights, IDS)).abs().max() <= 1e-5


@pytest.mark.parametrize("fmt", ["llada", "dream"])
@pytest.mark.parametrize("merge", [False, True])
def test_released_adapter_matches_independent_forward(released, fmt, merge):
    path, weights, adapter, deltas = released[fmt]
    lm = load_model(path, adapter=adapter, merge=merge, device="cpu", dtype=torch.float32)
    expected = reference_logits(weights, IDS, deltas)
    assert (our_logits(lm, IDS) - expected).abs().max() <= 1e-5
    assert (expected - reference_logits(weights, IDS)).abs().max() > 1e-3  # the adapter is not a no-op


def test_unmapped_llada_tensor_is_an_error(released, tmp_path):
    path = released["llada"][0]
    broken = tmp_path / "broken"
    shutil.copytree(path, broken)
    from safetensors.torch import load_file

    w = load_file(broken / "model.safetensors")
    w["model.transformer.blocks.0.att_proj.weight"] = w.pop("model.transformer.blocks.0.q_proj.weight")
    save_file(w, broken / "model.safetensors")
    with pytest.raises(ValueError, match="broken: the checkpoint does not load.*att_proj"):
        load_model(broken, device="cpu")


def test_paper_distillation_path_runs_on_a_llada_format_checkpoint(released, tmp_path):
    """The paper's settings (LoRA r/alpha 32, dropout 0.1, constant lr, wd 0.05, block 16) on bs17k-style pairs,
    questions wrapped in the chat template, through the same `d2f distill` the tiny profile uses."""
    from d2f_core.cli import main

    pairs = tmp_path / "bs17k.jsonl"
    pairs.write_text("".join(json.dumps({"question": f"What is {i} + 3?", "qwen7b_answer": f"{i} + 3 = {i + 3}."})
                             + "\n" for i in range(6)))
    out = tmp_path / "adapter"
    main(["distill", "--base", str(released["llada"][0]), "--pairs", str(pairs), "--chat", "--out", str(out),
          "--block-size", "16", "--gen-length", "32", "--set", "steps=3", "batch_size=2", "lr=1e-5", "warmup=0",
          "weight_decay=0.05", "schedule=constant"])
    stats = json.loads((out / "distill_stats.json").read_text())
    assert stats["steps"] == 3 and stats["schedule"] == "constant" and stats["lora"]["r"] == 32
    assert sorted(json.loads((out / "adapter_config.json").read_text())["target_modules"]) == [
        "k_proj", "o_proj", "q_proj", "v_proj"]
    lm = load_model(released["llada"][0], adapter=out, device="cpu", dtype=torch.float32)
    assert our_logits(lm, IDS).shape == (len(IDS), V)
