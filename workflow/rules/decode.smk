GROUP = f"results/{PROFILE}/{{model}}/{{benchmark}}"
CELL = f"{GROUP}/{{decoder}}/{{params}}"


# One job decodes every cell (table and sweep) of a model on a benchmark: imports and the model load are paid once,
# each cell keeps its own warm-up, timing, resume and failure record. It takes every core, so nothing runs beside a
# timed cell; a rerun keeps the cells that are complete with the same model, parameters and data.
rule decode:
    input:
        unpack(get_decode_inputs),
    output:
        f"{GROUP}/decoded.json",
    log:
        f"logs/{PROFILE}/decode/{{model}}/{{benchmark}}.log",
    conda:
        "../../environment.yml"
    threads: every_core
    params:
        args=get_decode_args,
        cells=get_group_cells,
    shell:
        "d2f decode {params.args} --benchmark {wildcards.benchmark} --data $(dirname {input.data}) "
        "--cells {params.cells:q} --threads {threads} --out $(dirname {output}) > {log} 2>&1"


# Code benchmarks run one sandboxed program per problem, a core each; answer-matching scores take one core.
rule score:
    input:
        decoded=f"{GROUP}/decoded.json",
        data=f"{DATA}/{{benchmark}}.test.jsonl",
    output:
        summary=f"{CELL}/summary.json",
        samples=f"{CELL}/samples.jsonl",
    log:
        f"logs/{PROFILE}/score/{{model}}/{{benchmark}}/{{decoder}}/{{params}}.log",
    conda:
        "../../environment.yml"
    threads: get_score_threads
    params:
        cell=get_cell_dir,
        profile=PROFILE,
        base=get_base_model,
        sandbox=config["sandbox"],
    shell:
        "d2f score --cell {params.cell:q} --data $(dirname {input.data}) --profile {params.profile} "
        "--model-name {wildcards.model} --base-model {params.base} --sandbox {params.sandbox} "
        "--workers {threads} > {log} 2>&1 || (tail -3 {log}; exit 1)"
