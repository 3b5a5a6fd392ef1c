"""pair: one class per text pair (NLI: entailment / neutral / contradiction; paraphrase; QA match).

Everything is single-label classification; only the input differs: `data.text_fields` names two
columns, which encoders read as the tokenizer's own pair encoding (`[CLS] a [SEP] b [SEP]`, with
token type ids where the model has them) and decoders through the pair template.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kitae.tasks.classification import ClassificationTask
from kitae.tasks.single_label import SingleLabelTask

if TYPE_CHECKING:
    from kitae.config import RunConfig


class PairTask(SingleLabelTask):
    name = "pair"

    @classmethod
    def configure(cls, config: RunConfig) -> None:
        if config.data.text_fields is None and not config.data.from_preference:
            config.data.text_fields = ["text_a", "text_b"]
        ClassificationTask.configure.__func__(cls, config)  # not SingleLabelTask's preference rules
