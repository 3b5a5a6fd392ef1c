"""pair: one class per text pair (NLI: entailment / neutral / contradiction; paraphrase; QA match).

Everything is single-label classification; only the input differs: `data.text_fields` names two
columns (default text_a, text_b: kitae.config.tasks.PairConfig), which encoders read as the
tokenizer's own pair encoding (`[CLS] a [SEP] b [SEP]`, with token type ids where the model has
them) and decoders through the pair template.
"""

from __future__ import annotations

from kitae.tasks.contract import Activation, Analysis, classifier_contract
from kitae.tasks.single_label import SingleLabelTask


class PairTask(SingleLabelTask):
    name = "pair"
    contract = classifier_contract("A text-pair classifier", "single_label_classification", Activation.SOFTMAX,
                                   Analysis.CLASS_SHARES)
