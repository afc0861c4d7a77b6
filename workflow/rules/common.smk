import re

from d2f_core.config import expand_cells, model_names

PROFILE = config["profile"]
DATA = f"results/{PROFILE}/data"
MODELS = f"results/{PROFILE}/models"
BENCHMARKS = list(config["data"]["benchmarks"])
CELLS = expand_cells(config)


wildcard_constraints:
    model="|".join(re.escape(m) for m in model_names(config)),
    benchmark="|".join(re.escape(b) for b in BENCHMARKS),
    decoder="[a-z_]+",
    params="[^/]+",


def get_data_sizes(wildcards):
    sizes = config["data"]["benchmarks"][wildcards.benchmark]
    return f"--train {sizes['train']} --test {sizes['test']}"


def model_weights(name):
    return f"{MODELS}/{name}/model.safetensors"


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


def get_decode_inputs(wildcards):
    return {
        "model": model_weights(wildcards.model),
        "data": f"{DATA}/{wildcards.benchmark}.test.jsonl",
    }


def get_decode_args(wildcards):
    args = [f"--warmup {config['warmup']}"]
    if config.get("limit"):
        args.append(f"--limit {config['limit']}")
    return " ".join(args)


def get_summaries(wildcards=None):
    return [f"{cell.path(PROFILE)}/summary.json" for cell in CELLS]


def get_final_outputs():
    return [f"results/{PROFILE}/summary.csv", f"reports/{PROFILE}/table.md"]
