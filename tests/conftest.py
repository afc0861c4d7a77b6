"""Shared fixtures: tiny random models in each family, built in seconds from a small tokenizer."""

from __future__ import annotations

import os
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):  # a worker per core: OpenMP threads spin-waiting for a core the other
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # worker holds cost 10-20x (read when torch starts them)

import pytest  # noqa: E402
import torch  # noqa: E402

from d2f_core.bench.benchmarks import BENCHMARKS, SYNTHETIC
from d2f_core.bench.io import rewrite_jsonl
from d2f_core.model.checkpoints import set_diffusion_facts
from d2f_core.model.load import load_model
from d2f_core.train.corpora import make_split
from d2f_core.train.pretrain import new_llama
from d2f_core.train.tokenizer import train_tokenizer

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data")
    for name in SYNTHETIC:
        train, test = make_split(name, 300, 8, seed=0)
        rewrite_jsonl(BENCHMARKS[name].train_file(out), train)
        rewrite_jsonl(BENCHMARKS[name].test_file(out), test)
    return out


@pytest.fixture(scope="session")
def tokenizer_dir(data_dir, tmp_path_factory) -> Path:
    from d2f_core.train.corpora import read_jsonl

    texts = []
    for b in map(BENCHMARKS.get, SYNTHETIC):
        texts += [b.prompt(r) + b.completion(r) for r in read_jsonl(b.train_file(data_dir))]
    out = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(texts, 200, out)
    return out


def _save_random(tokenizer_dir: Path, out: Path, family: str, seed: int) -> Path:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    model = new_llama(tok, hidden_size=32, layers=2, heads=4, intermediate_size=64)
    set_diffusion_facts(model.config, family, None if family == "ar" else tok.mask_token_id)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def model_dirs(tokenizer_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {fam: _save_random(tokenizer_dir, root / fam, fam, seed) for seed, fam in enumerate(("ar", "llada", "dream"))}


@pytest.fixture(scope="session")
def models(model_dirs):
    return {fam: load_model(path, device="cpu") for fam, path in model_dirs.items()}


@pytest.fixture(scope="session")
def prompts(data_dir, models) -> list[list[int]]:
    from d2f_core.train.corpora import read_jsonl

    tok = models["ar"].tokenizer
    out = []
    for b in map(BENCHMARKS.get, SYNTHETIC):
        out += [tok(b.prompt(r)).input_ids for r in read_jsonl(b.test_file(data_dir))[:3]]
    return out
