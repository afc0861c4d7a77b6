"""Load a model directory (plus an optional peft adapter) with the diffusion facts its config.json carries.

A model directory says what it is: `d2f_family` (`ar`, `llada` or `dream`), `mask_token_id` and `logit_shift` live in
its config, so decoders need no side channel. Released LLaDA and Dream checkpoints are recognised by their
`model_type` and mapped onto Llama / Qwen2 (`checkpoints.py`); anything else without the facts is a plain AR model.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from d2f_core.model.adapters import apply_adapter
from d2f_core.model.checkpoints import checkpoint_format, load_released, load_tokenizer


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    family: str  # ar | llada | dream
    mask_id: int | None
    eos_id: int
    shift: int  # 1 when position i is predicted from hidden state i-1 (AR and Dream), else 0 (LLaDA)
    path: str
    adapter: str | None = None

    @functools.cached_property
    def device(self) -> torch.device:
        """Where the weights are (looked up once: decoders ask every step, and a peft model's parameter walk is
        not free)."""
        return next(self.model.parameters()).device


def tokenizer_of(path: str | Path):
    return AutoTokenizer.from_pretrained(path) if checkpoint_format(path) == "hf" else load_tokenizer(path)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_weights(directory: str | Path) -> None:
    """Read every safetensors header first, so a truncated or corrupt file is named with the fix (not as
    safetensors' bare "incomplete metadata")."""
    from safetensors import safe_open

    for shard in sorted(Path(directory).glob("*.safetensors")):
        try:
            with safe_open(shard, "pt") as f:
                f.keys()
        except Exception as e:  # SafetensorError, OSError
            raise ValueError(f"{shard}: unreadable weights ({e}); the file is truncated or corrupt: delete "
                             f"{Path(directory)} and rebuild it (`snakemake --cores all`) or download it again "
                             f"(`d2f fetch`)") from None


def load_model(path: str | Path, adapter: str | Path | None = None, merge: bool = False,
               device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> LoadedModel:
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"no model at {path} (config.json missing); build it with `snakemake --cores all` "
                                f"or point --model at a saved transformers checkpoint")
    check_weights(path)
    if adapter is not None:
        check_weights(adapter)
    device = torch.device(device) if device else default_device()
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    fmt = checkpoint_format(path)
    try:
        if fmt == "hf":
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
        else:
            model = load_released(path, fmt, dtype)
        tokenizer = tokenizer_of(path)
    except (RuntimeError, OSError, KeyError) as e:  # shapes that disagree with config.json, a missing file
        raise ValueError(f"{path}: the checkpoint does not load ({type(e).__name__}: {str(e)[:500]}); its weights "
                         f"and config.json disagree or a file is missing: rebuild or re-download it") from None
    if adapter is not None:
        try:
            model = apply_adapter(model, adapter, merge=merge)
        except (RuntimeError, KeyError) as e:
            raise ValueError(f"{adapter}: the adapter does not fit the model {path} ({type(e).__name__}: "
                             f"{str(e)[:500]}); was it distilled from this base?") from None
    model.to(device).eval()
    cfg = model.config
    family = getattr(cfg, "d2f_family", "ar")
    return LoadedModel(
        model=model, tokenizer=tokenizer, family=family, mask_id=getattr(cfg, "mask_token_id", None),
        eos_id=cfg.eos_token_id if fmt == "llada" or tokenizer.eos_token_id is None else tokenizer.eos_token_id,
        shift=int(getattr(cfg, "logit_shift", family != "llada")),
        path=str(path), adapter=str(adapter) if adapter else None,
    )
