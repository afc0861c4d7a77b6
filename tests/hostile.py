"""Hostile and careless completions, each one kind of misbehaviour, and the canaries that show it was contained.

Plain stdlib, so tests/test_sandbox.py can also run it as an unprivileged user under the system Python.
Each completion defines a wrong `f` (the tests want f(2) == 4), so every one of them must score 0.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

SECRET = "hf_d2f_canary_secret_0123456789"
TESTS = ["assert f(2) == 4"]


class Canaries:
    """A file outside the sandbox, a secret in this process's environment and home, a local listener, this pid."""

    def __init__(self, root: Path):
        self.root = root
        self.results = root / "results" / "cell" / "keep.txt"
        self.home = root / "home"
        self.token_file = self.home / ".cache" / "huggingface" / "token"
        self.tmp = root / "tmp"  # the sandbox work dirs are made here, beside the neighbour file
        self.neighbour = self.tmp / "neighbour.txt"
        for path, text in ((self.results, "keep"), (self.token_file, SECRET), (self.neighbour, "keep")):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        os.environ["HF_TOKEN"], os.environ["HOME"] = SECRET, str(self.home)
        tempfile.tempdir = str(self.tmp)
        self.received: list[bytes] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._listen, daemon=True).start()
        self.marker = f"61.{os.getpid()}{int(time.time() * 1000) % 100000}"  # a grandchild's `sleep` argument

    def _listen(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.received.append(conn.recv(100) or b"<connected>")
            conn.close()

    def completions(self) -> dict[str, str]:
        wrong = "def f(x):\n    return 0\n"
        attempt = lambda code: wrong + "try:\n" + "".join(f"    {line}\n" for line in code.splitlines()) + \
            "except BaseException:\n    pass\n"  # noqa: E731
        return {
            "sys.exit(0)": wrong + "import sys\nsys.exit(0)\n",
            "os._exit(0)": wrong + "import os\nos._exit(0)\n",
            "raise SystemExit": wrong + "raise SystemExit\n",
            "kill itself": wrong + "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
            "overwrite results/": attempt(f"open({str(self.results)!r}, 'w').write('pwned')"),
            "overwrite $HOME": attempt(f"open({str(self.token_file)!r}, 'w').write('pwned')"),
            "delete beside its dir": attempt(f"import os, shutil\nos.remove({str(self.neighbour)!r})\n"
                                             "shutil.rmtree(os.path.dirname(os.getcwd()))"),
            "read the environment": wrong + "import os, sys\nprint(dict(os.environ))\n"
                                            "sys.stderr.write(repr(dict(os.environ)))\nraise ValueError(os.environ)\n",
            "read a secret file": wrong + f"import sys\ntry:\n    s = open({str(self.token_file)!r}).read()\n"
                                          "except OSError:\n    s = 'none'\nraise ValueError(s)\n",
            "reach 127.0.0.1": attempt(f"import socket\nsocket.create_connection(('127.0.0.1', {self.port})).send(b'pwned')"),
            "kill the scorer": attempt(f"import os, signal\nos.kill({os.getpid()}, signal.SIGKILL)"),
            "grandchild outlives": wrong + f"import os, time\nif os.fork() == 0:\n    os.setsid()\n"
                                           f"    if os.fork() == 0:\n        os.execv('/bin/sleep', ['sleep', '{self.marker}'])\n"
                                           "    os._exit(0)\ntime.sleep(60)\n",
            "print flood": wrong + "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n",
            "non-UTF-8 output": wrong + "import sys\nsys.stdout.buffer.write(b'\\xff\\xfe\\x80' * 1000)\n"
                                        "sys.stderr.buffer.write(b'\\xff\\xfe\\x80' * 1000)\nraise ValueError\n",
            "deep nesting": "def f(x):\n    return " + "(" * 200_000 + "0" + ")" * 200_000 + "\n",
            "files during removal": wrong + "import os\nif os.fork() == 0:\n    i = 0\n    while True:\n"
                                            "        open(f'junk{i}', 'w').close()\n        i += 1\nos._exit(1)\n",
            "fill /tmp": wrong + fill("/tmp"),
            "fill its scratch dir": wrong + fill("."),
        }

    def intact(self) -> dict[str, bool]:
        """Every canary as it was (the scorer is alive if this runs at all)."""
        alive_grandchild = any(self.marker in _cmdline(p) for p in os.listdir("/proc") if p.isdigit())
        return {"results file": self.results.read_text() == "keep", "home secret": self.token_file.read_text() == SECRET,
                "neighbour file": self.neighbour.exists(), "listener untouched": not self.received,
                "no grandchild left": not alive_grandchild,
                "no sandbox dir left": sorted(p.name for p in self.tmp.iterdir()) == ["neighbour.txt"]}


def fill(where: str, files: int = 2048) -> str:
    """A program writing `files` files of 1 MiB into `where` (each under the file-size limit, 2 GiB in all)."""
    return (f"import os\nfor i in range({files}):\n    with open(os.path.join({where!r}, f'fill{{i}}'), 'wb') as f:\n"
            "        f.write(b'x' * 2**20)\n")


class HostUse:
    """The most host memory (MemAvailable) and disk (used space under `path`) taken while the block runs, in MiB,
    sampled every 5 ms against their values at the start."""

    def __init__(self, path: str):
        self.path, self.memory_mb, self.disk_mb = path, 0.0, 0.0

    @staticmethod
    def _available_mb() -> float:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:")) / 1024

    def _used_mb(self) -> float:
        st = os.statvfs(self.path)
        return (st.f_blocks - st.f_bfree) * st.f_frsize / 2**20

    def _sample(self) -> None:
        while not self.done.wait(0.005):
            self.memory_mb = max(self.memory_mb, self.memory0 - self._available_mb())
            self.disk_mb = max(self.disk_mb, self._used_mb() - self.disk0)

    def __enter__(self):
        self.memory0, self.disk0, self.done = self._available_mb(), self._used_mb(), threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def humaneval_row() -> dict:
    return {"doc": {"prompt": "def f(x):\n", "entry_point": "f", "test": "def check(candidate):\n"
                    "    assert candidate(2) == 4\n"}}


def mbpp_row() -> dict:
    return {"doc": {"test_list": TESTS, "test_setup_code": ""}}


def main(root: str) -> None:
    """As an unprivileged user: every completion through the three code scorers; prints the verdicts as JSON."""
    from d2f_core.bench.benchmarks import get_benchmark

    canaries = Canaries(Path(root))
    rows = {"tiny-code": {"id": 0, "tests": TESTS}, "humaneval": humaneval_row(), "mbpp": mbpp_row()}
    verdicts, host_use = {}, {}
    for name, completion in canaries.completions().items():
        for bench, row in rows.items():
            if name == "grandchild outlives" and bench != "tiny-code":
                continue  # the same timeout path, at the real sets' 30 s wall limit
            body = completion.split("\n", 1)[1] if bench == "humaneval" else completion  # HumanEval: the body
            output = body if bench != "mbpp" else completion + "\n[DONE]"
            try:
                with HostUse(tempfile.gettempdir()) as use:
                    verdicts[f"{bench}: {name}"] = get_benchmark(bench).score(row, output)["correct"]
                host_use[f"{bench}: {name}"] = [use.memory_mb, use.disk_mb]
            except Exception as e:  # the scorer itself must never fail on a completion
                verdicts[f"{bench}: {name}"] = f"scorer raised {type(e).__name__}"
    print(json.dumps({"uid": os.getuid(), "verdicts": verdicts, "intact": canaries.intact(), "host_use": host_use}))


if __name__ == "__main__":
    main(sys.argv[1])
