"""reward: a scalar score per text, trained on preference pairs with the pairwise
(Bradley-Terry) loss -log sigmoid(score(chosen) - score(rejected)).

Each example is one row's (chosen, rejected) texts, scored separately in the same batch.
Metrics: pairwise accuracy (share of pairs with score(chosen) > score(rejected)) and the mean
margin score(chosen) - score(rejected). The model is a *ForSequenceClassification with one output,
so an export loads in plain transformers as a reward model (as TRL's RewardTrainer produces).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from kitae.data.readers import Row
from kitae.data.templates import pair_as_text, render_text
from kitae.errors import DataError
from kitae.tasks.classification import ClassificationTask
from kitae.tasks.contract import Activation, classifier_contract

if TYPE_CHECKING:
    from kitae.config import RunConfig


def pairwise_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry: mean of -log sigmoid(chosen - rejected).

    >>> round(pairwise_loss(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0])).item(), 6)
    0.410038
    """
    return -F.logsigmoid(chosen - rejected).mean()


class RewardTask(ClassificationTask):
    name = "reward"
    # One real-valued output, a score: problem_type "regression" is how transformers names it.
    contract = classifier_contract("A reward model (one score per text)", "regression", Activation.SCORES)
    group_size = 2
    report_metrics = ("pairwise_accuracy", "mean_margin")

    @classmethod
    def fit_labels(cls, rows: Sequence[Row], config: RunConfig) -> list[str]:
        return ["score"]

    def target_columns(self) -> list[str]:
        return list(self.config.data.text_fields or [])

    def render(self, row: Row) -> Any:
        """(chosen, rejected) — each a (prompt, response) pair when data.prompt_field is set. A
        row with neither column is one response to score (prediction), read from text_field."""
        data = self.config.data
        prompt = render_text(row, template=None, text_field=data.prompt_field) if data.prompt_field else None
        if data.chosen_field in row.values or data.rejected_field in row.values:
            responses = [render_text(row, template=None, text_field=f) for f in (data.chosen_field, data.rejected_field)]
        else:
            responses = [render_text(row, template=None, text_field=data.text_field)]
        if prompt is not None:
            responses = [(prompt, response) for response in responses]
        return tuple(responses) if len(responses) == 2 else responses[0]

    def model_texts(self, texts: Sequence[Any], is_decoder: bool) -> tuple[list[Any], int]:
        """Groups (chosen, rejected) become their two texts one after the other, each scored on
        its own; (prompt, response) pairs are the tokenizer's pair encoding for encoders and the
        template for decoders."""
        data = self.config.data
        texts = list(texts)
        if not texts:
            return texts, 1
        prompted = data.prompt_field is not None
        grouped = isinstance(texts[0], tuple) and (not prompted or isinstance(texts[0][0], tuple))
        flat = [text for group in texts for text in group] if grouped else texts
        if prompted:
            if not all(isinstance(t, tuple) and len(t) == 2 for t in flat):
                raise DataError(f"this reward model reads each response with its prompt: give "
                                f"(prompt, response) pairs, or rows with '{data.prompt_field}' and "
                                f"'{data.text_field}' (or '{data.chosen_field}' / '{data.rejected_field}')")
            if is_decoder:
                flat = [pair_as_text(t, [data.prompt_field, data.text_field], data.template) for t in flat]
        return flat, self.group_size if grouped else 1

    def encode_target(self, row: Row) -> int:
        data = self.config.data
        for column in (data.chosen_field, data.rejected_field):
            if column not in row.values:
                raise row.error("missing column of preference data", column)
        return 1  # the first text of each group is the preferred one

    def split(self, items: Sequence[Any], fractions: Sequence[float], seed: int,
              stratify: bool = True) -> list[list[Any]]:
        from kitae.data.splits import stratified_split

        return stratified_split(items, [0] * len(items), fractions, seed, stratify=False)

    def collate_targets(self, targets: Sequence[int]) -> torch.Tensor:
        return torch.tensor(list(targets), dtype=torch.long)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # logits: (pairs, 2) = (score of chosen, score of rejected).
        return pairwise_loss(logits[:, 0].float(), logits[:, 1].float())

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return logits.astype(np.float64)

    def metrics(self, targets: Sequence[int], logits: np.ndarray) -> dict[str, Any]:
        margin = logits[:, 0].astype(np.float64) - logits[:, 1]
        return {"pairwise_accuracy": float(np.mean(margin > 0)), "mean_margin": float(np.mean(margin)),
                "loss": float(pairwise_loss(torch.from_numpy(logits[:, 0]).double(),
                                            torch.from_numpy(logits[:, 1]).double()).item()),
                "n": int(len(margin))}

    def predicted_labels(self, logits: np.ndarray) -> list[Any]:
        if logits.shape[1] == 1:  # single texts: their scores
            return [float(v) for v in logits[:, 0]]
        return ["first" if a > b else "second" for a, b in logits[:, :2]]  # pairs: which is preferred

    def prediction_records(self, ids: Sequence[str], logits: np.ndarray,
                           targets: Sequence[int] | None) -> list[dict[str, Any]]:
        if logits.shape[1] == 1:
            return [{"id": i, "score": float(v)} for i, v in zip(ids, logits[:, 0])]
        return [{"id": i, "score_chosen": float(a), "score_rejected": float(b), "margin": float(a - b),
                 "correct": bool(a > b)} for i, (a, b) in zip(ids, logits[:, :2])]
