CELL = f"results/{PROFILE}/{{model}}/{{benchmark}}/{{decoder}}/{{params}}"


# Decode cells take every core, so no other job runs beside a timed one.
rule decode:
    input:
        unpack(get_decode_inputs),
    output:
        generations=f"{CELL}/generations.jsonl",
        meter=f"{CELL}/meter.json",
    log:
        f"logs/{PROFILE}/decode/{{model}}/{{benchmark}}/{{decoder}}/{{params}}.log",
    conda:
        "../../environment.yml"
    threads: workflow.cores
    params:
        args=get_decode_args,
    shell:
        "d2f decode {params.args} --benchmark {wildcards.benchmark} "
        "--data $(dirname {input.data}) --decoder {wildcards.decoder} --params {wildcards.params:q} "
        "--threads {threads} --out $(dirname {output.meter}) > {log} 2>&1"


rule score:
    input:
        generations=f"{CELL}/generations.jsonl",
        meter=f"{CELL}/meter.json",
        data=f"{DATA}/{{benchmark}}.test.jsonl",
    output:
        summary=f"{CELL}/summary.json",
        samples=f"{CELL}/samples.jsonl",
    log:
        f"logs/{PROFILE}/score/{{model}}/{{benchmark}}/{{decoder}}/{{params}}.log",
    conda:
        "../../environment.yml"
    params:
        profile=PROFILE,
        base=get_base_model,
        sandbox=config["sandbox"],
    shell:
        "d2f score --cell $(dirname {input.meter}) --data $(dirname {input.data}) --profile {params.profile} "
        "--model-name {wildcards.model} --base-model {params.base} --sandbox {params.sandbox} > {log} 2>&1 "
        "|| (tail -3 {log}; exit 1)"
