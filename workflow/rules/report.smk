rule aggregate:
    input:
        get_summaries,
    output:
        f"results/{PROFILE}/summary.csv",
    log:
        f"logs/{PROFILE}/aggregate.log",
    conda:
        "../../environment.yml"
    shell:
        "d2f aggregate --out {output} {input} > {log} 2>&1"


rule tables:
    input:
        f"results/{PROFILE}/summary.csv",
    output:
        md=f"reports/{PROFILE}/table.md",
        csv=f"reports/{PROFILE}/table.csv",
    log:
        f"logs/{PROFILE}/tables.log",
    conda:
        "../../environment.yml"
    shell:
        "d2f report --summary {input} --out $(dirname {output.md}) > {log} 2>&1"
