"""kitae.metrics.generation: hand-worked Japanese cases, and chrF against sacrebleu."""

from __future__ import annotations

import math
import random
import subprocess
import sys
from types import ModuleType

import pytest

from kitae.metrics.generation import (
    char_f1,
    choice_accuracy,
    chrf,
    exact_match,
    generation_metrics,
    match_choice,
    normalize_answer,
    per_example_scores,
    sentence_chrf,
)

# --- normalize_answer ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("東京都", "東京都"),
        ("  東京 都\n", "東京都"),  # spaces inside removed too, not only at the ends
        ("東京\u3000タワー", "東京タワー"),  # ideographic space -> " " by NFKC -> removed
        ("\t大\r\n阪 ", "大阪"),
        ("２０２４年", "2024年"),  # full-width digits -> ASCII
        ("Ｔｏｋｙｏ　Ｔｏｗｅｒ", "tokyotower"),  # full-width letters -> ASCII -> lowercased
        ("ｶﾀｶﾅ", "カタカナ"),  # half-width katakana -> full-width
        ("ｶﾞｷﾞ", "ガギ"),  # half-width dakuten composes with its kana
        ("①㈱", "1(株)"),  # compatibility characters decomposed
        ("ΑΒΓ Äpfel", "ΑΒΓÄpfel"),  # only ASCII letters are lowercased: Α, Β, Γ, Ä stay
        ("「答え」。", "「答え」。"),  # full-width brackets and the full stop are kept
        ("", ""),
        ("\u3000 \t", ""),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


def test_normalize_answer_is_idempotent() -> None:
    for text in ["Ｔｏｋｙｏ　Ｔｏｗｅｒ", "ｶﾞｷﾞ ①", "「答え」は ＡＢＣ です。"]:
        once = normalize_answer(text)
        assert normalize_answer(once) == once


# --- exact_match ---------------------------------------------------------------------------


def test_exact_match_width_and_spaces() -> None:
    assert exact_match("２０２４年", ["2024年"]) == 1.0
    assert exact_match("2024 年", ["２０２４年"]) == 1.0
    assert exact_match("　東京　", ["東京"]) == 1.0  # full-width spaces around
    assert exact_match("ＡＢＣ", ["abc"]) == 1.0
    assert exact_match("ｶﾚｰ", ["カレー"]) == 1.0


def test_exact_match_is_not_containment() -> None:
    assert exact_match("東京都", ["東京"]) == 0.0
    assert exact_match("東京", ["東京都"]) == 0.0


def test_exact_match_any_gold_and_single_string() -> None:
    assert exact_match("とうきょう", ["東京", "とうきょう", "トウキョウ"]) == 1.0
    assert exact_match("大阪", ["東京", "とうきょう"]) == 0.0
    assert exact_match("東京", "東京") == 1.0  # a bare string is one gold, not its characters
    assert exact_match("東", "東京") == 0.0
    assert exact_match("", [""]) == 1.0
    assert isinstance(exact_match("東京", ["東京"]), float)


def test_exact_match_needs_a_gold() -> None:
    with pytest.raises(ValueError, match="at least one"):
        exact_match("東京", [])


# --- char_f1 -------------------------------------------------------------------------------


def test_char_f1_hand_worked() -> None:
    # 東京都 vs 東京: overlap {東, 京} = 2; P = 2/3, R = 2/2; F1 = 2 * 2/3 / (5/3) = 0.8.
    assert char_f1("東京都", ["東京"]) == pytest.approx(0.8)
    # Swapped: P = 1, R = 2/3, same F1.
    assert char_f1("東京", ["東京都"]) == pytest.approx(0.8)
    # 東京タワー (5 chars) vs 東京スカイツリー (8): overlap {東, 京, ー} = 3;
    # P = 3/5, R = 3/8; F1 = 2 * 9/40 / (39/40) = 18/39 = 6/13.
    assert char_f1("東京タワー", ["東京スカイツリー"]) == pytest.approx(6 / 13)
    # Bag of characters: order does not matter.
    assert char_f1("京東", ["東京"]) == 1.0
    # Multiset: ははは vs はは overlap min(3, 2) = 2; P = 2/3, R = 1; F1 = 0.8.
    assert char_f1("ははは", ["はは"]) == pytest.approx(0.8)
    # はは vs は: overlap 1; P = 1/2, R = 1; F1 = 2/3.
    assert char_f1("はは", "は") == pytest.approx(2 / 3)
    assert char_f1("大阪", ["東京"]) == 0.0


