"""SFT and continued pre-training on tiny causal LMs: the loss mask, packing, the token loss,
generation settings, adapters (LoRA, prompt tuning, full), resume, bad input, and learning."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import yaml
from conftest import build_tiny_model, write_jsonl
from typer.testing import CliRunner

import kitae
from kitae.cli import app
from kitae.config import config_from_dict
from kitae.data.instructions import (
    IGNORE_INDEX,
    Conversation,
    alpaca_ja_prompt,
    segments,
    tokenize_segments,
)
from kitae.data.packing import collate_rows, pack
from kitae.errors import KitaeError

# A synthetic mapping: a question character -> a two-character answer. Learnable, and at the
# start nothing answers it (exact match 0).
ANSWERS = {"雨": "晴雪", "肉": "魚米", "株": "円税", "風": "曇雷", "麺": "汁菜", "銀": "貨資"}
# Characters the Alpaca format, chat rows and the tests write (the tiny tokenizer is per character).
EXTRA = "以下は、タスクを説明する指示と文脈のある入力の組み合わせです。要求を適切に満たす応答書きなさい###:：\n答え質問？"


def qa_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        question = rng.choice(list(ANSWERS))
        rows.append({"id": f"q{seed}-{i}", "instruction": question + "の答え", "output": ANSWERS[question]})
    return rows


@pytest.fixture(scope="session")
def lm_models(tmp_path_factory) -> dict[str, Path]:
    # initializer_range 0.2: a random LM head at the usual 0.02 gives near-uniform logits that
    # adapters cannot sharpen (a pretrained head is not like that).
    root = tmp_path_factory.mktemp("lm-models")
    return {arch: build_tiny_model(arch, root / arch, extra_chars=EXTRA, initializer_range=0.2)
            for arch in ("llama", "gpt_neox", "gemma3", "qwen2")}


@pytest.fixture(scope="module")
def qa_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("qa")
    return {split: write_jsonl(root / f"{split}.jsonl", qa_rows(n, seed))
            for split, n, seed in (("train", 96, 1), ("dev", 18, 2), ("test", 18, 3))}


def sft_config(model: Path, files: dict[str, Path], output: Path, **sections) -> dict:
    config = {
        "task": "sft",
        "data": {"train": str(files["train"]), "dev": str(files["dev"]), "test": str(files["test"]),
                 "template": "{instruction}:"},
        "model": {"name": str(model), "max_length": 48},
        "adapter": {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0},
        "training": {"lr": 1e-2, "epochs": 3, "batch_size": 8, "seed": 3, "checkpoint_every_minutes": None},
        "generation": {"max_new_tokens": 4},
        "output": str(output),
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    return config


def _train(cfg: dict, **kwargs):
    return kitae.train(config_from_dict(cfg), progress=False, **kwargs)


def _tokenizer(model: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model)


# --- the loss mask -------------------------------------------------------------------------------

def _trained_text(tokenizer, example) -> str:
    return tokenizer.decode([t for t in example.labels if t != IGNORE_INDEX])


def test_loss_mask_covers_exactly_the_response(lm_models):
    tokenizer = _tokenizer(lm_models["llama"])
    conversation = Conversation(None, (("雨の答え", "晴雪"),), "雨の答え", None)
    parts = segments(conversation, "alpaca_ja", tokenizer)
    example = tokenize_segments(tokenizer, parts, max_length=200)
    prompt = alpaca_ja_prompt(conversation)
    assert parts == [(prompt, False), ("晴雪</s>", True)]
    # The trained tokens are exactly the response and its end, nothing of the Japanese response key.
    assert _trained_text(tokenizer, example) == "晴雪</s>"
    assert example.input_ids[0] == tokenizer.bos_token_id and example.labels[0] == IGNORE_INDEX
    assert tokenizer.decode(example.input_ids[:example.prompt_length], skip_special_tokens=True) == prompt
    assert example.labels[:example.prompt_length] == [IGNORE_INDEX] * example.prompt_length
    everything = tokenize_segments(tokenizer, parts, max_length=200, train_on_prompt=True)
    assert everything.labels[1:] == everything.input_ids[1:]


def test_loss_mask_with_a_sentencepiece_tokenizer(tmp_path):
    """A sentencepiece tokenizer splits '### 応答:' differently alone and in context, which defeats a
    collator that searches for the response key; positions do not search."""
    import sentencepiece as spm
    from transformers import LlamaTokenizer

    corpus = tmp_path / "corpus.txt"
    lines = [f"### 指示:\n{q}の答えは何ですか\n\n### 応答:\n{a}です" for q, a in ANSWERS.items()] * 30
    corpus.write_text("\n".join(lines), encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "sp"), vocab_size=120,
                                   character_coverage=1.0, model_type="unigram", bos_id=1, eos_id=2, hard_vocab_limit=False,
                                   unk_id=0, pad_id=3, minloglevel=2)
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    (folder / "tokenizer.model").write_bytes((tmp_path / "sp.model").read_bytes())
    tokenizer = LlamaTokenizer.from_pretrained(folder)  # converted from the sentencepiece model
    key = "### 応答:\n"
    alone = tokenizer(key, add_special_tokens=False)["input_ids"]
    in_context = tokenizer("雨の答え\n\n" + key + "晴雪", add_special_tokens=False)["input_ids"]
    # The two tokenisations differ: no id sequence of the key alone is found in context.
    assert not any(in_context[i:i + len(alone)] == alone for i in range(len(in_context)))
    conversation = Conversation(None, (("雨の答えは何ですか", "晴雪です"),), "雨の答えは何ですか", None)
    example = tokenize_segments(tokenizer, segments(conversation, "alpaca_ja", tokenizer), max_length=300)
    trained = tokenizer.decode([t for t in example.labels if t != IGNORE_INDEX], skip_special_tokens=True)
    assert trained.strip() == "晴雪です"
    assert example.labels[-1] == tokenizer.eos_token_id


def test_chat_template_masks_every_assistant_turn(lm_models):
    tokenizer = _tokenizer(lm_models["llama"])
    tokenizer.chat_template = ("{% for m in messages %}<s>{{ m['role'] }}:{{ m['content'] }}</s>{% endfor %}"
                               "{% if add_generation_prompt %}<s>assistant:{% endif %}")
    conversation = Conversation("指示", (("雨", "晴雪"), ("肉", "魚米")))
    parts = segments(conversation, "chat_template", tokenizer)
    assert [trained for _, trained in parts] == [False, True, False, True]
    example = tokenize_segments(tokenizer, parts, max_length=200)
    assert _trained_text(tokenizer, example) == "晴雪</s>魚米</s>"
    # Generation is given everything up to the last assistant turn.
    assert tokenizer.decode(example.input_ids[:example.prompt_length]).endswith("肉</s><s>assistant:")


def test_packing_keeps_the_mask_and_the_loss(lm_models):
    from transformers import AutoModelForCausalLM

    from kitae.models.causal_lm import CausalLM

    tokenizer = _tokenizer(lm_models["llama"])
    examples = [tokenize_segments(tokenizer, segments(Conversation(None, ((r["instruction"], r["output"]),),
                                                                   r["instruction"], None), "alpaca_ja", tokenizer),
                                  max_length=200) for r in qa_rows(6, 5)]
    segs = [(e.input_ids, e.labels) for e in examples]
    rows = pack([len(ids) for ids, _ in segs], capacity=2 * max(len(ids) for ids, _ in segs))
    assert len(rows) < len(segs) and sorted(i for row in rows for i in row) == list(range(len(segs)))
    packed = collate_rows([[segs[i] for i in row] for row in rows], tokenizer.pad_token_id)
    unpacked = collate_rows([[s] for s in segs], tokenizer.pad_token_id)
    # Exactly the same tokens carry labels, whatever the packing.
    def trained(batch):
        return sorted(t for t in batch["labels"].flatten().tolist() if t != IGNORE_INDEX)
    assert trained(packed) == trained(unpacked) == sorted(t for e in examples for t in e.labels if t != IGNORE_INDEX)
    for arch in ("llama", "gpt_neox", "gemma3", "qwen2"):
        hf = AutoModelForCausalLM.from_pretrained(lm_models[arch]).eval()
        lm = CausalLM(hf, hf)
        with torch.no_grad():
            packed_sum, packed_n = lm.token_loss(**packed)
            unpacked_sum, unpacked_n = lm.token_loss(**unpacked)
            # No attention across packed examples: each example's logits are its own.
            first = rows[0]
            hidden = lm.hidden_states(packed["input_ids"][:1], packed["position_ids"][:1])[0]
            start = 0
            for index in first:
                alone = lm.hidden_states(torch.tensor([segs[index][0]]))[0]
                torch.testing.assert_close(hidden[start:start + len(segs[index][0])], alone, atol=1e-5, rtol=1e-4)
                start += len(segs[index][0])
        assert packed_n == unpacked_n
        assert packed_sum.item() == pytest.approx(unpacked_sum.item(), rel=1e-5), arch


def test_token_loss_equals_transformers_loss(lm_models):
    from transformers import AutoModelForCausalLM

    from kitae.models.causal_lm import CausalLM

    tokenizer = _tokenizer(lm_models["gemma3"])
    rows = qa_rows(4, 8)
    segs = []
    for r in rows:
        e = tokenize_segments(tokenizer, [(r["instruction"] + ":", False), (r["output"] + "</s>", True)], 64)
        segs.append((e.input_ids, e.labels))
    batch = collate_rows([[s] for s in segs], tokenizer.pad_token_id)
    mask = (batch["labels"] != IGNORE_INDEX) | (batch["position_ids"] > 0) | (torch.arange(batch["labels"].shape[1]) == 0)
    hf = AutoModelForCausalLM.from_pretrained(lm_models["gemma3"]).eval()
    with torch.no_grad():
        ours = CausalLM(hf, hf)(**batch)
        # transformers' own loss with labels, on right-padded rows with an attention mask.
        lengths = [len(ids) for ids, _ in segs]
        attention = torch.tensor([[1] * n + [0] * (batch["labels"].shape[1] - n) for n in lengths])
        theirs = hf(input_ids=batch["input_ids"], attention_mask=attention, labels=batch["labels"]).loss
    assert mask.any()
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)


# --- generation ------------------------------------------------------------------------------------

def _fixed_distribution_model(model_dir: Path, log_probs: torch.Tensor):
    """A causal LM whose next-token distribution is `log_probs` whatever the input."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    head = torch.nn.Linear(hf.config.hidden_size, hf.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(log_probs)
    hf.lm_head = head
    return hf


