"""Teacher training: attention-mask annealing opens the mask from causal to bidirectional."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from d2f_core.model.load import load_model
from d2f_core.train.pretrain import TrainConfig, encode_pairs, masked_diffusion_loss, train_model


def _attention_seen(model_dir, data_dir, opened):
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tok = load_model(model_dir, device="cpu").tokenizer
    seen = []
    real = model.forward

    def spy(*args, **kwargs):
        seen.append(kwargs["attention_mask"][:, 0] == 0)
        return real(*args, **kwargs)

    model.forward = spy
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
