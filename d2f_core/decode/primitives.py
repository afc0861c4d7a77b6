"""Small pieces the decoders share: model and block checks, ragged-batch layout (pad id, left padding, per-row
positions, key masks), confidences, the LLaDA transfer schedule, parallel commit rules (per row, never batch-wide)."""

from __future__ import annotations

import functools

import torch

from d2f_core.model.masks import additive

CONFIDENCES = ("low_confidence", "maskgit_plus", "entropy", "topk_margin", "random")


def check_diffusion_model(decoder) -> None:
    """A diffusion decoder needs a masked-diffusion model (llada or dream) with a mask token."""
    lm = decoder.lm
    if lm.family not in ("llada", "dream") or lm.mask_id is None:
        raise ValueError(f"decoder {decoder.name!r} needs a masked-diffusion model (llada or dream) with a mask "
                         f"token; {lm.path} is a {lm.family} model")


def check_blocks(max_new_tokens: int, block_size: int) -> int:
    """The number of blocks; the parameter check (`decode.base.check_params`) has already made block_size divide."""
    if block_size <= 0 or max_new_tokens % block_size:
        raise ValueError(f"block_size {block_size} must divide max_new_tokens {max_new_tokens}")
    return max_new_tokens // block_size


# The precision each reference takes its softmax in, stated once. LLaDA's `generate` and Fast-dLLM's LLaDA code cast
# the logits to float64 first; Dream's `sample_tokens` (vanilla and Fast-dLLM) and the D2F code keep the model's own
# dtype (bf16 on the paper's GPUs, so their confidences are quantized, ~0.004 apart near 0.9). The thresholds are
# compared in the confidence's dtype too, as a tensor-vs-Python-float comparison does in the references.
FLOAT64_SOFTMAX = {("vanilla", "llada"), ("fast_dllm", "llada")}


def softmax_dtype(decoder: str, family: str) -> torch.dtype | None:
    """float64 where the reference casts, else None: the logits' (the model's) own dtype."""
    return torch.float64 if (decoder, family) in FLOAT64_SOFTMAX else None


def probabilities(logits: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return torch.softmax(logits if dtype is None else logits.to(dtype), dim=-1)


def pad_token(lm) -> int:
    """The id padding fills with: neither EOS nor the mask id (LLaDA's pad id is its EOS, notes/batching.md §1).
    Pad slots are never attended, so its value changes no number; a distinct id keeps a leak from reading as an
    EOS or a mask."""
    banned = {lm.eos_id, lm.mask_id}
    return next(i for i in (getattr(lm.tokenizer, "pad_token_id", None), 0, 1, 2) if i is not None and i not in banned)


def left_padded(prompts: list[list[int]], pad: int, tail: list[int], device) -> tuple[torch.Tensor, ...]:
    """Each prompt left-padded to the longest, then `tail` (the answer canvas): ids [B, T], `valid` [B, T] (False on
    pads) and position ids [B, T] counting valid slots only, so a padded row sees the positions it has alone (pads
    get 0). The canvases share their columns, so a block is the same slice in every row."""
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p + tail for p in prompts], device=device)
    valid = torch.tensor([[False] * (width - len(p)) + [True] * (len(p) + len(tail)) for p in prompts],
                         device=device)
    return ids, valid, (valid.cumsum(-1) - 1).clamp(min=0)


