"""Inference: batches of token ids through a model, for logits (classifiers) or generations
(causal LMs). Used by the training loop's evaluation, `kitae.load`, and later the server and UI."""
