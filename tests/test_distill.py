"""Asymmetric distillation: shared noisy input, the noise schedule, a falling loss, adapter round trip."""

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from d2f_core.model.adapters import peft_wrapping
from d2f_core.model.load import load_model
from d2f_core.train import distill as D
from d2f_core.train.pretrain import TrainConfig, encode_pairs


def test_block_ratios_are_non_decreasing_and_capped():
    rng = torch.Generator().manual_seed(0)
    for n in (1, 2, 6, 64):
        for _ in range(200):
            r = D.block_mask_ratios(n, rng)
            assert len(r) == n and (r[1:] >= r[:-1]).all() and r.max() <= D.MAX_RATIO and r.min() >= 0.2


def test_noise_masks_answers_only_with_their_block_ratio(models, data_dir):
    tok = models["llada"].tokenizer
    batch = encode_pairs(data_dir, {"tiny-gsm": 1}, tok)[0][:64]
    rng = torch.Generator().manual_seed(0)
    ids, noisy, masked, ratio, block, keys = D.noise_batch(batch, tok.pad_token_id, tok.eos_token_id,
                                                           tok.mask_token_id, 48, 8, rng)
    for i, (prompt, _) in enumerate(batch):
        assert not masked[i, : len(prompt)].any(), "the prompt is never masked"
        answer = ratio[i, len(prompt): len(prompt) + 48].view(6, 8)
        assert (answer == answer[:, :1]).all() and (answer[1:, 0] >= answer[:-1, 0]).all()
    assert (noisy[masked] == tok.mask_token_id).all() and (noisy[~masked] == ids[~masked]).all()
    rate = masked.sum() / (keys & (block > 0)).sum()
    assert 0.2 < rate < 0.7


def test_teacher_and_student_see_the_same_noised_input(model_dirs, data_dir, monkeypatch):
    base = AutoModelForCausalLM.from_pretrained(model_dirs["llada"])
    with peft_wrapping():
        model = get_peft_model(base, LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    tok = load_model(model_dirs["llada"], device="cpu").tokenizer
    seen = []
    inner = base.model  # the backbone both passes run (LoRA layers injected; disabled for the teacher)
    real = inner.forward

    def spy(*args, **kwargs):
        seen.append((kwargs["input_ids"].clone(), kwargs["attention_mask"].clone()))
        return real(*args, **kwargs)

    monkeypatch.setattr(inner, "forward", spy)
    batch = encode_pairs(data_dir, {"tiny-gsm": 1}, tok)[0][:4]
    D.distill_loss(model, batch, tok.pad_token_id, tok.eos_token_id, tok.mask_token_id, 0, 48, 8)
    (teacher_ids, teacher_mask), (student_ids, student_mask) = seen
    assert torch.equal(teacher_ids, student_ids)
    assert (teacher_mask == 0).sum() > (student_mask == 0).sum(), "teacher bidirectional, student block-causal"


def test_distillation_loss_decreases_and_adapter_round_trips(model_dirs, data_dir, tmp_path):
    out = tmp_path / "adapter"
    cfg = TrainConfig(steps=40, batch_size=8, lr=3e-3, warmup=2, max_minutes=2, seed=0)
    tok = load_model(model_dirs["dream"], device="cpu").tokenizer
    groups = encode_pairs(data_dir, {"tiny-gsm": 1, "tiny-code": 1}, tok)
    stats = D.distill(str(model_dirs["dream"]), str(out), groups, cfg, D.LoraSpec(r=4, alpha=8, dropout=0.0),
                      gen_length=64, block_size=8)
    assert stats["first_loss"] > stats["final_loss"]
    assert (out / "adapter_config.json").exists() and (out / "adapter_model.safetensors").exists()

    ids = torch.arange(3, 20)[None]
    a = load_model(model_dirs["dream"], adapter=out, device="cpu")
    with peft_wrapping():
        b = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dirs["dream"]), out).eval()
    merged = load_model(model_dirs["dream"], adapter=out, merge=True, device="cpu")
    plain = load_model(model_dirs["dream"], device="cpu")
    with torch.no_grad():
        la, lb, lm_, lp = (m(ids).logits for m in (a.model, b, merged.model, plain.model))
    assert torch.equal(la, lb)
    assert (la - lm_).abs().max() < 1e-4
    assert (la - lp).abs().max() > 1e-4, "the trained adapter changes the model"
