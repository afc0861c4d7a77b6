"""Small pieces the diffusion decoders share: confidences, the LLaDA transfer schedule, parallel commit rules."""

from __future__ import annotations

import torch

CONFIDENCES = ("low_confidence", "maskgit_plus", "entropy", "topk_margin", "random")


def greedy_with_confidence(logits: torch.Tensor, kind: str = "low_confidence",
                           generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Temperature-0 candidates x0 = argmax and a confidence per position (higher = commit first).

    low_confidence / maskgit_plus: max probability (LLaDA, Dream); entropy: sum p log p (Dream's default);
    topk_margin: top-1 minus top-2 probability; random: uniform (LLaDA's `random` remasking).
    """
    probs = torch.softmax(logits.float(), dim=-1)
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
    """Indices (into conf) of every confidence strictly above threshold, and always the top one."""
    picked = (conf > threshold).nonzero().flatten()
    return picked if len(picked) else conf.argmax().view(1)


def commit_factor(conf: torch.Tensor, factor: float) -> torch.Tensor:
    """Fast-dLLM's factor rule: with c_1 >= c_2 >= ..., the largest n with (n + 1)(1 - c_n) < factor (at least 1)."""
    order = conf.argsort(descending=True)
    ranks = torch.arange(1, len(conf) + 1, device=conf.device)
    ok = (ranks + 1) * (1 - conf[order]) < factor
    n = int(ok.nonzero().max()) + 1 if ok.any() else 1
    return order[:max(n, 1)]
