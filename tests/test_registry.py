"""The decoder registry is the entry point group `d2f_bench.decoders`: the built-ins come through it, a decoder from
another installed package runs a cell through the CLI, and the project's import graph has no circle."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from d2f_core.decode.base import ENTRY_POINTS, decoder_names

REPO = Path(__file__).resolve().parents[1]

PLUGIN = '''\
"""A decoder from outside the project: greedy decoding that recomputes the whole sequence every step (no cache)."""
from dataclasses import dataclass

import torch

from d2f_core.decode.base import Decoder, param


class Recompute(Decoder):
    @dataclass
    class Params:
        max_steps: int = param(1024, low=1)

    def generate_batch(self, prompts, max_new_tokens, stops=None):
        out = []
        for prompt, stop in zip(prompts, stops or [()] * len(prompts)):
            ids, forwards, positions = list(prompt), 0, 0
            for _ in range(min(max_new_tokens, self.p.max_steps)):
                with torch.no_grad():
                    logits = self.lm.model(torch.tensor([ids], device=self.lm.device)).logits
                forwards, positions = forwards + 1, positions + len(ids)
                ids.append(int(logits[0, -1].argmax()))
                if ids[-1] == self.lm.eos_id:
                    break
            out.append(self.finish(ids[len(prompt):], stop, forwards, positions))
        return out
'''


def test_the_built_ins_register_through_the_entry_point_group():
    from importlib.metadata import entry_points

    assert {ep.name for ep in entry_points(group=ENTRY_POINTS)} >= {"ar", "vanilla", "fast_dllm", "d2f"}
    assert {"ar", "vanilla", "fast_dllm", "d2f"} <= set(decoder_names())


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> Path:
    """A throwaway package `recompute-decoder` built and installed (pip) into a folder of its own."""
    src = tmp_path_factory.mktemp("recompute-decoder")
    (src / "recompute_decoder.py").write_text(PLUGIN)
    (src / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "recompute-decoder"
        version = "0.1"

        [project.entry-points."{ENTRY_POINTS}"]
        recompute = "recompute_decoder:Recompute"
        """))
    target = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           "--target", str(target), str(src)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return target


def d2f(plugin: Path, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin), str(REPO)])}
    return subprocess.run([sys.executable, "-m", "d2f_core.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)


def test_a_decoder_from_another_package_runs_a_cell_through_the_cli(plugin_path, model_dirs, data_dir, tmp_path):
    out = tmp_path / "job"
    done = d2f(plugin_path, "decode", "--model", model_dirs["ar"], "--benchmark", "tiny-gsm", "--data", data_dir,
               "--cells", "recompute/max_steps~64", "ar/default", "--max-new-tokens", 12, "--warmup", 0,
               "--threads", 1, "--limit", 4, "--out", out)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {cell: [json.loads(line) for line in (out / cell / "generations.jsonl").read_text().splitlines()]
            for cell in ("recompute/max_steps~64", "ar/default")}
    assert len(rows["recompute/max_steps~64"]) == 4
    for mine, ar in zip(rows["recompute/max_steps~64"], rows["ar/default"]):
        assert mine["tokens"] == ar["tokens"], "greedy without a cache decodes what the AR decoder decodes"
    bad = d2f(plugin_path, "decode", "--model", model_dirs["ar"], "--benchmark", "tiny-gsm", "--data", data_dir,
              "--cells", "recompute/max_steps~0", "--max-new-tokens", 12, "--out", tmp_path / "bad")
    assert bad.returncode == 0, "a cell that fails is recorded as failed; the job goes on"
    failed = json.loads((tmp_path / "bad/decoded.json").read_text())["cells"]
    assert failed == [{"cell": "recompute/max_steps~0", "status": "failed",
                       "error": "ValueError: recompute.max_steps = 0: must be in [1, inf]"}], "its parameters checked"


def test_an_unknown_decoder_names_the_registered_ones_from_every_package(plugin_path):
    done = subprocess.run([sys.executable, "-c", "from d2f_core.decode.base import build_decoder as b; b('x', None)"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(plugin_path)})
    assert "unknown decoder 'x'; valid: ar, d2f, fast_dllm, recompute, vanilla" in done.stderr


def imports_of(path: Path) -> set[str]:
    """The project modules a file imports, at module level or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return {n for n in names if n.split(".")[0] in ("d2f_core", "baselines")}


def test_the_import_graph_has_no_circle():
    files = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
             for root in ("d2f_core", "baselines") for p in (REPO / root).rglob("*.py")}
    graph = {m: {n for n in imports_of(p) if n in files and n != m} for m, p in files.items()}
    state, circles = {}, []

    def visit(module, stack):
        state[module] = "open"
        for dep in sorted(graph[module]):
            if state.get(dep) == "open":
                circles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert circles == [], " ; ".join(" -> ".join(c) for c in circles)
