"""Claim one free GPU for this process, so concurrent decode cells on one machine never share a device.

Each device has a lock file; the first one this process can lock exclusively is its GPU until it exits. Timing a
cell while another runs on the same GPU would measure contention, not the decoder.
"""

from __future__ import annotations

import fcntl
import os
import tempfile

import torch

_held = []  # open lock files, kept for the life of the process


def claim_gpu() -> int | None:
    """The claimed device index (also made current), or None without CUDA. Raises when every GPU is taken."""
    if not torch.cuda.is_available():
        return None
    lock_dir = os.environ.get("D2F_GPU_LOCK_DIR", tempfile.gettempdir())
    for index in range(torch.cuda.device_count()):
        f = open(os.path.join(lock_dir, f"d2f-gpu-{index}.lock"), "w")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            continue
        _held.append(f)
        torch.cuda.set_device(index)
        return index
    raise RuntimeError(f"all {torch.cuda.device_count()} GPUs are claimed by other d2f processes; run fewer cells "
                       f"at once (`--resources gpu=N` with N = the number of GPUs)")
