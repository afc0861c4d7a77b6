"""A live one-node Slurm cluster on this host, for the tests that submit the workflow through `sbatch`.

Debian's slurmctld, slurmd and munge (installed with apt-get when missing), no accounting database: a `cpu` and a `gpu`
partition on the same node, so the slurm profile's partitions exist, and no GRES (no GPU here; the tests ask for none).
The config must be /etc/slurm/slurm.conf: the executor plugin's job step drops every SLURM_* variable, so the `srun`
inside a job would not find a config given through SLURM_CONF. Whatever this writes under /etc is restored on exit,
and every daemon it started is stopped by pid.

    with one_node_slurm(tmp_path) as cluster: ...   # cluster.node, cluster.log_dir
    python tests/slurm_cluster.py                   # start one by hand; Ctrl-C or SIGTERM stops it
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
COMMANDS = ("slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "munged")
CONF = Path("/etc/slurm/slurm.conf")
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_SOCKET_DIR = Path("/run/munge")


class Unavailable(Exception):
    """Slurm cannot run on this host; the message says why (a test skips with it)."""


@dataclass
class Cluster:
    node: str
    cpus: int
    memory_mb: int
    log_dir: Path


def install() -> None:
    """The Debian packages, when a command is missing (~13 s, 13 MB)."""
    if all(shutil.which(c) for c in COMMANDS):
        return
    if os.geteuid() != 0:
        raise Unavailable("Slurm is not installed and installing it needs root (apt-get)")
    if not shutil.which("apt-get"):
        raise Unavailable("Slurm is not installed and this host has no apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]):
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode:
            raise Unavailable(f"`{' '.join(cmd)}` failed: {done.stderr.strip()[-500:]}")
    missing = [c for c in COMMANDS if not shutil.which(c)]
    if missing:
        raise Unavailable(f"installed {', '.join(PACKAGES)} but {', '.join(missing)} are still missing")


def node_line() -> dict[str, str]:
    """This host as slurmd sees it (`slurmd -C`): its name, CPU layout and memory."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    return dict(field.split("=", 1) for field in out.splitlines()[0].split())


def slurm_conf(node: dict[str, str], state: Path) -> str:
    name = node["NodeName"]
    layout = " ".join(f"{k}={v}" for k, v in node.items() if k != "UpTime")
    return f"""\
ClusterName=d2f-test
SlurmctldHost={name}
SlurmUser=root
AuthType=auth/munge
StateSaveLocation={state}/ctld
SlurmdSpoolDir={state}/d
SlurmctldPidFile={state}/slurmctld.pid
SlurmdPidFile={state}/slurmd.pid
SlurmctldLogFile={state}/slurmctld.log
SlurmdLogFile={state}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# squeue still lists a finished job a day later: the plugin's squeue status command needs that
MinJobAge=86400
ReturnToService=2
{layout} State=UNKNOWN
PartitionName=cpu Nodes={name} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes={name} MaxTime=INFINITE State=UP
"""


@contextmanager
def restored(path: Path):
    """Put `path` back as it was (or remove it, and the directories made for it) on exit."""
    before = path.read_bytes() if path.exists() else None
    made = [p for p in reversed(path.parents) if not p.exists()]
    try:
        yield
    finally:
        if before is None:
            path.unlink(missing_ok=True)
            for d in reversed(made):
                shutil.rmtree(d, ignore_errors=True)
        else:
            path.write_bytes(before)


def start(cmd: list[str], log: Path, stack: ExitStack, user: str | None = None) -> subprocess.Popen:
    """A daemon in the foreground, stopped (by its pid) and reaped when the stack closes."""
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
                            user=user, group=user, extra_groups=[] if user else None)

    def stop():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # its session: the daemon and anything it forked
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    stack.callback(stop)
    return proc


def wait_for(what: str, check, timeout: float, procs: list[subprocess.Popen], logs: Path) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        dead = [p.args[0] for p in procs if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            why = f"{', '.join(dead)} exited" if dead else f"not after {timeout:.0f} s"
            raise Unavailable(f"{what}: {why} (logs in {logs})")
        time.sleep(0.3)


def node_idle(name: str) -> bool:
    out = subprocess.run(["sinfo", "-h", "-n", name, "-o", "%t"], capture_output=True, text=True)
    return out.returncode == 0 and out.stdout.split() and all(s == "idle" for s in out.stdout.split())


@contextmanager
def one_node_slurm(workdir: Path):
    """munged, slurmctld and slurmd on this host until the block ends; yields the node's name, CPUs and memory."""
    install()
    if os.geteuid() != 0:
        raise Unavailable("starting slurmd needs root")
    if CONF.exists() or subprocess.run(["pgrep", "-x", "slurmctld|slurmd"], capture_output=True).returncode == 0:
        raise Unavailable(f"this host already has a Slurm ({CONF} or a running daemon): not touching it")
    node = node_line()
    state = Path(workdir) / "slurm"
    for d in ("ctld", "d"):
        (state / d).mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        stack.enter_context(restored(CONF))
        CONF.write_text(slurm_conf(node, state))
        if not MUNGE_KEY.exists():  # packages installed without their postinst key
            stack.enter_context(restored(MUNGE_KEY))
            subprocess.run(["mungekey", "--create", "--keyfile", str(MUNGE_KEY)], check=True)
            shutil.chown(MUNGE_KEY, "munge", "munge")
        if not MUNGE_SOCKET_DIR.exists():
            stack.callback(shutil.rmtree, MUNGE_SOCKET_DIR, ignore_errors=True)
            MUNGE_SOCKET_DIR.mkdir(parents=True)
        shutil.chown(MUNGE_SOCKET_DIR, "munge", "munge")
        MUNGE_SOCKET_DIR.chmod(0o755)  # clients connect to the socket inside
        procs = [start(["munged", "-F"], state / "munged.out", stack, user="munge")]  # -F: logs to stderr
        wait_for("munged", lambda: subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode
                 == 0, 15, procs, state)
        procs.append(start(["slurmctld", "-D"], state / "slurmctld.out", stack))
        procs.append(start(["slurmd", "-D"], state / "slurmd.out", stack))
        wait_for("the node going idle", lambda: node_idle(node["NodeName"]), 60, procs, state)
        yield Cluster(node["NodeName"], int(node["CPUs"]), int(node["RealMemory"]), state)


if __name__ == "__main__":
    import sys
    import tempfile

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # unwinds the blocks below: daemons stopped, /etc restored
    with tempfile.TemporaryDirectory() as tmp, one_node_slurm(Path(tmp)) as cluster:
        print(f"Slurm up: node {cluster.node} ({cluster.cpus} CPUs, {cluster.memory_mb} MB), partitions cpu and "
              f"gpu; logs in {cluster.log_dir}. Ctrl-C or SIGTERM stops it.", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
