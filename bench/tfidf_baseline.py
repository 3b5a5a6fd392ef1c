"""The classic baseline beside a kitae run: TF-IDF over character 1-3-grams + a linear model,
trained and evaluated on exactly the examples a kitae config selects (same files, split,
subsets), and scored by the task's own metric code, so the two are compared on equal terms.

- single_label / pair: logistic regression (a pair is its two texts on two lines);
- multi_label: one-vs-rest logistic regression;
- regression: ridge regression (a pair: the features of each text, their elementwise product and
  their cosine similarity);
- reward: a linear Bradley-Terry model, i.e. logistic regression on phi(chosen) - phi(rejected),
  with phi = the response's features and their product with the prompt's.

    python bench/tfidf_baseline.py examples/livedoor-e5.yaml [--set data.max_train_examples=null]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.multiclass import OneVsRestClassifier

from kitae.api import prepare_data
from kitae.config import load_config

KEEP = ("accuracy", "macro_f1", "micro_f1", "samples_f1", "subset_accuracy", "per_category", "rmse", "mae",
        "pearson", "spearman", "pairwise_accuracy", "mean_margin", "n")


def _joined(text: Any) -> str:
    return "\n".join(text) if isinstance(text, tuple) else text


def _all_strings(texts: list[Any]) -> list[str]:
    """Every string inside the examples' texts (pairs, groups), for fitting the vocabulary."""
    out: list[str] = []
    for text in texts:
        out.extend(_all_strings(list(text)) if isinstance(text, tuple) else [text])
    return out


def classification_logits(task, examples, config, vectorizer) -> dict[str, np.ndarray]:
    x_train = vectorizer.transform([_joined(e.text) for e in examples["train"]])
    y_train = np.stack([np.atleast_1d(e.target) for e in examples["train"]])
    if config.task == "multi_label":
        model = OneVsRestClassifier(LogisticRegression(max_iter=2000, C=10.0))
        # A category without positives in train cannot be fitted: predict it never.
        present = y_train.sum(axis=0) > 0
        model.fit(x_train, y_train[:, present])
    else:
        model = LogisticRegression(max_iter=2000, C=10.0)
        model.fit(x_train, y_train.ravel())
    logits = {}
    for name in ("dev", "test"):
        if name not in examples:
            continue
        x = vectorizer.transform([_joined(e.text) for e in examples[name]])
        if config.task == "multi_label":
            probs = np.full((x.shape[0], len(task.labels)), 1e-6)
            probs[:, present] = model.predict_proba(x)
            logits[name] = np.log(probs) - np.log1p(-probs)
        else:
            probs = np.full((x.shape[0], len(task.labels)), 1e-12)
            probs[:, model.classes_] = model.predict_proba(x)
            # Logits whose softmax gives back `probs`: the task's own metric code scores them.
            logits[name] = np.log(probs / probs.sum(axis=1, keepdims=True))
    return logits


def _pair_features(vectorizer, texts: list[Any]) -> sp.csr_matrix:
    if not isinstance(texts[0], tuple):
        return vectorizer.transform(texts)
    a = vectorizer.transform([t[0] for t in texts])
    b = vectorizer.transform([t[1] for t in texts])
    overlap = a.multiply(b)  # rows are L2-normalised: its row sum is the cosine similarity
    cosine = sp.csr_matrix(np.asarray(overlap.sum(axis=1)))
    return sp.hstack([a, b, overlap, cosine]).tocsr()


def regression_logits(task, examples, config, vectorizer) -> dict[str, np.ndarray]:
    y_train = np.stack([e.target for e in examples["train"]])
    model = Ridge(alpha=1.0).fit(_pair_features(vectorizer, [e.text for e in examples["train"]]), y_train)
    logits = {}
    for name in ("dev", "test"):
        if name in examples:
            values = model.predict(_pair_features(vectorizer, [e.text for e in examples[name]]))
            # In the task's output space (z-scores when data.normalize_targets), as a model's logits are.
            logits[name] = (values.reshape(len(examples[name]), -1) - task.mean) / task.std
    return logits


def _response_features(vectorizer, texts: list[Any]) -> sp.csr_matrix:
    """phi(prompt, response): the response's features and their product with the prompt's."""
    if not isinstance(texts[0], tuple):
        return vectorizer.transform(texts)
    prompt = vectorizer.transform([t[0] for t in texts])
    response = vectorizer.transform([t[1] for t in texts])
    return sp.hstack([response, prompt.multiply(response)]).tocsr()


def reward_logits(task, examples, config, vectorizer) -> dict[str, np.ndarray]:
    def features(split):
        chosen = _response_features(vectorizer, [e.text[0] for e in split])
        rejected = _response_features(vectorizer, [e.text[1] for e in split])
        return chosen, rejected

    chosen, rejected = features(examples["train"])
    difference = chosen - rejected
    # Both orders, so the model has no intercept to lean on: P(first preferred) = sigmoid(w . diff).
    model = LogisticRegression(max_iter=2000, C=10.0, fit_intercept=False)
    model.fit(sp.vstack([difference, -difference]), np.r_[np.ones(difference.shape[0]), np.zeros(difference.shape[0])])
    logits = {}
    for name in ("dev", "test"):
        if name in examples:
            chosen, rejected = features(examples[name])
            logits[name] = np.stack([chosen @ model.coef_[0], rejected @ model.coef_[0]], axis=1)
    return logits


BASELINES = {"single_label": classification_logits, "pair": classification_logits,
             "multi_label": classification_logits, "regression": regression_logits, "reward": reward_logits}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    config = load_config(args.config, args.overrides)
    task, examples = prepare_data(config)
    started = time.perf_counter()
    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, min_df=2)
    texts = [e.text for e in examples["train"]]
    # Classification reads a pair as one text (two lines); the others featurise each text apart.
    vectorizer.fit([_joined(t) for t in texts] if BASELINES[config.task] is classification_logits
                   else _all_strings(texts))
    logits = BASELINES[config.task](task, examples, config, vectorizer)
    results: dict[str, Any] = {"train_examples": len(examples["train"])}
    for name, values in logits.items():
        metrics = task.metrics([e.target for e in examples[name]], np.asarray(values, dtype=np.float64))
        results[name] = {k: v for k, v in metrics.items() if k in KEEP}
    results["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(results, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
