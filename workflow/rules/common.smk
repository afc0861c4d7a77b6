import hashlib
import json
import re
import subprocess

from d2f_core.bench.benchmarks import SYNTHETIC, get_benchmark
from d2f_core.bench.runner import parse_params
from d2f_core.config import (
    base_of,
    check_sources,
    expand_cells,
    gen_length_of,
    model_names,
    speed_pairs,
    train_corpora,
)
from d2f_core.model.hub import check_local

PROFILE = config["profile"]
DATA = f"results/{PROFILE}/data"
MODELS = f"results/{PROFILE}/models"
BENCHMARKS = list(config["data"]["benchmarks"])
REAL_BENCHMARKS = [b for b in BENCHMARKS if b not in SYNTHETIC]
TRAIN_DATA = train_corpora(config)  # the synthetic corpora models built here train on
SYNTHETIC_DATA = sorted({b for b in BENCHMARKS if b in SYNTHETIC} | set(TRAIN_DATA))
ADAPTERS = config.get("adapters", {})
CELLS = expand_cells(config)
SWEEPS = [cell for cell in expand_cells(config, "sweeps") if cell not in CELLS]
DECODERS = sorted({cell.decoder for cell in CELLS + SWEEPS})
BATCH_BENCHMARKS = sorted(
    {cell.benchmark for cell in CELLS + SWEEPS if cell.batch_size > 1}
)


def one_of(names):
    """A wildcard constraint matching exactly these names (or nothing)."""
    return "|".join(re.escape(n) for n in names) or "(?!)"


def named(section, key):
    """Names in config[section] (models or adapters) whose entry has `key` (train, source or path)."""
    return [name for name, spec in config.get(section, {}).items() if key in spec]


# Exports and local data files, then local copies (`path:`), are checked now, so a wrong one fails before any job runs.
check_sources(config)
for _section, _marker in (
    ("models", "config.json"),
    ("adapters", "adapter_config.json"),
):
    for _name in named(_section, "path"):
        check_local(config[_section][_name]["path"], _name, _marker)


wildcard_constraints:
    model=one_of(model_names(config)),
    adapter=one_of(ADAPTERS),
    benchmark=one_of(sorted(set(BENCHMARKS) | set(SYNTHETIC_DATA))),
    decoder="[a-z0-9_]+",
    params="[^/]+",


def get_train_mix():
    return [f"{b}:{spec.get('weight', 1)}" for b, spec in TRAIN_DATA.items()]


def get_prompt_args(wildcards):
    spec = config["data"]["benchmarks"][wildcards.benchmark]
    args = [f"--shots {spec['shots']}"] if "shots" in spec else []
    if spec.get("data_files"):
        args.append(
            "--data-files "
            + " ".join(f"{k}={v}" for k, v in spec["data_files"].items())
        )
    if spec.get("docs"):
        args.append("--docs {} {}".format(*spec["docs"]))
    if not spec.get("until", True):
        args.append("--no-until")
    if config.get("limit"):
        args.append(f"--limit {config['limit']}")
    return " ".join(args)


def get_data_sizes(wildcards):
    sizes = (
        config["data"]["benchmarks"].get(wildcards.benchmark)
        or TRAIN_DATA[wildcards.benchmark]
    )
    return f"--train {sizes['train']} --test {sizes.get('test', 0)}"


def spec_of(name):
    return ADAPTERS.get(name) or config["models"][name]


def model_dir(name):
    """Where a model or adapter lives: its local `path`, or results/{profile}/models/{name}."""
    return spec_of(name).get("path", f"{MODELS}/{name}")


def model_weights(name):
    """The file that says a model or adapter is ready (the output of the rule that makes it)."""
    spec, adapter = spec_of(name), name in ADAPTERS
    if "train" in spec:
        return (
            f"{model_dir(name)}/{'adapter_model' if adapter else 'model'}.safetensors"
        )
    return f"{model_dir(name)}/{'adapter_config' if adapter else 'config'}.json"


def base_model(name):
    return base_of(config, name)


