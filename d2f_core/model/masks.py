"""4D attention masks: built as bool (True = attend), applied as an additive float mask.

Eager attention adds a bool/int mask as 0/1 without complaint, so the conversion to `finfo.min` happens once, here
(../shared/notes/feasibility.md §2).
"""

from __future__ import annotations

import torch


def bidirectional(q_len: int, k_len: int | None = None) -> torch.Tensor:
    return torch.ones(q_len, k_len or q_len, dtype=torch.bool)


def causal(n: int) -> torch.Tensor:
    return torch.ones(n, n, dtype=torch.bool).tril()


def block_ids(prompt_len: int, total_len: int, block_size: int) -> torch.Tensor:
    """0 for the prompt, 1 + (answer offset // block_size) for answer positions."""
    pos = torch.arange(total_len)
    return torch.where(pos < prompt_len, 0, 1 + (pos - prompt_len).clamp(min=0) // block_size)


def block_causal(prompt_len: int, total_len: int, block_size: int) -> torch.Tensor:
    """D2F: the prompt sees only itself; each answer block sees the prompt, all earlier blocks and itself."""
    ids = block_ids(prompt_len, total_len, block_size)
    return ids[None, :] <= ids[:, None]


def additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[q, k] or [B, q, k] bool -> [B, 1, q, k] additive float (0 = attend, finfo.min = blocked)."""
    if mask.dim() == 2:
        mask = mask[None]
    out = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    out.masked_fill_(~mask, torch.finfo(dtype).min)
    return out[:, None]
