"""Writes the SFT quickstart data: Japanese numerals (漢数字) -> Arabic numerals, e.g. 三千二十五 -> 3025.

A real skill with one right answer (exact match is meaningful), which a small LLM only partly
has before tuning. Written for kitae (CC0). Re-run to regenerate the same files:

    python examples/data/sft-quickstart/make_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

DIGITS = "〇一二三四五六七八九"
UNITS = [(1000, "千"), (100, "百"), (10, "十")]
INSTRUCTIONS = ["次の漢数字を算用数字で書いてください。", "漢数字を数字に直してください。", "この数を算用数字で答えてください。"]


def kanji_number(n: int) -> str:
    """1 <= n <= 9999 in the usual Japanese way: 1 is omitted before 十, 百 and 千.

    >>> [kanji_number(n) for n in (5, 10, 21, 110, 1001, 3025, 9999)]
    ['五', '十', '二十一', '百十', '千一', '三千二十五', '九千九百九十九']
    """
    text = ""
    for value, unit in UNITS:
        digit, n = divmod(n, value)
        if digit:
            text += ("" if digit == 1 else DIGITS[digit]) + unit
    return text + (DIGITS[n] if n else "")


def main() -> None:
    rng = random.Random(2026)
    numbers = rng.sample(range(1, 10000), 560)
    rows = [{"id": f"num-{n}", "instruction": rng.choice(INSTRUCTIONS), "input": kanji_number(n), "output": str(n)}
            for n in numbers]
    here = Path(__file__).parent
    for split, part in (("train", rows[:400]), ("dev", rows[400:460]), ("test", rows[460:])):
        (here / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part),
                                             encoding="utf-8")


if __name__ == "__main__":
    main()
