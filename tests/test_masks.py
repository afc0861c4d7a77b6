import pytest
import torch

from d2f_core.model import masks
from d2f_core.model.forward import hidden_states


def test_block_causal_structure():
    m = masks.block_causal(prompt_len=3, total_len=9, block_size=3)
    assert not m[:3, 3:].any(), "the prompt never sees the answer"
    assert m[3:6, :6].all() and not m[3:6, 6:].any(), "block 1 sees prompt and itself only"
    assert m[6:, :].all(), "the last block sees everything"


def test_additive_mask_values():
    add = masks.additive(masks.causal(3), torch.float32)
    assert add.shape == (1, 1, 3, 3)
    assert add[0, 0, 0, 0] == 0 and add[0, 0, 0, 1] == torch.finfo(torch.float32).min


def test_bidirectional_and_causal_differ(models):
    lm = models["llada"]
    ids = torch.tensor([[5, 9, 12, 7, 30, 8]])
    changed = ids.clone()
    changed[0, -1] = 40
    for make, sees_future in ((masks.bidirectional, True), (masks.causal, False)):
        a, b = hidden_states(lm.model, ids, make(6)), hidden_states(lm.model, changed, make(6))
        assert torch.allclose(a[0, 0], b[0, 0]) != sees_future, "position 0 sees the last token only bidirectionally"


@pytest.mark.parametrize("make", [lambda: masks.bidirectional(8), lambda: masks.block_causal(2, 8, 3)])
def test_eager_and_sdpa_agree(model_dirs, make):
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[5, 9, 12, 7, 30, 8, 3, 4]])
    out = {}
    for impl in ("eager", "sdpa"):
        model = AutoModelForCausalLM.from_pretrained(model_dirs["llada"], attn_implementation=impl).eval()
        out[impl] = hidden_states(model, ids, make())
    assert torch.allclose(out["eager"], out["sdpa"], atol=1e-5)


def test_block_causal_hides_later_blocks(models):
    lm = models["llada"]
    attend = masks.block_causal(2, 8, 3)
    a = torch.tensor([[5, 9, 12, 7, 30, 8, 3, 4]])
    b = a.clone()
    b[0, 5:] = torch.tensor([40, 41, 42])  # change the last block only
    ha, hb = hidden_states(lm.model, a, attend), hidden_states(lm.model, b, attend)
    assert torch.equal(ha[0, :5], hb[0, :5])
    assert not torch.allclose(ha[0, 5:], hb[0, 5:])
