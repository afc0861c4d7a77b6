rule data:
    output:
        train=f"{DATA}/{{benchmark}}.train.jsonl",
        test=f"{DATA}/{{benchmark}}.test.jsonl",
    log:
        f"logs/{PROFILE}/data/{{benchmark}}.log",
    conda:
        "../../environment.yml"
    params:
        sizes=get_data_sizes,
        seed=config["seed"],
    shell:
        "d2f data --benchmark {wildcards.benchmark} {params.sizes} --seed {params.seed} "
        "--out $(dirname {output.train}) > {log} 2>&1"


rule tokenizer:
    input:
        train=expand("{data}/{b}.train.jsonl", data=DATA, b=BENCHMARKS),
    output:
        f"{MODELS}/tokenizer/tokenizer.json",
    log:
        f"logs/{PROFILE}/tokenizer.log",
    conda:
        "../../environment.yml"
    params:
        benchmarks=BENCHMARKS,
        vocab_size=config["tokenizer"]["vocab_size"],
    shell:
        "d2f tokenizer --data $(dirname {input.train[0]}) --benchmarks {params.benchmarks} "
        "--vocab-size {params.vocab_size} --out $(dirname {output}) > {log} 2>&1"
