rule data:
    output:
        train=f"{DATA}/{{benchmark}}.train.jsonl",
        test=f"{DATA}/{{benchmark}}.test.jsonl",
    log:
        f"logs/{PROFILE}/data/{{benchmark}}.log",
    wildcard_constraints:
        benchmark=one_of(SYNTHETIC_DATA),
    conda:
        "../../environment.yml"
    params:
        sizes=get_data_sizes,
        seed=config["seed"],
    shell:
        "d2f data --benchmark {wildcards.benchmark} {params.sizes} --seed {params.seed} "
        "--out $(dirname {output.train}) > {log} 2>&1"


# Real benchmarks: documents, few-shot prompts and stop sequences from the lm-eval task definitions.
rule prompts:
    output:
        test=f"{DATA}/{{benchmark}}.test.jsonl",
    log:
        f"logs/{PROFILE}/data/{{benchmark}}.log",
    wildcard_constraints:
        benchmark=one_of(REAL_BENCHMARKS),
    conda:
        "../../environment.yml"
    params:
        args=get_prompt_args,
    shell:
        "d2f prompts --benchmark {wildcards.benchmark} {params.args} --out $(dirname {output.test}) "
        "> {log} 2>&1 || (tail -5 {log}; exit 1)"


rule tokenizer:
    input:
        train=expand("{data}/{b}.train.jsonl", data=DATA, b=TRAIN_DATA),
    output:
        f"{MODELS}/tokenizer/tokenizer.json",
    log:
        f"logs/{PROFILE}/tokenizer.log",
    conda:
        "../../environment.yml"
    params:
        benchmarks=list(TRAIN_DATA),
        vocab_size=config["tokenizer"]["vocab_size"],
    shell:
        "d2f tokenizer --data $(dirname {input.train[0]}) --benchmarks {params.benchmarks} "
        "--vocab-size {params.vocab_size} --out $(dirname {output}) > {log} 2>&1"
