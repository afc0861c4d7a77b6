"""peft LoRA adapters: the D2F student is the base model plus an adapter, unmerged by default."""

from __future__ import annotations

from pathlib import Path

from peft import PeftModel


def apply_adapter(model, adapter: str | Path, merge: bool = False):
    adapter = Path(adapter)
    if not (adapter / "adapter_config.json").exists():
        raise FileNotFoundError(f"no peft adapter at {adapter} (adapter_config.json missing); build it with "
                                f"`snakemake --cores all` (rule distill) or `d2f distill`")
    model = PeftModel.from_pretrained(model, adapter)
    return model.merge_and_unload() if merge else model
