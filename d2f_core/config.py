"""The workflow config turned into cells: model x benchmark x decoder x params, with sweeps expanded.

A cell entry's parameter given as a list is a sweep axis; the product of all axes becomes one cell each. `params` may
also be a list of such grids (their union), e.g. to tie two thresholds. Names are checked against the registries
here, so a typo fails before anything runs, with the valid names in the message.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

from d2f_core.bench.benchmarks import BENCHMARKS, SYNTHETIC
from d2f_core.bench.runner import params_label, parse_params, split_batch
from d2f_core.decode.base import check_params, decoder_names, decoder_params
from d2f_core.report.regress import SPEED_DECODERS

SCHEMA = Path(__file__).resolve().parents[1] / "workflow/schemas/config.schema.yaml"


@dataclass(frozen=True)
class Cell:
    model: str  # a model or an adapter name from the config
    benchmark: str
    decoder: str
    params: str  # the directory label, key~value pairs joined by ','

    def path(self, profile: str) -> str:
        return f"results/{profile}/{self.model}/{self.benchmark}/{self.decoder}/{self.params}"

    @property
    def batch_size(self) -> int:
        return split_batch(parse_params(self.params))[1]

    @property
    def key(self) -> str:
        """model/benchmark/decoder/params: how summary.csv, the tables and the gate name a cell."""
        return f"{self.model}/{self.benchmark}/{self.decoder}/{self.params}"


def check_yaml(path: str):
    """The parsed file; a YAML syntax error named by file and line (Snakemake's own message names neither)."""
    import yaml

    try:
        return yaml.safe_load(open(path, encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}" if mark else path
        raise ValueError(f"{where}: not valid YAML ({getattr(e, 'problem', e)}); fix the config file") from None


def check_config(path: str) -> list[Cell]:
    """Everything the DAG checks at parse time, without Snakemake: YAML (file and line), schema, cells and sweeps.
    Snakemake reads a `--configfile` before any workflow code runs, and its YAML error names neither file nor line."""
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    config = check_yaml(path)
    if not isinstance(config, dict):
        raise ValueError(f"{path}: the config must be a YAML mapping (profile, models, cells, ...)")
    try:
        validate(config, str(SCHEMA))
    except WorkflowError as e:  # it carries jsonschema's message: the field, the rule it broke
        raise ValueError(f"{path}: {e}") from None
    check_sources(config)
    cells = expand_cells(config)
    return cells + [cell for cell in expand_cells(config, "sweeps") if cell not in cells]


def train_corpora(config: dict) -> dict[str, dict]:
    """What models built here train on: `train_data`, else the synthetic benchmarks of `data` (the tiny profile)."""
    benchmarks = config["data"]["benchmarks"]
    return config.get("train_data") or {b: spec for b, spec in benchmarks.items() if b in SYNTHETIC}


def check_sources(config: dict) -> None:
    """What the schema cannot see: an `export` names a model (or adapter) of this config that can take the released
    layout, and every local data file is there. Checked when the DAG is parsed, before anything runs."""
    models, adapters = config["models"], config.get("adapters", {})
    for name, spec in models.items():
        src = spec.get("export")
        if src is None:
            continue
        if src not in models or "export" in models[src]:
            raise ValueError(f"models.{name}.export: {src!r} is not a model built or read here; valid: "
                             f"{', '.join(n for n in models if 'export' not in models[n])}")
        if spec["family"] not in ("llada", "dream") or models[src]["family"] != spec["family"]:
            raise ValueError(f"models.{name}.export: a {spec['family']} model cannot be exported from "
                             f"{src} ({models[src]['family']}); only llada and dream models have a released layout")
    for name, spec in adapters.items():
        src = spec.get("export")
        if src is None:
            continue
        wanted = models.get(spec["base"], {}).get("export")
        if src not in adapters or adapters[src]["base"] != wanted:
            raise ValueError(f"adapters.{name}.export: {src!r} must be an adapter of {wanted!r}, the model that "
                             f"{spec['base']!r} exports")
    for bench, spec in config["data"]["benchmarks"].items():
        for split, path in (spec.get("data_files") or {}).items():
            if not Path(path).exists():
                raise FileNotFoundError(
                    f"data.benchmarks.{bench}.data_files.{split}: {path} not found; put the real {bench} {split} "
                    f"split there as jsonl (the copies in ../shared/data/, see its README.md), point data_files at "
                    f"your copy, or remove data_files to read the dataset from the hub")


def model_names(config: dict) -> list[str]:
    return list(config["models"]) + list(config.get("adapters", {}))


def base_of(config: dict, name: str) -> str:
    """The model a cell runs on: an adapter's base, or the model itself."""
    return config.get("adapters", {}).get(name, {}).get("base", name)


def gen_length_of(config: dict, name: str) -> int:
    """max_new_tokens of a model's cells: its base model's `gen_length`, else the profile's."""
    return config["models"][base_of(config, name)].get("gen_length", config["gen_length"])


def expand_cells(config: dict, key: str = "cells") -> list[Cell]:
    """The cells of `config[key]`: `cells` (the paper's table rows) or `sweeps` (extra points for the Pareto plots)."""
    cells, names = {}, model_names(config)  # cell -> the entry that gave it
    for i, entry in enumerate(config.get(key, [])):
        where = f"{key}[{i}]"
        if entry["model"] not in names:
            raise ValueError(f"{where}.model: unknown model {entry['model']!r}; valid: {', '.join(names)}")
        if entry["decoder"] not in decoder_names():
            raise ValueError(f"{where}.decoder: unknown decoder {entry['decoder']!r}; "
                             f"valid: {', '.join(decoder_names())}")
        valid = decoder_params(entry["decoder"])
        points = entry.get("params", {})
        points = points if isinstance(points, list) else [points]  # a list of grids: their union
        for name in (k for grid in points for k in grid):
            if name not in valid:
                raise ValueError(f"{where}.params: decoder {entry['decoder']!r} has no parameter {name!r}; "
                                 f"valid: {', '.join(valid) or 'none'}")
        benchmarks = entry.get("benchmarks", list(config["data"]["benchmarks"]))
        for b in benchmarks:
            if b not in BENCHMARKS or b not in config["data"]["benchmarks"]:
                raise ValueError(f"{where}.benchmarks: unknown benchmark {b!r}; "
                                 f"valid: {', '.join(config['data']['benchmarks'])}")
        for grid in points:
            axes = {k: v if isinstance(v, list) else [v] for k, v in grid.items()}
            for values in itertools.product(*axes.values()):
                point = dict(zip(axes, values))
                try:  # the decoder's own declaration of its valid values, at parse time
                    typed = check_params(entry["decoder"], point, gen_length_of(config, entry["model"]))
                except ValueError as e:
                    raise ValueError(f"{where} ({entry['model']}, {entry['decoder']} {point}): {e}") from None
                named = {k: getattr(typed, k) for k in point}  # 8.0 and 8 name one cell
                labels = [params_label({**named, **({"batch_size": n} if n > 1 else {})})
                          for n in entry.get("batch_sizes", [1])]
                for cell in (Cell(entry["model"], b, entry["decoder"], label) for b in benchmarks for label in labels):
                    if cell in cells:
                        raise ValueError(f"{where} repeats the cell {cell.key} of {cells[cell]}: a setting is decoded "
                                         f"once; remove one of them")
                    cells[cell] = where
    return list(cells)


def speed_pairs(config: dict, cells: list[Cell], benchmark: str) -> tuple[list[Cell], list[tuple[Cell, Cell]]]:
    """The paired-speed group of a benchmark: its batch-1 table cells, and each D2F / Fast-dLLM cell paired with the
    vanilla cell of its base model that has the most steps (one token per step, the paper's baseline row) and AR."""
    here = [c for c in cells if c.benchmark == benchmark and c.batch_size == 1]  # timed one problem at a time

    def steps(c: Cell) -> int:
        value = int(float(parse_params(c.params).get("steps", 0)))
        return value or gen_length_of(config, c.model)

    pairs = []
    for c in (c for c in here if c.decoder in SPEED_DECODERS):
        vanilla = [v for v in here if v.decoder == "vanilla" and base_of(config, v.model) == base_of(config, c.model)]
        if vanilla:
            pairs.append((c, max(vanilla, key=steps)))
        pairs += [(c, ar) for ar in here if ar.decoder == "ar"][:1]
    return here, pairs
