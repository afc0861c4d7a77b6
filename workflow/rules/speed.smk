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
    threads: workflow.cores
    params:
        group=get_speed_group,
        args=get_speed_args,
        torch_threads=config.get("speed", {}).get("threads") or workflow.cores,
    shell:
        "d2f speed --group {params.group:q} --benchmark {wildcards.benchmark} --data $(dirname {input.data}) "
        "{params.args} --threads {params.torch_threads} --out {output} > {log} 2>&1 || (tail -5 {log}; exit 1)"
