"""One forward pass of a transformers causal-LM class driven as a diffusion model.

The backbone runs over the query positions with an explicit 4D mask (and optionally a DynamicCache); the LM head runs
only on the rows whose predictions the caller needs, which saves 10-20% at small sizes (feasibility.md §9).
"""

from __future__ import annotations

import torch

from d2f_core.model.masks import additive


def backbone(model) -> torch.nn.Module:
    """The LlamaForCausalLM-like module under a possible peft wrapper (LoRA layers stay injected and active). Asked
    of the class: a missing attribute on an nn.Module instance costs an exception, on every decoding step."""
    return model.get_base_model() if hasattr(type(model), "get_base_model") else model


def hidden_states(model, input_ids: torch.Tensor, attend: torch.Tensor, cache=None, start: int = 0,
                  positions: torch.Tensor | None = None) -> torch.Tensor:
    """input_ids [B, q] at positions start..start+q-1, or at `positions` [B, q] (a ragged batch: each row its own);
    attend bool [q, cached + q] or [B, q, cached + q], or that mask already made additive (`masks.additive`: a
    decoder that slices one mask every step converts it once); returns hidden [B, q, H].

    With a cache, the query's K/V are appended to it (even without use_cache; roll back with `cache.crop(-n)`).
    Cached keys carry their own positions (RoPE is applied before caching), so the cache need not be a prefix.
    """
    lm = backbone(model)
    q = input_ids.shape[1]
    cached = cache.get_seq_length() if cache is not None else 0
    assert attend.shape[-2:] == (q, cached + q), f"mask {tuple(attend.shape)} != (.., {q}, {cached + q})"
    out = lm.model(
        input_ids=input_ids,
        attention_mask=attend if attend.is_floating_point() else additive(attend.to(input_ids.device), lm.dtype),
        position_ids=torch.arange(start, start + q, device=input_ids.device)[None] if positions is None else positions,
        cache=cache,
        use_cache=cache is not None,
    )
    return out.last_hidden_state


def lm_head(model, hidden: torch.Tensor) -> torch.Tensor:
    """Logits in the model's dtype: each decoder takes its softmax at its reference's precision
    (`decode.primitives.softmax_dtype`)."""
    return backbone(model).lm_head(hidden)
