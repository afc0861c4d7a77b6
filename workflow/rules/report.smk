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
        summary=f"results/{PROFILE}/summary.csv",
        published=config.get("published", []),
        speed=speed_files(),
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
        aup=report(
            expand(
                "{dir}/aup_{b}.{ext}", dir=REPORTS, b=BENCHMARKS, ext=["png", "svg"]
            ),
            caption="../report/aup.rst",
            category="AUP",
        ),
        aup_points=f"{REPORTS}/aup_points.yaml",
        benchmark_json=f"{REPORTS}/benchmark.json",
        timelines=report(
            expand("{dir}/timeline_{d}.png", dir=REPORTS, d=DECODERS),
            caption="../report/timeline.rst",
            category="Timelines",
        ),
        batch=report(
            f"{REPORTS}/batch.md", caption="../report/batch.rst", category="Batch size"
        ),
        batch_csv=f"{REPORTS}/batch.csv",
        batch_figures=report(
            expand("{dir}/batch_{b}.png", dir=REPORTS, b=BATCH_BENCHMARKS),
            caption="../report/batch.rst",
            category="Batch size",
        ),
    log:
        f"logs/{PROFILE}/report.log",
    conda:
        "../../environment.yml"
    params:
        published=lambda wildcards, input: (
            f"--published {input.published}" if input.published else ""
        ),
    shell:
        "d2f report --summary {input.summary} {params.published} --speed {input.speed} "
        "--out $(dirname {output.table}) > {log} 2>&1"


# The CI gate: `snakemake regress --cores all --configfile workflow/config/ci.yaml` (exit 1 on a regression): the
# reference commit's code against this checkout's on this run's models (rule ab), and scores against the stored ones.
rule regress:
    input:
        summary=f"results/{PROFILE}/summary.csv",
        reference=f"results/reference/{PROFILE}.csv",
        speed=speed_files(),
        ab=ab_files(),
    output:
        md=f"{REPORTS}/regression.md",
        json=f"{REPORTS}/regression.json",
    log:
        f"logs/{PROFILE}/regress.log",
    conda:
        "../../environment.yml"
    params:
        tolerance=config["regress"]["score_tolerance"],
        speed=config["regress"]["speed_tolerance"],
    shell:
        "d2f regress --summary {input.summary} --reference {input.reference} --out {output.md} "
        "--json {output.json} --tolerance {params.tolerance} --speed-tolerance {params.speed} "
        "--speed {input.speed} --ab {input.ab} > {log} 2>&1 "
        "|| (cat {log}; exit 1)"
