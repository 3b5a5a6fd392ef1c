"""The classic baseline beside a kitae run: TF-IDF over character 1-3-grams + logistic regression
(one-vs-rest for multi_label), trained and evaluated on exactly the examples a kitae config
selects (same files, split, subsets), so the two are compared on equal terms.

    python bench/tfidf_baseline.py examples/livedoor-e5.yaml [--set data.max_train_examples=null]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier

from kitae.api import prepare_data
from kitae.config import load_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    config = load_config(args.config, args.overrides)
    task, examples = prepare_data(config)
    if config.task not in ("single_label", "pair", "multi_label"):
        raise SystemExit(f"the TF-IDF baseline is for classification, not {config.task}")

    def text(example) -> str:  # a pair becomes its two texts on two lines
        return "\n".join(example.text) if isinstance(example.text, tuple) else example.text

    started = time.perf_counter()
    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, min_df=2)
    x_train = vectorizer.fit_transform([text(e) for e in examples["train"]])
    y_train = np.stack([np.atleast_1d(e.target) for e in examples["train"]])
    if config.task == "multi_label":
        model = OneVsRestClassifier(LogisticRegression(max_iter=2000, C=10.0))
        # A category without positives in train cannot be fitted: predict it never.
        present = y_train.sum(axis=0) > 0
        model.fit(x_train, y_train[:, present])
    else:
        model = LogisticRegression(max_iter=2000, C=10.0)
        model.fit(x_train, y_train.ravel())
    results = {"train_examples": len(examples["train"])}
    for name in ("dev", "test"):
        if name not in examples:
            continue
        x = vectorizer.transform([text(e) for e in examples[name]])
        if config.task == "multi_label":
            probs = np.full((x.shape[0], len(task.labels)), 1e-6)
            probs[:, present] = model.predict_proba(x)
        else:
            probs = np.full((x.shape[0], len(task.labels)), 1e-12)
            probs[:, model.classes_] = model.predict_proba(x)
            probs /= probs.sum(axis=1, keepdims=True)
        # Logits such that the task's own probabilities() gives back `probs`: the same metric code
        # scores the baseline and the model.
        logits = np.log(probs) if config.task != "multi_label" else np.log(probs) - np.log1p(-probs)
        metrics = task.metrics([e.target for e in examples[name]], logits.astype(np.float64))
        keep = ("accuracy", "macro_f1", "micro_f1", "samples_f1", "subset_accuracy", "per_category", "n")
        results[name] = {k: v for k, v in metrics.items() if k in keep}
    results["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(results, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
