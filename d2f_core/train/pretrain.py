"""Train the tiny models on CPU: an AR baseline, and LLaDA- / Dream-style masked-diffusion teachers.

- `ar`: causal LM loss on answer + EOS.
- `llada` / `dream`: the LLaDA objective. The prompt stays clean, the answer (+ EOS padding to the generation length)
  is masked with ratio t ~ U(eps, 1) per sample, and cross-entropy on masked positions is weighted 1/t and averaged over
  answer positions. Attention is bidirectional. Dream shifts logits right by one (position i is predicted from hidden
  state i-1); LLaDA does not.

Both diffusion teachers start from the AR checkpoint (`init`): from scratch, LLaDA-style training reaches only 9-22% in
4-8 minutes here (calibration.md), while the AR model's representations carry over. With `anneal`, attention opens
from causal to bidirectional over the first `anneal` steps (DiffuLLaMA's attention-mask annealing): the AR weights
first learn the masked objective in the attention they were trained with. Measured here it raised both teachers.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from d2f_core.bench.benchmarks import get_benchmark
from d2f_core.model.checkpoints import set_diffusion_facts
from d2f_core.model.forward import hidden_states, lm_head
from d2f_core.model.masks import additive, causal
from d2f_core.train.corpora import read_jsonl


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 800
    batch_size: int = 64
    lr: float = 3e-3
    warmup: int = 50
    max_minutes: float = 4.0  # safety net: training that would need longer fails (TrainingCutShort), never shortens
    weight_decay: float = 0.01
    seed: int = 0
    schedule: str = "cosine"  # cosine (warm-up, then cosine decay) | constant (the D2F reference: no scheduler)
    anneal: int = 0  # diffusion teachers: steps over which attention opens from causal to bidirectional (0: at once)


def encode_pairs(data_dir: str | Path, mix: dict[str, int], tokenizer) -> list[list[tuple[list[int], list[int]]]]:
    """Batch sources: per benchmark, (prompt ids, answer ids + EOS) for every training row, listed `mix[name]` times.

    Batches are drawn from one benchmark at a time, cycling through this list: lengths differ between benchmarks, and
    mixing them in a batch wastes compute on padding; the weights give the harder benchmark more of the budget.
    """
    groups = []
    for name, weight in mix.items():
        bench = get_benchmark(name)
        rows = read_jsonl(bench.train_file(data_dir))
        prompts = tokenizer([bench.prompt(r) for r in rows]).input_ids
        answers = tokenizer([bench.completion(r) for r in rows]).input_ids
        groups += [[(p, a + [tokenizer.eos_token_id]) for p, a in zip(prompts, answers)]] * weight
    return groups


def encode_chat_pairs(path: str | Path, tokenizer, question_key: str, answer_key: str, end_id: int,
                      gen_length: int, chat: bool) -> list[list[tuple[list[int], list[int]]]]:
    """The paper's distillation data (bs17k question/answer jsonl): the question as a user turn of the chat template
    (or plain text), the answer + `end_id`; pairs whose answer exceeds `gen_length` are dropped, as the reference
    drops overlong samples."""
    pairs = []
    for row in read_jsonl(path):
        if question_key not in row or answer_key not in row:
            raise ValueError(f"{path}: rows need {question_key!r} and {answer_key!r}; got {sorted(row)}")
        prompt = (tokenizer.apply_chat_template([{"role": "user", "content": row[question_key]}], tokenize=False,
                                                add_generation_prompt=True) if chat else row[question_key])
        answer = tokenizer(row[answer_key], add_special_tokens=False).input_ids + [end_id]
        if len(answer) <= gen_length:
            pairs.append((tokenizer(prompt, add_special_tokens=not chat).input_ids, answer))
    if not pairs:
        raise ValueError(f"{path}: no pair has an answer within gen_length {gen_length}")
    return [pairs]


def new_llama(tokenizer, hidden_size: int, layers: int, heads: int, intermediate_size: int,
              max_positions: int = 256) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=heads, intermediate_size=intermediate_size, max_position_embeddings=max_positions,
        tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    set_diffusion_facts(config, "ar", None)
    return LlamaForCausalLM(config)


def ar_loss(model, batch: list[tuple[list[int], list[int]]], pad_id: int) -> torch.Tensor:
    """Next-token cross-entropy on answer + EOS (right padding needs no mask under causal attention)."""
    T = max(len(p) + len(a) for p, a in batch)
    ids = torch.full((len(batch), T), pad_id)
    labels = torch.full((len(batch), T), -100)
    for i, (p, a) in enumerate(batch):
        ids[i, : len(p) + len(a)] = torch.tensor(p + a)
        labels[i, len(p): len(p) + len(a)] = torch.tensor(a)
    return model(input_ids=ids, labels=labels).loss


def diffusion_batch(batch, pad_id: int, eos_id: int, gen_length: int):
    """Prompt + answer padded with EOS to `gen_length`, right-padded with <pad> to a common length.

    Returns ids [B, T], answer-position flags [B, T] and key-padding bool [B, T].
    """
    T = max(len(p) for p, _ in batch) + gen_length
    ids = torch.full((len(batch), T), pad_id)
    answer = torch.zeros((len(batch), T), dtype=torch.bool)
    for i, (p, a) in enumerate(batch):
        if len(a) > gen_length:
            raise ValueError(f"an answer of {len(a)} tokens exceeds gen_length {gen_length}; raise gen_length")
        ids[i, : len(p) + gen_length] = torch.tensor(p + a + [eos_id] * (gen_length - len(a)))
        answer[i, len(p): len(p) + gen_length] = True
    keys = torch.arange(T)[None, :] < torch.tensor([len(p) + gen_length for p, _ in batch])[:, None]
    return ids, answer, keys  # keys by position: a pad id may equal EOS (Qwen2/Dream)


def logits_at(model, ids: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
              shift: int) -> torch.Tensor:
    """Logits [n, V] for positions (rows, cols) only: a diffusion loss reads the masked ~quarter of a batch, and the LM
    head over every position cost 3-8% of a step. With `shift` (Dream) position i is predicted from hidden state
    i-1, and position 0 from itself."""
    hidden = hidden_states(model, ids, attention_mask)
    return lm_head(model, hidden[rows, (cols - shift).clamp(min=0)])


def masked_diffusion_loss(model, batch, pad_id: int, eos_id: int, mask_id: int, shift: int, gen_length: int,
                          eps: float = 1e-3, opened: float = 1.0) -> torch.Tensor:
    """`opened` < 1 anneals the attention of an AR-initialised model: each query also sees that share of its future
    keys (DiffuLLaMA's attention-mask annealing), so it first learns the masked objective under causal attention."""
    ids, answer, keys = diffusion_batch(batch, pad_id, eos_id, gen_length)
    # stratified t (one uniform offset, evenly spaced over the batch): the same expected loss, lower variance
    t = ((torch.rand(1) + torch.arange(len(batch)) / len(batch)) % 1)[:, None] * (1 - eps) + eps
    masked = answer & (torch.rand(ids.shape) < t)
    noisy = ids.masked_fill(masked, mask_id)
    attend = keys[:, None, :].expand(-1, ids.shape[1], -1)  # bidirectional over real tokens
    if opened < 1:
        attend = attend & (causal(ids.shape[1]) | (torch.rand(ids.shape[1], ids.shape[1]) < opened))
    rows, cols = masked.nonzero(as_tuple=True)
    logits = logits_at(model, noisy, additive(attend, model.dtype), rows, cols, shift)
    ce = F.cross_entropy(logits, ids[rows, cols], reduction="none")
    return (ce / t.expand_as(ids)[rows, cols]).sum() / answer.sum()


class TrainingCutShort(RuntimeError):
    """The time cap ended training before its step count: the recipe silently changed, so no model is saved."""


def cut_short_message(desc: str, step: int, cfg: TrainConfig, seconds: float) -> str:
    per_step, allowed = seconds / max(step, 1), 60 * cfg.max_minutes / cfg.steps
    return (f"{desc}: the time cap (max_minutes {cfg.max_minutes}) ended training at step {step} of {cfg.steps}: "
            f"{per_step:.2f} s per step, where the cap allows {allowed:.2f} s. The machine is {per_step / allowed:.1f}x "
            f"slower than the recipe expects, most often because another CPU-heavy process shares its cores "
            f"(OpenMP threads of two processes spin against each other: the DAG's rules set OMP_WAIT_POLICY=PASSIVE; "
            f"set it too when running by hand). Fix: rerun on a quiet machine, give this job fewer threads (--threads, or "
            f"snakemake --set-threads), or raise train.max_minutes in the config. "
            f"No model was saved, so nothing downstream is built from it.")


def fit(model, loss_fn, groups, cfg: TrainConfig, desc: str) -> dict:
    """AdamW with linear warm-up and cosine decay over the step count, or a constant learning rate
    (`schedule: constant`). Past `max_minutes` it raises TrainingCutShort instead of saving a shorter recipe."""
    if cfg.schedule not in ("cosine", "constant"):
        raise ValueError(f"train.schedule: {cfg.schedule!r}; valid: cosine, constant")
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    trainable = [p for p in model.parameters() if p.requires_grad]  # LoRA only, under peft
    # fused: one kernel for every tensor instead of ~10 small ops each (2% of a tiny CPU step)
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay, fused=True)
    model.train()
    start, losses, step = time.perf_counter(), [], 0
    bar = tqdm(total=cfg.steps, desc=desc, mininterval=5)
    while step < cfg.steps:
        if time.perf_counter() - start > 60 * cfg.max_minutes:
            raise TrainingCutShort(cut_short_message(desc, step, cfg, time.perf_counter() - start))
        progress = step / cfg.steps  # the schedule follows steps alone: the recipe never depends on machine speed
        warm = min(1.0, (step + 1) / max(1, cfg.warmup))
        decay = 1.0 if cfg.schedule == "constant" else 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))
        for group in opt.param_groups:
            group["lr"] = cfg.lr * warm * decay
        loss = loss_fn(model, rng.sample(groups[step % len(groups)], cfg.batch_size))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        losses.append(loss.item())
        step += 1
        bar.update()
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}", refresh=False)
    bar.close()
    model.eval()
    window = max(1, min(20, len(losses) // 4))
    return {"steps": step, "seconds": round(time.perf_counter() - start, 1),
            "first_loss": sum(losses[:window]) / window, "final_loss": sum(losses[-window:]) / window}


def train_model(family: str, data_dir: str, tokenizer_dir: str, out_dir: str, mix: dict[str, int],
                cfg: TrainConfig, gen_length: int, arch: dict | None = None, init: str | None = None) -> dict:
    """Train one tiny model and save it (safetensors + tokenizer + diffusion facts in config.json)."""
    if family == "ar" and cfg.anneal:
        raise ValueError(f"model {out_dir}: train.anneal opens a diffusion teacher's attention; the AR model has none")
    torch.manual_seed(cfg.seed)  # the initial weights too: same config, same machine, same model
    tokenizer = AutoTokenizer.from_pretrained(init or tokenizer_dir)
    if init:
        model = AutoModelForCausalLM.from_pretrained(init, dtype=torch.float32)
    elif arch:
        model = new_llama(tokenizer, **arch)
    else:
        raise ValueError(f"model {out_dir}: give either `init` (a checkpoint to start from) or `arch`")
    set_diffusion_facts(model.config, family, None if family == "ar" else tokenizer.mask_token_id)
    groups = encode_pairs(data_dir, mix, tokenizer)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    if family == "ar":
        def loss_fn(m, b):
            return ar_loss(m, b, pad)
    else:
        shift, step = int(model.config.logit_shift), itertools.count()

        def loss_fn(m, b):
            opened = min(1.0, next(step) / cfg.anneal) if cfg.anneal else 1.0
            return masked_diffusion_loss(m, b, pad, eos, tokenizer.mask_token_id, shift, gen_length, opened=opened)
    stats = fit(model, loss_fn, groups, cfg, desc=f"train {Path(out_dir).name}")
    stats["parameters"] = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return stats
