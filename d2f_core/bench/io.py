"""Crash-safe result files: whole files are replaced atomically, append-only logs survive a kill mid-line, one
writer holds a job's directory, and a full, read-only or forbidden disk is named with what to do."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

DISK_FIXES = {  # errno -> what to do; the command then exits 2 with one line naming the path
    errno.ENOSPC: "free space on that disk (or point the results at a larger one) and rerun the same command: "
                  "finished cells are kept and a cut-short decode resumes",
    errno.EDQUOT: "raise the disk quota (or point the results at another disk) and rerun the same command: "
                  "finished cells are kept and a cut-short decode resumes",
    errno.EROFS: "the file system is read-only: remount it writable, or run from a writable copy of the results, "
                 "then rerun the same command",
    errno.EACCES: "this user may not write there: fix the directory's owner or permissions (or run as its owner), "
                  "then rerun the same command",
}


class JobLocked(RuntimeError):
    """Another process holds the job's directory."""


def named(e: OSError, path: str | Path) -> OSError:
    """The same error with the path it concerns (a failed write or flush carries none)."""
    return e if e.filename else OSError(e.errno, e.strerror, str(path))


@contextmanager
def exclusive(directory: str | Path, what: str):
    """Hold an OS lock on `directory`/.lock while the block runs: a second writer stops at once, naming the holder's
    pid; the lock dies with its process, so a killed run never blocks a rerun."""
    path = Path(directory) / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # these two errors name the path themselves
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise JobLocked(f"{directory}: another {what} (pid {holder}) is writing this job; wait for it to end or "
                            f"stop it, then rerun (a finished or killed run leaves no lock behind)") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        except OSError as e:  # a full disk: name it
            raise named(e, path) from None
        yield
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write to a temp file in the same directory, then rename: readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:  # named by the file meant, not the temp file
        raise OSError(e.errno, e.strerror, str(path)) from None
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror, str(path)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_jsonl_tolerant(path: str | Path) -> list[dict]:
    """Rows of an append-only log; a torn last line (the process was killed while writing it) is dropped."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def rewrite_jsonl(path: str | Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


class JsonlAppender:
    """Appends one JSON line per record and flushes it, so a killed run loses at most the record in flight."""

    def __init__(self, path: str | Path):
        self.path = path
        self.f = open(path, "a")

    def write(self, row: dict) -> None:
        try:
            self.f.write(json.dumps(row) + "\n")
            self.f.flush()
        except OSError as e:
            raise named(e, self.path) from None

    def close(self) -> None:
        self.f.close()
