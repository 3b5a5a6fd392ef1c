"""Greedy vs top-p vs min-p at a few temperatures, on a trained sft run's own test split.

    python bench/sampling.py runs/jsquad-sft [--split test] [--seeds 1 2 3] [--limit 100]

The model is loaded once; every setting generates for the same prompts (its config's split,
prepared exactly as training did) and is scored by exact match, char F1 and chrF — mean ± std
over the seeds for the sampled settings. The point of min_p: whether quality holds at higher
temperature, where plain and top-p sampling degrade. Prints a Markdown table (for
bench/RESULTS.md) and writes it with the raw numbers to bench/runs/sampling-<run>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = [("greedy", {"temperature": 0.0})]
for temperature in (0.7, 1.0, 1.5):
    SETTINGS += [(f"T={temperature}", {"temperature": temperature}),
                 (f"T={temperature}, top_p=0.9", {"temperature": temperature, "top_p": 0.9}),
                 (f"T={temperature}, min_p=0.1", {"temperature": temperature, "min_p": 0.1})]
METRICS = ("exact_match", "char_f1", "chrf", "choice_accuracy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--split", default="test")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--limit", type=int, default=None, help="Only the first N examples of the split.")
    args = parser.parse_args()

    import kitae
    from kitae.data.prepare import prepare_data

    generator = kitae.load(args.run_dir)
    _, examples = prepare_data(generator.config)
    split = {args.split: examples[args.split][:args.limit]}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, settings in SETTINGS:
            seeds = [0] if settings["temperature"] == 0 else args.seeds
            scores: dict[str, list[float]] = {}
            started = time.perf_counter()
            for seed in seeds:
                result = generator.evaluate_splits(split, Path(tmp) / f"{name}-{seed}", seed=seed, **settings)
                for metric in METRICS:
                    if metric in result[args.split]:
                        scores.setdefault(metric, []).append(result[args.split][metric])
            rows.append({"setting": name, "seeds": len(seeds), "seconds": round(time.perf_counter() - started, 1),
                         **{m: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0)
                            for m, v in scores.items()}})
            # Each setting as it finishes: a long run stopped half-way keeps what it measured.
            print(f"{name}: " + ", ".join(f"{m} {v[0]:.3f}" for m, v in rows[-1].items() if m in METRICS),
                  file=sys.stderr, flush=True)
    metrics = [m for m in METRICS if m in rows[0]]
    lines = ["| setting | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for row in rows:
        cells = [f"{row[m][0]:.3f} ± {row[m][1]:.3f}" if row["seeds"] > 1 else f"{row[m][0]:.3f}" for m in metrics]
        lines.append(f"| {row['setting']} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(f"{args.run_dir.name}, {args.split} ({len(split[args.split])} examples), seeds {args.seeds}:\n\n{table}")
    out = Path(__file__).parent / "runs" / f"sampling-{args.run_dir.resolve().name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"run": str(args.run_dir), "split": args.split, "rows": rows, "table": table},
                              ensure_ascii=False, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
