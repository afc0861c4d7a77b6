"""The decoders' rules as the official code runs them, decided by hand-made logits (issue: Fast-dLLM as the official
code runs it). A scripted stand-in for the model returns, for every forward and position, the logits a test wants,
so each rule alone decides the outcome: Dream's refresh commit, the >= boundary, float64 vs float32 rounding, the
forward after a block the refresh completed, and D2F's tau_conf compared in the confidence's dtype."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig

from d2f_core.decode.base import build_decoder
from d2f_core.decode.primitives import commit_factor, commit_threshold


def picked(rule, conf: torch.Tensor, value: float) -> list[int]:
    """The positions a commit rule picks in one row of confidences."""
    return rule(conf[None], value)[0].nonzero().flatten().tolist()
from d2f_core.model.load import LoadedModel

V, MASK, EOS = 5, 4, 3
AT_F32_0_9 = 3.5835180282592773  # softmax([x, 0, 0, 0, 0])[0]: float32 rounds to f32(0.9), float64 gives 0.89999992
AT_F32_0_8 = 2.772587776184082  # softmax in float32 is exactly f32(0.8) = 0.800000011920929


def logits(token: int, x: float) -> torch.Tensor:
    """Logits whose argmax is `token`, with logit x against four zeros (x = 8: confidence 0.9987)."""
    out = torch.zeros(V)
    out[token] = x
    return out


class Scripted(torch.nn.Module):
    """Stands in for LlamaForCausalLM: `script(forward, target)` gives the logits predicting answer position
    `target` (0-based) at the forward-th forward; the K/V it appends are placeholders."""

    def __init__(self, script, prompt_len: int, shift: int):
        super().__init__()
        self.config = LlamaConfig(num_hidden_layers=1, hidden_size=8, num_attention_heads=1, num_key_value_heads=1,
                                  vocab_size=V)
        self.script, self.P, self.shift, self.calls = script, prompt_len, shift, 0
        self.model, self.lm_head, self.dtype = self._backbone, torch.nn.Identity(), torch.float32
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def _backbone(self, input_ids, attention_mask, position_ids, cache=None, use_cache=False):
        q = input_ids.shape[1]
        rows = [self.script(self.calls, int(t) + self.shift - self.P) for t in position_ids[0]]
        self.calls += 1
        if cache is not None:
            cache.update(torch.zeros(1, 1, q, 1), torch.zeros(1, 1, q, 1), 0)
        return SimpleNamespace(last_hidden_state=torch.stack(rows)[None])


def scripted_lm(script, family: str, prompt_len: int = 2) -> LoadedModel:
    shift = int(family == "dream")
    tokenizer = SimpleNamespace(decode=lambda ids, skip_special_tokens=True: " ".join(map(str, ids)))
    return LoadedModel(model=Scripted(script, prompt_len, shift), tokenizer=tokenizer, family=family, mask_id=MASK,
                       eos_id=EOS, shift=shift, path="scripted")


def decode(family, script, length=4, **params):
    lm = scripted_lm(script, family)
    return build_decoder("fast_dllm" if "cache" in params else "d2f", lm, **params).generate([0, 1], length)


def committed_at(gen, forward: int) -> list[int]:
    return sorted(position for step, position, _ in gen.trace if step == forward)


def test_dream_refresh_commits_the_first_position_whatever_its_confidence():
    def script(forward, target):  # at the refresh: position 0 unsure (0.43), the others sure
        return logits(1, 1.0) if forward == 0 and target == 0 else logits(2, 8.0)

    dream = decode("dream", script, length=4, block_size=4, cache="prefix", threshold=0.9)
    llada = decode("llada", script, length=4, block_size=4, cache="prefix", threshold=0.9)
    assert committed_at(dream, 0) == [0] and dream.canvas_tokens[0] == 1  # Dream: the first position, unsure as it is
    assert committed_at(llada, 0) == [1, 2, 3]  # LLaDA: the threshold rule at the refresh


def test_threshold_keeps_confidences_equal_to_it():
    assert picked(commit_threshold, torch.tensor([0.5, 0.9, 0.2], dtype=torch.float64), 0.5) == [0, 1]

    def script(forward, target):  # confidences 0.9987 and exactly 0.5 (logits [x, x, -inf, ...])
        if target == 0:
            return logits(1, 8.0)
        return torch.tensor([0.0, 0.0, -float("inf"), -float("inf"), -float("inf")])

    gen = decode("llada", script, length=2, block_size=2, cache="prefix", threshold=0.5)
    assert committed_at(gen, 0) == [0, 1]


def test_llada_compares_a_float64_softmax_dream_the_models_dtype():
    def script(forward, target):  # position 0 sure; position 1 at float32's 0.9, float64's 0.89999992
        return logits(1, 8.0) if target == 0 else logits(2, AT_F32_0_9)

    llada = decode("llada", script, length=2, block_size=2, cache="none", threshold=0.9)
    dream = decode("dream", script, length=2, block_size=2, cache="none", threshold=0.9)
    assert committed_at(llada, 0) == [0] and committed_at(dream, 0) == [0, 1]


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_a_block_the_refresh_completed_still_costs_the_official_forward(cache):
    def script(forward, target):
        return logits(1, 8.0)

    official = decode("llada", script, length=4, block_size=2, cache=cache, threshold=0.9)
    skipped = decode("llada", script, length=4, block_size=2, cache=cache, threshold=0.9, skip_done=True)
    assert official.forwards == 4 and skipped.forwards == 2  # per block: refresh + the forward that commits nothing
    assert official.canvas_tokens == skipped.canvas_tokens


def test_factor_rule_stops_at_the_first_miss_and_keeps_its_last_index_quirk():
    conf = torch.tensor([0.99, 0.95, 0.60, 0.90], dtype=torch.float64)  # sorted 0.99 0.95 0.90 0.60
    # thresholds 1 - f/(n+1), f = 1: -1, 0.667, 0.75, 0.8: 0.60 misses at the last index -> all four (the quirk)
    assert picked(commit_factor, conf, 1.0) == [0, 1, 2, 3]
    conf = torch.tensor([0.99, 0.70, 0.95, 0.90, 0.10], dtype=torch.float64)  # sorted 0.99 0.95 0.90 0.70 0.10
    # thresholds -1, 0.667, 0.75, 0.8, 0.833: 0.70 misses at n = 4 -> the first three
    assert picked(commit_factor, conf, 1.0) == [0, 2, 3]


def test_d2f_compares_tau_conf_in_the_confidences_dtype():
    def script(forward, target):  # position 0 sure; position 1 exactly float32(0.8) = 0.800000011920929
        return logits(1, 8.0) if target == 0 else logits(2, AT_F32_0_8)

    gen = decode("llada", script, length=2, block_size=2, tau_add=0.1, tau_act=0.95, tau_conf=0.8)
    assert committed_at(gen, 0) == [0]  # float32(0.8) > float32(0.8) is false, as in the reference


@pytest.mark.parametrize("decoder,params,family,expected", [
    ("d2f", {"block_size": 8}, "llada", torch.bfloat16),
    ("fast_dllm", {"block_size": 8}, "llada", torch.float64),
    ("fast_dllm", {"block_size": 8}, "dream", torch.bfloat16),
    ("vanilla", {"block_size": 8, "steps": 16}, "llada", torch.float64),
    ("vanilla", {"block_size": 8, "steps": 16, "remasking": "entropy"}, "dream", torch.bfloat16),
])
def test_confidences_on_a_bf16_model_take_the_references_precision(model_dirs, prompts, monkeypatch, decoder,
                                                                   params, family, expected):
    import importlib

    from d2f_core.model.load import load_model

    lm = load_model(model_dirs[family], device="cpu", dtype=torch.bfloat16)
    module = importlib.import_module({"d2f": "d2f_core.decode.d2f", "fast_dllm": "baselines.fast_dllm",
                                      "vanilla": "d2f_core.decode.primitives"}[decoder])
    seen, real = [], module.probabilities

    def spy(logits, dtype):
        out = real(logits, dtype)
        seen.append(out.dtype)
        return out

    monkeypatch.setattr(module, "probabilities", spy)
    gen = build_decoder(decoder, lm, **params).generate(prompts[0], 16)
    assert seen and set(seen) == {expected} and len(gen.canvas_tokens) == 16