def test_char_f1_after_normalisation() -> None:
    # ２０２４年 -> 2024年 equals the gold exactly.
    assert char_f1("２０２４年", ["2024年"]) == 1.0
    # Spaces never count as characters: "東京 都" is 東京都 (P 2/3, R 1, F1 0.8 against 東京).
    assert char_f1("東京 都", ["東京"]) == pytest.approx(0.8)
    assert char_f1("ＡＢ", ["abc"]) == pytest.approx(0.8)  # ab vs abc: P 1, R 2/3


def test_char_f1_takes_the_best_gold() -> None:
    # 大阪 vs 東京 = 0; vs 大阪府: P 1, R 2/3 -> 0.8; vs 大阪 -> 1.
    assert char_f1("大阪", ["東京", "大阪府"]) == pytest.approx(0.8)
    assert char_f1("大阪", ["東京", "大阪府", "大阪"]) == 1.0
    assert char_f1("大阪", ["大阪", "東京"]) == char_f1("大阪", ["東京", "大阪"])


def test_char_f1_empty() -> None:
    assert char_f1("", [""]) == 1.0
    assert char_f1("　 ", [""]) == 1.0  # whitespace only normalises to empty
    assert char_f1("", ["東京"]) == 0.0
    assert char_f1("東京", [""]) == 0.0
    assert char_f1("", ["東京", ""]) == 1.0
    with pytest.raises(ValueError, match="at least one"):
        char_f1("東京", [])


# --- match_choice --------------------------------------------------------------------------

CITIES = ["東京", "大阪", "京都"]


def test_match_choice_exact() -> None:
    assert match_choice("大阪", CITIES) == 1
    assert match_choice("　京都 ", CITIES) == 2
    assert match_choice("ｶﾚｰ", ["ラーメン", "カレー"]) == 1  # half-width katakana
    assert match_choice("Apple", ["apple", "banana"]) == 0  # ASCII case
    assert match_choice("東京都", ["東京", "東京都"]) == 1  # exact wins over containment


def test_match_choice_contained() -> None:
    assert match_choice("答えは京都です。", CITIES) == 2
    assert match_choice("たぶん大阪だと思います", CITIES) == 1
    # 東京 and 東京都 are both in the answer, but 東京 is inside 東京都, so 東京都 is meant.
    assert match_choice("答えは東京都です。", ["東京", "東京都", "大阪"]) == 1
    # The same rule drops 京都 inside 東京都 even though the answer names both (documented rule).
    assert match_choice("東京都と京都", ["京都", "東京都"]) == 1


def test_match_choice_ambiguous() -> None:
    assert match_choice("東京か大阪", CITIES) is None  # two unrelated choices named
    assert match_choice("東京、大阪、京都", CITIES) is None
    assert match_choice("犬", ["犬", "犬", "猫"]) is None  # duplicate choices, exact
    assert match_choice("私は犬", ["犬", "犬", "猫"]) is None  # duplicate choices, contained


def test_match_choice_no_match() -> None:
    assert match_choice("名古屋", CITIES) is None
    assert match_choice("東", CITIES) is None  # a part of a choice is not the choice
    assert match_choice("", CITIES) is None
    assert match_choice("　", CITIES) is None
    assert match_choice("猫", ["", "犬"]) is None  # the empty choice is never picked
    assert match_choice("犬", ["", "犬"]) == 1
    assert match_choice("犬", []) is None


