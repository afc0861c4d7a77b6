"""D2F pipelined decoding: exact KV cache and the reference semantics (d2f-reference.md §1, §8)."""

import pytest
import torch
from transformers import DynamicCache

from d2f_core.decode.base import build_decoder
from d2f_core.model.forward import hidden_states
from d2f_core.model.masks import block_causal

SETTINGS = [
    dict(block_size=4, tau_add=0.1, tau_act=0.95, tau_conf=0.9),
    dict(block_size=8, tau_add=0.5, tau_act=0.5, tau_conf=0.05),
    dict(block_size=4, tau_add=0.25, tau_act=0.5, tau_conf=0.02),
]


@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize("params", SETTINGS)
def test_cached_decoding_equals_full_recomputation(models, prompts, family, params):
    lm = models[family]
    cached = build_decoder("d2f", lm, cache=True, **params)
    full = build_decoder("d2f", lm, cache=False, **params)
    for prompt in prompts:
        a, b = cached.generate(prompt, 16), full.generate(prompt, 16)
        assert a.canvas_tokens == b.canvas_tokens and a.trace == b.trace
        assert a.forwards == b.forwards and a.forward_positions < b.forward_positions


def test_cached_forward_equals_block_causal_forward(models):
    lm = models["llada"]
    ids = torch.arange(3, 17)[None]  # prompt 6 + two blocks of 4
    attend = block_causal(6, 14, 4)
    full = hidden_states(lm.model, ids, attend)
    cache = DynamicCache(config=lm.model.config)
    hidden_states(lm.model, ids[:, :10], attend[:10, :10], cache, 0)  # prompt + block 1 into the cache
    step = hidden_states(lm.model, ids[:, 10:], attend[10:, :], cache, 10)
    assert (step - full[:, 10:]).abs().max() < 1e-5


def _per_step(gen):
    steps = {}
    for step, pos, block in gen.trace:
        steps.setdefault(step, []).append((pos, block))
    return steps


def test_degenerates_to_one_token_per_step_in_one_block(models, prompts):
    gen = build_decoder("d2f", models["llada"], block_size=4, tau_add=1.0, tau_act=0.95, tau_conf=1.0).generate(
        prompts[0], 16)
    assert gen.forwards == len(gen.trace) == len(gen.canvas_tokens)
    blocks = [block for _, _, block in sorted(gen.trace)]
    assert blocks == sorted(blocks), "one block at a time, left to right"
    assert all(len(v) == 1 for v in _per_step(gen).values())


def test_strict_confidence_threshold(models, prompts, monkeypatch):
    """Probabilities equal to tau_conf do not pass: with every confidence exactly tau_conf, only top-1s commit."""
    import d2f_core.decode.d2f as d2f

    lm = models["llada"]
    vocab = lm.model.config.vocab_size

    def flat_head(model, hidden):
        # two tokens share all probability equally: max softmax = 0.5 exactly
        logits = torch.full((hidden.shape[0], vocab), -1e4)
        logits[:, 7] = logits[:, 8] = 0.0
        return logits

    monkeypatch.setattr(d2f, "lm_head", flat_head)
    at = build_decoder("d2f", lm, block_size=4, tau_add=0.1, tau_act=0.95, tau_conf=0.5).generate(prompts[0], 8)
    below = build_decoder("d2f", lm, block_size=4, tau_add=0.1, tau_act=0.95, tau_conf=0.49).generate(prompts[0], 8)
    assert max(len(v) for v in _per_step(at).values()) == 1
    assert len(_per_step(below)[0]) == 4, "0.5 > 0.49: the whole first block commits at once"


def test_semi_activated_block_commits_nothing_below_threshold(models, prompts):
    """tau_conf 1.0: nothing ever passes, so only fully activated blocks move, one token per step each."""
    gen = build_decoder("d2f", models["llada"], block_size=4, tau_add=0.25, tau_act=1.0, tau_conf=1.0).generate(
        prompts[0], 16)
    for step, items in _per_step(gen).items():
        assert len(items) == 1, "block 2 is semi-activated until block 1 is complete: it commits nothing"
    # blocks were added early (tau_add 0.25) but still decoded strictly in order
    assert [b for _, _, b in sorted(gen.trace)] == sorted(b for _, _, b in gen.trace)


def test_at_most_one_block_added_per_step_and_activation_is_sticky(models, prompts, monkeypatch):
    import d2f_core.decode.d2f as d2f

    added, fully = [], {}
    real_block = d2f.Block

    class Spy(real_block):
        def __setattr__(self, key, value):
            if key == "full" and value:
                fully.setdefault(id(self), True)
            elif key == "full" and id(self) in fully:
                raise AssertionError("a fully activated block was deactivated")
            super().__setattr__(key, value)

    def make(*args, **kwargs):
        block = Spy(*args, **kwargs)
        added.append(block)
        return block

    monkeypatch.setattr(d2f, "Block", make)
    lm = models["llada"]
    gen = build_decoder("d2f", lm, block_size=4, tau_add=0.0, tau_act=0.5, tau_conf=0.02).generate(prompts[0], 16)
    n_blocks = len(added) - 1  # minus the prompt
    assert n_blocks == 4 and gen.forwards >= n_blocks, "tau_add 0: one new block per step, never two"
    assert len(gen.canvas_tokens) % 4 == 0


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_eos_stops_growth_and_length_is_a_multiple_of_the_block(models, prompts, monkeypatch, family):
    import d2f_core.decode.d2f as d2f

    lm = models[family]
    real = d2f.lm_head

    def eos_first(model, hidden):
        logits = real(model, hidden)
        logits[0, lm.eos_id] = 1e4  # the first target row (the first masked position) is always EOS
        return logits

    monkeypatch.setattr(d2f, "lm_head", eos_first)
    gen = build_decoder("d2f", lm, block_size=4, tau_add=0.1, tau_act=0.95, tau_conf=0.9).generate(prompts[0], 32)
    assert len(gen.canvas_tokens) % 4 == 0 and len(gen.canvas_tokens) < 32
    assert lm.mask_id not in gen.canvas_tokens, "allocated blocks still finish"
    assert gen.tokens == [] and gen.text == ""