def test_min_p_keeps_exactly_the_tokens_above_min_p_times_the_top(lm_models):
    from kitae.config import GenerationSettings
    from kitae.inference.generate import hf_generation_config
    from kitae.models.precision import plan_precision, probe_caps

    tokenizer = _tokenizer(lm_models["llama"])
    vocab = len(tokenizer)
    # Hand-made: token 10 has p = 0.30, tokens 11-13 p = 0.04 (>= 0.1 x 0.30 = 0.03), tokens 14-73
    # p = 0.0095 each (below 0.03, 0.57 of the mass together); the rest ~0.
    probs = torch.full((vocab,), 1e-9)
    probs[10], probs[11:14], probs[14:74] = 0.30, 0.04, 0.0095
    model = _fixed_distribution_model(lm_models["llama"], probs.log())
    plan = plan_precision(probe_caps("cpu"), "float32", "auto", "full")
    from kitae.inference.generate import generate

    prompts = [[tokenizer.bos_token_id, 20]] * 300
    eos = [tokenizer.eos_token_id]
    sampled = generate(model, tokenizer, prompts, GenerationSettings(temperature=1.0, min_p=0.1, max_new_tokens=1,
                                                                     seed=0), plan, eos, batch_size=300)
    allowed = {tokenizer.decode([t]) for t in range(10, 14)}
    assert set(sampled) <= allowed and len(set(sampled)) == 4
    free = generate(model, tokenizer, prompts, GenerationSettings(temperature=1.0, max_new_tokens=1, seed=0), plan,
                    eos, batch_size=300)
    assert len(set(free) - allowed) > 10  # without min_p the 60 unlikely tokens are drawn too
    config = hf_generation_config(GenerationSettings(temperature=0.0, min_p=0.1), eos, 0)
    assert config.do_sample is False and config.min_p is None  # greedy ignores sampling filters


