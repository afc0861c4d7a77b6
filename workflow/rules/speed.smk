# Paired speed: every table cell of a benchmark timed back to back per problem, in a shuffled order, in one job
# that holds every core (`speed.threads` of them do the work).
rule speed:
    input:
        unpack(get_speed_inputs),
    output:
        f"results/{PROFILE}/speed/{{benchmark}}.json",
    log:
        f"logs/{PROFILE}/speed/{{benchmark}}.log",
    conda:
        "../../environment.yml"
    threads: every_core
    params:
        group=get_speed_group,
        args=get_speed_args,
        torch_threads=get_torch_threads,
    shell:
        "d2f speed --group {params.group:q} --benchmark {wildcards.benchmark} --data $(dirname {input.data}) "
        "{params.args} --threads {params.torch_threads} --out {output} > {log} 2>&1 || (tail -5 {log}; exit 1)"


# The gate's A/B (`snakemake regress`): the reference commit's decoders against this checkout's, on this run's models,
# interleaved per problem, in one job that holds every core. `code` changes with the decoding code, so a rerun of the
# gate after an edit runs the A/B again.
rule ab:
    input:
        unpack(get_speed_inputs),
        reference=f"results/reference/{PROFILE}.csv",
    output:
        f"results/{PROFILE}/ab/{{benchmark}}.json",
    log:
        f"logs/{PROFILE}/ab/{{benchmark}}.log",
    conda:
        "../../environment.yml"
    threads: every_core
    params:
        group=get_speed_group,
        args=get_ab_args,
        code=code_state(),
    shell:
        "d2f ab --group {params.group:q} --benchmark {wildcards.benchmark} --data $(dirname {input.data}) "
        "--reference {input.reference} {params.args} --out {output} > {log} 2>&1 || (tail -20 {log}; exit 1)"
