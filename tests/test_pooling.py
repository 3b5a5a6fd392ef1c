"""Last-token pooling equals transformers' own *ForSequenceClassification, under left and right
padding, and a text's logits do not depend on padding side or batch company."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from kitae.data.batching import collate
from kitae.models.classifier import SequenceClassifier
from kitae.models.pooling import last_token_positions, mean_pool, position_ids_from_mask

TEXTS = ["雨", "今日は晴れで風が強い", "株価が上がる", "肉と魚と米と麺"]


def test_last_token_positions_left_and_right():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert last_token_positions(mask).tolist() == [2, 4, 4, 4]
    # The common hand-written bug: attention_mask.sum() - 1 is wrong under left padding.
    assert (mask.sum(-1) - 1).tolist() != last_token_positions(mask).tolist()


def test_mean_pool_ignores_padding():
    hidden = torch.tensor([[[1.0], [3.0], [100.0]], [[100.0], [2.0], [4.0]]])
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
    assert mean_pool(hidden, mask).squeeze(-1).tolist() == [2.0, 3.0]


def _load(model_dir):
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=3, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(model_dir)


@pytest.mark.parametrize("arch", ["llama", "gpt_neox", "gemma3", "qwen2", "mistral"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_last_token_pooling_equals_transformers(tiny_models, arch, side):
    model, tok = _load(tiny_models[arch])
    ids = [tok(t)["input_ids"] for t in TEXTS]
    batch = collate(ids, tok.pad_token_id, side)
    ours = SequenceClassifier(model, model, "last", is_decoder=True)
    with torch.no_grad():
        got = ours(**batch)
        # transformers pools the rightmost non-pad token; given the same position ids (real
        # tokens counted from 0) it must agree with our explicit positions exactly.
        theirs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=position_ids_from_mask(batch["attention_mask"])).logits
    torch.testing.assert_close(got, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ["llama", "gpt_neox", "gemma3", "qwen2", "mistral"])
def test_logits_independent_of_padding_side_and_batch(tiny_models, arch):
    model, tok = _load(tiny_models[arch])
    ours = SequenceClassifier(model, model, "last", is_decoder=True)
    ids = [tok(t)["input_ids"] for t in TEXTS]
    with torch.no_grad():
        right = ours(**collate(ids, tok.pad_token_id, "right"))
        left = ours(**collate(ids, tok.pad_token_id, "left"))
        alone = torch.cat([ours(**collate([row], tok.pad_token_id, "right")) for row in ids])
    torch.testing.assert_close(left, right, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(alone, right, rtol=1e-4, atol=1e-5)


def test_right_padding_matches_plain_transformers_call(tiny_models):
    """Under right padding transformers' default positions are already right: a plain call
    (no position_ids) — what an exported model does — gives our logits."""
    model, tok = _load(tiny_models["llama"])
    ids = [tok(t)["input_ids"] for t in TEXTS]
    batch = collate(ids, tok.pad_token_id, "right")
    with torch.no_grad():
        ours = SequenceClassifier(model, model, "last", is_decoder=True)(**batch)
        theirs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_encoder_cls_pooling_is_the_models_own_forward(tiny_models):
    model, tok = _load(tiny_models["bert"])
    batch = collate([tok(t)["input_ids"] for t in TEXTS], tok.pad_token_id, "right")
    with torch.no_grad():
        ours = SequenceClassifier(model, model, "cls", is_decoder=False)(**batch)
        theirs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(ours, theirs)


def test_auto_pooling_choice():
    from kitae.tasks.classification import resolve_pooling

    assert resolve_pooling("auto", True, ["score"]) == "last"
    assert resolve_pooling("auto", False, ["classifier"]) == "cls"  # pretrained pooler: use it
    assert resolve_pooling("auto", False, ["bert.pooler.dense", "classifier"]) == "mean"
    assert resolve_pooling("cls", False, ["bert.pooler.dense"]) == "cls"
