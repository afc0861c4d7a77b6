"""The tiny tokenizer keeps every number of the corpora whole: a parallel decoder then knows where a number ends."""

from __future__ import annotations

from d2f_core.bench.benchmarks import BENCHMARKS, SYNTHETIC
from d2f_core.train.corpora import MAX_TOTAL, make_split
from d2f_core.train.tokenizer import train_tokenizer


def test_every_number_is_one_token(tmp_path):
    texts = []
    for name in SYNTHETIC:
        train, _ = make_split(name, 3000, 1, seed=0)
        texts += [BENCHMARKS[name].prompt(r) + BENCHMARKS[name].completion(r) for r in train]
    tok = train_tokenizer(texts, 512, tmp_path)  # the tiny profile's vocabulary size
    for n in range(MAX_TOTAL + 1):
        assert len(tok(f" {n}").input_ids) == 1, f"' {n}' is split: {tok.tokenize(f' {n}')}"
    pieces = tok.tokenize(" 9 + 2 = 11. #### 11")
    assert [tok.convert_tokens_to_string([p]) for p in pieces] == [" 9", " +", " 2", " =", " 11", ".", " ####", " 11"]
