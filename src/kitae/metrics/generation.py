"""Metrics for generated answers, as Japanese QA and multiple-choice benchmarks report them.

- :func:`exact_match` and :func:`char_f1` compare a generated answer with one or more gold
  answers after :func:`normalize_answer`; ``char_f1`` is SQuAD's token F1 with characters as
  tokens, the way JGLUE scores JSQuAD. Several golds: the best one counts.
- :func:`match_choice` and :func:`choice_accuracy` map a generated answer to one of the
  choices of a multiple-choice question (JCommonsenseQA and the like).
- :func:`chrf` and :func:`sentence_chrf` are sacrebleu's default ``CHRF()`` (chrF2, character
  6-grams, no word n-grams, whitespace removed, 0-100) reimplemented without sacrebleu; the
  tests check them against sacrebleu. They score the raw text, not :func:`normalize_answer`.

All scores are plain Python floats.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Sequence
from typing import Any

__all__ = [
    "char_f1",
    "choice_accuracy",
    "chrf",
    "exact_match",
    "generation_metrics",
    "match_choice",
    "normalize_answer",
    "per_example_scores",
    "sentence_chrf",
]

GENERATION_DIRECTIONS: dict[str, str] = {
    "exact_match": "max",
    "char_f1": "max",
    "chrf": "max",
    "choice_accuracy": "max",
    "perplexity": "min",
}
"""Whether a larger or smaller value of each generation metric is better (see is_better)."""

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def normalize_answer(text: str) -> str:
    """Normalise an answer for comparison: NFKC, strip, drop all whitespace, lowercase ASCII.

    - NFKC folds the width variants Japanese text mixes freely: full-width Latin letters and
      digits become ASCII (``"Ｔｏｋｙｏ１２"`` -> ``"Tokyo12"``), half-width katakana becomes
      full-width (``"ｶﾀｶﾅ"`` -> ``"カタカナ"``) and the ideographic space U+3000 becomes a space.
    - Whitespace is removed everywhere, not only at the ends: Japanese has no spaces between
      words, so a space a model puts in (or leaves out) carries no meaning.
    - Only ASCII letters are lowercased, so answers in other scripts are compared as written.

    Punctuation is kept (``"。"`` and ``"「」"`` count), unlike SQuAD's English normaliser.

    >>> normalize_answer("  Ｔｏｋｙｏ　タワー ")
    'tokyoタワー'
    >>> normalize_answer("ｶﾀｶﾅ １２３")
    'カタカナ123'
    """
    text = unicodedata.normalize("NFKC", text).strip()
    return "".join(text.split()).translate(_ASCII_LOWER)


def _gold_list(golds: str | Sequence[str]) -> list[str]:
    """``golds`` as a non-empty list of strings (a single string is one gold)."""
    out = [golds] if isinstance(golds, str) else list(golds)
    if not out:
        raise ValueError("golds must hold at least one gold answer")
    return out


def exact_match(prediction: str, golds: str | Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer, else 0.0.

    >>> exact_match("東京都", ["東京", "とうきょう"]), exact_match(" 東京 ", "東京")
    (0.0, 1.0)
    >>> exact_match("２０２４年", ["2024年"])
    1.0
    """
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(gold) for gold in _gold_list(golds)))


