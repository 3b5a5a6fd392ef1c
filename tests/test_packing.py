"""The speed-ups of issue 18, checked for exactness (their speed is measured in bench/, never
here): packed batches give the logits of padded ones, token-budget batches cover every example
once, a merged LoRA equals the adapter, sparse dropout has torch's dropout distribution."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_config
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import kitae
from kitae.config import config_from_dict
from kitae.data.batching import EncodedSplit, collate, collate_packed, encode_texts, eval_batches
from kitae.inference.logits import Batching, predict_logits
from kitae.models.classifier import SequenceClassifier, choose_packing
from kitae.models.lean_lora import SparseDropout, use_sparse_dropout
from kitae.models.precision import plan_precision, probe_caps

TEXTS = ["雨", "今日は晴れで風が強い", "株価が上がる", "肉と魚と米と麺", "晴れ", "風が強く雨も降る一日だった"]
PAIRS = [("雨が降る", "晴れ"), ("株価", "株価が上がる"), ("肉と魚", "米と麺と肉と魚と")]
DECODERS = ["llama", "llama_left", "gpt_neox", "gemma3", "qwen2", "mistral"]


def _classifier(model_dir, pooling: str, attn: str = "sdpa") -> tuple[SequenceClassifier, object]:
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=3, dtype=torch.float32,
                                                               attn_implementation=attn)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model.config.pad_token_id = tokenizer.pad_token_id
    is_decoder = pooling == "last"
    return SequenceClassifier(model, model, pooling, is_decoder).eval(), tokenizer


def _padded_and_packed(clf: SequenceClassifier, tokenizer, texts) -> tuple[torch.Tensor, torch.Tensor]:
    encoded = encode_texts(tokenizer, texts, 64)
    with torch.no_grad():
        padded = clf(**collate(encoded.input_ids, tokenizer.pad_token_id, tokenizer.padding_side,
                               encoded.token_type_ids))
        packed = clf(**collate_packed(encoded.input_ids, tokenizer.pad_token_id, encoded.token_type_ids))
    return padded, packed


@pytest.mark.parametrize("arch", DECODERS)
def test_packed_logits_equal_padded_for_every_decoder(tiny_models, arch):
    clf, tokenizer = _classifier(tiny_models[arch], "last")
    clf.packing, why = choose_packing(clf, True)
    assert clf.packing == "positions", why
    padded, packed = _padded_and_packed(clf, tokenizer, TEXTS)
    torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("arch", "attn", "form"), [("bert", "sdpa", "bool4d"), ("bert", "eager", "additive4d")])
def test_packed_encoder_mean_pooling_equals_padded(tiny_models, arch, attn, form):
    clf, tokenizer = _classifier(tiny_models[arch], "mean", attn)
    clf.packing, why = choose_packing(clf, "auto")
    assert clf.packing == form, why  # the check finds the mask form this attention code reads
    for texts in (TEXTS, PAIRS):  # pairs carry token type ids
        padded, packed = _padded_and_packed(clf, tokenizer, texts)
        torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-5)


def test_packing_is_refused_where_it_would_change_the_logits(tiny_models):
    clf, _ = _classifier(tiny_models["bert"], "cls")
    assert choose_packing(clf, "auto")[0] is None
    with pytest.raises(ValueError, match="pooling cls"):
        choose_packing(clf, True)
    # A decoder fed no position ids cannot tell packed sequences apart: the check catches it.
    clf, _ = _classifier(tiny_models["llama"], "last")
    clf._backbone_takes_positions = False
    form, why = choose_packing(clf, "auto")
    assert form is None and "does not compute packed rows exactly" in why
    with pytest.raises(ValueError, match="packing: false"):
        choose_packing(clf, True)
    assert choose_packing(clf, False)[0] is None
    # DeBERTa-v2 multiplies its embeddings by the attention mask: no block mask fits it.
    clf, _ = _classifier(tiny_models["deberta"], "mean", "eager")
    assert choose_packing(clf, "auto")[0] is None


def test_reward_pairs_stay_together_and_in_order_when_packed(tiny_models):
    clf, tokenizer = _classifier(tiny_models["gemma3"], "last")
    texts = [t for pair in zip(TEXTS, reversed(TEXTS), strict=True) for t in pair]  # (chosen, rejected) rows
    split = EncodedSplit("dev", [str(i) for i in range(len(TEXTS))], encode_texts(tokenizer, texts, 64), None,
                         group_size=2)
    batching = Batching(tokenizer.pad_token_id, tokenizer.padding_side)
    plan = plan_precision(probe_caps("cpu"))
    padded = predict_logits(clf, split, 2, plan, batching)
    clf.packing = choose_packing(clf, True)[0]
    packed = predict_logits(clf, split, 2, plan, batching)
    assert packed.shape == (len(TEXTS), 6)
    np.testing.assert_allclose(packed, padded, rtol=1e-5, atol=1e-5)


def test_token_budget_batches_cover_every_example_once():
    rng = np.random.default_rng(0)
    for _ in range(50):
        lengths = rng.integers(1, 300, size=int(rng.integers(1, 400)))
        budget = int(rng.integers(1, 4000))
        batches = eval_batches(lengths, 8, budget)
        seen = np.concatenate(batches)
        assert sorted(seen.tolist()) == list(range(len(lengths)))
        for batch in batches:
            assert len(batch) == 1 or len(batch) * lengths[batch].max() <= budget
        assert all(lengths[a].min() >= lengths[b].max() for a, b in zip(batches, batches[1:], strict=False))
    # Short texts go many to a batch: 100 texts of 4 tokens under a budget of 8 x 64 tokens.
    assert len(eval_batches(np.full(100, 4), 8, 8 * 64)) == 1


def test_sparse_dropout_has_the_distribution_of_dropout():
    torch.manual_seed(0)
    dropout = SparseDropout(0.05).train()
    x = torch.ones(400, 500, requires_grad=True)
    y = dropout(x)
    dropped = y == 0
    assert abs(float(dropped.float().mean()) - 0.05) < 0.003  # 200,000 draws: 5 sigma is 0.0024
    # Independent per element: the rate is the same in every row and column block.
    assert float(dropped.float().mean(1).std()) < 0.02
    torch.testing.assert_close(y[~dropped], torch.full_like(y[~dropped], 1 / 0.95))
    y.sum().backward()
    torch.testing.assert_close(x.grad, (~dropped).float() / 0.95)  # the gradient goes through the kept ones
    # The torch RNG drives it: the same seed gives the same mask; eval mode is the identity.
    torch.manual_seed(0)
    torch.testing.assert_close(dropout(torch.ones(400, 500)), y.detach())
    assert torch.equal(dropout.eval()(x), x)


def test_a_packed_run_trains_like_a_padded_one_and_reloads_merged(tiny_models, separable_data, tmp_path):
    """Same examples per step, so the same training up to float rounding; the run's reload
    (LoRA merged, packed) gives its test logits."""
    results = {}
    for packing in (True, False):
        cfg = tiny_config(tiny_models["llama_left"], separable_data, tmp_path / str(packing),
                          adapter={"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0},
                          training={"epochs": 2, "lr": 5e-3, "packing": packing, "batch_size": 8})
        results[packing] = kitae.train(config_from_dict(cfg), progress=False)
    np.testing.assert_allclose(results[True].logits["test"], results[False].logits["test"], rtol=1e-3, atol=1e-3)
    assert results[True].metrics["dev"]["accuracy"] == results[False].metrics["dev"]["accuracy"]

    run_dir = results[True].run_dir
    merged, adapter = kitae.load(run_dir), kitae.load(run_dir, merge=False)
    assert merged.model.model is merged.model.hf_model  # no PEFT layers left
    assert merged.model.packing == "positions" and adapter.model.packing == "positions"
    texts = _test_texts(separable_data)
    np.testing.assert_allclose(merged.logits(texts), adapter.logits(texts), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(adapter.logits(texts), results[True].logits["test"], rtol=1e-5, atol=1e-5)


def _test_texts(files) -> list[str]:
    import json

    return [json.loads(line)["text"] for line in files["test"].read_text(encoding="utf-8").splitlines()]


def test_sparse_dropout_replaces_every_lora_dropout(tiny_models):
    from kitae.config import AdapterConfig
    from kitae.models.adapters import apply_adapter

    model = AutoModelForSequenceClassification.from_pretrained(tiny_models["llama"], num_labels=2)
    peft_model = apply_adapter(model, AdapterConfig(dropout=0.1), "score", [], sparse_dropout=False)
    dropouts = [m for m in peft_model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and use_sparse_dropout(peft_model) == len(dropouts)
    assert all(isinstance(m, SparseDropout) and m.p == 0.1 for m in peft_model.modules()
               if isinstance(m, torch.nn.Dropout))


def test_lean_lora_forward_equals_peft_with_the_same_dropout_draws(tiny_models):
    """The rank-r scalings and the addmm change float rounding only: outputs and gradients match
    PEFT's forward given the same dropout masks (same seed); eval mode is PEFT's own path."""
    from kitae.config import AdapterConfig
    from kitae.models.adapters import apply_adapter

    outputs, grads = [], []
    for lean in (False, True):
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(tiny_models["llama"], num_labels=2)
        peft_model = apply_adapter(model, AdapterConfig(dropout=0.1, r=4), "score", [], sparse_dropout=True,
                                   lean_lora=lean)
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:  # B starts at zero: make the branch count
                torch.nn.init.normal_(param, std=0.1, generator=torch.Generator().manual_seed(1))
        if lean:
            assert sum(hasattr(m, "_peft_forward") for m in peft_model.modules()) > 0
        peft_model.train()
        torch.manual_seed(3)
        ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
        out = peft_model(input_ids=ids).logits
        out.sum().backward()
        outputs.append(out.detach())
        grads.append({n: p.grad.clone() for n, p in peft_model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-6)
    assert grads[0].keys() == grads[1].keys() and any("lora_A" in n for n in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6)
