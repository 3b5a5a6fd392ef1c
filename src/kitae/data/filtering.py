"""Data selection for SFT: drop duplicates, near duplicates, bad lengths, non-Japanese rows and rows
a trained classifier rejects — `kitae data filter CONFIG -o clean.jsonl`.

Every row of an instruction file (read with the run config's columns) goes through the checks in
this order and is dropped for the FIRST one that applies:

1. ``exact_duplicate``: its text, normalised (NFKC, whitespace collapsed), equals an earlier kept row's.
2. ``near_duplicate``: character 5-gram MinHash (64 hash functions with fixed seeds) and LSH bands
   find earlier kept rows that may be similar; the exact Jaccard similarity of the 5-gram sets
   confirms one at ``near_dup_threshold`` or more. Rows are compared only with the rows their
   bands share, never all pairs, so 100k rows take seconds.
3. ``too_short`` / ``too_long`` / ``prompt_too_long``: the response (assistant texts) has fewer
   than ``min_chars`` or more than ``max_chars`` characters; the prompt (user texts) more than
   ``max_prompt_chars``. A row with no response (or an empty one) has a response of length 0.
4. ``not_japanese``: the share of Japanese characters (hiragana, katakana, half-width katakana,
   CJK ideographs, the CJK punctuation block: 、。「」『』・ー々 ...) among the characters that
   are not whitespace, ASCII digits or ASCII punctuation is below ``min_japanese``.
5. ``classifier``: a trained kitae classifier scores the rows still kept, in batches, and rows
   whose prediction does not satisfy every ``keep`` rule (``label==good``, ``label!=toxic``,
   ``p(good)>=0.7``) are dropped.

"Earlier kept row" means a row that passed checks 1-4: the classifier scores rows after them, in
batches, so a row dropped as a duplicate may name a row the classifier later drops (they are near
copies: the classifier would most likely have dropped both).

The text of a row is its conversation (`read_conversation`): the user texts (the prompt) and the
assistant texts (the response), plus the row's own system message. Text that is the same in every
row is left out of the duplicate and language checks — the config's `data.system_prompt` and the
fixed words of `data.template` (the template's column values are compared instead) — so it cannot
make different rows look alike. A row that cannot be read as a conversation (a missing instruction
column, a malformed chat) is dropped as ``unreadable`` with the error (with ``strict``, it is the
usual DataError); a file that cannot be parsed at all (invalid JSON) is always an error.

Classifier input: each row is rendered with the classifier run's own columns and template (as
`Classifier.predict` does for dicts); a row without those columns (or with them empty) is scored on
its response text instead — on (prompt, response) when the classifier reads text pairs (a reward
model with `data.prompt_field`, or `data.text_fields`). The dropped file says which was scored.

Outputs, all written atomically (never over an input, never over an existing file without
``overwrite``): the kept rows' original values (`.jsonl`, `.csv` or `.tsv`), `<stem>.report.json`
(counts per reason, the settings used) and `<stem>.dropped.jsonl` (each dropped row: its line, id,
reason, the details — the line and id of the row it duplicates, the Jaccard similarity, the
classifier's prediction — and its values).

    from kitae.data.filtering import FilterOptions, filter_file
    report = filter_file("sft.yaml", "clean.jsonl", options=FilterOptions(min_japanese=0.3))
    report.reasons   # {'exact_duplicate': 12, 'near_duplicate': 3, 'too_short': 1, ...}
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import operator
import re
import tempfile
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kitae.data.instructions import read_conversation
from kitae.data.readers import Row, count_rows, iter_rows
from kitae.data.templates import template_fields
from kitae.errors import DataError, KitaeError
from kitae.runs import atomic_text_file, check_output_file, write_json

if TYPE_CHECKING:
    from kitae.config import RunConfig, SFTData

logger = logging.getLogger("kitae")

REASONS = ("unreadable", "exact_duplicate", "near_duplicate", "too_short", "too_long", "prompt_too_long",
           "not_japanese", "classifier")
OUTPUT_SUFFIXES = (".jsonl", ".csv", ".tsv")
SCORE_CHUNK_ROWS = 512  # rows scored by the classifier at a time (the classifier batches them further)
_SEP = "\ue000"  # joins the parts of a row's text (a private-use character: survives normalisation)
_MASK64 = (1 << 64) - 1


# --- text ----------------------------------------------------------------------------------------

def normalize_text(text: str) -> str:
    """NFKC, every run of whitespace one space, no space at the ends: what duplicates are compared on.

    >>> normalize_text("ＡＢＣ　１２３\\n\\n  ｶﾀｶﾅ ")
    'ABC 123 カタカナ'
    """
    return " ".join(unicodedata.normalize("NFKC", text).split())


_OTHER, _JAPANESE, _IGNORED = 0, 1, 2
# Code point ranges (inclusive) and what they are. Japanese: CJK punctuation (、。「」『』〜々〆),
# hiragana, katakana (・ー), katakana extensions, CJK ideographs (extension A, the main block,
# compatibility ideographs, extensions B-G), half-width katakana. Ignored: the space (text is
# normalised: all whitespace is one space), ASCII digits and punctuation, the part separator.
_CHAR_RANGES = ((0x20, 0x40, _IGNORED), (0x5B, 0x60, _IGNORED), (0x7B, 0x7E, _IGNORED),
                (0x3001, 0x30FF, _JAPANESE), (0x31F0, 0x31FF, _JAPANESE), (0x3400, 0x4DBF, _JAPANESE),
                (0x4E00, 0x9FFF, _JAPANESE), (ord(_SEP), ord(_SEP), _IGNORED), (0xF900, 0xFAFF, _JAPANESE),
                (0xFF65, 0xFF9F, _JAPANESE), (0x20000, 0x3134F, _JAPANESE))
_CHAR_EDGES = np.array([edge for low, high, _ in _CHAR_RANGES for edge in (low, high + 1)], dtype=np.uint32)
# searchsorted(_CHAR_EDGES, point, "right") is 2k + 1 inside range k, even between ranges.
_CHAR_KINDS = np.array([_OTHER] + [kind for *_, kind in _CHAR_RANGES for kind in (kind, _OTHER)], dtype=np.int64)


def _codepoints(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


def japanese_share(text: str) -> float:
    """The share of Japanese characters (kana, CJK ideographs, CJK punctuation such as 、。「」・ー)
    among the characters that are not whitespace, ASCII digits or ASCII punctuation (after NFKC,
    so full-width digits and punctuation count as ASCII). 0.0 for a text with no such character.

    >>> japanese_share("今日は晴れ。")
    1.0
    >>> japanese_share("ok, はい。")
    0.6
    >>> japanese_share("1 + 1 = 2")
    0.0
    """
    return _japanese_share(_codepoints(normalize_text(text)))


def _japanese_share(points: np.ndarray) -> float:
    """japanese_share of a normalised text's code points (spaces and the part separator not counted)."""
    kinds = np.bincount(_CHAR_KINDS[np.searchsorted(_CHAR_EDGES, points, side="right")], minlength=3)
    total = int(kinds[_OTHER] + kinds[_JAPANESE])
    return int(kinds[_JAPANESE]) / total if total else 0.0


