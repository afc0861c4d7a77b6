"""What a result was measured on: hardware, library versions, git commit."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from importlib.metadata import PackageNotFoundError, version

import torch

CODE = os.path.dirname(os.path.abspath(__file__))


def device_info(device: torch.device) -> dict:
    """The machine and accelerator: on a cluster, the node and Slurm job, and which GPU of the node (its UUID)."""
    info = {"device": str(device), "cpu": _cpu_name(), "torch_threads": torch.get_num_threads(), "gpu": None,
            "gpu_uuid": None, "gpu_driver": None, "node": socket.gethostname(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID")}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_uuid"] = f"GPU-{torch.cuda.get_device_properties(device).uuid}"
        try:
            import pynvml

            pynvml.nvmlInit()
            info["gpu_driver"] = pynvml.nvmlSystemGetDriverVersion()
        except Exception:  # NVML missing or unusable: the driver stays unknown (null)
            pass
    return info


def versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "peft", "lm_eval", "d2f-bench"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def git_sha() -> str | None:
    """The commit of this code (its checkout, wherever the run's working directory is)."""
    try:
        return subprocess.run(["git", "-C", CODE, "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
