REPORTS = f"reports/{PROFILE}"


rule aggregate:
    input:
        table=summaries(CELLS),
        sweep=summaries(SWEEPS),
    output:
        f"results/{PROFILE}/summary.csv",
    log:
        f"logs/{PROFILE}/aggregate.log",
    conda:
        "../../environment.yml"
    shell:
        "d2f aggregate --out {output} {input.table} --sweep {input.sweep} > {log} 2>&1"


rule report:
    input:
        f"results/{PROFILE}/summary.csv",
    output:
        table=f"{REPORTS}/table.md",
        tables=report(
            f"{REPORTS}/tables.md", caption="../report/tables.rst", category="Tables"
        ),
        csv=f"{REPORTS}/tables.csv",
        frontier=f"{REPORTS}/pareto.csv",
        pareto=report(
            expand(
                "{dir}/pareto_{b}.{ext}", dir=REPORTS, b=BENCHMARKS, ext=["png", "svg"]
            ),
            caption="../report/pareto.rst",
            category="Pareto",
        ),
        timelines=report(
            expand("{dir}/timeline_{d}.png", dir=REPORTS, d=DECODERS),
            caption="../report/timeline.rst",
            category="Timelines",
        ),
    log:
        f"logs/{PROFILE}/report.log",
    conda:
        "../../environment.yml"
    shell:
        "d2f report --summary {input} --out $(dirname {output.table}) > {log} 2>&1"