def test_generation_is_reproducible_with_a_seed(lm_models):
    from transformers import AutoModelForCausalLM

    from kitae.config import GenerationSettings
    from kitae.inference.generate import generate
    from kitae.models.precision import plan_precision, probe_caps

    tokenizer = _tokenizer(lm_models["llama"])
    model = AutoModelForCausalLM.from_pretrained(lm_models["llama"]).eval()
    plan = plan_precision(probe_caps("cpu"), "float32", "auto", "full")
    prompts = [tokenizer("雨の答え:")["input_ids"], tokenizer("肉の答え:")["input_ids"]] * 4
    settings = GenerationSettings(temperature=1.5, top_p=0.95, max_new_tokens=8, seed=7)
    eos = [tokenizer.eos_token_id]
    first = generate(model, tokenizer, prompts, settings, plan, eos, batch_size=4)
    assert generate(model, tokenizer, prompts, settings, plan, eos, batch_size=4) == first
    other = generate(model, tokenizer, prompts, settings.model_copy(update={"seed": 8}), plan, eos, batch_size=4)
    assert other != first
    index = next(i for i, text in enumerate(first) if len(text) >= 3)
    stop = first[index][1]
    stopped = generate(model, tokenizer, prompts, settings.model_copy(update={"stop": [stop]}), plan, eos, batch_size=4)
    assert stopped[index] == first[index][:first[index].find(stop)].strip()