def _f1(prediction: str, gold: str) -> float:
    """Bag-of-characters F1 of two normalised strings (1.0 when both are empty)."""
    if not prediction or not gold:
        return float(prediction == gold)
    same = sum((Counter(prediction) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision = same / len(prediction)
    recall = same / len(gold)
    return 2 * precision * recall / (precision + recall)


def char_f1(prediction: str, golds: str | Sequence[str]) -> float:
    """Character-level F1 against the best gold answer, after :func:`normalize_answer`.

    SQuAD's token F1 with every character a token: the overlap is the multiset intersection
    of the characters (order ignored), precision = overlap / len(prediction), recall =
    overlap / len(gold). An empty prediction scores 1.0 against an empty gold and 0.0 against
    a non-empty one (and vice versa). With several golds the maximum is returned.

    >>> char_f1("東京都", ["東京"])  # P = 2/3, R = 1
    0.8
    >>> char_f1("大阪", ["東京", "大阪府"])  # max(0, F1(P = 1, R = 2/3))
    0.8
    """
    pred = normalize_answer(prediction)
    return max(_f1(pred, normalize_answer(gold)) for gold in _gold_list(golds))


def match_choice(prediction: str, choices: Sequence[str]) -> int | None:
    """Index of the choice a generated answer picks, or ``None`` if it picks none or several.

    Prediction and choices are compared after :func:`normalize_answer`; an empty prediction
    picks nothing and an empty choice is never picked. The rule, in order:

    1. Exact: the choices equal to the prediction. One -> its index; several (duplicate
       choices) -> ``None``.
    2. Contained: the choices that occur as a substring of the prediction. Drop every one that
       is a substring of another, different contained choice (``"東京"`` inside ``"東京都"``).
       If exactly one remains -> its index, otherwise (none, or several such as ``"東京"`` and
       ``"大阪"`` both named) -> ``None``.

    >>> choices = ["東京", "東京都", "大阪"]
    >>> match_choice("大阪", choices), match_choice("答えは東京都です。", choices)
    (2, 1)
    >>> match_choice("東京と大阪", choices), match_choice("名古屋", choices)
    (None, None)
    """
    pred = normalize_answer(prediction)
    if not pred:
        return None
    normalized = [normalize_answer(choice) for choice in choices]
    exact = [i for i, choice in enumerate(normalized) if choice == pred]
    if exact:
        return exact[0] if len(exact) == 1 else None
    contained = [i for i, choice in enumerate(normalized) if choice and choice in pred]
    maximal = [
        i
        for i in contained
        if not any(
            normalized[i] != normalized[j] and normalized[i] in normalized[j] for j in contained
        )
    ]
    return maximal[0] if len(maximal) == 1 else None


def choice_accuracy(
    predictions: Sequence[str], choices: Sequence[Sequence[str]], gold_indices: Sequence[int]
) -> float:
    """Share of rows where :func:`match_choice` returns the gold index (``nan`` when empty).

    A row whose answer picks no choice (``None``, here "犬か猫") counts as wrong.

    >>> choice_accuracy(["犬", "答えは猫", "犬か猫"], [["犬", "猫"]] * 3, [0, 1, 1])
    0.6666666666666666
    """
    if not len(predictions) == len(choices) == len(gold_indices):
        raise ValueError(
            f"predictions, choices and gold_indices have different lengths: "
            f"{len(predictions)}, {len(choices)}, {len(gold_indices)}"
        )
    if not predictions:
        return float("nan")
    hits = sum(
        match_choice(pred, row) == int(gold)
        for pred, row, gold in zip(predictions, choices, gold_indices)
    )
    return hits / len(predictions)


# --- chrF (sacrebleu's CHRF() with its defaults) -------------------------------------------


def _char_ngrams(text: str, char_order: int) -> list[Counter[str]]:
    """Character n-gram counts for n = 1..char_order, whitespace removed (sacrebleu's default)."""
    text = "".join(text.split())
    return [
        Counter(text[i : i + n] for i in range(len(text) - n + 1)) for n in range(1, char_order + 1)
    ]


def _chrf_stats(hyp: list[Counter[str]], ref: list[Counter[str]]) -> list[int]:
    """Flat ``[n_hyp, n_ref, n_match] * char_order`` statistics of one hypothesis/reference."""
    stats: list[int] = []
    for hyp_ngrams, ref_ngrams in zip(hyp, ref):
        n_match = sum(min(count, ref_ngrams[ng]) for ng, count in hyp_ngrams.items())
        # sacrebleu counts no hypothesis n-grams of an order the reference has none of.
        n_hyp = sum(hyp_ngrams.values()) if ref_ngrams else 0
        stats.extend([n_hyp, sum(ref_ngrams.values()), n_match])
    return stats


def _chrf_score(stats: Sequence[int], beta: float) -> float:
    """chrF (0-100) from summed statistics, as sacrebleu's ``CHRF(eps_smoothing=False)``.

    Precision and recall are averaged over the "effective" orders only, those where both the
    hypothesis and the reference have n-grams; then F-beta of the two averages. No effective
    order, or zero precision and recall, gives 0.0.
    """
    factor = beta**2
    avg_prec = avg_rec = 0.0
    effective_order = 0
    for k in range(0, len(stats), 3):
        n_hyp, n_ref, n_match = stats[k : k + 3]
        if n_hyp > 0 and n_ref > 0:
            avg_prec += n_match / n_hyp
            avg_rec += n_match / n_ref
            effective_order += 1
    if effective_order == 0:
        return 0.0
    avg_prec /= effective_order
    avg_rec /= effective_order
    if not avg_prec + avg_rec:
        return 0.0
    score = (1 + factor) * avg_prec * avg_rec
    score /= factor * avg_prec + avg_rec
    return 100 * score


def _best_stats(
    prediction: str, references: str | Sequence[str], char_order: int, beta: float
) -> list[int]:
    """Statistics against the reference with the best sentence chrF (the first on ties)."""
    refs = _gold_list(references)
    hyp = _char_ngrams(prediction, char_order)
    best: list[int] = []
    best_score = -1.0
    for ref in refs:
        stats = _chrf_stats(hyp, _char_ngrams(ref, char_order))
        score = _chrf_score(stats, beta)
        if score > best_score:
            best, best_score = stats, score
    return best


def _check_chrf_args(char_order: int, beta: float) -> None:
    if char_order < 1:
        raise ValueError(f"char_order must be >= 1, got {char_order}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")


def chrf(
    predictions: Sequence[str],
    references: Sequence[str] | Sequence[Sequence[str]],
    char_order: int = 6,
    beta: float = 2.0,
) -> float:
    """Corpus-level chrF on the 0-100 scale, equal to sacrebleu's ``CHRF().corpus_score``.

    ``references`` holds, per prediction, one reference string or a list of references (note:
    sacrebleu takes the transpose, one list per reference *stream*). Character n-grams of
    orders 1..``char_order`` are counted with all whitespace removed and case kept. For each
    prediction the reference with the best sentence-level chrF is chosen (the first on ties);
    its n-gram statistics are summed over the corpus, and the score is F-beta of the precision
    and recall averaged over the orders present in both sides (sacrebleu's default
    ``eps_smoothing=False``). ``nan`` for an empty corpus.

    >>> round(chrf(["東京都"], ["東京"]), 6)  # orders 1-2: P = (2/3 + 1/2) / 2, R = 1
    87.5
    >>> round(chrf(["東京都", "大阪"], [["京都", "東京"], "大阪"]), 6)  # F2 = 55 / 59
    93.220339
    """
    _check_chrf_args(char_order, beta)
    if len(predictions) != len(references):
        raise ValueError(
            f"got {len(predictions)} predictions but {len(references)} references "
            f"(give one reference string or list of references per prediction)"
        )
    if not predictions:
        return float("nan")
    total = [0] * (3 * char_order)
    for pred, refs in zip(predictions, references):
        for k, value in enumerate(_best_stats(pred, refs, char_order, beta)):
            total[k] += value
    return float(_chrf_score(total, beta))


def sentence_chrf(
    prediction: str, references: str | Sequence[str], char_order: int = 6, beta: float = 2.0
) -> float:
    """chrF (0-100) of one prediction, equal to sacrebleu's ``CHRF().sentence_score``.

    ``references`` is one reference string or several; the best-scoring one counts.

    >>> round(sentence_chrf("東京都", ["大阪", "東京"]), 6)
    87.5
    """
    _check_chrf_args(char_order, beta)
    return float(_chrf_score(_best_stats(prediction, references, char_order, beta), beta))


# --- everything at once --------------------------------------------------------------------


def _check_choice_args(choices: Any, gold: Any) -> bool:
    """Whether choice metrics are asked for; both or neither of the two arguments must be set."""
    if (choices is None) != (gold is None):
        raise ValueError("give both the choices and the gold choice indices, or neither")
    return choices is not None


def generation_metrics(
    predictions: Sequence[str],
    golds: Sequence[Sequence[str]],
    choices: Sequence[Sequence[str]] | None = None,
    gold_choice_indices: Sequence[int] | None = None,
) -> dict[str, float]:
    """Corpus scores of generated answers as a flat, JSON-serialisable dict.

    Keys: ``exact_match`` and ``char_f1`` (means of the per-example scores, ``nan`` when
    empty), ``chrf`` (corpus-level, see :func:`chrf`, with all golds of a row as its
    references), ``n`` (int), and ``choice_accuracy`` when ``choices`` and
    ``gold_choice_indices`` are given (both or neither). Each row of ``golds`` is a list of
    gold answers or a single string.

    >>> m = generation_metrics(["東京都", "大阪"], [["東京"], ["大阪", "大阪府"]])
    >>> m["exact_match"], round(m["char_f1"], 4), round(m["chrf"], 4), m["n"]
    (0.5, 0.9, 93.2203, 2)
    >>> generation_metrics(["猫"], [["猫"]], [["犬", "猫"]], [1])["choice_accuracy"]
    1.0
    """
    with_choices = _check_choice_args(choices, gold_choice_indices)
    if len(predictions) != len(golds):
        raise ValueError(f"got {len(predictions)} predictions but {len(golds)} rows of golds")
    n = len(predictions)
    nan = float("nan")
    out: dict[str, float] = {
        "exact_match": sum(map(exact_match, predictions, golds)) / n if n else nan,
        "char_f1": sum(map(char_f1, predictions, golds)) / n if n else nan,
        "chrf": chrf(predictions, golds),
        "n": n,
    }
    if with_choices:
        assert choices is not None and gold_choice_indices is not None
        out["choice_accuracy"] = choice_accuracy(predictions, choices, gold_choice_indices)
    return out


def per_example_scores(
    prediction: str,
    golds: str | Sequence[str],
    choices: Sequence[str] | None = None,
    gold_choice_index: int | None = None,
) -> dict[str, Any]:
    """Scores of one example, for prediction files.

    Keys: ``exact_match``, ``char_f1`` and ``chrf`` (:func:`sentence_chrf` against all golds);
    with ``choices`` and ``gold_choice_index`` (both or neither) also ``choice`` (the
    :func:`match_choice` index or ``None``) and ``choice_correct`` (bool).

    >>> per_example_scores("答えは猫です", ["猫"], ["犬", "猫"], 1)
    {'exact_match': 0.0, 'char_f1': 0.2857142857142857, 'chrf': 50.0, 'choice': 1, 'choice_correct': True}
    """
    with_choices = _check_choice_args(choices, gold_choice_index)
    out: dict[str, Any] = {
        "exact_match": exact_match(prediction, golds),
        "char_f1": char_f1(prediction, golds),
        "chrf": sentence_chrf(prediction, golds),
    }
    if with_choices:
        assert choices is not None and gold_choice_index is not None
        choice = match_choice(prediction, choices)
        out["choice"] = choice
        out["choice_correct"] = choice == int(gold_choice_index)
    return out
