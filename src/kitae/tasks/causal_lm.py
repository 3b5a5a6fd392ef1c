"""causal_lm: continued pre-training of a causal LM on raw text (a news corpus, domain text).

Every document (`data.text_field`, or `data.template` over columns) is tokenised with an
end-of-sequence token and the documents are laid one after another into full rows of
`model.max_length` tokens (no padding but in the last row); each document's piece is its own
segment, so nothing attends across documents, and a piece that continues a document starts with
the tokenizer's leading token (<bos>) as every document does. The loss is on every token. Dev and test are
scored by token loss and perplexity.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kitae.data.packing import LMSplit, chunk_stream
from kitae.data.readers import Row
from kitae.tasks.contract import generator_contract
from kitae.tasks.generative import GenerativeTask

if TYPE_CHECKING:
    from kitae.data.examples import Example
    from kitae.models.loading import Backbone


class CausalLMTask(GenerativeTask):
    name = "causal_lm"
    contract = generator_contract("A further pre-trained causal language model", False)
    report_metrics = ("perplexity", "loss")

    def encode_target(self, row: Row) -> Any:
        return None

    def target_columns(self) -> list[str]:
        return [self.config.data.text_field]

    def encode(self, name: str, examples: list[Example], backbone: Backbone) -> LMSplit:
        tokenizer = backbone.tokenizer
        self.tokenizer = tokenizer
        eos = tokenizer.eos_token_id
        if eos is not None and eos not in self.eos_token_ids:
            self.eos_token_ids.append(eos)
        documents = []
        for start in range(0, len(examples), 1024):
            texts = [e.text for e in examples[start:start + 1024]]
            for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]:
                documents.append(ids + ([eos] if eos is not None else []))
        from kitae.data.instructions import leading_special_ids

        rows = chunk_stream(documents, self.config.model.max_length, leading_special_ids(tokenizer))
        pieces = [segment for row in rows for segment in row]
        row_indices, start = [], 0
        for row in rows:
            row_indices.append(list(range(start, start + len(row))))
            start += len(row)
        return LMSplit(name, [f"{name}-piece-{i}" for i in range(len(pieces))], pieces, [0] * len(pieces),
                       [None] * len(pieces), rows=row_indices, pad_token_id=tokenizer.pad_token_id)
