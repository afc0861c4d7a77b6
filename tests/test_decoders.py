import pytest
import torch

from d2f_core.decode.base import build_decoder, decoder_names, truncate


def test_registry_lists_valid_names_on_error(models):
    with pytest.raises(ValueError) as e:
        build_decoder("nope", models["ar"])
    for name in ("ar", "vanilla", "d2f"):
        assert name in str(e.value) and name in decoder_names()


def test_unknown_parameter_is_named(models):
    with pytest.raises(ValueError, match="no parameter blok_size; valid: block_size"):
        build_decoder("vanilla", models["llada"], blok_size=8)


def test_parameters_are_typed_from_strings(models):
    dec = build_decoder("vanilla", models["llada"], block_size="8", steps="16")
    assert dec.p.block_size == 8 and dec.p.steps == 16


def test_vanilla_rejects_an_ar_model(models):
    with pytest.raises(ValueError, match="masked-diffusion"):
        build_decoder("vanilla", models["ar"])


def test_truncate_at_eos_and_stop(models):
    tok = models["ar"].tokenizer
    ids = tok(" 1 + 2 = 3. #### 3\nQuestion: x").input_ids
    cut, text = truncate(tok, ids + [tok.eos_token_id, 5], tok.eos_token_id, ["\n"])
    assert text == " 1 + 2 = 3. #### 3" and tok.decode(cut) == text
    cut, text = truncate(tok, ids[:3] + [tok.eos_token_id] + ids[3:], tok.eos_token_id, [])
    assert cut == ids[:3]


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_ar_cache_equals_uncached_greedy(models, prompts, cache):
    lm = models["ar"]
    dec = build_decoder("ar", lm, cache=cache)
    for prompt in prompts:
        gen = dec.generate(prompt, 12)
        ids = list(prompt)
        with torch.no_grad():
            for _ in range(len(gen.canvas_tokens)):
                ids.append(int(lm.model(torch.tensor([ids])).logits[0, -1].argmax()))
        assert gen.canvas_tokens == ids[len(prompt):]


def test_ar_compile_needs_a_static_cache(models):
    with pytest.raises(ValueError, match="ar.compile needs ar.cache: static"):
        build_decoder("ar", models["ar"], compile=True)


@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize("steps,block_size", [(16, 8), (4, 8), (16, 16)])
def test_vanilla_invariants(models, prompts, family, steps, block_size):
    lm = models[family]
    dec = build_decoder("vanilla", lm, block_size=block_size, steps=steps)
    gen = dec.generate(prompts[0], 16)
    assert gen.forwards == steps
    assert len(gen.canvas_tokens) == 16 and lm.mask_id not in gen.canvas_tokens
    positions = [pos for _, pos, _ in gen.trace]
    assert sorted(positions) == list(range(16)), "every position committed exactly once, never remasked"
    per_step = [sum(1 for s, _, _ in gen.trace if s == k) for k in range(steps)]
    assert per_step == [16 // steps] * steps
    for step, pos, block in gen.trace:
        assert block == pos // block_size and step // (steps // (16 // block_size)) == block, "blocks left to right"


def test_vanilla_never_remasks(models, prompts, monkeypatch):
    """A committed token stays, even where the model would later predict something else."""
    import baselines.vanilla as vanilla

    lm = models["llada"]
    seen = []
    real = vanilla.greedy_with_confidence

    def spy(logits, kind, rng, dtype=None):
        x0, conf = real(logits, kind, rng, dtype)
        seen.append(x0.clone())
        return x0, conf

    monkeypatch.setattr(vanilla, "greedy_with_confidence", spy)
    gen = build_decoder("vanilla", lm, block_size=8, steps=16).generate(prompts[1], 16)
    first_commit = {pos: step for step, pos, _ in gen.trace}
    for pos, step in first_commit.items():
        assert gen.canvas_tokens[pos] == int(seen[step][0, pos % 8])  # [batch, block]


def test_vanilla_random_remasking_is_seeded(models, prompts):
    lm = models["llada"]
    a = build_decoder("vanilla", lm, block_size=8, steps=8, remasking="random", seed=1).generate(prompts[0], 16)
    b = build_decoder("vanilla", lm, block_size=8, steps=8, remasking="random", seed=1).generate(prompts[0], 16)
    assert a.trace == b.trace


def test_ar_compiled_static_cache_equals_the_dynamic_loop(models, prompts):
    """torch.compile of the decode step (the tuned AR rows) changes nothing a user reads; ~30 s of compilation."""
    dynamic = build_decoder("ar", models["ar"])
    compiled = build_decoder("ar", models["ar"], cache="static", compile=True)
    for ids in sorted(prompts[:3], key=len, reverse=True):  # longest first: one static cache, one compilation
        assert compiled.generate(ids, 12).tokens == dynamic.generate(ids, 12).tokens