def get_export_inputs(wildcards):
    return model_weights(spec_of(wildcards.get("model") or wildcards.adapter)["export"])


def get_export_args(wildcards):
    """`d2f export` of a model (its family's layout) or of an adapter (its exported base's family's layout)."""
    if "adapter" in wildcards.keys():
        base = config["models"][ADAPTERS[wildcards.adapter]["base"]]
        src = ADAPTERS[wildcards.adapter]["export"]
        return f"--src {model_dir(src)} --format {base['family']} --adapter-of {model_dir(ADAPTERS[wildcards.adapter]['base'])}"
    spec = config["models"][wildcards.model]
    return f"--src {model_dir(spec['export'])} --format {spec['family']}"


def get_fetch_args(wildcards):
    name = wildcards.get("model") or wildcards.get("adapter")
    source = spec_of(name)["source"]
    return f"--name {name} --repo {source['repo']} --revision {source['revision']}"


def get_train_inputs(wildcards):
    spec = config["models"][wildcards.model]
    inputs = {
        "tokenizer": f"{MODELS}/tokenizer/tokenizer.json",
        "data": expand("{data}/{b}.train.jsonl", data=DATA, b=TRAIN_DATA),
    }
    if "init" in spec:
        inputs["init"] = model_weights(spec["init"])
    return inputs


def get_train_args(wildcards):
    spec = config["models"][wildcards.model]
    args = [
        f"--family {spec['family']}",
        f"--gen-length {gen_length_of(config, wildcards.model)}",
    ]
    if "init" in spec:
        args.append(f"--init {model_dir(spec['init'])}")
    if "arch" in spec:
        args.append("--arch " + " ".join(f"{k}={v}" for k, v in spec["arch"].items()))
    args.append("--set " + " ".join(f"{k}={v}" for k, v in spec["train"].items()))
    return " ".join(args)


def get_group_cells(wildcards):
    """The cells (decoder/params) of a model on a benchmark: its table cells, then its sweep points."""
    return [
        f"{c.decoder}/{c.params}"
        for c in CELLS + SWEEPS
        if (c.model, c.benchmark) == (wildcards.model, wildcards.benchmark)
    ]


def get_cell_dir(wildcards):
    return f"results/{PROFILE}/{wildcards.model}/{wildcards.benchmark}/{wildcards.decoder}/{wildcards.params}"


def every_core(wildcards):
    """The threads of a job that holds its machine: every core given (--cores). A cluster run has no --cores; its
    profile sets these jobs' threads (set-threads), which replaces this function."""
    return workflow.cores


def get_torch_threads(wildcards, threads):
    return config.get("speed", {}).get("threads") or threads


def get_score_threads(wildcards):
    return workflow.cores if get_benchmark(wildcards.benchmark).runs_code else 1


def get_base_model(wildcards):
    return base_model(wildcards.model)


def get_distill_inputs(wildcards):
    spec = ADAPTERS[wildcards.adapter]
    data = spec.get("pairs") or expand(
        "{data}/{b}.train.jsonl", data=DATA, b=TRAIN_DATA
    )
    return {"base": model_weights(spec["base"]), "data": data}


def get_distill_args(wildcards):
    """The tiny mix of benchmark training splits, or the paper's question/answer pairs (`pairs:`)."""
    spec = ADAPTERS[wildcards.adapter]
    args = [
        f"--base {model_dir(spec['base'])}",
        f"--block-size {spec['block_size']}",
        f"--gen-length {spec.get('gen_length', gen_length_of(config, spec['base']))}",
    ]
    if "pairs" in spec:
        args.append(f"--pairs {spec['pairs']}")
        args += ["--chat"] if config["models"][spec["base"]].get("chat") else []
    else:
        args.append(f"--data {DATA} --benchmarks " + " ".join(get_train_mix()))
    args += [f"--lora-{k} {v}" for k, v in spec.get("lora", {}).items()]
    args.append("--set " + " ".join(f"{k}={v}" for k, v in spec["train"].items()))
    return " ".join(args)


