"""Fast-dLLM: commit rules, cache modes, and agreement with vanilla decoding where it must agree."""

import pytest
import torch

from d2f_core.decode.base import build_decoder
from d2f_core.decode.primitives import commit_factor, commit_threshold


def picked(rule, conf: torch.Tensor, value: float) -> list[int]:
    """The positions a commit rule picks in one row of confidences."""
    return rule(conf[None], value)[0].nonzero().flatten().tolist()


def test_factor_rule_on_hand_made_confidences():
    conf = torch.tensor([0.70, 0.99, 0.95, 0.90, 0.50])
    # sorted: 0.99, 0.95, 0.90, 0.70, 0.50; (n+1)(1-c_n): 0.02, 0.15, 0.40, 1.50, 3.00
    assert picked(commit_factor, conf, 1.0) == [1, 2, 3]
    assert picked(commit_factor, conf, 0.1) == [1]
    assert picked(commit_factor, conf, 0.01) == [1], "at least one"
    assert picked(commit_factor, conf, 4.0) == [0, 1, 2, 3, 4]


def test_threshold_rule_keeps_equal_confidences_and_commits_at_least_one():
    conf = torch.tensor([0.9, 0.95, 0.3])
    assert picked(commit_threshold, conf, 0.9) == [0, 1]  # >=, as Fast-dLLM's get_transfer_index
    assert picked(commit_threshold, conf, 0.99) == [1]


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_no_cache_with_one_block_and_threshold_one_equals_vanilla(models, prompts, family):
    lm = models[family]
    fast = build_decoder("fast_dllm", lm, block_size=16, cache="none", rule="threshold", threshold=1.0)
    vanilla = build_decoder("vanilla", lm, block_size=16, steps=16)
    for prompt in prompts:
        a, b = fast.generate(prompt, 16), vanilla.generate(prompt, 16)
        assert a.canvas_tokens == b.canvas_tokens and a.forwards == b.forwards == 16


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_dual_and_prefix_agree_when_there_is_no_suffix(models, prompts, family):
    """With one block the suffix is empty, so the dual cache holds exactly the prefix cache."""
    lm = models[family]
    for prompt in prompts:
        gens = [build_decoder("fast_dllm", lm, block_size=16, cache=c, threshold=1.0).generate(prompt, 16)
                for c in ("prefix", "dual")]
        assert gens[0].canvas_tokens == gens[1].canvas_tokens
        first_vanilla = build_decoder("vanilla", lm, block_size=16, steps=16).generate(prompt, 16).trace[0]
        if family == "llada":
            assert gens[0].trace[0] == first_vanilla, "the refresh forward is vanilla's first step"
        else:  # Dream's refresh commits the block's first position, whatever its confidence
            assert gens[0].trace[0] == (0, 0, 0)


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
@pytest.mark.parametrize("rule", ["threshold", "factor"])
def test_every_mode_fills_the_canvas_block_by_block(models, prompts, cache, rule):
    lm = models["dream"]
    gen = build_decoder("fast_dllm", lm, block_size=4, cache=cache, rule=rule, threshold=0.5, factor=1.0).generate(
        prompts[0], 16)
    assert lm.mask_id not in gen.canvas_tokens and len(gen.canvas_tokens) == 16
    assert sorted(p for _, p, _ in gen.trace) == list(range(16))
    blocks = [b for _, _, b in sorted(gen.trace)]
    assert blocks == sorted(blocks)
    assert gen.forwards <= 16


def test_dual_cache_matches_full_forward_on_the_refresh_canvas(models, prompts):
    """Right after the refresh (nothing changed yet), the dual-cached block forward equals the full forward."""
    from transformers import DynamicCache

    from baselines.fast_dllm import keep_positions
    from d2f_core.model.forward import hidden_states
    from d2f_core.model.masks import bidirectional

    lm = models["llada"]
    x = torch.tensor(prompts[0] + [lm.mask_id] * 12)
    total, lo, hi = len(x), len(prompts[0]) + 4, len(prompts[0]) + 8
    cache = DynamicCache(config=lm.model.config)
    full = hidden_states(lm.model, x[None], bidirectional(total), cache)
    keep_positions(cache, lo, hi)
    step = hidden_states(lm.model, x[None, lo:hi], bidirectional(4, total), cache, start=lo)
    assert (step - full[:, lo:hi]).abs().max() < 1e-5


def test_batched_rules_equal_the_per_row_definition_on_random_rows():
    """Each row of [B, n] (-inf: not masked) picks what the one-row rules of the official code pick on its masked
    positions alone: ties, a row with one mask, a row with none."""
    def factor_one(conf, factor):  # get_transfer_index_dynamic on one row's masked confidences
        order = sorted(range(len(conf)), key=lambda i: -conf[i])
        below = [n for n in range(1, len(conf)) if conf[order[n]] < 1 - factor / (n + 2)]
        stop = below[0] if below else len(conf) - 1
        return sorted(order[: stop + 1 if stop in (0, len(conf) - 1) else stop])

    def threshold_one(conf, threshold):
        top = max(range(len(conf)), key=lambda i: (conf[i], -i))
        return sorted({top} | {i for i, c in enumerate(conf) if c >= threshold})

    g = torch.Generator().manual_seed(0)
    conf = torch.rand(64, 8, generator=g, dtype=torch.float64).round(decimals=1)  # many ties
    conf[torch.rand(64, 8, generator=g) < 0.4] = -torch.inf
    conf[0], conf[1, 1:] = -torch.inf, -torch.inf
    for rule, one, value in ((commit_factor, factor_one, 1.0), (commit_factor, factor_one, 0.3),
                             (commit_threshold, threshold_one, 0.7)):
        picks = rule(conf, value)
        for row, pick in zip(conf.tolist(), picks):
            masked = [i for i, c in enumerate(row) if c > -float("inf")]
            expected = [masked[i] for i in one([row[i] for i in masked], value)] if masked else []
            assert pick.nonzero().flatten().tolist() == expected, (rule.__name__, row)
