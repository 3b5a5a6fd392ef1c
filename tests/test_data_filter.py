"""SFT data selection (`kitae data filter`): each reason a row is dropped for, MinHash / LSH, --keep
expressions, the classifier filter on a tiny trained run, and the command end to end."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import CLASS_CHARS, separable_rows, tiny_config, write_jsonl
from typer.testing import CliRunner

import kitae
from kitae.cli import app
from kitae.config import config_from_dict
from kitae.data.filtering import (
    ClassifierFilter,
    FilterOptions,
    MinHasher,
    NearDuplicateIndex,
    estimate_jaccard,
    filter_file,
    filter_rows,
    jaccard,
    japanese_share,
    load_classifier_filter,
    lsh_params,
    normalize_text,
    parse_keep,
    row_text,
    shingles,
)
from kitae.data.readers import Row, iter_rows
from kitae.errors import DataError, KitaeError

POOL = "".join(chr(c) for c in range(0x3041, 0x3094)) + "".join(chr(c) for c in range(0x4E00, 0x4E00 + 400))


def _data(**data):
    raw = {"task": "sft", "data": {"train": "train.jsonl", **data}, "model": {"name": "m"}, "output": "o"}
    return config_from_dict(raw, check_files=False).data


def _rows(values: list[dict]) -> list[Row]:
    return [Row(v, Path("train.jsonl"), line) for line, v in enumerate(values, start=1)]


def _decide(values: list[dict], data=None, **options):
    return list(filter_rows(_rows(values), data or _data(), FilterOptions(**options)))


def _reasons(values: list[dict], data=None, **options) -> list[str | None]:
    return [d.reason for d in _decide(values, data, **options)]


def _random_text(length: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(POOL) for _ in range(length))


def _changed(text: str, positions: list[int]) -> str:
    chars = list(text)
    for i in positions:
        chars[i] = "ア" if chars[i] != "ア" else "イ"
    return "".join(chars)


# --- the checks, one reason each -----------------------------------------------------------------

def test_exact_duplicates_after_nfkc_and_whitespace():
    assert normalize_text("日本の　首都は？\n\n 東京 ") == "日本の 首都は? 東京"
    rows = [{"id": "a", "instruction": "日本の 首都は？", "output": "東京 です。"},
            {"id": "b", "instruction": "日本の　首都は?", "output": "東京\n\tです。"},  # full-width space, NFKC ？
            {"id": "c", "instruction": "日本の首都は？", "output": "東京です。"},  # no space: a different text
            {"id": "d", "instruction": "日本の 首都は？東京", "output": "です。"}]  # the same characters, moved
    decisions = _decide(rows, near_duplicates=False)
    assert [d.reason for d in decisions] == [None, "exact_duplicate", None, None]
    assert decisions[1].detail == {"duplicate_of": {"line": 1, "id": "a"}}
    assert _reasons(rows, exact_duplicates=False, near_duplicates=False) == [None] * 4
    # Without the exact check, the near-duplicate check finds it (Jaccard 1).
    near = _decide(rows, exact_duplicates=False)
    assert near[1].reason == "near_duplicate" and near[1].detail["jaccard"] == 1.0


def test_near_duplicate_one_character_apart_is_dropped_a_different_text_kept():
    text = _random_text(300, seed=1)
    rows = [{"instruction": "要約してください", "output": text},
            {"instruction": "要約してください", "output": _changed(text, [150])},
            {"instruction": "要約してください", "output": _random_text(300, seed=2)},
            {"instruction": "要約してください", "output": text[:120]}]  # shares 40%: not a near duplicate
    decisions = _decide(rows)
    assert [d.reason for d in decisions] == [None, "near_duplicate", None, None]
    detail = decisions[1].detail
    assert detail["duplicate_of"]["line"] == 1 and 0.95 < detail["jaccard"] < 1.0
    assert _reasons(rows, near_duplicates=False) == [None] * 4
    assert _reasons(rows, near_dup_threshold=0.99) == [None] * 4


def test_length_bounds():
    rows = [{"instruction": "質問", "output": "はい"},  # 2 characters
            {"instruction": "質問", "output": "あいうえおかきくけこさ"},  # 11
            {"instruction": "長い質問" * 6, "output": "答えです"},  # a 24-character prompt
            {"instruction": "質問です"},  # no response
            {"instruction": "質問ですか", "output": "  "},  # an empty one: too short, not unreadable
            {"instruction": "質問", "output": "答えです"},
            {"instruction": "質問", "output": "はい"}]  # a duplicate first, too short second
    reasons = _reasons(rows, min_chars=3, max_chars=10, max_prompt_chars=20)
    assert reasons == ["too_short", "too_long", "prompt_too_long", "too_short", "too_short", None, "too_short"]
    # The default: only rows with no response go.
    assert _reasons(rows) == [None, None, None, "too_short", "too_short", None, "exact_duplicate"]
    detail = _decide(rows[:2], max_chars=10)[1].detail
    assert detail == {"response_chars": 11, "max_chars": 10}


def test_first_reason_wins():
    rows = [{"instruction": "質問", "output": "とても長い答えです"},
            {"instruction": "質問", "output": "とても長い答えです"}]
    # Row 1 is too long, so it is no reference: row 2 is too long too, not a duplicate.
    assert _reasons(rows, max_chars=5) == ["too_long", "too_long"]
    assert _reasons(rows, max_chars=50) == [None, "exact_duplicate"]


def test_min_japanese_drops_a_mostly_english_row():
    assert japanese_share("今日は晴れです。") == 1.0
    assert japanese_share("ｶﾀｶﾅ、「引用」・ー") == 1.0
    assert japanese_share("１２３！？ 123 !?") == 0.0  # nothing counted
    english = {"instruction": "Translate this sentence into English, please.", "output": "This is a pen (ペン)."}
    japanese = {"instruction": "次の文を英語に訳してください: これはペンです。", "output": "This is a pen."}
    decisions = _decide([english, japanese], min_japanese=0.3)
    assert [d.reason for d in decisions] == ["not_japanese", None]
    assert decisions[0].detail["japanese_share"] < 0.1 and decisions[0].detail["min_japanese"] == 0.3
    assert _reasons([english, japanese]) == [None, None]  # off by default


def test_unreadable_rows_are_dropped_or_errors_with_strict():
    rows = [{"input": "no instruction column", "output": "答え"}, {"instruction": "質問", "output": "答え"}]
    decisions = _decide(rows)
    assert [d.reason for d in decisions] == ["unreadable", None]
    assert decisions[0].detail["field"] == "instruction" and "line 1" in decisions[0].detail["error"]
    with pytest.raises(DataError, match="line 1, field 'instruction': missing column"):
        _decide(rows, strict=True)


def test_row_text_leaves_out_what_every_row_shares():
    chat = _data(messages_field="messages", system_prompt="あなたは親切なアシスタントです。" * 5)
    rows = [{"messages": [{"role": "user", "content": f"質問{i}ですか"}, {"role": "assistant", "content": f"答え{i}"}]}
            for i in range(3)]
    text = row_text(_rows(rows)[0], chat)
    assert text.parts == ("質問0ですか", "答え0") and text.response == "答え0"
    assert _reasons(rows, chat) == [None, None, None]  # the long system prompt makes no near duplicates
    own = {"messages": [{"role": "system", "content": "関西弁で"}, *rows[0]["messages"]]}
    assert row_text(_rows([own])[0], chat).parts[0] == "関西弁で"
    templated = _data(template="以下の質問に丁寧に答えてください。\n質問: {question}\n")
    text = row_text(_rows([{"question": "富士山の高さは？", "output": "3776m"}])[0], templated)
    assert text.parts == ("富士山の高さは?", "3776m") and text.prompt.startswith("以下の質問")


# --- MinHash and LSH ---------------------------------------------------------------------------

def test_minhash_estimates_jaccard():
    hasher = MinHasher(64)
    base = _random_text(400, seed=3)
    pairs = [(base, _changed(base, list(range(0, 400, step)))) for step in (9, 20, 40, 80)]
    pairs += [(base, base[:200] + _random_text(200, seed=4)), (base, _random_text(400, seed=5))]
    for a, b in pairs:
        sa, sb = shingles(a), shingles(b)
        exact = jaccard(sa, sb)
        assert abs(estimate_jaccard(hasher.signature(sa), hasher.signature(sb)) - exact) <= 0.15, exact
    assert np.array_equal(hasher.signature(shingles(base)), MinHasher(64).signature(shingles(base)))  # fixed seeds
    assert jaccard(shingles(base), shingles(base)) == 1.0


def test_lsh_finds_a_pair_at_0_9_similarity():
    text = _random_text(384, seed=6)  # 380 five-grams
    similar = _changed(text, [40, 130, 220, 310])  # 4 x 5 grams replaced: 360 / 400 = 0.9
    assert jaccard(shingles(text), shingles(similar)) == pytest.approx(0.9, abs=0.005)
    index = NearDuplicateIndex(threshold=0.85)
    for seed in range(7, 50):
        index.add(_random_text(384, seed), {"line": seed})
    index.add(text, {"line": 1})
    hit = index.query(similar)
    assert hit is not None and hit[0] == {"line": 1} and hit[1] == pytest.approx(0.9, abs=0.005)
    assert index.query(_random_text(384, seed=99)) is None
    assert index.query(text[:200] + _random_text(184, seed=100)) is None  # about 0.35 similar
    assert lsh_params(64, 0.85) == (10, 6)


# --- --keep ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("expr,label,op,value", [
    ("label==good", "good", "==", None),
    ("  label != toxic ", "toxic", "!=", None),
    ("p(good)>=0.7", "good", ">=", 0.7),
    ("p( good ) < .2", "good", "<", 0.2),
    ("p(天気)>1e-3", "天気", ">", 0.001),
    ("p(good)<=1", "good", "<=", 1.0),
    ('label=="very good"', "very good", "==", None),
    ("p('a)b') > 0.5", "a)b", ">", 0.5),
])
def test_keep_expressions(expr, label, op, value):
    rule = parse_keep(expr)
    assert (rule.label, rule.op, rule.value) == (label, op, value)


@pytest.mark.parametrize("expr,message", [
    ("label=good", "expected label==NAME"),
    ("label==", "expected label==NAME"),
    ("p(good)=>0.7", "expected label==NAME"),
    ("p(good)==0.7", "expected label==NAME"),
    ("score>0.5", "expected label==NAME"),
    ("p(good)>=high", "'high' is not a number"),
    ("p(good)>=nan", "finite"),
    ("label==''", "the label name is empty"),
    ("__import__('os')", "expected label==NAME"),
])
def test_bad_keep_expressions(expr, message):
    with pytest.raises(KitaeError, match=message):
        parse_keep(expr)
    with pytest.raises(KitaeError, match=message):
        FilterOptions(score_with="run", keep=expr)  # options fail before anything is read or loaded


def test_keep_rules_match_predictions():
    probabilities = {"good": 0.8, "bad": 0.2}
    assert parse_keep("label==good").matches("good", probabilities)
    assert not parse_keep("label!=good").matches("good", probabilities)
    assert parse_keep("p(good)>=0.8").matches("good", probabilities)
    assert not parse_keep("p(good)>0.8").matches("good", probabilities)
    assert parse_keep("p(bad)<0.5").matches("good", probabilities)
    assert parse_keep("label==bad").matches(["good", "bad"], probabilities)  # multi_label: among the labels
    with pytest.raises(KitaeError, match="unknown label 'スポーツ'; the classifier's labels are: 天気, 料理, 経済"):
        parse_keep("label==スポーツ").check_labels(["天気", "料理", "経済"])
    with pytest.raises(KitaeError, match="--keep needs --score-with"):
        load_classifier_filter(FilterOptions(keep="label==good"))
    with pytest.raises(KitaeError, match="needs --keep"):
        load_classifier_filter(FilterOptions(score_with="run"), classifier=object())
    with pytest.raises(KitaeError, match="needs a classifier run"):
        ClassifierFilter(object(), [parse_keep("label==good")])


# --- the classifier filter, end to end ----------------------------------------------------------

@pytest.fixture(scope="module")
def classifier_run(tiny_models, separable_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("filter-clf") / "run"
    cfg = tiny_config(tiny_models["llama"], separable_data, out, training={"epochs": 1, "lr": 1e-2})
    return kitae.train(config_from_dict(cfg), progress=False).run_dir


def _sft_config(train: Path, tmp_path: Path) -> Path:
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump({"task": "sft", "data": {"train": str(train)}, "model": {"name": "none"},
                                    "output": str(tmp_path / "unused")}, allow_unicode=True), encoding="utf-8")
    return path


def test_classifier_keeps_the_rows_it_labels(classifier_run, tmp_path):
    texts = [r["text"] for r in separable_rows(6, seed=11)]
    rows = []
    for i, text in enumerate(texts):
        if i % 3:  # no classifier column: the response is scored
            rows.append({"id": f"r{i}", "instruction": "分類してください", "output": text})
        else:  # the classifier's own column (`text`) is scored, not the response
            rows.append({"id": f"r{i}", "instruction": "分類してください", "text": text, "output": "はい"})
    train = write_jsonl(tmp_path / "sft.jsonl", rows)
    clf = kitae.load(classifier_run)
    expected = [p.label == "天気" for p in clf.predict(texts)]
    assert 0 < sum(expected) < len(texts)  # the test means something: some kept, some dropped

    options = FilterOptions(exact_duplicates=False, near_duplicates=False, score_with=classifier_run,
                            keep="label==天気")
    report = filter_file(_sft_config(train, tmp_path), tmp_path / "clean.jsonl", options=options, classifier=clf)
    assert report.classifier["run"] == str(classifier_run)
    kept = [json.loads(line)["id"] for line in (tmp_path / "clean.jsonl").read_text(encoding="utf-8").splitlines()]
    assert kept == [r["id"] for r, keep in zip(rows, expected) if keep]
    assert report.kept == sum(expected) and report.reasons["classifier"] == len(texts) - sum(expected)
    assert report.classifier["scored"] == {"row": 6, "response": 12}
    assert sum(report.classifier["predicted"].values()) == len(texts)
    dropped = [json.loads(line) for line in (tmp_path / "clean.dropped.jsonl").read_text(encoding="utf-8").splitlines()]
    predictions = {r["id"]: p for r, p in zip(rows, clf.predict(texts))}
    for record in dropped:
        detail = record["detail"]
        assert record["reason"] == "classifier" and detail["keep"] == "label==天気"
        assert detail["predicted"] == predictions[record["id"]].label != "天気"
        assert detail["score"] == pytest.approx(predictions[record["id"]].probabilities["天気"], abs=1e-4)
        assert detail["scored_on"] == ("row" if "text" in record["row"] else "response")

    # The command: the complement with a probability rule, the classifier loaded from its run.
    result = CliRunner().invoke(app, ["data", "filter", str(tmp_path / "sft.yaml"), "-o", str(tmp_path / "rest.jsonl"),
                                      "--no-exact-dup", "--no-near-dup", "--score-with", str(classifier_run),
                                      "--keep", "label!=天気", "--keep", "p(天気)<=1"])
    assert result.exit_code == 0, result.output
    rest = [json.loads(line)["id"] for line in (tmp_path / "rest.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rest == [r["id"] for r, keep in zip(rows, expected) if not keep]
    output = " ".join(result.output.split())
    assert "dropped: classifier" in output and "scored 6 rows on their columns" in output
    bad = CliRunner().invoke(app, ["data", "filter", str(tmp_path / "sft.yaml"), "-o", str(tmp_path / "x.jsonl"),
                                   "--score-with", str(classifier_run), "--keep", "label==スポーツ"])
    assert bad.exit_code == 2 and "天気, 料理, 経済" in bad.output and not (tmp_path / "x.jsonl").exists()


# --- the command -------------------------------------------------------------------------------------

def _messy_rows() -> list[dict]:
    long_text = _random_text(200, seed=20)
    weather = list(CLASS_CHARS["天気"])
    return [
        {"id": "1", "instruction": "明日の天気は？", "output": "晴れのち" + "".join(weather)},
        {"id": "2", "instruction": "明日の天気は?", "output": "晴れのち" + "".join(weather)},  # exact duplicate of 1
        {"id": "3", "instruction": "要約して", "output": long_text},
        {"id": "4", "instruction": "要約して", "output": _changed(long_text, [100])},  # near duplicate of 3
        {"id": "5", "instruction": "答えて"},  # no response: too short
        {"id": "6", "instruction": "What is the capital of Japan?", "output": "Tokyo is the capital."},
        {"id": "7", "input": "no instruction"},  # unreadable
        {"id": "8", "instruction": "日本の首都は？", "output": "東京です。"},
    ]


def test_cli_end_to_end(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", _messy_rows())
    config = _sft_config(train, tmp_path)
    out = tmp_path / "clean.jsonl"
    runner = CliRunner()
    result = runner.invoke(app, ["data", "filter", str(config), "-o", str(out), "--min-japanese", "0.3"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "clean.report.json").read_text(encoding="utf-8"))
    assert report["rows"] == 8 and report["kept"] == 3 and report["dropped"] == 5
    assert report["reasons"] == {"unreadable": 1, "exact_duplicate": 1, "near_duplicate": 1, "too_short": 1,
                                 "not_japanese": 1}
    assert report["kept"] + sum(report["reasons"].values()) == report["rows"]
    assert report["options"]["near_dup_threshold"] == 0.85 and report["options"]["min_japanese"] == 0.3
    kept = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert kept == [r for r in _messy_rows() if r["id"] in ("1", "3", "8")]  # the original values
    dropped = [json.loads(line) for line in (tmp_path / "clean.dropped.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(d["line"], d["reason"]) for d in dropped] == [(2, "exact_duplicate"), (4, "near_duplicate"),
                                                          (5, "too_short"), (6, "not_japanese"), (7, "unreadable")]
    assert dropped[0]["detail"]["duplicate_of"] == {"line": 1, "id": "1"} and dropped[0]["row"]["id"] == "2"
    assert dropped[1]["detail"]["duplicate_of"]["id"] == "3" and dropped[1]["detail"]["jaccard"] > 0.9
    table = {cells[0]: cells[1] for line in result.output.splitlines()
             if len(cells := [c.strip() for c in line.split("│") if c.strip()]) == 3}
    assert table == {"kept": "3", "dropped: unreadable": "1", "dropped: exact_duplicate": "1",
                     "dropped: near_duplicate": "1", "dropped: too_short": "1", "dropped: not_japanese": "1",
                     "total": "8"}

    # An existing output without --overwrite: exit code 2, a clear message, nothing changed.
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    refused = runner.invoke(app, ["data", "filter", str(config), "-o", str(out)])
    assert refused.exit_code == 2 and "exists; pass --overwrite" in refused.output, refused.output
    assert "Traceback" not in refused.output
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    # --overwrite replaces all three files (now without the language check: 4 rows kept).
    replaced = runner.invoke(app, ["data", "filter", str(config), "-o", str(out), "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert json.loads((tmp_path / "clean.report.json").read_text(encoding="utf-8"))["kept"] == 4
    assert len(out.read_text(encoding="utf-8").splitlines()) == 4
    # Never the input, even with --overwrite; --strict makes an unreadable row an error.
    same = runner.invoke(app, ["data", "filter", str(config), "-o", str(train), "--overwrite"])
    assert same.exit_code == 2 and "is the input file" in same.output
    assert train.read_bytes() == before["train.jsonl"]
    strict = runner.invoke(app, ["data", "filter", str(config), "-o", str(tmp_path / "s.jsonl"), "--strict"])
    assert strict.exit_code == 2 and "line 7, field 'instruction'" in " ".join(strict.output.split())
    assert not (tmp_path / "s.jsonl").exists() and not (tmp_path / "s.dropped.jsonl").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left
    bad = runner.invoke(app, ["data", "filter", str(config), "-o", str(tmp_path / "b.jsonl"), "--keep", "label=x"])
    assert bad.exit_code == 2 and "expected label==NAME" in bad.output


def test_csv_output_and_another_input(tmp_path):
    config = _sft_config(write_jsonl(tmp_path / "train.jsonl", _messy_rows()), tmp_path)
    other = write_jsonl(tmp_path / "other.jsonl", [
        {"id": "a", "messages_like": [1, 2], "instruction": "質問です", "output": "答えです"},
        {"id": "b", "instruction": "質問です", "output": "答えです"},
        {"id": "c", "instruction": "別の質問", "output": "別の答え", "extra": "列"}])
    out = tmp_path / "clean.csv"
    report = filter_file(config, out, input=other)
    assert report.input == other and report.rows == 3 and report.kept == 2 and report.reasons["exact_duplicate"] == 1
    back = [row.values for row in iter_rows(out)]
    assert back == [{"id": "a", "messages_like": "[1, 2]", "instruction": "質問です", "output": "答えです", "extra": ""},
                    {"id": "c", "messages_like": "", "instruction": "別の質問", "output": "別の答え", "extra": "列"}]
    with pytest.raises(KitaeError, match="give a .jsonl, .csv or .tsv"):
        filter_file(config, tmp_path / "clean.parquet")
    with pytest.raises(KitaeError, match="is the input file"):  # the config's train file, though --input is another
        filter_file(config, tmp_path / "train.jsonl", input=other, overwrite=True)