def test_choice_accuracy() -> None:
    choices = [CITIES, CITIES, CITIES, ["犬", "猫"]]
    predictions = ["大阪", "答えは京都", "東京か大阪", "猫"]
    # Rows: 1 == 1 right; 2 == 2 right; None != 0 wrong; 1 != 0 wrong -> 2/4.
    assert choice_accuracy(predictions, choices, [1, 2, 0, 0]) == 0.5
    assert choice_accuracy(predictions, choices, [1, 2, 0, 1]) == 0.75
    assert math.isnan(choice_accuracy([], [], []))
    with pytest.raises(ValueError, match="different lengths"):
        choice_accuracy(["大阪"], [CITIES], [1, 2])


# --- chrF, hand-worked ---------------------------------------------------------------------


def test_chrf_hand_worked() -> None:
    # 東京都 vs 東京. Order 1: hyp 3, ref 2, match 2 -> P 2/3, R 1. Order 2: hyp {東京, 京都},
    # ref {東京} -> P 1/2, R 1. Orders 3-6: the reference has no n-grams, so they are skipped.
    # Mean P = 7/12, mean R = 1; chrF2 = 5 * 7/12 / (4 * 7/12 + 1) = 35/40 = 87.5.
    assert sentence_chrf("東京都", "東京") == pytest.approx(87.5)
    assert chrf(["東京都"], ["東京"]) == pytest.approx(87.5)
    # ab vs abc. Order 1: P 1, R 2/3; order 2: P 1, R 1/2; order 3: no hyp n-grams, skipped.
    # Mean P = 1, mean R = 7/12; chrF2 = 5 * 7/12 / (4 + 7/12) = 35/55 = 63.6363...
    assert sentence_chrf("ab", ["abc"]) == pytest.approx(100 * 7 / 11)
    assert sentence_chrf("東京都", "東京都") == pytest.approx(100.0)
    assert sentence_chrf("東京", "大阪") == 0.0
    assert sentence_chrf("", "東京") == 0.0
    assert sentence_chrf("", "") == 0.0  # no effective order: sacrebleu gives 0


def test_chrf_ignores_whitespace_but_not_width_or_case() -> None:
    assert sentence_chrf("東 京\u3000都", "東京都") == pytest.approx(100.0)
    assert sentence_chrf("the cat", "thecat") == pytest.approx(100.0)
    assert sentence_chrf("ABC", "abc") == 0.0  # raw text: no normalize_answer
    assert sentence_chrf("２", "2") == 0.0


def test_chrf_corpus_sums_statistics() -> None:
    # Row 1 as above (order 1: 3, 2, 2; order 2: 2, 1, 1); 京都 and 東京 tie, so the first is
    # used. Row 2 大阪 = 大阪 (order 1: 2, 2, 2; order 2: 1, 1, 1). Sums: order 1 5, 4, 4;
    # order 2 3, 2, 2 -> mean P = (4/5 + 2/3) / 2 = 11/15, R = 1; chrF2 = 55/59.
    assert chrf(["東京都", "大阪"], [["京都", "東京"], "大阪"]) == pytest.approx(100 * 55 / 59)
    # The corpus score is not the mean of the sentence scores (87.5 and 100).
    assert chrf(["東京都", "大阪"], ["東京", "大阪"]) != pytest.approx(93.75)


def test_chrf_multi_reference_picks_best_sentence_score() -> None:
    assert sentence_chrf("東京都", ["大阪", "東京"]) == pytest.approx(87.5)
    assert sentence_chrf("東京都", ["大阪", "東京", "東京都"]) == pytest.approx(100.0)


def test_chrf_arguments() -> None:
    assert math.isnan(chrf([], []))
    with pytest.raises(ValueError, match="references"):
        chrf(["東京", "大阪"], ["東京"])
    with pytest.raises(ValueError, match="at least one"):
        chrf(["東京"], [[]])
    with pytest.raises(ValueError, match="char_order"):
        sentence_chrf("東京", "東京", char_order=0)
    with pytest.raises(ValueError, match="beta"):
        chrf(["東京"], ["東京"], beta=0)


