"""LoRA vs QLoRA vs DoRA, with and without Liger / Unsloth kernels, on a GPU, side by side in one run: tokens/s, peak CUDA memory,
and the dev loss each reaches on the same data.

    python bench/gpu_adapters.py examples/jsquad-sft.yaml [--examples 400] [--out bench/runs/gpu]

Every variant is an ordinary kitae run (1 epoch on the same subset, same seed) of the given
config with only the adapter / kernel keys changed; figures come from each run's steps.csv and
metrics.json. Needs a CUDA GPU (QLoRA: bitsandbytes; Liger: liger-kernel); variants whose
packages are missing are reported as refused with kitae's message. Not runnable on this
project's CPU machines — it refuses at once there.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

VARIANTS = {
    "lora": ["adapter.type=lora"],
    "lora + liger": ["adapter.type=lora", "training.kernels=liger"],
    "qlora": ["adapter.type=qlora"],
    "qlora + liger": ["adapter.type=qlora", "training.kernels=liger"],
    "dora": ["adapter.type=lora", "adapter.dora=true"],
    "lora + unsloth": ["adapter.type=lora", "training.kernels=unsloth"],
    "qlora + unsloth": ["adapter.type=qlora", "training.kernels=unsloth"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--examples", type=int, default=400)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "runs" / "gpu")
    args = parser.parse_args()

    import torch

    import kitae
    from kitae.errors import KitaeError

    if not torch.cuda.is_available():
        raise SystemExit("bench/gpu_adapters.py compares GPU paths: this machine has no CUDA GPU")
    rows = []
    for name, sets in VARIANTS.items():
        run_dir = args.out / name.replace(" + ", "-")
        overrides = [*sets, f"output={run_dir}", "training.epochs=1", f"data.max_train_examples={args.examples}",
                     "training.log_every_steps=5"]
        try:
            result = kitae.train(args.config, overrides=overrides, overwrite=True, progress=False)
        except KitaeError as exc:
            rows.append({"variant": name, "refused": str(exc)})
            continue
        with (result.run_dir / "steps.csv").open(encoding="utf-8") as handle:
            steps = list(csv.DictReader(handle))
        summary = json.loads((result.run_dir / "metrics.json").read_text(encoding="utf-8"))["summary"]
        rows.append({"variant": name, "tokens_per_s": statistics.median(float(s["tokens_per_s"]) for s in steps[1:] or steps),
                     "cuda_peak_gib": summary.get("cuda_peak_gib"), "train_seconds": summary["train_seconds"],
                     "dev_loss": result.metrics.get("dev", {}).get("loss")})
    print("| variant | tokens/s | peak CUDA GiB | train s | dev loss |\n|---|---|---|---|---|")
    for row in rows:
        if "refused" in row:
            print(f"| {row['variant']} | refused: {row['refused'][:80]} | | | |")
        else:
            print(f"| {row['variant']} | {row['tokens_per_s']:.0f} | {row['cuda_peak_gib']} | {row['train_seconds']} | "
                  f"{row['dev_loss']:.4f} |")


if __name__ == "__main__":
    main()