# --- training end to end ---------------------------------------------------------------------------

def test_sft_learns_the_mapping_and_generates(lm_models, qa_files, tmp_path):
    cfg = sft_config(lm_models["llama"], qa_files, tmp_path / "run", adapter={"type": "full"},
                     training={"lr": 3e-3, "epochs": 8, "packing": True})
    before = kitae.Generator.from_base(config_from_dict(cfg)).evaluate_file(
        qa_files["test"], tmp_path / "before", progress=False)
    result = _train(cfg)
    test = result.metrics["test"]
    assert before["exact_match"] == 0.0
    assert test["exact_match"] >= 0.8, test
    assert test["loss"] < before["loss"] / 2
    run = result.run_dir
    records = [json.loads(line) for line in (run / "predictions_test.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(records) == 18 and {"id", "prompt", "generated", "gold", "exact_match", "char_f1"} <= set(records[0])
    assert records[0]["prompt"] == next(r for r in qa_rows(18, 3) if r["id"] == records[0]["id"])["instruction"] + ":"
    history = (run / "history.csv").read_text().splitlines()
    assert "dev_loss" in history[0] and "dev_exact_match" not in history[0]  # generation at the end only
    card = (run / "README.md").read_text(encoding="utf-8")
    assert "pipeline_tag: text-generation" in card and "exact_match" in card
    generator = kitae.load(run)
    assert generator.generate(["雨の答え"]) == ["晴雪"]
    with pytest.raises(KitaeError, match="a sft run generates text .* it does not predict labels"):
        generator.predict(["雨の答え"])
    assert generator.generate([{"instruction": "肉の答え"}]) == ["魚米"]
    # The CLI: one prompt, and a file of prompts.
    out = CliRunner().invoke(app, ["generate", str(run), "--prompt", "株の答え"])
    assert out.exit_code == 0 and "円税" in out.output, out.output
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"id": "a", "instruction": "風の答え"}, {"instruction": "麺の答え"}])
    written = CliRunner().invoke(app, ["generate", str(run), str(prompts), "-o", str(tmp_path / "out.jsonl")])
    assert written.exit_code == 0, written.output
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["generated"] for r in lines] == ["曇雷", "汁菜"] and lines[0]["id"] == "a"


