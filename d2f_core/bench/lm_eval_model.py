"""`--model d2f` for lm-eval: any registered decoder behind lm-eval's `generate_until`.

For users who want lm-eval's own metrics on a model decoded by D2F (or a baseline): `lm_eval --model d2f
--model_args model=DIR,adapter=DIR,decoder=d2f,params=block_size~32,tau_add~0.1 --tasks gsm8k`. Outputs are cut at
the request's stop sequences here (lm-eval does not), and every sample's tokens, latency and forwards are kept in
`samples` (DESIGN §5), the same record the cell runner writes.
"""

from __future__ import annotations

import json

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from d2f_core.bench.runner import decode_one, parse_params
from d2f_core.decode.base import build_decoder
from d2f_core.model.load import load_model


@register_model("d2f")
class D2FLM(LM):
    def __init__(self, model: str, decoder: str = "d2f", params: str = "default", adapter: str | None = None,
                 merge: bool = False, max_new_tokens: int = 256, chat: bool = False, samples_out: str | None = None,
                 **_ignored):
        super().__init__()
        self.lm = load_model(model, adapter=adapter, merge=str(merge).lower() == "true")
        self.decoder = build_decoder(decoder, self.lm, **parse_params(params))
        self.max_new_tokens, self.chat = int(max_new_tokens), str(chat).lower() == "true"
        self.samples_out, self.samples = samples_out, []

    @property
    def tokenizer_name(self) -> str:
        return self.lm.path

    def apply_chat_template(self, chat_history: list[dict], add_generation_prompt: bool = True) -> str:
        return self.lm.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                     add_generation_prompt=add_generation_prompt)

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        outputs = []
        for req in tqdm(requests, disable=disable_tqdm, desc="d2f generate_until"):
            context, kwargs = req.args
            ids = self.lm.tokenizer(context, add_special_tokens=not self.chat).input_ids
            sample = decode_one(self.decoder, self.lm, f"{req.task_name}/{req.doc_id}", ids,
                                int(kwargs.get("max_gen_toks", self.max_new_tokens)), list(kwargs.get("until", [])),
                                first=False)
            self.samples.append(sample)
            outputs.append(sample["output"])
        if self.samples_out:
            with open(self.samples_out, "w") as f:
                f.writelines(json.dumps(s) + "\n" for s in self.samples)
        return outputs

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("d2f decodes; log-likelihood tasks need a scoring model (use lm-eval's hf model)")

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("d2f decodes; log-likelihood tasks need a scoring model (use lm-eval's hf model)")
