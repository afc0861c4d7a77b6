"""Run untrusted, model-generated Python in a subprocess: temp dir, empty environment, no network, hard limits.

A crash, hang or memory bomb is a failed problem, never a crashed run. Limits: wall time (killed), CPU seconds,
address space, file size and process count (setrlimit); the network is cut with a new network namespace where the
kernel allows it, and the socket module is disabled inside the child regardless.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

CLONE_NEWNET = 0x40000000
PRELUDE = (
    "import socket as _s\n"
    "def _no_net(*a, **k):\n    raise OSError('network disabled in the sandbox')\n"
    "_s.socket = _s.create_connection = _s.socketpair = _no_net\n"
    "del _s, _no_net\n"
)


@dataclass(frozen=True)
class Limits:
    wall_s: float = 5.0
    cpu_s: int = 3
    memory_mb: int = 512
    file_mb: int = 10
    processes: int = 32


@dataclass
class Outcome:
    passed: bool
    status: str  # passed | failed | timeout | error
    detail: str = ""


def _restrict(limits: Limits):
    def apply() -> None:
        os.setsid()
        mb = 1024 * 1024
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_mb * mb, limits.memory_mb * mb))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_mb * mb, limits.file_mb * mb))
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        try:  # a private network namespace has no interfaces but loopback (needs privileges; best effort)
            ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWNET)
        except OSError:
            pass

    return apply


def run_untrusted(program: str, limits: Limits = Limits()) -> Outcome:
    """Execute `program`; it passes when it exits 0 (asserts raise AssertionError and exit non-zero)."""
    with tempfile.TemporaryDirectory(prefix="d2f-sandbox-") as tmp:
        path = os.path.join(tmp, "program.py")
        with open(path, "w") as f:
            f.write(PRELUDE + program)
        try:
            proc = subprocess.run(
                [sys.executable, "-I", "-S", path], cwd=tmp, env={"PATH": "/usr/bin:/bin"},
                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=limits.wall_s,
                preexec_fn=_restrict(limits),
            )
        except subprocess.TimeoutExpired:
            return Outcome(False, "timeout", f"killed after {limits.wall_s}s")
    if proc.returncode == 0:
        return Outcome(True, "passed")
    if proc.returncode == -signal.SIGXCPU:
        return Outcome(False, "timeout", f"CPU limit of {limits.cpu_s}s exceeded")
    last = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
    return Outcome(False, "failed" if "AssertionError" in proc.stderr else "error", last[-300:])