def test_generation_module_does_not_import_sacrebleu() -> None:
    code = "import sys, kitae.metrics.generation; assert 'sacrebleu' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- chrF against sacrebleu ----------------------------------------------------------------

JA_CHARS = "東京大阪京都日本語学生先生本屋のはがをにでともですますカタカナアイウエオ、。「」？"
EN_WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "park", "in"]
EN_WORDS += ["rain", "Tokyo", "Osaka", "is", "big", "city"]


def _ja_sentence(rng: random.Random) -> str:
    chars = [rng.choice(JA_CHARS) for _ in range(rng.randint(1, 25))]
    for _ in range(rng.randint(0, 2)):  # the odd ASCII or ideographic space
        chars.insert(rng.randint(0, len(chars)), rng.choice([" ", "\u3000"]))
    return "".join(chars)


def _en_sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(EN_WORDS) for _ in range(rng.randint(1, 10)))


def _perturb(text: str, rng: random.Random) -> str:
    """A noisy copy of ``text`` (characters dropped, replaced, inserted), for partial overlap."""
    out = []
    pool = JA_CHARS + "abcdefghijklmnopqrstuvwxyz "
    for ch in text:
        r = rng.random()
        if r < 0.15:
            continue
        out.append(rng.choice(pool) if r < 0.3 else ch)
        if rng.random() < 0.1:
            out.append(rng.choice(pool))
    return "".join(out)


def _pairs(seed: int, n: int = 40) -> tuple[list[str], list[list[str]]]:
    """``n`` predictions and 1-3 references each: Japanese and English, noisy and edge cases."""
    rng = random.Random(seed)
    predictions: list[str] = []
    references: list[list[str]] = []
    for i in range(n):
        sentence = _ja_sentence if i % 2 == 0 else _en_sentence
        refs = [sentence(rng) for _ in range(rng.randint(1, 3))]
        r = rng.random()
        if r < 0.6:
            pred = _perturb(rng.choice(refs), rng)
        elif r < 0.8:
            pred = sentence(rng)  # unrelated
        else:
            pred = rng.choice(refs)  # identical
        predictions.append(pred)
        references.append(refs)
    # Edge cases: empty and whitespace-only texts, shorter than the n-gram order.
    predictions += ["", "東", "東京", " ", "ab", "東京都"]
    references += [["東京"], ["東"], [""], ["東京"], ["abcdefgh", "b"], ["京都", "東京", "都"]]
    return predictions, references


def _streams(references: list[list[str]]) -> list[list[str | None]]:
    """Per-row references as sacrebleu's reference streams, padded with ``None``."""
    width = max(len(refs) for refs in references)
    return [[refs[k] if k < len(refs) else None for refs in references] for k in range(width)]


