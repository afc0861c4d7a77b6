"""Teacher training: attention-mask annealing opens the mask from causal to bidirectional."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from d2f_core.model.load import load_model
from d2f_core.model.masks import additive
from d2f_core.train.pretrain import TrainConfig, encode_pairs, logits_at, masked_diffusion_loss, train_model


def _attention_seen(model_dir, data_dir, opened):
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tok = load_model(model_dir, device="cpu").tokenizer
    seen = []
    real = model.model.forward

    def spy(*args, **kwargs):
        seen.append(kwargs["attention_mask"][:, 0] == 0)
        return real(*args, **kwargs)

    model.model.forward = spy
    batch = encode_pairs(data_dir, {"tiny-gsm": 1}, tok)[0][:4]
    masked_diffusion_loss(model, batch, tok.pad_token_id, tok.eos_token_id, tok.mask_token_id, 0, 48, opened=opened)
    return seen[0]  # [B, T, T] bool: True = attend


def test_annealing_opens_attention_from_causal_to_bidirectional(model_dirs, data_dir):
    closed, half, full = (_attention_seen(model_dirs["llada"], data_dir, o) for o in (0.0, 0.5, 1.0))
    T = full.shape[-1]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    assert torch.equal(closed, full & causal), "opened=0: causal attention over the real tokens"
    assert (half <= full).all() and (half >= closed).all()
    future = full & ~causal
    share = (half & future).sum() / future.sum()
    assert 0.4 < share < 0.6, f"opened=0.5 should open about half of the future keys, got {share:.2f}"


def test_annealing_is_refused_for_the_ar_model(data_dir, tmp_path, model_dirs):
    with pytest.raises(ValueError, match="anneal"):
        train_model("ar", str(data_dir), str(model_dirs["ar"]), str(tmp_path / "m"), {"tiny-gsm": 1},
                    TrainConfig(steps=1, anneal=10), gen_length=48, arch=dict(hidden_size=32, layers=1, heads=2,
                                                                               intermediate_size=64))


@pytest.mark.parametrize("shift", [0, 1])
def test_the_loss_logits_are_the_full_forward_s_at_the_asked_positions(model_dirs, shift):
    """The losses run the LM head only where they read it; those rows must be the full forward's (shifted for Dream),
    position 0 included."""
    model = AutoModelForCausalLM.from_pretrained(model_dirs["llada"]).eval()
    ids = torch.randint(3, 40, (3, 12), generator=torch.Generator().manual_seed(0))
    mask = additive(torch.rand(3, 12, 12, generator=torch.Generator().manual_seed(1)) < 0.7, model.dtype)
    mask[:, :, torch.arange(12), torch.arange(12)] = 0  # every query sees itself
    rows, cols = torch.tensor([0, 0, 1, 2, 2]), torch.tensor([0, 5, 11, 1, 7])
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask).logits
        if shift:
            full = torch.cat([full[:, :1], full[:, :-1]], dim=1)
        picked = logits_at(model, ids, mask, rows, cols, shift)
    torch.testing.assert_close(picked, full[rows, cols], rtol=1e-5, atol=1e-5)