def get_decode_inputs(wildcards):
    inputs = {
        "model": model_weights(base_model(wildcards.model)),
        "data": f"{DATA}/{wildcards.benchmark}.test.jsonl",
    }
    if wildcards.model in ADAPTERS:
        inputs["adapter"] = model_weights(wildcards.model)
    return inputs


def get_decode_args(wildcards):
    base = base_model(wildcards.model)
    args = [
        f"--model {model_dir(base)}",
        f"--warmup {config['warmup']}",
        f"--max-new-tokens {gen_length_of(config, wildcards.model)}",
    ]
    adapter = ADAPTERS.get(wildcards.model)
    if adapter:
        args.append(f"--adapter {model_dir(wildcards.model)}")
        if adapter.get("merge"):
            args.append("--merge")
    bench = config["data"]["benchmarks"][wildcards.benchmark]
    if config["models"][base].get("chat") and bench.get("chat", True):
        args.append("--chat")
    if config.get("limit"):
        args.append(f"--limit {config['limit']}")
    return " ".join(args)


SPEED_BENCHMARKS = BENCHMARKS if "speed" in config else []


def get_speed_inputs(wildcards):
    cells, _ = speed_pairs(config, CELLS, wildcards.benchmark)
    return {
        "data": f"{DATA}/{wildcards.benchmark}.test.jsonl",
        "models": sorted({model_weights(c.model) for c in cells}),
        "bases": sorted({model_weights(base_model(c.model)) for c in cells}),
    }


def get_speed_group(wildcards):
    """The paired group as JSON for `d2f speed --group`: every table cell of the benchmark, and the ratios."""
    cells, pairs = speed_pairs(config, CELLS, wildcards.benchmark)
    arms = []
    for c in cells:
        adapter = ADAPTERS.get(c.model)
        spec = config["models"][base_model(c.model)]
        bench = config["data"]["benchmarks"][c.benchmark]
        arms.append(
            {
                "cell": c.key,
                "model": model_dir(base_model(c.model)),
                "adapter": model_dir(c.model) if adapter else None,
                "merge": bool(adapter and adapter.get("merge")),
                "decoder": c.decoder,
                "params": parse_params(c.params),
                "chat": bool(spec.get("chat") and bench.get("chat", True)),
                "max_new_tokens": gen_length_of(config, c.model),
            }
        )
    return json.dumps({"arms": arms, "ratios": [[a.key, b.key] for a, b in pairs]})


def get_speed_args(wildcards):
    args = [
        f"--warmup {config['warmup']}",
        f"--rounds {config['speed']['rounds']}",
    ]
    limits = [n for n in (config.get("limit"), config["speed"].get("problems")) if n]
    if limits:
        args.append(f"--limit {min(limits)}")
    return " ".join(args)


def get_ab_args(wildcards, threads):
    args = [
        f"--warmup {config['warmup']}",
        f"--threads {get_torch_threads(wildcards, threads)}",
        f"--sandbox {config['sandbox']}",
    ]
    if config.get("limit"):
        args.append(f"--limit {config['limit']}")
    return " ".join(args)


def code_state():
    """HEAD and a hash of the uncommitted changes to the decoding code (a param: Snakemake reruns the A/B on a change)."""
    git = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True).stdout
    diff = git("diff", "HEAD", "--", "d2f_core", "baselines")
    return f"{git('rev-parse', 'HEAD').strip()}+{hashlib.sha256(diff.encode()).hexdigest()[:12]}"


def ab_files():
    return expand(f"results/{PROFILE}/ab/{{b}}.json", b=BENCHMARKS)


def speed_files():
    return expand(f"results/{PROFILE}/speed/{{b}}.json", b=SPEED_BENCHMARKS)


def summaries(cells):
    return [f"{cell.path(PROFILE)}/summary.json" for cell in cells]


def get_final_outputs():
    return [
        f"results/{PROFILE}/summary.csv",
        f"reports/{PROFILE}/tables.md",
        *speed_files(),
    ]