@pytest.mark.parametrize("adapter", ["lora", "dora", "prompt_tuning"])
def test_adapters_train_save_and_reload(lm_models, qa_files, tmp_path, adapter):
    sections = {"adapter": {"type": "lora" if adapter == "dora" else adapter, "dora": adapter == "dora",
                            "num_virtual_tokens": 4},
                "training": {"epochs": 2, "lr": 3e-2 if adapter == "prompt_tuning" else 1e-2}}
    cfg = sft_config(lm_models["llama"], qa_files, tmp_path / "run", **sections)
    result = _train(cfg)
    history = [line.split(",") for line in (result.run_dir / "history.csv").read_text().splitlines()]
    loss = history[0].index("train_loss")
    assert float(history[2][loss]) < float(history[1][loss])  # it trains
    saved = json.loads((result.run_dir / "model" / "adapter_config.json").read_text())
    assert saved["peft_type"] == ("PROMPT_TUNING" if adapter == "prompt_tuning" else "LORA")
    assert saved.get("use_dora", False) == (adapter == "dora")
    assert saved["task_type"] == "CAUSAL_LM"
    generator = kitae.load(result.run_dir)
    prompts = [r["instruction"] for r in qa_rows(6, 3)]
    reloaded = generator.generate(prompts)
    records = [json.loads(line) for line in (result.run_dir / "predictions_test.jsonl").read_text().splitlines()]
    by_prompt = {r["prompt"]: r["generated"] for r in records}
    assert [by_prompt[p + ":"] for p in prompts] == reloaded
    evaluated = generator.evaluate_file(qa_files["test"], tmp_path / "eval", progress=False)
    assert evaluated["loss"] == pytest.approx(result.metrics["test"]["loss"], rel=1e-5)
    assert evaluated["exact_match"] == result.metrics["test"]["exact_match"]


def test_resume_after_interrupt_gives_the_same_metrics(lm_models, qa_files, tmp_path):
    from kitae.training.callbacks import Callback
    from kitae.training.loop import TrainingInterrupted

    sections = {"training": {"epochs": 2, "packing": True}}
    full = _train(sft_config(lm_models["llama"], qa_files, tmp_path / "full", **sections))

    class StopAt(Callback):
        def on_step_end(self, step: dict) -> None:
            if step["global_step"] == 5:
                raise KeyboardInterrupt

    cfg = sft_config(lm_models["llama"], qa_files, tmp_path / "run", **sections)
    with pytest.raises(TrainingInterrupted):
        _train(cfg, callbacks=[StopAt()])
    resumed = _train(cfg, resume=True)
    for split in ("dev", "test"):
        assert resumed.metrics[split]["loss"] == pytest.approx(full.metrics[split]["loss"], rel=1e-6)
        assert resumed.metrics[split]["exact_match"] == full.metrics[split]["exact_match"]
    assert resumed.logits["test"]["generations"] == full.logits["test"]["generations"]


def test_select_on_exact_match_generates_every_epoch(lm_models, qa_files, tmp_path):
    cfg = sft_config(lm_models["llama"], qa_files, tmp_path / "run", training={"epochs": 2, "select_metric": "exact_match"})
    result = _train(cfg)
    header = (result.run_dir / "history.csv").read_text().splitlines()[0].split(",")
    assert "dev_exact_match" in header and "dev_char_f1" in header


def test_causal_lm_packs_full_rows_and_lowers_perplexity(lm_models, tmp_path):
    rng = random.Random(0)
    texts = ["".join(rng.choice("雨晴雪風曇") for _ in range(rng.randint(5, 30))) + "。" for _ in range(140)]
    files = {split: write_jsonl(tmp_path / f"{split}.jsonl", [{"text": t} for t in chunk])
             for split, chunk in (("train", texts[:120]), ("dev", texts[120:130]), ("test", texts[130:]))}
    cfg = {"task": "causal_lm", "data": {k: str(v) for k, v in files.items()}, "model": {"name": str(lm_models["gpt_neox"]),
           "max_length": 32}, "adapter": {"type": "full"}, "training": {"lr": 5e-3, "epochs": 3, "batch_size": 4,
           "checkpoint_every_minutes": None}, "output": str(tmp_path / "run")}
    config = config_from_dict(cfg)
    from kitae.data.prepare import prepare_data
    from kitae.models.loading import load_backbone
    from kitae.models.sources import resolve_source

    task, examples = prepare_data(config)
    split = task.encode("train", examples["train"], load_backbone(resolve_source(config.model.name), config.model))
    lengths = split.lengths
    assert (lengths[:-1] >= 31).all() and lengths.max() <= 32  # full rows (no one-token pieces) but the last
    bos = _tokenizer(lm_models["gpt_neox"]).bos_token_id
    # Every piece starts with <s>, as every document does (a piece continuing a document gets one).
    assert all(ids[0] == bos for ids, _ in split.examples)
    continued = len(split.examples) - 120
    assert continued > 0
    assert sum(len(ids) for ids, _ in split.examples) == sum(len(t) + 2 for t in texts[:120]) + continued
    # The labels: every token but the first of each piece, so continued pieces train one token less.
    trained = sum(sum(t != IGNORE_INDEX for t in labels) for _, labels in split.examples)
    assert trained == sum(len(t) + 2 for t in texts[:120]) - 120 - continued
    result = _train(cfg)
    history = [line.split(",") for line in (result.run_dir / "history.csv").read_text().splitlines()]
    ppl = history[0].index("dev_perplexity")
    assert float(history[-1][ppl]) < float(history[1][ppl])
    # Five letters drawn at random: about 5 is the best perplexity there is; the untrained model is near 100.
    assert result.metrics["test"]["perplexity"] < 8


