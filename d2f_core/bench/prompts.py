"""Real benchmarks' test files, written from lm-eval task definitions: documents, few-shot prompts, stop sequences.

lm-eval owns the plumbing the paper's numbers depend on (which documents, which exemplars, how a prompt reads);
writing its requests to `{benchmark}.test.jsonl` lets the timed runner and the sandboxed scorer use them without
lm-eval in the loop. Each row keeps the plain context and, for chat models, the same prompt as chat turns (few-shot
exemplars as earlier turns, as the paper's LLaDA-Instruct runs used).
"""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

import yaml

from d2f_core.bench.benchmarks import get_benchmark

PROJECT_TASKS = Path(__file__).parent / "lm_eval_tasks"  # HumanEval and MBPP without lm-eval's unsandboxed metric
FEWSHOT_SEED = 1234  # lm-eval's default `fewshot_random_seed` (lm_eval.defaults.DEFAULT_OTHER_SEED): its exemplars


# Where lm-eval keeps each task's definition: indexing one folder takes well under a second, all of lm-eval's ~10 s
# (a task missing here is looked up in the whole index).
LM_EVAL_FOLDERS = {"gsm8k": "gsm8k", "gsm8k_cot": "gsm8k", "minerva_math": "minerva_math",
                   "minerva_math500": "minerva_math", "humaneval": "humaneval", "mbpp": "mbpp"}


@functools.cache
def task_manager(folder: str | None = None):
    """The project's tasks and one lm-eval folder (or, with None, every lm-eval task), indexed once per process."""
    import lm_eval.tasks
    from lm_eval.tasks import TaskManager

    if folder is None:
        return TaskManager(include_path=str(PROJECT_TASKS))
    lm_eval_folder = Path(lm_eval.tasks.__file__).parent / folder
    return TaskManager(include_path=[str(lm_eval_folder), str(PROJECT_TASKS)], include_defaults=False)


def load_tasks(benchmark: str, data_files: dict[str, str] | None = None, task: str | None = None) -> dict:
    """The benchmark's lm-eval task(s) (or the lm-eval task named `task`); with `data_files`, the same task definition
    reading local jsonl copies (a YAML that `include`s the registered one and overrides only the dataset)."""
    name = task or get_benchmark(benchmark).task
    manager = task_manager(LM_EVAL_FOLDERS.get(name))
    if name not in manager.task_index:
        manager = task_manager()
    if not data_files:
        return manager.load([name])["tasks"]
    missing = [p for p in data_files.values() if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"benchmark {benchmark}: data file(s) {missing} not found; fix `data_files` in the "
                                f"config, or remove it to read the dataset from the hub")
    entry = manager.task_index[name]
    if entry.yaml_path is None or entry.kind.name != "TASK":
        raise ValueError(f"benchmark {benchmark}: local `data_files` work for single lm-eval tasks only; "
                         f"{name!r} is a {entry.kind.name.lower()} (use e.g. minerva_math500, or the hub)")
    override = {"include": str(entry.yaml_path), "task": name, "dataset_path": "json", "dataset_name": None,
                "dataset_kwargs": {"data_files": {k: str(Path(v).resolve()) for k, v in data_files.items()}}}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.yaml"
        path.write_text(yaml.safe_dump(override))
        return manager.load([str(path)])["tasks"]


def _capture_turns(messages: list[dict], add_generation_prompt: bool = True) -> str:
    """Stands in for a chat template: keeps lm-eval's turns, rendered later by the model's own template."""
    return json.dumps(messages)


def build_rows(benchmark: str, shots: int | None = None, data_files: dict[str, str] | None = None,
               limit: int | None = None, until: bool = True, docs: tuple[int, int] | None = None) -> list[dict]:
    """One row per document: id, context (plain text), messages (chat turns), stop sequences, the document.

    `docs` = (start, stop) keeps those documents of the test split (MBPP's test problems are 11-510 of the full
    file); `until` = False drops the stop sequences (the paper's `escape_until` on HumanEval)."""
    select = {"samples": list(range(*docs))[:limit]} if docs else {"limit": limit}
    rows = []
    for name, task in sorted(load_tasks(benchmark, data_files).items()):  # a group (minerva_math) is several tasks
        if shots is not None:
            task.set_config(key="num_fewshot", value=shots)
        task.set_fewshot_seed(seed=FEWSHOT_SEED)
        task.build_all_requests(**select, rank=0, world_size=1)
        plain = list(task.instances)
        task.set_fewshot_seed(seed=FEWSHOT_SEED)  # the chat turns hold the same exemplars as the plain context
        task.build_all_requests(**select, rank=0, world_size=1, apply_chat_template=True,
                                fewshot_as_multiturn=True, chat_template=_capture_turns)
        for text, chat in zip(plain, task.instances):
            context, gen_kwargs = text.args
            rows.append({"id": f"{name}/{text.doc_id}", "context": context,
                         "messages": json.loads(chat.args[0]), "stop": gen_kwargs.get("until", []) if until else [],
                         "doc": text.doc})
    return rows
