"""Small pieces the diffusion decoders share: model and block checks, confidences, the LLaDA transfer schedule,
parallel commit rules."""

from __future__ import annotations

import torch

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


def greedy_with_confidence(logits: torch.Tensor, kind: str = "low_confidence",
                           generator: torch.Generator | None = None,
                           dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Temperature-0 candidates x0 = argmax and a confidence per position (higher = commit first).

    low_confidence / maskgit_plus: max probability (LLaDA, Dream); entropy: sum p log p (Dream's default);
    topk_margin: top-1 minus top-2 probability; random: uniform (LLaDA's `random` remasking).
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
        return x0, torch.rand(top.shape, generator=generator, device="cpu").to(top.device)
    raise ValueError(f"unknown confidence {kind!r}; valid: {', '.join(CONFIDENCES)}")


def transfer_schedule(n_masked: int, steps: int) -> list[int]:
    """LLaDA's linear schedule: spread n masks over `steps` steps, the first n % steps steps take one extra."""
    base, extra = divmod(n_masked, steps)
    return [base + (i < extra) for i in range(steps)]


def commit_threshold(conf: torch.Tensor, threshold: float) -> torch.Tensor:
    """Fast-dLLM's `get_transfer_index`: the top confidence always, and every other one >= threshold (compared in
    conf's dtype: the Python float is cast to it, as in the reference)."""
    top = conf.argmax().view(1)
    rest = ((conf >= threshold) & (torch.arange(len(conf), device=conf.device) != top)).nonzero().flatten()
    return torch.cat([top, rest])


def commit_factor(conf: torch.Tensor, factor: float) -> torch.Tensor:
    """Fast-dLLM's `get_transfer_index_dynamic`: walk c_1 >= c_2 >= ... and stop at the first n > 1 with
    c_n < 1 - factor / (n + 1) (thresholds cast to conf's dtype); commit the n - 1 before it. Its quirk is kept: a
    stop at the last position, or none, commits all."""
    order = conf.argsort(descending=True, stable=True)
    thresholds = torch.tensor([-1.0] + [1 - factor / (n + 1) for n in range(2, len(conf) + 1)], dtype=conf.dtype,
                              device=conf.device)
    below = (conf[order] < thresholds).nonzero().flatten()
    stop = int(below[0]) if len(below) else len(conf) - 1
    return order[: stop + 1 if stop in (0, len(conf) - 1) else stop]