# --- bad input -----------------------------------------------------------------------------------

def _bad(rows: list[dict], **data) -> tuple[list[dict], dict]:
    return rows, data


BAD_CASES = [
    ("no output column", [{"instruction": "雨の答え"}] * 3, {}, ["train.jsonl", "line 1", "'output'", "missing column"]),
    ("empty response", [{"instruction": "雨", "output": "晴"}, {"instruction": "肉", "output": "  "}], {},
     ["train.jsonl", "line 2", "'output'", "empty response"]),
    ("chat row with an unknown role", [{"messages": [{"role": "user", "content": "雨"}, {"role": "bot", "content": "晴"}]}],
     {"messages_field": "messages", "template": None}, ["train.jsonl", "line 1", "'messages'", "unknown role 'bot'"]),
    ("chat row ending with the user", [{"messages": [{"role": "user", "content": "雨"}]}],
     {"messages_field": "messages", "template": None}, ["line 1", "'messages'", "last message must be the assistant"]),
    ("prompt longer than max_length", [{"instruction": "雨" * 60, "output": "晴"}], {},
     ["train.jsonl", "line 1", "'instruction'", "the prompt is", "model.max_length is 48"]),
    ("no instruction column", [{"question": "雨", "output": "晴"}], {"template": None},
     ["train.jsonl", "line 1", "'instruction'", "missing column"]),
]


