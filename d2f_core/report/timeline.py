"""Decoding timeline: for one problem, which answer position was committed at which step, blocks outlined.

It shows what the tables cannot: D2F decodes several blocks at once (pipelining), the baselines one block at a time.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402


def load_trace(cell_dir: str | Path) -> tuple[list, dict]:
    with open(Path(cell_dir) / "samples.jsonl") as f:
        first = json.loads(f.readline())
    if not first.get("trace"):
        raise ValueError(f"{cell_dir}: the first sample has no trace")
    return first["trace"], first


def plot_timeline(trace: list, title: str, out_png: str | Path) -> None:
    steps = max(s for s, _, _ in trace) + 1
    length = max(p for _, p, _ in trace) + 1
    fig, ax = plt.subplots(figsize=(min(12, max(6.5, 3 + steps * 0.18)), 4.8))
    cmap = plt.get_cmap("tab10")
    blocks = {}
    for step, pos, block in trace:
        ax.add_patch(Rectangle((step, pos), 1, 1, color=cmap(block % 10), alpha=0.85))
        lo, hi = blocks.get(block, (pos, pos))
        blocks[block] = (min(lo, pos), max(hi, pos))
    for block, (lo, hi) in blocks.items():
        first = min(s for s, _, b in trace if b == block)
        last = max(s for s, _, b in trace if b == block)
        ax.add_patch(Rectangle((first, lo), last - first + 1, hi - lo + 1, fill=False, lw=1.2, ec=cmap(block % 10)))
    ax.set_xlim(0, steps)
    ax.set_ylim(length, 0)
    ax.set_xlabel(f"decoding step (forward pass); {steps} in all")
    ax.set_ylabel("answer position")
    ax.set_title(f"{title}\n{len(trace)} tokens in {steps} forwards", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png, dpi=150)
    plt.close(fig)
