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
        benchmarks=BENCHMARKS,
    shell:
        "d2f train {params.args} --data $(dirname {input.data[0]}) --tokenizer $(dirname {input.tokenizer}) "
        "--benchmarks {params.benchmarks} --out $(dirname {output}) --threads {threads} > {log} 2>&1"
