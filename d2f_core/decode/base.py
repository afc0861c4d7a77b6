"""The decoder contract and registry (DESIGN §4).

A decoder is built from a loaded model and typed parameters and exposes `generate_batch(prompts, max_new_tokens,
stops)`: prompts of any lengths decoded in one batch, one `Generation` per prompt, each row exactly what that prompt
decodes to alone. `generate` is a batch of one through the same code. Timing is not its business: the cell runner
times each call; a row's `finished_s` stamp is taken when the decoder has read the results that made it final.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from dataclasses import dataclass, field
from importlib.metadata import entry_points

from d2f_core.model.load import LoadedModel


@dataclass
class Generation:
    tokens: list[int]  # the answer: up to, not including, the first EOS or completed stop string
    canvas_tokens: list[int]  # every position the decoder materialised (diffusion canvases include EOS fill)
    forwards: int  # model forward passes
    forward_positions: int  # query positions processed over all forwards
    text: str = ""  # the decoded answer (same cut as `tokens`)
    trace: list[tuple[int, int, int]] | None = None  # per committed token: (step, answer position, block)
    finished_at: int = 0  # how many of the batch's forwards had run when this row became final
    finished_s: float = 0.0  # time.perf_counter() then: the row's latency in a batch, measured without a device sync
    slots: int = 0  # query slots the batch's forwards computed, pads and waiting rows included (same on every row)


class Decoder:
    """Base class: subclasses set `Params` (a dataclass of their parameters) and implement `generate_batch`; a
    package registers one under a name through the entry point group `d2f_bench.decoders`."""

    name: str = ""
    Params: type = None

    def __init__(self, lm: LoadedModel, params):
        self.lm, self.p = lm, params
        self.check()

    def check(self) -> None:
        """Reject a model this decoder cannot drive (e.g. diffusion decoding of an AR model)."""

    def generate(self, prompt_ids: list[int], max_new_tokens: int, stop: list[str] = ()) -> Generation:
        """Batch 1: a batch of one through `generate_batch`, not a second copy of the loop."""
        return self.generate_batch([prompt_ids], max_new_tokens, [stop])[0]

    def generate_batch(self, prompts: list[list[int]], max_new_tokens: int,
                       stops: list[list[str]] | None = None) -> list[Generation]:
        raise NotImplementedError

    def finish(self, canvas: list[int], stop, forwards: int, positions: int, trace=None,
               finished_at: int = 0) -> Generation:
        """A row's Generation, stamped now: call it when the row is final (the device results it read are in)."""
        tokens, text = truncate(self.lm.tokenizer, canvas, self.lm.eos_id, stop)
        return Generation(tokens, list(canvas), forwards, positions, text, trace, finished_at or forwards,
                          time.perf_counter())


def truncate(tokenizer, ids: list[int], eos_id: int, stop) -> tuple[list[int], str]:
    """Cut at the first EOS, then before the first completed stop string; returns (token ids, text)."""
    if eos_id in ids:
        ids = ids[: ids.index(eos_id)]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    cut = min((i for i in (text.find(s) for s in stop or ()) if i >= 0), default=-1)
    if cut < 0:
        return list(ids), text
    n = 0  # longest token prefix whose text ends at or before the stop string
    while n < len(ids) and len(tokenizer.decode(ids[: n + 1], skip_special_tokens=True)) <= cut:
        n += 1
    return list(ids[:n]), text[:cut]


def param(default, *, low: float | None = None, high: float | None = None, choices: tuple = (),
          length: str | None = None):
    """A decoder parameter with its valid values, declared once: [low, high] (inclusive), one of `choices`, and how
    it must relate to the generation length (`length`: "divides" or "at_most"). `check_params` enforces it at config
    parse, build and CLI time."""
    return field(default=default, metadata={"low": low, "high": high, "choices": tuple(choices), "length": length})