@pytest.fixture(scope="module")
def sacrebleu() -> ModuleType:
    return pytest.importorskip(
        "sacrebleu",
        reason="sacrebleu is not installed (it is the reference chrF; pip install sacrebleu)",
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chrf_single_reference_matches_sacrebleu(sacrebleu: ModuleType, seed: int) -> None:
    predictions, references = _pairs(seed)
    single = [refs[0] for refs in references]
    metric = sacrebleu.CHRF()
    expected = metric.corpus_score(predictions, [single]).score
    assert chrf(predictions, single) == pytest.approx(expected, abs=1e-6)
    assert chrf(predictions, [[ref] for ref in single]) == pytest.approx(expected, abs=1e-6)
    for pred, ref in zip(predictions, single):
        expected = metric.sentence_score(pred, [ref]).score
        assert sentence_chrf(pred, ref) == pytest.approx(expected, abs=1e-6), (pred, ref)
        assert sentence_chrf(pred, [ref]) == pytest.approx(expected, abs=1e-6), (pred, ref)


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_chrf_multi_reference_matches_sacrebleu(sacrebleu: ModuleType, seed: int) -> None:
    predictions, references = _pairs(seed)
    assert len({len(refs) for refs in references}) > 1  # a variable number of references
    metric = sacrebleu.CHRF()
    expected = metric.corpus_score(predictions, _streams(references)).score
    assert chrf(predictions, references) == pytest.approx(expected, abs=1e-6)
    for pred, refs in zip(predictions, references):
        expected = metric.sentence_score(pred, refs).score
        assert sentence_chrf(pred, refs) == pytest.approx(expected, abs=1e-6), (pred, refs)


@pytest.mark.parametrize(("char_order", "beta"), [(4, 1), (1, 3), (8, 2)])
def test_chrf_other_orders_and_betas_match_sacrebleu(
    sacrebleu: ModuleType, char_order: int, beta: int
) -> None:
    predictions, references = _pairs(6, n=30)
    metric = sacrebleu.CHRF(char_order=char_order, beta=beta)
    expected = metric.corpus_score(predictions, _streams(references)).score
    got = chrf(predictions, references, char_order=char_order, beta=float(beta))
    assert got == pytest.approx(expected, abs=1e-6)
    for pred, refs in zip(predictions[:10], references[:10]):
        expected = metric.sentence_score(pred, refs).score
        got = sentence_chrf(pred, refs, char_order=char_order, beta=float(beta))
        assert got == pytest.approx(expected, abs=1e-6)


# --- generation_metrics and per_example_scores ---------------------------------------------


def test_generation_metrics_hand_worked() -> None:
    predictions = ["東京都", "２０２４年", "大阪"]
    golds = [["東京"], ["2024年"], ["京都", "大阪府"]]
    # exact_match: 0, 1, 0 -> 1/3. char_f1: 0.8 (above), 1, max(0, 0.8) -> 2.6 / 3.
    m = generation_metrics(predictions, golds)
    assert set(m) == {"exact_match", "char_f1", "chrf", "n"}
    assert m["exact_match"] == pytest.approx(1 / 3)
    assert m["char_f1"] == pytest.approx(2.6 / 3)
    assert m["chrf"] == pytest.approx(chrf(predictions, golds))
    assert m["n"] == 3 and isinstance(m["n"], int)
    assert all(type(m[key]) is float for key in ("exact_match", "char_f1", "chrf"))


def test_generation_metrics_with_choices() -> None:
    predictions = ["大阪", "答えは京都です", "東京か大阪"]
    golds = [["大阪"], ["京都"], ["東京"]]
    m = generation_metrics(predictions, golds, [CITIES] * 3, [1, 2, 0])
    assert m["choice_accuracy"] == pytest.approx(2 / 3)  # the last row is ambiguous
    assert m["exact_match"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="both"):
        generation_metrics(predictions, golds, [CITIES] * 3)
    with pytest.raises(ValueError, match="both"):
        generation_metrics(predictions, golds, gold_choice_indices=[1, 2, 0])
    with pytest.raises(ValueError, match="rows of golds"):
        generation_metrics(predictions, golds[:2])


def test_generation_metrics_empty() -> None:
    m = generation_metrics([], [])
    assert m["n"] == 0
    assert all(math.isnan(m[key]) for key in ("exact_match", "char_f1", "chrf"))


def test_per_example_scores() -> None:
    # 答えは猫です vs 猫: P 1/6, R 1 -> char F1 2/7; chrF: order 1 only (the gold has no
    # bigrams), P 1/6, R 1 -> 5 * 1/6 / (4/6 + 1) = 50.
    row = per_example_scores("答えは猫です", ["猫"], ["犬", "猫"], 1)
    assert row == {
        "exact_match": 0.0,
        "char_f1": pytest.approx(2 / 7),
        "chrf": pytest.approx(50.0),
        "choice": 1,
        "choice_correct": True,
    }
    row = per_example_scores("犬か猫", "猫", ["犬", "猫"], 1)
    assert row["choice"] is None and row["choice_correct"] is False
    assert set(per_example_scores("東京", ["東京"])) == {"exact_match", "char_f1", "chrf"}
    assert per_example_scores("東京", ["東京"])["chrf"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="both"):
        per_example_scores("犬", ["犬"], ["犬", "猫"])
