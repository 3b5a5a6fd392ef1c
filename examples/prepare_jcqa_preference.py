"""Preference pairs from JCommonsenseQA, for `examples/jcqa-reward.yaml`.

No Japanese preference dataset can be downloaded here, but a multiple-choice question with one
right answer is a real preference: for each question the right answer is `chosen` and a wrong
choice (one drawn per question with a fixed seed) is `rejected`; the question is the prompt.
JCommonsenseQA's own train / valid / test split becomes train / dev / test, so the questions
of one split never reach another.

    python examples/prepare_jcqa_preference.py            # reads ../shared/datasets/jglue_jcqa
    python examples/prepare_jcqa_preference.py SRC.jsonl OUT_DIR

JGLUE is CC BY-SA 4.0 (Yahoo Japan); the files written here inherit that licence.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = HERE.parent.parent / "shared" / "datasets" / "jglue_jcqa" / "data.jsonl"
DEFAULT_OUTPUT = HERE / "data" / "jcqa-preference"
SPLITS = {"train": "train", "valid": "dev", "test": "test"}
N_CHOICES = 5


def preference_rows(question: dict, rng: random.Random) -> dict:
    """One question -> one preference row: {id, prompt, chosen, rejected}."""
    answer = int(question["label"])
    wrong = rng.choice([i for i in range(N_CHOICES) if i != answer])
    return {"id": f"jcqa-{question['q_id']}", "prompt": question["question"],
            "chosen": question[f"choice{answer}"], "rejected": question[f"choice{wrong}"]}


def main(source: Path = DEFAULT_SOURCE, output: Path = DEFAULT_OUTPUT, seed: int = 0) -> None:
    if not source.is_file():
        sys.exit(f"{source}: not found (JCommonsenseQA as JSONL: q_id, question, choice0-4, label, orig_split)")
    rng = random.Random(seed)
    rows: dict[str, list[dict]] = {name: [] for name in SPLITS.values()}
    with source.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            question = json.loads(line)
            split = SPLITS.get(question.get("orig_split"))
            if split is None:
                sys.exit(f"{source}, line {number}, field 'orig_split': expected one of {', '.join(SPLITS)}")
            rows[split].append(preference_rows(question, rng))
    output.mkdir(parents=True, exist_ok=True)
    for split, items in rows.items():
        path = output / f"{split}.jsonl"
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items), encoding="utf-8")
        tmp.replace(path)
        print(f"{path}: {len(items)} pairs")


if __name__ == "__main__":
    arguments = sys.argv[1:]
    main(*(Path(a) for a in arguments[:2])) if arguments else main()
