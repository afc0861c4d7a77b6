"""`d2f overhead`: a decoder's aggregate TPS at each batch size and the share of its wall time spent outside model
forwards (its own Python: bookkeeping, masks, commit rules). The batched loops are meant to keep that share small;
this measures it on real prompts (a benchmark, not a timed test)."""

from __future__ import annotations

import time

from d2f_core.bench.meter import sync, timed_call
from d2f_core.decode.base import build_decoder
from d2f_core.model.forward import backbone


class ForwardClock:
    """Adds up the time spent in the model's backbone and LM head (device-synchronised around each call, so on a GPU
    the share outside is the host's time the device waits for, an upper bound of what overlap could hide)."""

    def __init__(self, lm):
        self.seconds, self.device = 0.0, lm.device
        for module in (backbone(lm.model).model, backbone(lm.model).lm_head):
            module.forward = self.timed(module.forward)

    def timed(self, forward):
        def call(*args, **kwargs):
            sync(self.device)
            start = time.perf_counter()
            out = forward(*args, **kwargs)
            sync(self.device)
            self.seconds += time.perf_counter() - start
            return out
        return call


def measure(lm, decoder: str, params: dict, prompts: list[list[int]], stops: list, max_new_tokens: int,
            batch_sizes: list[int]) -> list[dict]:
    """Per batch size: the prompts in batches (in the given order), a warm-up batch first; aggregate TPS and the
    share of the timed windows outside forwards."""
    dec, clock, out = build_decoder(decoder, lm, **params), ForwardClock(lm), []
    for size in batch_sizes:
        batches = [list(range(i, min(i + size, len(prompts)))) for i in range(0, len(prompts), size)]
        dec.generate_batch([prompts[i] for i in batches[0]], max_new_tokens, [stops[i] for i in batches[0]])
        clock.seconds, seconds, tokens = 0.0, 0.0, 0
        for batch in batches:
            gens, _, took = timed_call(dec.generate_batch, lm.device, [prompts[i] for i in batch], max_new_tokens,
                                       [stops[i] for i in batch])
            seconds, tokens = seconds + took, tokens + sum(len(g.tokens) for g in gens)
        out.append({"batch_size": size, "problems": len(prompts), "tokens": tokens, "seconds": seconds,
                    "tps": tokens / seconds, "outside_forwards": 1 - clock.seconds / seconds})
    for row in out:
        row["tps_vs_batch_1"] = row["tps"] / out[0]["tps"] if batch_sizes[0] == 1 else None
    return out
