"""One arm of the gate's A/B step: a process that decodes with the decoders of one code tree, on request.

Run by path (`python .../ab_worker.py`), never imported as part of the package: `d2f_core` then resolves through
PYTHONPATH to the tree under test (a worktree of the reference commit, or this checkout), so each arm runs its own
decoders, its own model loader and its own prompt code. It calls only what every commit since the A/B gate (and
the reference commit it started from) has: `load_model`, `build_decoder`, `Decoder.generate` at batch size 1,
`prompt_ids`, `get_benchmark`, `read_jsonl`. Both arms time `generate` with one instrument, this file's sibling
`meter.py` loaded by path, so a change to the instrument can never pass for a change of speed.

Protocol: one JSON object a line on stdin, one reply a line on the stdout the process started with (everything the
libraries print goes to stderr). `setup` loads the arms and warms each up on the longest prompt; `run` times one
`generate` of one arm on one problem; an exception becomes `{"error": ...}` and the worker goes on.
"""

import importlib.util
import json
import os
import sys
import traceback
from pathlib import Path


def load_meter():
    """The timing instrument of the checkout that started the A/B, whatever tree this process decodes with."""
    spec = importlib.util.spec_from_file_location("ab_meter", Path(__file__).with_name("meter.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Arms:
    def __init__(self, msg: dict):
        import torch

        import d2f_core
        from d2f_core.bench.benchmarks import get_benchmark
        from d2f_core.bench.runner import prompt_ids
        from d2f_core.decode.base import build_decoder
        from d2f_core.model.load import load_model
        from d2f_core.train.corpora import read_jsonl

        torch.set_num_threads(msg["threads"])
        self.code = str(Path(d2f_core.__file__).resolve().parents[1])
        self.bench = get_benchmark(msg["benchmark"])
        self.rows = read_jsonl(self.bench.test_file(msg["data_dir"]))[: msg["limit"]]
        slowdown, loaded = msg.get("slowdown") or {}, {}
        self.arms = {}
        for arm in msg["arms"]:
            key = (arm["model"], arm["adapter"], arm["merge"], arm["decoder"] if arm["decoder"] in slowdown else None)
            if key not in loaded:
                loaded[key] = load_model(arm["model"], adapter=arm["adapter"], merge=arm["merge"])
                if arm["decoder"] in slowdown:  # the gate's sensitivity check: only this arm's forwards slow down
                    from d2f_core.bench.paired import slow_down

                    slow_down(loaded[key], slowdown[arm["decoder"]])
            lm = loaded[key]
            dec = build_decoder(arm["decoder"], lm, **arm["params"])
            prompts = [prompt_ids(lm, self.bench, row, arm["chat"]) for row in self.rows]
            self.arms[arm["cell"]] = (lm, dec, prompts, arm["max_new_tokens"])
        for lm, dec, prompts, length in self.arms.values():  # never timed; the longest prompt sizes every buffer
            longest = max(range(len(prompts)), key=lambda i: len(prompts[i]))
            for _ in range(msg["warmup"]):
                dec.generate(prompts[longest], length, self.bench.stops(self.rows[longest]))

    def run(self, meter, cell: str, problem: int) -> dict:
        lm, dec, prompts, length = self.arms[cell]
        row = self.rows[problem]
        gen, latency = meter.timed_generate(dec, lm.device, prompts[problem], length, list(self.bench.stops(row)))
        return {"tokens": list(gen.tokens), "text": gen.text, "latency": latency, "forwards": gen.forwards}


def main() -> None:
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library prints go to stderr, never into the replies
    meter, arms = load_meter(), None
    for line in sys.stdin:
        msg = json.loads(line)
        try:
            if msg["op"] == "setup":
                arms = Arms(msg)
                reply = {"code": arms.code, "problems": len(arms.rows)}
            else:
                reply = arms.run(meter, msg["cell"], msg["problem"])
        except Exception as e:  # reported to the orchestrator, which names the arm and stops the gate
            reply = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        replies.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    main()