# --- shingles, MinHash, LSH ------------------------------------------------------------------------

def _splitmix64(z: np.ndarray) -> np.ndarray:
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def shingles(text: str, n: int = 5) -> np.ndarray:
    """The character n-grams of a text as sorted unique 64-bit hashes (a text shorter than n is one
    gram; an empty text none). Hashes are fixed: the same text gives the same set everywhere.

    >>> len(shingles("あいうえおか")), len(shingles("あいうえおあいうえお")), len(shingles("あい"))
    (2, 5, 1)
    """
    return _shingles(_codepoints(text), n)


def _shingles(points: np.ndarray, n: int) -> np.ndarray:
    if len(points) == 0:
        return np.zeros(0, dtype=np.uint64)
    points = points.astype(np.uint64)
    count = max(len(points) - n + 1, 1)
    if len(points) < n:
        points = np.concatenate([points, np.zeros(n - len(points), dtype=np.uint64)])
    grams = np.zeros(count, dtype=np.uint64)
    base = np.uint64(0x100000001B3)  # odd: the polynomial wraps modulo 2**64, then it is mixed
    for offset in range(n):
        grams = grams * base + points[offset:offset + count] + np.uint64(1)
    hashes = np.sort(_splitmix64(grams))
    return hashes[np.concatenate(([True], hashes[1:] != hashes[:-1]))]


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two shingle sets (`shingles` output).

    >>> round(jaccard(shingles("今日は良い天気です"), shingles("今日は良い天気でした")), 3)  # 4 of 7 grams
    0.571
    """
    if len(a) == 0 and len(b) == 0:
        return 1.0
    common = len(np.intersect1d(a, b, assume_unique=True))
    return common / (len(a) + len(b) - common)


def text_jaccard(a: str, b: str, n: int = 5) -> float:
    """Jaccard similarity of the character n-grams of two (normalised) texts."""
    return jaccard(shingles(normalize_text(a), n), shingles(normalize_text(b), n))


def _seeded_uint64(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")


class MinHasher:
    """`num_perm` hash functions h_i(x) = a_i x + b_i (mod 2**64, a_i odd) over the shingle hashes,
    with a_i, b_i derived from fixed names by BLAKE2 (identical on every machine and numpy
    version); a signature keeps the top 32 bits of each minimum."""

    def __init__(self, num_perm: int = 64) -> None:
        if num_perm < 1:
            raise KitaeError(f"num_perm must be at least 1, got {num_perm}")
        self.num_perm = num_perm
        self._a = np.array([_seeded_uint64(f"kitae-minhash-a-{i}") | 1 for i in range(num_perm)],
                           dtype=np.uint64)[:, None]
        self._b = np.array([_seeded_uint64(f"kitae-minhash-b-{i}") for i in range(num_perm)],
                           dtype=np.uint64)[:, None]

    def signature(self, hashes: np.ndarray) -> np.ndarray:
        mins = np.full(self.num_perm, np.iinfo(np.uint64).max, dtype=np.uint64)
        for start in range(0, len(hashes), 4096):  # bounds the (num_perm, n) temporary
            block = hashes[None, start:start + 4096]
            mins = np.minimum(mins, (self._a * block + self._b).min(axis=1))
        return (mins >> np.uint64(32)).astype(np.uint32)


def estimate_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """The MinHash estimate of the Jaccard similarity: the share of equal signature entries."""
    return float(np.mean(a == b))


def lsh_params(num_perm: int, threshold: float, recall: float = 0.99) -> tuple[int, int]:
    """(bands, rows per band): the most rows per band (fewest candidates to confirm) for which a
    pair exactly at `threshold` still shares a band with probability >= `recall`.

    >>> lsh_params(64, 0.85)
    (10, 6)
    """
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if 1.0 - (1.0 - threshold ** rows) ** bands >= recall:
            best = (bands, rows)
    return best


@dataclass
class Sketch:
    """What the near-duplicate index needs of one text."""

    text: str
    shingles: np.ndarray
    signature: np.ndarray
    band_keys: list[int]


class NearDuplicateIndex:
    """Texts seen so far, found again by MinHash LSH: `query` returns the earlier entry whose exact
    n-gram Jaccard similarity with a text is at least `threshold` (the most likely one first), or
    None. Candidates come from shared LSH bands, ranked by their signature estimate; at most
    `max_confirm` of them (estimated within `margin` of the threshold) are compared exactly."""

    def __init__(self, threshold: float = 0.85, num_perm: int = 64, ngram: int = 5,
                 bands: tuple[int, int] | None = None, max_confirm: int = 32, margin: float = 0.25) -> None:
        self.threshold, self.ngram, self.max_confirm, self.margin = threshold, ngram, max_confirm, margin
        self.hasher = MinHasher(num_perm)
        self.bands, self.rows = bands or lsh_params(num_perm, threshold)
        self._band_salt = np.array([_seeded_uint64(f"kitae-lsh-band-{i}") for i in range(self.bands)],
                                   dtype=np.uint64)
        self._row_weights = np.array([_seeded_uint64(f"kitae-lsh-row-{i}") | 1 for i in range(self.rows)],
                                     dtype=np.uint64)
        self._signatures = np.zeros((64, num_perm), dtype=np.uint32)
        self._texts: list[str] = []
        self.keys: list[Any] = []
        self._buckets: dict[int, int | list[int]] = {}

    def __len__(self) -> int:
        return len(self.keys)

    def sketch(self, text: str, points: np.ndarray | None = None) -> Sketch:
        grams = _shingles(_codepoints(text) if points is None else points, self.ngram)
        signature = self.hasher.signature(grams)
        used = signature[: self.bands * self.rows].astype(np.uint64).reshape(self.bands, self.rows)
        keys = _splitmix64((used * self._row_weights).sum(axis=1) ^ self._band_salt)
        return Sketch(text, grams, signature, keys.tolist())

    def query(self, sketch: Sketch | str) -> tuple[Any, float] | None:
        """(key of the earlier entry, exact Jaccard) of a near duplicate, or None."""
        if isinstance(sketch, str):
            sketch = self.sketch(sketch)
        if len(sketch.shingles) == 0:
            return None
        found: set[int] = set()
        for key in sketch.band_keys:
            bucket = self._buckets.get(key)
            if bucket is not None:
                found.update(bucket) if isinstance(bucket, list) else found.add(bucket)
        if not found:
            return None
        candidates = np.fromiter(found, dtype=np.int64, count=len(found))
        estimates = (self._signatures[candidates] == sketch.signature).mean(axis=1)
        order = np.argsort(-estimates, kind="stable")[: self.max_confirm]
        for index in order:
            if estimates[index] < self.threshold - self.margin:
                break
            entry = int(candidates[index])
            similarity = jaccard(sketch.shingles, shingles(self._texts[entry], self.ngram))
            if similarity >= self.threshold:
                return self.keys[entry], similarity
        return None

    def add(self, sketch: Sketch | str, key: Any) -> None:
        if isinstance(sketch, str):
            sketch = self.sketch(sketch)
        entry = len(self.keys)
        if entry == len(self._signatures):
            self._signatures = np.concatenate([self._signatures, np.zeros_like(self._signatures)])
        self._signatures[entry] = sketch.signature
        self._texts.append(sketch.text)
        self.keys.append(key)
        if len(sketch.shingles) == 0:
            return  # an empty text is nobody's near duplicate (query says so): no bucket to crowd
        for band_key in sketch.band_keys:
            bucket = self._buckets.get(band_key)
            if bucket is None:
                self._buckets[band_key] = entry
            elif isinstance(bucket, list):
                bucket.append(entry)
            else:
                self._buckets[band_key] = [bucket, entry]


# --- --keep expressions ------------------------------------------------------------------------

_KEEP = re.compile(r"""^\s*(?:
      label \s* (?P<label_op>==|!=) \s* (?P<label>.+?)
    | p \s* \( \s* (?P<prob_label>.+?) \s* \) \s* (?P<prob_op>>=|<=|>|<) \s* (?P<number>\S+)
    )\s*$""", re.VERBOSE)
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
KEEP_SYNTAX = "label==NAME, label!=NAME or p(NAME)>=NUMBER (operators >=, >, <=, <)"


@dataclass(frozen=True)
class KeepRule:
    """One --keep condition on a classifier's prediction.

    >>> rule = parse_keep("p(good) >= 0.7")
    >>> rule.label, rule.op, rule.value
    ('good', '>=', 0.7)
    """

    expr: str
    label: str
    op: str  # "==" / "!=" on the predicted label, or a comparison of the label's probability
    value: float | None = None  # the number of a probability comparison

    def check_labels(self, labels: Sequence[str]) -> None:
        if self.label not in labels:
            raise KitaeError(f"--keep {self.expr!r}: unknown label {self.label!r}; the classifier's labels "
                             f"are: {', '.join(map(str, labels))}")

    def matches(self, label: Any, probabilities: dict[str, float]) -> bool:
        if self.op in ("==", "!="):
            # multi_label predictions are lists of labels: == means the label is among them
            hit = self.label in label if isinstance(label, list | tuple) else str(label) == self.label
            return hit if self.op == "==" else not hit
        assert self.value is not None
        return _COMPARE[self.op](probabilities[self.label], self.value)


def parse_keep(expr: str) -> KeepRule:
    """Parse a --keep expression (no eval): `label==NAME`, `label!=NAME`, `p(NAME) OP NUMBER` with
    OP one of >=, >, <=, <. NAME may be quoted ('a b' or "a b").

    >>> parse_keep("label == 天気")
    KeepRule(expr='label == 天気', label='天気', op='==', value=None)
    >>> parse_keep("label = good")
    Traceback (most recent call last):
    kitae.errors.KitaeError: --keep 'label = good': expected label==NAME, label!=NAME or p(NAME)>=NUMBER (operators >=, >, <=, <)
    """
    match = _KEEP.match(expr)
    if match is None:
        raise KitaeError(f"--keep {expr!r}: expected {KEEP_SYNTAX}")
    if match["label_op"]:
        return KeepRule(expr, _unquote(expr, match["label"]), match["label_op"])
    try:
        value = float(match["number"])
    except ValueError:
        raise KitaeError(f"--keep {expr!r}: {match['number']!r} is not a number ({KEEP_SYNTAX})") from None
    if not math.isfinite(value):
        raise KitaeError(f"--keep {expr!r}: the threshold must be a finite number")
    return KeepRule(expr, _unquote(expr, match["prob_label"]), match["prob_op"], value)


def _unquote(expr: str, name: str) -> str:
    name = name.strip()
    if len(name) >= 2 and name[0] == name[-1] and name[0] in "'\"":
        name = name[1:-1]
    if not name:
        raise KitaeError(f"--keep {expr!r}: the label name is empty")
    return name


# --- rows -> texts ------------------------------------------------------------------------------

@dataclass(frozen=True)
class RowText:
    """The texts of one conversation the checks read."""

    prompt: str  # the user texts, one per line (for a template: the rendered template)
    response: str  # the assistant texts, one per line ("" when the row has no response)
    parts: tuple[str, ...]  # what the duplicate and language checks compare (normalised)

    @property
    def key(self) -> str:
        """The normalised text duplicates are found on."""
        return _SEP.join(self.parts)


def _blank(value: Any) -> bool:
    if isinstance(value, list | tuple):
        return all(_blank(v) for v in value)
    return value is None or not str(value).strip()


def row_text(row: Row, data: SFTData) -> RowText:
    """The conversation of a row as RowText (a DataError when it is not one). An empty response
    column is no response (length 0: `too_short`), not an unreadable row."""
    field_ = data.output_field
    if (data.messages_field is None and data.answer_choice_field is None and field_ in row.values
            and _blank(row.values[field_])):
        row = Row({k: v for k, v in row.values.items() if k != field_}, row.path, row.line)
    conversation = read_conversation(row, data, require_response=False)
    users = [user for user, _ in conversation.turns]
    answers = [answer for _, answer in conversation.turns if answer is not None]
    parts: list[str] = []
    if conversation.system is not None and conversation.system != data.system_prompt:
        parts.append(conversation.system)  # the row's own system message (the config's is in every row)
    if data.template is not None and data.messages_field is None:
        parts.append("\n".join(str(row.values[name]) for name in template_fields(data.template)
                               if row.values.get(name) is not None))
        parts.extend(answers)
    else:
        for user, answer in conversation.turns:
            parts.append(user)
            if answer is not None:
                parts.append(answer)
    return RowText("\n".join(users), "\n".join(answers), tuple(normalize_text(p) for p in parts))


# --- options, decisions, report -------------------------------------------------------------------

@dataclass
class FilterOptions:
    """The checks of `filter_rows` / `filter_file` and their thresholds (see the module docs)."""

    exact_duplicates: bool = True
    near_duplicates: bool = True
    near_dup_threshold: float = 0.85
    num_perm: int = 64
    ngram: int = 5
    min_chars: int = 1
    max_chars: int | None = None
    max_prompt_chars: int | None = None
    min_japanese: float = 0.0
    score_with: str | Path | None = None  # a trained classifier run directory
    keep: tuple[str, ...] | str = ()  # --keep expressions (all must hold)
    batch_size: int = 32
    device: str = "auto"
    trust_remote_code: bool = False
    strict: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.keep, str):
            self.keep = (self.keep,)
        self.keep = tuple(self.keep)
        if not 0.0 < self.near_dup_threshold <= 1.0:
            raise KitaeError(f"--near-dup-threshold must be in (0, 1], got {self.near_dup_threshold}")
        if self.num_perm < 1 or self.ngram < 1:
            raise KitaeError("num_perm and ngram must be at least 1")
        if self.min_chars < 0:
            raise KitaeError(f"--min-chars must be 0 or more, got {self.min_chars}")
        if self.max_chars is not None and self.max_chars < self.min_chars:
            raise KitaeError(f"--max-chars ({self.max_chars}) is below --min-chars ({self.min_chars})")
        if self.max_prompt_chars is not None and self.max_prompt_chars < 1:
            raise KitaeError(f"--max-prompt-chars must be at least 1, got {self.max_prompt_chars}")
        if not 0.0 <= self.min_japanese <= 1.0:
            raise KitaeError(f"--min-japanese is a share between 0 and 1, got {self.min_japanese}")
        if self.batch_size < 1:
            raise KitaeError(f"--batch-size must be at least 1, got {self.batch_size}")
        self.keep_rules()  # a bad expression fails here, before anything is read or loaded

    def keep_rules(self) -> list[KeepRule]:
        return [parse_keep(expr) for expr in self.keep]

    def reasons(self, scored: bool) -> list[str]:
        """The reasons a row may be dropped for with these options, in the order they are checked."""
        enabled = {"unreadable": not self.strict, "exact_duplicate": self.exact_duplicates,
                   "near_duplicate": self.near_duplicates, "too_short": self.min_chars > 0,
                   "too_long": self.max_chars is not None, "prompt_too_long": self.max_prompt_chars is not None,
                   "not_japanese": self.min_japanese > 0, "classifier": scored}
        return [reason for reason in REASONS if enabled[reason]]

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["keep"] = list(self.keep)
        values["score_with"] = None if self.score_with is None else str(self.score_with)
        if self.near_duplicates:
            values["lsh_bands"], values["lsh_rows"] = lsh_params(self.num_perm, self.near_dup_threshold)
        return values


@dataclass
class Decision:
    """What the filter decided for one row: kept (reason None) or dropped, with details."""

    row: Row
    reason: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    text: RowText | None = field(default=None, repr=False)

    @property
    def kept(self) -> bool:
        return self.reason is None


@dataclass
class FilterReport:
    """The outcome of `filter_file`: counts per reason (of the enabled checks) and where it all is."""

    input: Path
    output: Path
    report_file: Path
    dropped_file: Path
    rows: int
    kept: int
    reasons: dict[str, int]
    options: dict[str, Any]
    classifier: dict[str, Any] | None = None
    seconds: float = 0.0

    @property
    def dropped(self) -> int:
        return sum(self.reasons.values())

    def to_dict(self) -> dict[str, Any]:
        return {"input": str(self.input), "output": str(self.output), "dropped_file": str(self.dropped_file),
                "rows": self.rows, "kept": self.kept, "dropped": self.dropped, "reasons": dict(self.reasons),
                "options": self.options, "classifier": self.classifier, "seconds": round(self.seconds, 3)}


# --- the classifier -----------------------------------------------------------------------------

class ClassifierFilter:
    """Scores rows with a loaded kitae `Classifier` and applies the keep rules."""

    def __init__(self, classifier: Any, rules: Sequence[KeepRule], source: str = "") -> None:
        from kitae.inference.loaded import LoadedRun
        from kitae.tasks.contract import Capability

        if not isinstance(classifier, LoadedRun) or classifier.capability is not Capability.PREDICT:
            raise KitaeError(f"--score-with {source}: {_what_it_is(classifier)}; scoring needs a classifier run "
                             f"(a run of a task that predicts: {', '.join(_tasks_that(Capability.PREDICT))})")
        if not rules:
            raise KitaeError("--score-with needs --keep EXPR: which predictions to keep, e.g. "
                             "--keep 'label==good' or --keep 'p(good)>=0.7'")
        for rule in rules:
            rule.check_labels(classifier.labels)
        self.classifier, self.rules, self.source = classifier, list(rules), source
        data = classifier.config.data if classifier.config is not None else None
        self.pairs = data is not None and bool(data.pair_fields())
        self.scored = {"row": 0, "response": 0}
        self.predicted: dict[str, int] = {}

    def score(self, decisions: Sequence[Decision]) -> None:
        """Set the reason and details of rows (kept so far) from their predictions."""
        rendered: list[tuple[Decision, Any]] = []
        fallback: list[tuple[Decision, Any]] = []
        for decision in decisions:
            assert decision.text is not None
            try:
                rendered.append((decision, self.classifier.task.render(decision.row)))
            except DataError:  # the row lacks the classifier's columns: score the response
                text = decision.text
                fallback.append((decision, (text.prompt, text.response) if self.pairs else text.response))
        for group, scored_on in ((rendered, "row"), (fallback, "response")):
            if not group:
                continue
            predictions = self.classifier.predict([model_input for _, model_input in group])
            self.scored[scored_on] += len(group)
            for (decision, _), prediction in zip(group, predictions):
                self._decide(decision, prediction, scored_on)

    def _decide(self, decision: Decision, prediction: Any, scored_on: str) -> None:
        label, probabilities = prediction.label, prediction.probabilities
        for name in label if isinstance(label, list) else [label] if isinstance(label, str) else []:
            self.predicted[name] = self.predicted.get(name, 0) + 1
        failed = next((rule for rule in self.rules if not rule.matches(label, probabilities)), None)
        if failed is None:
            return
        decision.reason = "classifier"
        decision.detail = {"predicted": label, "probability": probabilities.get(label) if isinstance(label, str)
                           else None, "keep": failed.expr, "score": probabilities.get(failed.label),
                           "scored_on": scored_on}

    def summary(self) -> dict[str, Any]:
        return {"run": self.source, "keep": [rule.expr for rule in self.rules], "scored": dict(self.scored),
                "predicted": dict(sorted(self.predicted.items(), key=lambda kv: -kv[1]))}


def load_classifier_filter(options: FilterOptions, classifier: Any = None) -> ClassifierFilter | None:
    """The classifier stage of `options` (None when it scores nothing); loads `options.score_with`
    unless a loaded classifier is given."""
    rules = options.keep_rules()
    if classifier is None and options.score_with is None:
        if rules:
            raise KitaeError("--keep needs --score-with RUN_DIR (the trained classifier whose predictions it tests)")
        return None
    source = str(options.score_with if classifier is None else getattr(classifier, "run_dir", "<classifier>"))
    if not rules:
        raise KitaeError("--score-with needs --keep EXPR: which predictions to keep, e.g. "
                         "--keep 'label==good' or --keep 'p(good)>=0.7'")
    if classifier is None:
        import kitae

        classifier = kitae.load(options.score_with, device=options.device, batch_size=options.batch_size,
                                trust_remote_code=options.trust_remote_code)
    return ClassifierFilter(classifier, rules, source)


# --- the filter -----------------------------------------------------------------------------------

class _Checks:
    """Checks 1-4 over rows in order, remembering the rows that passed them."""

    def __init__(self, data: SFTData, options: FilterOptions) -> None:
        self.data, self.options = data, options
        self.exact: dict[bytes, dict[str, Any]] = {}
        self.near = (NearDuplicateIndex(options.near_dup_threshold, options.num_perm, options.ngram)
                     if options.near_duplicates else None)

    def __call__(self, row: Row) -> Decision:
        options = self.options
        try:
            text = row_text(row, self.data)
        except DataError as exc:
            if options.strict:
                raise
            return Decision(row, "unreadable", {"error": str(exc), "field": exc.field})
        key = text.key
        points = _codepoints(key) if self.near is not None or options.min_japanese > 0 else None
        digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        if options.exact_duplicates and digest in self.exact:
            return Decision(row, "exact_duplicate", {"duplicate_of": self.exact[digest]}, text)
        sketch = None
        if self.near is not None:
            sketch = self.near.sketch(key, points)
            hit = self.near.query(sketch)
            if hit is not None:
                return Decision(row, "near_duplicate", {"duplicate_of": hit[0], "jaccard": round(hit[1], 4)}, text)
        length = len(text.response.strip())
        if length < options.min_chars:
            return Decision(row, "too_short", {"response_chars": length, "min_chars": options.min_chars}, text)
        if options.max_chars is not None and length > options.max_chars:
            return Decision(row, "too_long", {"response_chars": length, "max_chars": options.max_chars}, text)
        if options.max_prompt_chars is not None and len(text.prompt) > options.max_prompt_chars:
            return Decision(row, "prompt_too_long", {"prompt_chars": len(text.prompt),
                                                     "max_prompt_chars": options.max_prompt_chars}, text)
        if options.min_japanese > 0:
            assert points is not None
            share = _japanese_share(points)
            if share < options.min_japanese:
                return Decision(row, "not_japanese", {"japanese_share": round(share, 4),
                                                      "min_japanese": options.min_japanese}, text)
        reference = {"line": row.line, "id": row.values.get(self.data.id_field)}
        if options.exact_duplicates:
            self.exact.setdefault(digest, reference)
        if self.near is not None and sketch is not None:
            self.near.add(sketch, reference)
        return Decision(row, None, {}, text)


def filter_rows(rows: Iterable[Row], data: SFTData, options: FilterOptions | None = None,
                scorer: ClassifierFilter | None = None) -> Iterator[Decision]:
    """Decide, row by row and in order, what to keep (see the module docs for the checks). Streams:
    only the duplicate index grows with the input. With a `scorer` (`load_classifier_filter`),
    rows that pass the other checks are scored in chunks of SCORE_CHUNK_ROWS."""
    options = options or FilterOptions()
    checks = _Checks(data, options)
    block: list[Decision] = []
    waiting = 0
    for row in rows:
        decision = checks(row)
        if scorer is None:
            yield decision
            continue
        block.append(decision)
        waiting += decision.kept
        if waiting >= SCORE_CHUNK_ROWS:
            scorer.score([d for d in block if d.kept])
            yield from block
            block, waiting = [], 0
    if block:
        assert scorer is not None
        scorer.score([d for d in block if d.kept])
        yield from block


def instruction_tasks() -> list[str]:
    """The tasks whose data section reads instruction rows (what the filter's checks read); from
    the torch-free run configs, so a filter without a classifier never imports torch."""
    from kitae.config import TASK_CONFIGS
    from kitae.config.sections import InstructionKeys

    return [name for name, config in TASK_CONFIGS.items()
            if issubclass(config.model_fields["data"].annotation, InstructionKeys)]


def _tasks_that(capability: Any) -> list[str]:
    from kitae.tasks import TASKS, get_task_class

    return [name for name in TASKS if get_task_class(name).contract.capability is capability]


def _what_it_is(classifier: Any) -> str:
    from kitae.inference.loaded import LoadedRun

    if isinstance(classifier, LoadedRun):
        return f"a {classifier.task_class.name} run generates text"
    return f"a {type(classifier).__name__} is not a loaded kitae run"


def report_paths(output: Path) -> tuple[Path, Path]:
    """(report, dropped rows) beside the output: clean.jsonl -> clean.report.json, clean.dropped.jsonl."""
    return output.with_name(f"{output.stem}.report.json"), output.with_name(f"{output.stem}.dropped.jsonl")


def filter_file(config: RunConfig | str | Path, output: str | Path, input: str | Path | None = None,
                options: FilterOptions | None = None, overwrite: bool = False, classifier: Any = None,
                progress: bool = False) -> FilterReport:
    """Filter the config's `data.train` (or `input`, read with the config's columns) into `output`
    (.jsonl, .csv or .tsv) with `<stem>.report.json` and `<stem>.dropped.jsonl` beside it. Nothing
    is written unless the whole file is filtered. `classifier`: an already loaded classifier to
    score with (instead of loading `options.score_with`)."""
    from kitae.config import RunConfig, load_config
    from kitae.config.sections import InstructionKeys

    started = time.monotonic()
    options = options or FilterOptions()
    if not isinstance(config, RunConfig):
        config = load_config(config)
    if not isinstance(config.data, InstructionKeys):  # the checks read rows as instructions / conversations
        readers = ", ".join(f"task: {name}" for name in instruction_tasks())
        raise KitaeError(f"kitae data filter selects instruction data: the config is task {config.task}; "
                         f"it needs {readers} (and the columns of your rows under data:)")
    data = config.data
    source = Path(input) if input is not None else data.train
    output = Path(output)
    if output.suffix.lower() not in OUTPUT_SUFFIXES:
        raise KitaeError(f"-o {output}: give a .jsonl, .csv or .tsv file name")
    report_file, dropped_file = report_paths(output)
    inputs = [source, *(p for p in (data.train, data.dev, data.test) if p is not None)]
    for path in (output, report_file, dropped_file):
        for protected in inputs:
            check_output_file(path, protected, overwrite)
    # Fail on a bad input file before a classifier takes time to load.
    rows = iter_rows(source, encoding=data.encoding)
    first = next(rows)
    scorer = load_classifier_filter(options, classifier)

    from tqdm.auto import tqdm

    counts = {reason: 0 for reason in options.reasons(scorer is not None)}
    total = kept = 0
    table = output.suffix.lower() in (".csv", ".tsv")
    with atomic_text_file(output, newline="" if table else None) as out, atomic_text_file(dropped_file) as dropped, \
            tempfile.TemporaryFile("w+", encoding="utf-8") as spool, \
            tqdm(total=count_rows(source), desc=f"filter {source.name}", unit="row", dynamic_ncols=True,
                 disable=not progress) as bar:
        columns: dict[str, None] = {}
        for decision in filter_rows(chain([first], rows), data, options, scorer):
            total += 1
            bar.update(1)
            values = decision.row.values
            if decision.kept:
                kept += 1
                (spool if table else out).write(_json_line(values))
                columns.update(dict.fromkeys(values))
                continue
            counts[decision.reason] = counts.get(decision.reason, 0) + 1  # type: ignore[index]
            dropped.write(_json_line({"line": decision.row.line, "id": values.get(data.id_field),
                                      "reason": decision.reason, "detail": decision.detail, "row": values}))
        if table:
            _write_table(out, spool, list(columns), "\t" if output.suffix.lower() == ".tsv" else ",")
    report = FilterReport(source, output, report_file, dropped_file, total, kept, counts, options.to_dict(),
                          scorer.summary() if scorer is not None else None, time.monotonic() - started)
    write_json(report_file, report.to_dict())
    if kept == 0:
        logger.warning("%s: no row was kept", source)
    return report


def _json_line(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, default=str) + "\n"


def _write_table(out: Any, spool: Any, columns: list[str], delimiter: str) -> None:
    """The kept rows (spooled as JSON lines) as CSV / TSV: every column any row has; lists and
    objects (chat messages) as JSON text, which kitae reads back."""
    if not columns:
        return
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n", delimiter=delimiter, restval="")
    writer.writeheader()
    spool.seek(0)
    for line in spool:
        values = json.loads(line)
        writer.writerow({k: json.dumps(v, ensure_ascii=False) if isinstance(v, list | dict) else v
                         for k, v in values.items()})
