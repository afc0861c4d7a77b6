"""Fetch released models and adapters from the Hugging Face hub at a pinned revision, or fail saying how to fix it.

The paper profile's only network step. A config can point a model at a local directory instead (`path:`), which
is how a machine without the hub runs it.
"""

from __future__ import annotations

from pathlib import Path


class Unavailable(RuntimeError):
    """A model or adapter that cannot be had: the message names the repo, the path and the fix."""


def fetch(repo: str, revision: str, out: str | Path, name: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    out = Path(out)
    try:
        snapshot_download(repo_id=repo, revision=revision, local_dir=out)
    except GatedRepoError as e:
        raise Unavailable(f"{name}: {repo} is gated: accept its licence on huggingface.co, then `hf auth login` "
                          f"(or set HF_TOKEN) and rerun ({type(e).__name__})") from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, HfHubHTTPError, OSError) as e:
        reason = " ".join(str(e).split())[:160]
        raise Unavailable(
            f"{name}: cannot download {repo}@{revision} into {out}: {type(e).__name__}: {reason}\n"
            f"  fix: run where huggingface.co is reachable, or download it elsewhere "
            f"(`hf download {repo} --revision {revision} --local-dir DIR`) and set `path: DIR` for {name} in the "
            f"config") from None
    return out


def check_local(path: str | Path, name: str, marker: str) -> Path:
    path = Path(path)
    if not (path / marker).exists():
        raise Unavailable(f"{name}: local copy {path} has no {marker}; point `path:` at a complete download "
                          f"(or remove `path:` to fetch it from the hub)")
    return path
