rule train_model:
    input:
        unpack(get_train_inputs),
    output:
        f"{MODELS}/{{model}}/model.safetensors",
    log:
        f"logs/{PROFILE}/train/{{model}}.log",
    conda:
        "../../environment.yml"
    threads: workflow.cores
    params:
        args=get_train_args,
        mix=get_train_mix(),
    shell:
        "d2f train {params.args} --data $(dirname {input.data[0]}) --tokenizer $(dirname {input.tokenizer}) "
        "--benchmarks {params.mix} --out $(dirname {output}) --threads {threads} > {log} 2>&1"


rule distill:
    input:
        unpack(get_distill_inputs),
    output:
        f"{MODELS}/{{adapter}}/adapter_model.safetensors",
    log:
        f"logs/{PROFILE}/distill/{{adapter}}.log",
    conda:
        "../../environment.yml"
    threads: workflow.cores
    params:
        args=get_distill_args,
        mix=get_train_mix(),
    shell:
        "d2f distill {params.args} --data $(dirname {input.data[0]}) --benchmarks {params.mix} "
        "--out $(dirname {output}) --threads {threads} > {log} 2>&1"
