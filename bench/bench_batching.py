"""Length-grouped batches vs random batches (transformers' default sampler), side by side.

For the same texts, tokenizer, model and batch size, measures (1) the share of real (non-pad)
tokens in the batches of one epoch and (2) the time of one whole epoch of LoRA training steps
(forward + backward + AdamW) on the real Gemma 3 270M, alternating the two samplers batch by batch
so machine noise hits both alike. Reports ratios from this one run.

    python bench/bench_batching.py [--data PATH] [--rows 320] [--max-length 256]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from kitae.config import AdapterConfig, ModelConfig
from kitae.data.batching import collate, encode_texts, epoch_batches
from kitae.models.adapters import apply_adapter
from kitae.models.classifier import SequenceClassifier
from kitae.models.loading import load_for_classification, load_tokenizer
from kitae.models.precision import plan_precision, probe_caps
from kitae.models.sources import resolve_source

REPO = Path(__file__).resolve().parents[1]
LIVEDOOR = REPO.parent / "shared" / "datasets" / "livedoor" / "data.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=LIVEDOOR if LIVEDOOR.is_file()
                        else REPO / "examples" / "data" / "quickstart" / "train.jsonl")
    parser.add_argument("--template", default=None, help="default: {title}\\n{body} for livedoor, else {text}")
    parser.add_argument("--rows", type=int, default=320)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--model", default="pypi:gemma-3-270m")
    args = parser.parse_args()
    template = args.template or ("{title}\n{body}" if "livedoor" in str(args.data) else "{text}")

    rows = [json.loads(line) for line in args.data.read_text(encoding="utf-8").splitlines()[: args.rows]]
    texts = [template.format(**row) for row in rows]
    model_config = ModelConfig(name=args.model, max_length=args.max_length)
    source = resolve_source(model_config.name)
    tokenizer = load_tokenizer(source, model_config)
    encoded_texts = encode_texts(tokenizer, texts, args.max_length)
    lengths, encoded = encoded_texts.lengths, encoded_texts.input_ids

    samplers = {
        "random": epoch_batches(lengths, args.batch_size, seed=0, epoch=0, group_by_length=False),
        "length-grouped": epoch_batches(lengths, args.batch_size, seed=0, epoch=0, group_by_length=True),
    }
    real_share = {name: lengths.sum() / sum(len(b) * lengths[b].max() for b in batches)
                  for name, batches in samplers.items()}

    torch.manual_seed(0)
    plan = plan_precision(probe_caps("cpu"))
    loaded = load_for_classification(source, model_config, plan, {0: "a", 1: "b"}, tokenizer.pad_token_id)
    model = apply_adapter(loaded.model, AdapterConfig(), "score", loaded.new_modules)
    classifier = SequenceClassifier(model, loaded.model, "last", True).train()
    optimizer = torch.optim.AdamW([p for p in classifier.parameters() if p.requires_grad], lr=1e-4)

    def step(indices: np.ndarray) -> float:
        batch = collate([encoded[i] for i in indices], tokenizer.pad_token_id, tokenizer.padding_side)
        started = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(classifier(**batch), torch.zeros(len(indices), dtype=torch.long))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return time.perf_counter() - started

    step(samplers["random"][0])  # warm-up
    seconds = {name: 0.0 for name in samplers}
    for i in range(len(samplers["random"])):  # one whole epoch each
        for name, batches in samplers.items():  # alternate: noise hits both samplers alike
            seconds[name] += step(batches[i])
    print(f"data: {args.data} ({len(texts)} rows), model {args.model}, max_length {args.max_length}, "
          f"batch {args.batch_size}, one epoch per sampler, {torch.get_num_threads()} threads")
    print("| sampler | real tokens in batches | epoch (s) |")
    print("|---|---|---|")
    for name in samplers:
        print(f"| {name} | {real_share[name]:.1%} | {seconds[name]:.1f} |")
    print(f"speed-up of length-grouped over random: x{seconds['random'] / seconds['length-grouped']:.2f} "
          f"(padding: {real_share['random']:.1%} -> {real_share['length-grouped']:.1%} real tokens)")


if __name__ == "__main__":
    main()
