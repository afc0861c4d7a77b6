import re

from d2f_core.config import expand_cells, model_names

PROFILE = config["profile"]
DATA = f"results/{PROFILE}/data"
MODELS = f"results/{PROFILE}/models"
BENCHMARKS = list(config["data"]["benchmarks"])
CELLS = expand_cells(config)
SWEEPS = [cell for cell in expand_cells(config, "sweeps") if cell not in CELLS]
DECODERS = sorted({cell.decoder for cell in CELLS + SWEEPS})


wildcard_constraints:
    model="|".join(re.escape(m) for m in model_names(config)),
    adapter="|".join(re.escape(a) for a in config.get("adapters", {})) or "^$",
    benchmark="|".join(re.escape(b) for b in BENCHMARKS),
    decoder="[a-z0-9_]+",
    params="[^/]+",


def get_train_mix():
    return [
        f"{b}:{spec.get('weight', 1)}"
        for b, spec in config["data"]["benchmarks"].items()
    ]


def get_data_sizes(wildcards):
    sizes = config["data"]["benchmarks"][wildcards.benchmark]
    return f"--train {sizes['train']} --test {sizes['test']}"


def model_weights(name):
    if name in config.get("adapters", {}):
        return f"{MODELS}/{name}/adapter_model.safetensors"
    return f"{MODELS}/{name}/model.safetensors"


def base_model(name):
    """The model a cell runs on: an adapter's base, or the model itself."""
    return config.get("adapters", {}).get(name, {}).get("base", name)


def get_train_inputs(wildcards):
    spec = config["models"][wildcards.model]
    inputs = {
        "tokenizer": f"{MODELS}/tokenizer/tokenizer.json",
        "data": expand("{data}/{b}.train.jsonl", data=DATA, b=BENCHMARKS),
    }
    if "init" in spec:
        inputs["init"] = model_weights(spec["init"])
    return inputs


def get_train_args(wildcards):
    spec = config["models"][wildcards.model]
    args = [f"--family {spec['family']}", f"--gen-length {config['gen_length']}"]
    if "init" in spec:
        args.append(f"--init {MODELS}/{spec['init']}")
    if "arch" in spec:
        args.append("--arch " + " ".join(f"{k}={v}" for k, v in spec["arch"].items()))
    args.append("--set " + " ".join(f"{k}={v}" for k, v in spec["train"].items()))
    return " ".join(args)


def get_base_model(wildcards):
    return base_model(wildcards.model)


def get_distill_inputs(wildcards):
    return {
        "base": model_weights(config["adapters"][wildcards.adapter]["base"]),
        "data": expand("{data}/{b}.train.jsonl", data=DATA, b=BENCHMARKS),
    }


def get_distill_args(wildcards):
    spec = config["adapters"][wildcards.adapter]
    lora = spec.get("lora", {})
    args = [
        f"--base {MODELS}/{spec['base']}",
        f"--block-size {spec['block_size']}",
        f"--gen-length {config['gen_length']}",
    ]
    args += [f"--lora-{k} {v}" for k, v in lora.items()]
    args.append("--set " + " ".join(f"{k}={v}" for k, v in spec["train"].items()))
    return " ".join(args)


def get_decode_inputs(wildcards):
    inputs = {
        "model": model_weights(base_model(wildcards.model)),
        "data": f"{DATA}/{wildcards.benchmark}.test.jsonl",
    }
    if wildcards.model in config.get("adapters", {}):
        inputs["adapter"] = model_weights(wildcards.model)
    return inputs


def get_decode_args(wildcards):
    args = [
        f"--model {MODELS}/{base_model(wildcards.model)}",
        f"--warmup {config['warmup']}",
    ]
    adapter = config.get("adapters", {}).get(wildcards.model)
    if adapter:
        args.append(f"--adapter {MODELS}/{wildcards.model}")
        if adapter.get("merge"):
            args.append("--merge")
    if config.get("limit"):
        args.append(f"--limit {config['limit']}")
    return " ".join(args)


def summaries(cells):
    return [f"{cell.path(PROFILE)}/summary.json" for cell in cells]


def get_final_outputs():
    return [f"results/{PROFILE}/summary.csv", f"reports/{PROFILE}/tables.md"]
