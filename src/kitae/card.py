"""The model card: a Hugging Face README.md with YAML front-matter, written for every run.

Front-matter (license, base_model, tags, metrics, model-index) is what the hub indexes; the body
says what the model is for, the labels, the data, every hyperparameter, the per-epoch table, the
test metrics with the confusion matrix, the token limit, the versions, and how to load it.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import yaml

from kitae.credentials import strip_credentials
from kitae.models.sources import hub_model_name, public_model_name
from kitae.runs import read_json

_LICENSES = {"pypi:gemma-3-270m": "gemma"}


def _input_description(data: dict[str, Any]) -> str:
    """What the model reads, in words: one column, a template, a text pair, or prompt + response."""
    if data.get("prompt_field"):
        return (f"the prompt (`{data['prompt_field']}`) and a response, read together"
                + (f" through the template `{repr(data['template'])[1:-1]}`" if data.get("template") else " as a text pair"))
    if data.get("text_fields"):
        return (f"the text pair `{data['text_fields'][0]}` / `{data['text_fields'][1]}`"
                + (f" through the template `{repr(data['template'])[1:-1]}`" if data.get("template") else ""))
    if data.get("template"):
        return f"template `{repr(data['template'])[1:-1]}`"
    return f"column `{data['text_field']}`"


def _usage_example(data: dict[str, Any], is_decoder: bool) -> tuple[str, str]:
    """A kitae call and the plain-transformers tokenizer call for this run's input (a decoder
    reads a pair through its template, an encoder as the tokenizer's pair encoding)."""
    if data.get("prompt_field") or data.get("text_fields"):
        first, second = ("質問", "回答") if data.get("prompt_field") else ("前提の文", "仮説の文")
        kitae_call = f'clf.predict([("{first}", "{second}")])'
        if not is_decoder:
            return kitae_call, f'tok(["{first}"], ["{second}"], return_tensors="pt", padding=True)'
        fields = [data["prompt_field"], data["text_field"]] if data.get("prompt_field") else data["text_fields"]
        template = data.get("template")
        text = template.format(**dict(zip(fields, (first, second)))) if template else f"{first}\n{second}"
        return kitae_call, f'tok([{text!r}], return_tensors="pt", padding=True)'
    return 'clf.predict(["テキスト"])', 'tok(["テキスト"], return_tensors="pt", padding=True)'


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


