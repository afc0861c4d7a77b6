"""Asymmetric distillation (D2F §3.2): a bidirectional teacher into a block-causal LoRA student.

One peft model holds both: the teacher is the base model with the adapter disabled, a bidirectional mask and no
gradient; the student is the same model with LoRA on the attention projections and a block-causal mask. Both see the
**same** noised sequence. The noise masks later blocks at least as much as earlier ones, so the student learns to
predict a block from partially decoded predecessors: what pipelined decoding asks of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model

from d2f_core.model.adapters import peft_wrapping
from d2f_core.model.load import default_device, load_model
from d2f_core.model.masks import additive, block_ids
from d2f_core.train.pretrain import TrainConfig, diffusion_batch, fit, logits_at

MAX_RATIO = 0.7  # the reference's cap on any block's mask ratio


@dataclass(frozen=True)
class LoraSpec:
    r: int = 32
    alpha: int = 32
    dropout: float = 0.1
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


def block_mask_ratios(n_blocks: int, rng: torch.Generator | None = None) -> torch.Tensor:
    """Non-decreasing ratios: p0 ~ U[0.2, 0.7), then increments ~ U[0, (0.7 - p0) / (n - 1)) summed; all <= 0.7."""
    p0 = 0.2 + 0.5 * torch.rand((), generator=rng)
    if n_blocks == 1:
        return p0.view(1)
    steps = torch.rand(n_blocks - 1, generator=rng) * (MAX_RATIO - p0) / (n_blocks - 1)
    return torch.cat([p0.view(1), p0 + steps.cumsum(0)]).clamp(max=MAX_RATIO)


def noise_batch(batch, pad_id: int, eos_id: int, mask_id: int, gen_length: int, block_size: int,
                rng: torch.Generator | None = None):
    """The noised input both models see, plus what the loss and the masks need.

    Returns ids [B, T] (clean), noisy [B, T], masked [B, T] bool, ratio [B, T] (each token's block ratio),
    block [B, T] (block ids: 0 prompt, 1.. answer blocks, a large id for padding) and keys [B, T] (not padding).
    """
    ids, answer, keys = diffusion_batch(batch, pad_id, eos_id, gen_length)
    n_blocks = -(-gen_length // block_size)
    block = torch.stack([block_ids(len(p), ids.shape[1], block_size) for p, _ in batch])
    block = block.masked_fill(~keys, n_blocks + 1)
    ratios = torch.stack([block_mask_ratios(n_blocks, rng) for _ in batch])  # [B, n_blocks]
    ratio = torch.where(answer, ratios.gather(1, (block - 1).clamp(0, n_blocks - 1)), torch.ones(ids.shape))
    masked = answer & (torch.rand(ids.shape, generator=rng) < ratio)
    return ids, ids.masked_fill(masked, mask_id), masked, ratio, block, keys


def distill_loss(model, batch, pad_id: int, eos_id: int, mask_id: int, shift: int, gen_length: int,
                 block_size: int, rng: torch.Generator | None = None) -> torch.Tensor:
    """Cross-entropy of the student against the teacher's distribution, on masked positions, weighted 1/ratio."""
    ids, noisy, masked, ratio, block, keys = (t.to(model.device) for t in
                                              noise_batch(batch, pad_id, eos_id, mask_id, gen_length, block_size, rng))
    bidirectional = keys[:, None, :].expand(-1, ids.shape[1], -1)
    block_causal = (block[:, None, :] <= block[:, :, None]) & keys[:, None, :]
    rows, cols = masked.nonzero(as_tuple=True)
    with torch.no_grad(), model.disable_adapter():
        teacher = logits_at(model, noisy, additive(bidirectional, model.dtype), rows, cols, shift)
    student = logits_at(model, noisy, additive(block_causal, model.dtype), rows, cols, shift)
    target = F.softmax(teacher.float(), dim=-1)
    ce = -(target * F.log_softmax(student.float(), dim=-1)).sum(-1)
    return (ce / ratio[rows, cols]).mean()


def distill(base_dir: str, out_dir: str, groups: list, cfg: TrainConfig, lora: LoraSpec, gen_length: int,
            block_size: int) -> dict:
    """Distil the teacher at `base_dir` (a tiny model or a released LLaDA / Dream checkpoint) on `groups` of
    (prompt ids, answer ids) batches, and save the student's adapter with `save_pretrained`."""
    torch.manual_seed(cfg.seed)  # LoRA initialisation too
    lm = load_model(base_dir, dtype=torch.float32 if default_device().type == "cpu" else None)
    if lm.family not in ("llada", "dream"):
        raise ValueError(f"{base_dir} is a {lm.family} model; distillation needs a masked-diffusion teacher")
    with peft_wrapping():
        model = get_peft_model(lm.model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                    target_modules=list(lora.targets), task_type="CAUSAL_LM"))
    rng = torch.Generator().manual_seed(cfg.seed)
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else lm.eos_id

    def loss_fn(m, b):
        return distill_loss(m, b, pad_id, lm.eos_id, lm.mask_id, lm.shift, gen_length, block_size, rng)

    stats = fit(model, loss_fn, groups, cfg, desc=f"distill {base_dir.rstrip('/').split('/')[-1]}")
    stats["trainable_parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    model.save_pretrained(out_dir)
    return stats