def check_params(name: str, params: dict, max_new_tokens: int | None = None):
    """`params` (strings from a CLI or a path, or YAML values) -> decoder `name`'s typed Params, or a ValueError
    naming the parameter, the value and what is allowed. With `max_new_tokens`, the length rules are checked too."""
    cls = _lookup(name)
    fields = {f.name: f for f in dataclasses.fields(cls.Params)}
    unknown = sorted(set(params) - set(fields))
    if unknown:
        raise ValueError(f"decoder {name!r} has no parameter {', '.join(unknown)}; valid: {', '.join(fields)}")
    typed = {k: _coerce(v, type(fields[k].default), f"{name}.{k}") for k, v in params.items()}
    for key, value in typed.items():
        rule, label = fields[key].metadata, f"{name}.{key} = {value!r}"
        if rule.get("choices") and value not in rule["choices"]:
            raise ValueError(f"{label}: valid values are {', '.join(map(str, rule['choices']))}")
        low, high = rule.get("low"), rule.get("high")
        if isinstance(value, float) and not math.isfinite(value) or (
                low is not None and value < low) or (high is not None and value > high):
            raise ValueError(f"{label}: must be in [{'-inf' if low is None else low}, "
                             f"{'inf' if high is None else high}]")
    p = cls.Params(**typed)
    if max_new_tokens is not None:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens = {max_new_tokens}: must be at least 1")
        for f in dataclasses.fields(p):
            rule, value = f.metadata.get("length"), getattr(p, f.name)
            if rule == "divides" and max_new_tokens % value or rule == "at_most" and value > max_new_tokens:
                what = "divide" if rule == "divides" else "be at most"
                raise ValueError(f"{name}.{f.name} = {value}: must {what} the generation length {max_new_tokens}")
        if hasattr(p, "check_length"):
            p.check_length(max_new_tokens)
    return p


ENTRY_POINTS = "d2f_bench.decoders"  # name = "module:DecoderClass"; the built-ins are listed in pyproject.toml


@functools.cache
def _entry_points() -> dict:
    """Every installed package's decoders by name (the built-ins come the same way); nothing imported yet."""
    found = {}
    for ep in entry_points(group=ENTRY_POINTS):
        if ep.name in found and found[ep.name].value != ep.value:
            raise ValueError(f"decoder {ep.name!r} is registered twice: {found[ep.name].value} and {ep.value} "
                             f"(entry point group {ENTRY_POINTS}); uninstall one of the packages")
        found[ep.name] = ep
    if not found:
        raise RuntimeError(f"no decoder registered in entry point group {ENTRY_POINTS}: install the project "
                           f"(pip install -e .)")
    return found


@functools.cache
def _load(name: str) -> type[Decoder]:
    ep = _entry_points()[name]
    try:
        cls = ep.load()
    except Exception as e:
        raise ImportError(f"decoder {name!r} ({ep.value}, entry point group {ENTRY_POINTS}) cannot be imported: "
                          f"{type(e).__name__}: {e}") from e
    if not (isinstance(cls, type) and issubclass(cls, Decoder) and dataclasses.is_dataclass(cls.Params)):
        raise TypeError(f"decoder {name!r} ({ep.value}) must be a Decoder subclass with a dataclass `Params`")
    cls.name = name
    return cls


def decoder_names() -> list[str]:
    return sorted(_entry_points())


def decoder_params(name: str) -> dict[str, object]:
    """The parameters of decoder `name` with their defaults."""
    cls = _lookup(name)
    return {f.name: f.default for f in dataclasses.fields(cls.Params)}


def build_decoder(name: str, lm: LoadedModel, **params) -> Decoder:
    """Build a registered decoder; string values (from the CLI or a path) are converted to the field's type."""
    return _lookup(name)(lm, check_params(name, params))


def _lookup(name: str) -> type[Decoder]:
    if name not in _entry_points():
        raise ValueError(f"unknown decoder {name!r}; valid: {', '.join(decoder_names())}")
    return _load(name)


def _coerce(value, kind: type, label: str):
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    try:
        if kind is bool:
            if str(value).lower() not in ("true", "false", "1", "0"):
                raise ValueError(value)
            return str(value).lower() in ("true", "1")
        if isinstance(value, bool):  # YAML `true` is no number
            raise ValueError(value)
        if kind is int:
            if not float(value).is_integer():  # 8.5 for a block size: an error, never a silent 8
                raise ValueError(value)
            return int(float(value))
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"{label}: cannot read {value!r} as {kind.__name__}") from None