def right_padded(rows: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of different lengths in one query, right-padded: ids [B, U] and `valid` [B, U] (False on pads)."""
    width = max(map(len, rows))
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)
    return ids, torch.tensor([[True] * len(r) + [False] * (width - len(r)) for r in rows], device=device)


def canvas_mask(valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The bidirectional full-canvas mask of a left-padded batch, additive [B, 1, T, T]: every query sees every valid
    key, and its own slot too, so a pad query gets one key (an all-blocked row is NaN under SDPA); its output is
    discarded."""
    own = torch.eye(valid.shape[1], dtype=torch.bool, device=valid.device)
    return additive(valid[:, None, :] | own, dtype)


def greedy_with_confidence(logits: torch.Tensor, kind: str = "low_confidence",
                           generators: list[torch.Generator] | None = None,
                           dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Temperature-0 candidates x0 = argmax and a confidence per position (higher = commit first); logits [B, n, V].

    low_confidence / maskgit_plus: max probability (LLaDA, Dream); entropy: sum p log p (Dream's default);
    topk_margin: top-1 minus top-2 probability; random: uniform (LLaDA's `random` remasking), from one generator per
    row, so a row draws what it draws alone.
    """
    probs = probabilities(logits, dtype)
    top, x0 = probs.max(dim=-1)
    if kind in ("low_confidence", "maskgit_plus"):
        return x0, top
    if kind == "entropy":
        return x0, (probs * probs.clamp_min(1e-12).log()).sum(-1)
    if kind == "topk_margin":
        two = probs.topk(2, dim=-1).values
        return x0, two[..., 0] - two[..., 1]
    if kind == "random":
        draws = [torch.rand(top.shape[1:], generator=g, device="cpu") for g in generators]
        return x0, torch.stack(draws).to(top.device)
    raise ValueError(f"unknown confidence {kind!r}; valid: {', '.join(CONFIDENCES)}")


def transfer_schedule(n_masked: int, steps: int) -> list[int]:
    """LLaDA's linear schedule: spread n masks over `steps` steps, the first n % steps steps take one extra."""
    base, extra = divmod(n_masked, steps)
    return [base + (i < extra) for i in range(steps)]


def commit_threshold(conf: torch.Tensor, threshold: float) -> torch.Tensor:
    """Fast-dLLM's `get_transfer_index`, per row: conf [B, n] (-inf where nothing is masked) -> bool [B, n], the top
    confidence always and every other one >= threshold (compared in conf's dtype: the Python float is cast to it,
    as in the reference). A row with nothing masked commits nothing."""
    pick = conf >= threshold
    pick.scatter_(-1, conf.argmax(-1, keepdim=True), True)  # the first of equal maxima, as the reference's argmax
    return pick & (conf > -torch.inf).any(-1, keepdim=True)


def commit_factor(conf: torch.Tensor, factor: float) -> torch.Tensor:
    """Fast-dLLM's `get_transfer_index_dynamic`, per row: conf [B, n] (-inf where nothing is masked) -> bool [B, n].
    Walk c_1 >= c_2 >= ... over the row's m masked positions and stop at the first n > 1 with c_n < 1 - factor /
    (n + 1) (thresholds cast to conf's dtype); commit the n - 1 before it. Its quirk is kept: a stop at the last
    position, or none, commits all."""
    ranked, order = conf.sort(dim=-1, descending=True, stable=True)
    thresholds, rank = factor_thresholds(conf.shape[-1], factor, conf.dtype, conf.device)
    masked = (ranked > -torch.inf).sum(-1, keepdim=True)  # m per row; -inf sorts last, after every masked position
    stop = torch.where((ranked < thresholds) & (rank < masked), rank, masked - 1).amin(-1, keepdim=True)  # or m - 1
    count = stop + 1 - ((stop > 0) & (stop < masked - 1)).long()  # n - 1 committed, or all at the quirk's stops
    return torch.empty_like(ranked, dtype=torch.bool).scatter_(-1, order, rank < count)  # m = 0: count 0, none

@functools.lru_cache(maxsize=64)
def factor_thresholds(n: int, factor: float, dtype: torch.dtype, device: torch.device):
    """-1, then 1 - factor / (k + 1) for k = 2..n in `dtype` (the reference casts them to the confidences'), and the
    ranks 0..n-1; made once per block size, not on every forward."""
    return (torch.tensor([-1.0] + [1 - factor / (k + 1) for k in range(2, n + 1)], dtype=dtype, device=device),
            torch.arange(n, device=device))