@pytest.mark.parametrize("name,rows,data,expected", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_sft_input_is_one_clear_error(lm_models, tmp_path, name, rows, data, expected):
    files = {split: write_jsonl(tmp_path / f"{split}.jsonl", rows) for split in ("train", "dev", "test")}
    cfg = sft_config(lm_models["llama"], files, tmp_path / "run")
    cfg["data"].update(data)
    cfg["data"] = {k: v for k, v in cfg["data"].items() if v is not None}
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    result = CliRunner().invoke(app, ["train", str(config_path)])
    output = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and output.count("error:") == 1, result.output
    for word in expected:
        assert word in output, (word, result.output)
    assert not (tmp_path / "run").exists()


def test_sft_config_rules():
    base = {"task": "sft", "data": {"train": "t.jsonl"}, "model": {"name": "m"}, "output": "o"}
    from kitae.errors import ConfigError

    for data, adapter, training, message in [
        ({"label_fields": ["a"]}, {}, {}, "data.label_fields: belongs to tasks multi_label and regression, not sft"),
        ({}, {"type": "prompt_tuning"}, {"packing": True}, "packing cannot be used with adapter.type: prompt_tuning"),
        ({"answer_choice_field": "label"}, {}, {}, "needs data.choice_fields"),
        ({}, {}, {"select_metric": "macro_f1"}, "not a sft metric"),
    ]:
        raw = {**base, "data": {**base["data"], **data}, "adapter": adapter, "training": training}
        with pytest.raises(ConfigError, match=message):
            config_from_dict(raw, check_files=False)
    config = config_from_dict({**base, "adapter": {"type": "prompt_tuning"}}, check_files=False)
    assert config.training.lr == 3e-2 and config.training.select_metric == "loss"
    with pytest.raises(ConfigError, match="prompt_tuning is for task sft and causal_lm"):
        config_from_dict({**base, "task": "single_label", "adapter": {"type": "prompt_tuning"}}, check_files=False)


# --- memory -----------------------------------------------------------------------------------------

def test_memory_is_logged_every_n_steps_and_summarised(lm_models, qa_files, tmp_path):
    cfg = sft_config(lm_models["llama"], qa_files, tmp_path / "run", training={"epochs": 1, "log_every_steps": 3})
    result = _train(cfg)
    import csv

    rows = list(csv.DictReader((result.run_dir / "steps.csv").open(encoding="utf-8")))
    assert [int(r["step"]) for r in rows] == [3, 6, 9, 12]  # 96 examples / batch 8 = 12 updates
    assert all(float(r["rss_gib"]) > 0.1 and float(r["tokens_per_s"]) > 0 for r in rows)
    summary = json.loads((result.run_dir / "metrics.json").read_text())["summary"]
    assert summary["peak_rss_gib"] >= max(float(r["rss_gib"]) for r in rows)
    assert summary["largest_batch"]["examples"] == 8 and summary["largest_batch"]["tokens"] > 8
    assert "rss_gib" in (result.run_dir / "history.csv").read_text().splitlines()[0]
    assert "step 3: loss" in (result.run_dir / "train.log").read_text(encoding="utf-8")


def test_out_of_memory_names_the_batch_and_the_largest_that_fitted(lm_models, qa_files, tmp_path, monkeypatch):
    from kitae.tasks.generative import GenerativeTask

    original = GenerativeTask.batch_loss
    calls = {"n": 0}

    def batch_loss(self, model, batch):
        calls["n"] += 1
        if calls["n"] == 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, model, batch)

    monkeypatch.setattr(GenerativeTask, "batch_loss", batch_loss)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(sft_config(lm_models["llama"], qa_files, tmp_path / "run"),
                                          allow_unicode=True), encoding="utf-8")
    result = CliRunner().invoke(app, ["train", str(config_path)])
    output = " ".join(result.output.split())
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "out of memory in epoch 1, batch 4 (8 examples" in output
    assert "the largest batch that fitted had 8 examples" in output and "training.batch_size (now 8" in output
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "failed"


def test_export_merged_and_adapter_load_in_plain_transformers(lm_models, qa_files, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = _train(sft_config(lm_models["llama"], qa_files, tmp_path / "run", training={"epochs": 1}))
    generator = kitae.load(result.run_dir)
    prompt_ids = generator.prompt_ids("雨の答え")
    expected = generator.generate(["雨の答え"])[0]
    for kind in ("merged", "adapter"):
        out = tmp_path / kind
        args = ["export", str(result.run_dir), str(out), *(["--merge"] if kind == "merged" else [])]
        assert CliRunner().invoke(app, args).exit_code == 0
        if kind == "merged":
            model = AutoModelForCausalLM.from_pretrained(out).eval()
        else:  # the adapter names its base by its name, not a path of this machine: load the base here
            assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "llama"
            model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(lm_models["llama"]), out).eval()
        tokenizer = AutoTokenizer.from_pretrained(out)
        ids = model.generate(input_ids=torch.tensor([prompt_ids]), max_new_tokens=4, do_sample=False,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        text = tokenizer.decode(ids[0, len(prompt_ids):], skip_special_tokens=True).strip()
        assert text == expected, kind
        meta = json.loads((out / "kitae_model.json").read_text())
        assert meta["export"]["kind"] == kind and "pipeline_tag: text-generation" in (out / "README.md").read_text()


def test_data_analyze_reports_prompt_and_response_lengths(lm_models, qa_files, tmp_path):
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(sft_config(lm_models["llama"], qa_files, tmp_path / "run"),
                                          allow_unicode=True), encoding="utf-8")
    result = CliRunner().invoke(app, ["data", "analyze", str(config_path), "-o", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    train = summary["splits"]["train"]
    assert train["examples"] == 96 and train["response_characters"]["max"] == 2
    # "雨の答え:" -> <s> + 5 characters; + 2 answer characters + </s>.
    assert train["prompt_tokens"]["max"] == 6 and train["tokens"]["max"] == 9 and train["tokens"]["over_max_length"] == 0