def build_card(run_dir: Path, base_model_name: str | None = None, exported: str = "adapter") -> str:
    """The README.md text for a finished run directory."""
    import torch
    import transformers

    import kitae
    from kitae.tasks import get_task_class

    run_dir = Path(run_dir)
    config = strip_credentials(yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")))
    metrics = read_json(run_dir / "metrics.json")
    meta = read_json(run_dir / "model" / "kitae_model.json")
    labels: list[str] = meta["labels"]
    # A card is published: models by name, never by a path on this machine.
    local_model = public_model_name(config["model"]["name"]) != config["model"]["name"]
    config["model"]["name"] = public_model_name(config["model"]["name"])
    base = base_model_name or config["model"]["name"]
    task = config["task"]
    task_class = get_task_class(task)
    contract = task_class.contract
    generator = contract.generates
    headline = task_class.report_metrics
    test = metrics.get("test") or metrics.get("dev") or {}
    split_name = "test" if "test" in metrics else "dev"
    dataset = Path(config["data"]["train"]).parent.name or Path(config["data"]["train"]).stem
    pipeline = contract.pipeline_tag

    front: dict[str, Any] = {
        "library_name": "peft" if config["adapter"]["type"] in ("lora", "qlora", "prompt_tuning") and exported == "adapter"
        else "transformers",
        "license": _LICENSES.get(config["model"]["name"], "other"),
        "language": ["ja"],
        "pipeline_tag": pipeline,
        "tags": ["kitae", pipeline, task.replace("_", "-"), config["adapter"]["type"]],
        "metrics": [k for k in headline if isinstance(test.get(k), float)],
        "model-index": [{
            "name": Path(config["output"]).name,
            "results": [{
                "task": {"type": pipeline, "name": task.replace("_", "-")},
                "dataset": {"name": dataset, "type": dataset, "split": split_name},
                "metrics": [{"type": k, "value": round(test[k], 6), "name": f"{split_name} {k}"}
                            for k in headline if isinstance(test.get(k), float) and test[k] == test[k]],
            }],
        }],
    }
    hub_base = hub_model_name(base)
    if not hub_base.startswith("pypi:") and not local_model:
        front["base_model"] = hub_base

    lines = ["---", yaml.safe_dump(front, allow_unicode=True, sort_keys=False).rstrip(), "---", ""]
    lines += [f"# {Path(config['output']).name}", ""]
    if generator:
        lines += [f"{contract.card_summary} fine-tuned with kitae from `{base}` ({config['adapter']['type']}).", ""]
        if contract.conversational:
            lines += ["## Prompt format", "", f"`{meta.get('prompt_format')}`"
                      + (f" with the template `{repr(config['data']['template'])[1:-1]}`"
                         if meta.get("prompt_format") == "template" else "")
                      + "; the loss was on " + ("every token" if config["training"].get("train_on_prompt")
                                                 else "the response tokens only") + "."]
    else:
        lines += [f"{contract.card_summary} fine-tuned with kitae from `{base}` ({config['adapter']['type']}, "
                  f"pooling `{meta['pooling']}`).", ""]
        lines += ["## Labels", "", "| id | label |", "|---|---|"]
        lines += [f"| {i} | {label} |" for i, label in enumerate(labels)]
        thresholds = meta.get("task_state", {}).get("thresholds")
        if thresholds:
            lines += ["", "Decision thresholds (per category): " + ", ".join(f"{k}: {v:.3f}" for k, v in thresholds.items())]
    summary = metrics.get("summary", {})
    lines += ["", "## Data", "",
              f"- train: `{Path(config['data']['train']).name}` ({summary.get('train_examples', '?')} examples used)",
              f"- dev: {metrics.get('dev', {}).get('n', '—')} examples; test: {metrics.get('test', {}).get('n', '—')} examples"]
    if not generator:
        lines.append(f"- input: {_input_description(config['data'])}")
    lines.append(f"- token limit: {config['model']['max_length']} tokens (truncated: {summary.get('truncated', {})})")
    history_path = run_dir / "history.csv"
    if history_path.is_file():
        rows = list(csv.DictReader(history_path.open(encoding="utf-8")))
        columns = [c for c in ("epoch", "train_loss", "dev_loss", *(f"dev_{m}" for m in headline[:6]))
                   if rows and c in rows[0]]
        columns = list(dict.fromkeys(columns))
        lines += ["", "## Training results (per epoch)", "", "| " + " | ".join(columns) + " |",
                  "|" + "---|" * len(columns)]
        for row in rows:
            lines.append("| " + " | ".join(_fmt(float(row[c])) if c != "epoch" and row[c] != "" else row[c]
                                           for c in columns) + " |")
        lines += ["", f"Selected epoch: {summary.get('selected_epoch')} (dev `{summary.get('select_metric')}`)."]
    lines += ["", f"## {split_name.capitalize()} metrics (selected model)", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(test[k])} |" for k in headline if k in test]
    if generator and config.get("generation"):
        settings = config["generation"]
        lines += ["", "Generation: " + ", ".join(f"{k} {settings[k]}" for k in
                                                 ("temperature", "top_p", "top_k", "min_p", "max_new_tokens")
                                                 if k in settings) + "."]
        lines += _example_generations(run_dir / f"predictions_{split_name}.jsonl")
    lines += [f"\n**Warning:** {warning}" for warning in summary.get("warnings", [])]
    if (run_dir / f"confusion_matrix_{split_name}.png").is_file():
        lines += ["", f"![confusion matrix](confusion_matrix_{split_name}.png)"]
    lines += ["", "## Hyperparameters", "", "```yaml",
              yaml.safe_dump({k: config[k] for k in ("model", "adapter", "training", "balance", "evaluation", "generation")
                              if k in config and not (generator and k == "balance")},
                             allow_unicode=True, sort_keys=False).rstrip(), "```"]
    lines += ["", "## Framework versions", "",
              f"- kitae {kitae.__version__}", f"- transformers {transformers.__version__}", f"- torch {torch.__version__}"]
    try:
        import peft

        lines.append(f"- peft {peft.__version__}")
    except ImportError:
        pass
    if generator:
        lines += ["", "## How to use", "", "```python", "import kitae", "gen = kitae.load(\"path/to/run\")",
                  'gen.generate(["日本の首都はどこですか。"])', "```"]
        return "\n".join(lines) + "\n"
    kitae_call, tokenizer_call = _usage_example(config["data"], is_decoder=meta["pooling"] == "last")
    lines += ["", "## How to use", "", "```python", "import kitae",
              "clf = kitae.load(\"path/to/run\")", kitae_call, "```"]
    if exported == "merged":
        lines += ["", "Plain transformers (no kitae needed):", "", "```python",
                  "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
                  "tok = AutoTokenizer.from_pretrained(\"path/to/export\")",
                  "model = AutoModelForSequenceClassification.from_pretrained(\"path/to/export\")",
                  f"logits = model(**{tokenizer_call}).logits",
                  "```"]
    return "\n".join(lines) + "\n"


def _example_generations(path: Path, count: int = 3) -> list[str]:
    """A few generations of the selected model beside their gold answers."""
    if not path.is_file():
        return []
    import json

    lines = ["", "| prompt (end) | generated | gold |", "|---|---|---|"]
    with path.open(encoding="utf-8") as handle:
        for line, _ in zip(handle, range(count)):
            record = json.loads(line)
            cells = [record.get("prompt", "")[-60:], record.get("generated", ""), record.get("gold", "")]
            lines.append("| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return lines


def card_front_matter(text: str) -> dict[str, Any]:
    """Parse the YAML front-matter of a model card (what the hub reads)."""
    if not text.startswith("---\n"):
        raise ValueError("no front-matter")
    return yaml.safe_load(text.split("---\n", 2)[1])
