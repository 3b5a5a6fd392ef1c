"""`kitae export RUN OUT --for vllm|tei|onnx`: a merged folder a serving engine loads, checked.

Each engine has a contract — the architecture it recognises, the head it builds, how it pools,
which activation it applies — and kitae either writes a folder that meets it and reproduces the
run's outputs, or refuses before writing anything, with the reason and the fix:

- vLLM (`vllm serve OUT --runner pooling`, `/classify`): decoders as `*ForSequenceClassification`
  with a bias-free `score` head, pooled at the last prompt token (which is kitae's pooling: the
  last real token); encoders (BERT, XLM-R) as cross-encoders through their own pooler. The
  activation follows `problem_type` (softmax / sigmoid / identity), which the export sets.
- text-embeddings-inference (`/predict`): encoder classifiers with a fast `tokenizer.json`,
  `id2label` and `label2id`; TEI tokenises with the Rust tokenizer from that file.
- ONNX (`model.onnx`, ONNX Runtime, Optimum): any classifier, pooling included in the graph (so
  mean-pooled encoders too), inputs `input_ids`, `attention_mask` (+ `token_type_ids` for
  encoder pairs), outputs `logits` and `outputs` (the run's probabilities, or values in target
  units for regression, scores for reward models). Checked here with ONNX Runtime itself.

What no engine reproduces is refused: mean pooling (no engine pools a classifier's mean; train with
`model.pooling: cls` or `last`), slow tokenizers for TEI, a regression mean that a bias-free head
cannot add. What an engine returns instead of kitae's decisions is written beside the model:
multi-label thresholds (`thresholds.json`; engines return per-label probabilities).

The parity check computes the exported folder's outputs the way the engine does (its tokenizer,
one unpadded sequence per text, its pooling position and activation) with plain transformers and
compares them with `kitae.load(RUN_DIR)` on sample rows of the run's data; the result is written
to `parity.json` in the folder, and a failed check leaves no folder. The engines themselves are not
run here (no GPU / Docker on the machine that tests kitae): their contract is what is checked.
"""

from __future__ import annotations

import json
import logging
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kitae.errors import KitaeError
from kitae.tasks.contract import Activation

logger = logging.getLogger("kitae")

ENGINES = ("vllm", "tei", "onnx")
ONNX_FILE = "model.onnx"
EXPORT_CONFIG = "kitae_config.yaml"  # the run's config (data paths reduced to file names): how to render rows
PARITY_FILE = "parity.json"
PARITY_TOLERANCE = 1e-4  # max |difference| of probabilities (values for regression / reward), float32
SAMPLE_ROWS = 16

# Encoder classifiers each engine implements (architecture names in config.json).
VLLM_ENCODERS = ("BertForSequenceClassification", "XLMRobertaForSequenceClassification",
                 "RobertaForSequenceClassification", "ModernBertForSequenceClassification")
TEI_ENCODERS = ("BertForSequenceClassification", "XLMRobertaForSequenceClassification",
                "RobertaForSequenceClassification", "CamembertForSequenceClassification",
                "DistilBertForSequenceClassification", "ModernBertForSequenceClassification")


@dataclass
class EnginePlan:
    """What an engine export will do, decided before anything is written; with kitae's own
    outputs on the sample rows (taken before the merge changes the weights in place)."""

    engine: str
    architecture: str
    is_decoder: bool
    problem_type: str
    fold: tuple[np.ndarray, np.ndarray] | None  # regression: (std, mean) folded into the head
    texts: list[Any] | None = None
    reference: np.ndarray | None = None  # kitae's probabilities / values on `texts`


def plan_engine_export(clf: Any, engine: str, run_dir: Path) -> EnginePlan:
    """Check that `engine` can reproduce this run; raise KitaeError with the reason and fix if not."""
    if engine not in ENGINES:
        raise KitaeError(f"--for {engine}: unknown engine; choose one of {', '.join(ENGINES)}")
    if clf.generates:
        raise KitaeError(f"{run_dir}: a {clf.task_class.name} run is a causal LM: `kitae export RUN OUT --merge` "
                         "writes a folder `vllm serve OUT` generates with; --for checks classifier contracts")
    contract = clf.task_class.contract
    assert contract.problem_type is not None  # every classifier declares one (TaskContract checks)
    architecture = type(clf.model.hf_model).__name__
    is_decoder = bool(clf.model.is_decoder)
    if clf.model.pooling == "mean" and engine != "onnx":
        raise KitaeError(f"{run_dir}: the model pools the mean of token states (model.pooling: mean), which "
                         f"{_engine_name(engine)} cannot do for a classifier; train with model.pooling: cls "
                         "(encoders) or last (decoders)")
    head = _trained_head(clf.model.head)
    if engine == "vllm":
        if is_decoder:
            if clf.model.head_name != "score" or not isinstance(head, torch.nn.Linear):
                raise KitaeError(f"{run_dir}: vLLM builds a decoder classifier's head as one linear layer named "
                                 f"`score`; {architecture} has `{clf.model.head_name}` ({type(head).__name__})")
            if head.bias is not None:
                raise KitaeError(f"{run_dir}: vLLM's `score` head has no bias and this one has: the exported "
                                 "logits would differ")
        elif architecture not in VLLM_ENCODERS:
            raise KitaeError(f"{run_dir}: vLLM has no cross-encoder for {architecture} (it has "
                             f"{', '.join(VLLM_ENCODERS)}); use --for tei where it applies, or kitae serve")
    elif engine == "tei":
        if is_decoder:
            raise KitaeError(f"{run_dir}: text-embeddings-inference serves encoder classifiers, and this is a "
                             f"decoder ({architecture}); use --for vllm")
        if architecture not in TEI_ENCODERS:
            raise KitaeError(f"{run_dir}: text-embeddings-inference has no classifier for {architecture} (it has "
                             f"{', '.join(TEI_ENCODERS)}); use kitae serve")
        if not getattr(clf.tokenizer, "is_fast", False):
            raise KitaeError(f"{run_dir}: the tokenizer ({type(clf.tokenizer).__name__}) is a slow one with no "
                             "tokenizer.json, which text-embeddings-inference needs (MeCab / sentencepiece "
                             "tokenizers without a fast version); use --for vllm or kitae serve")
    fold = None
    # Values in target units (regression): engines return the head's outputs, so the target
    # normalisation goes into the head (ONNX computes target units in its graph instead).
    if contract.activation is Activation.VALUES and engine != "onnx":
        mean = np.asarray(clf.task.mean, dtype=np.float64)
        std = np.asarray(clf.task.std, dtype=np.float64)
        if np.any(mean != 0) and _last_linear(head).bias is None:
            raise KitaeError(f"{run_dir}: the targets were z-scored (data.normalize_targets) with mean "
                             f"{mean.round(4).tolist()}; a bias-free `score` head cannot add it back, so "
                             f"{_engine_name(engine)} would return z-scores. Train with "
                             "data.normalize_targets: false, or serve with kitae serve")
        if np.any(mean != 0) or np.any(std != 1):
            fold = (std, mean)
    texts = sample_texts(clf)
    return EnginePlan(engine, architecture, is_decoder, contract.problem_type, fold, texts,
                      clf.task.probabilities(clf.logits(texts)))


def prepare_engine_model(model: Any, plan: EnginePlan, clf: Any) -> None:
    """Edit the merged model before it is saved: fold target normalisation into the head, and set
    the config fields the engine reads."""
    if plan.fold is not None:
        std, mean = plan.fold
        linear = _last_linear(getattr(model, clf.model.head_name))
        with torch.no_grad():
            linear.weight.mul_(torch.as_tensor(std, dtype=linear.weight.dtype)[:, None])
            if linear.bias is not None:
                linear.bias.mul_(torch.as_tensor(std, dtype=linear.bias.dtype))
                linear.bias.add_(torch.as_tensor(mean, dtype=linear.bias.dtype))
    config = model.config
    config.problem_type = plan.problem_type
    config.id2label = dict(enumerate(clf.labels))
    config.label2id = {label: i for i, label in enumerate(clf.labels)}
    config.architectures = [plan.architecture]


def finish_engine_export(folder: Path, plan: EnginePlan, clf: Any, run_dir: Path, final: Path) -> dict[str, Any]:
    """Write what the engine needs beside the weights (in `folder`, which becomes `final`), run the
    parity check, return its record."""
    if plan.engine == "tei" and not (folder / "tokenizer.json").is_file():
        raise KitaeError(f"{run_dir}: the exported tokenizer wrote no tokenizer.json; text-embeddings-inference "
                         "cannot load it")
    thresholds = clf.task.state().get("thresholds")  # per label, where the task decides by them
    if thresholds is not None:
        values = [float(thresholds[label]) for label in clf.labels]
        (folder / "thresholds.json").write_text(json.dumps(
            {"labels": clf.labels, "thresholds": values,
             "note": "engines return per-label probabilities; a label is predicted when its probability "
                     "is at least its threshold (tuned on dev by kitae)"}, ensure_ascii=False, indent=2) + "\n",
            encoding="utf-8")
    parity = check_parity(folder, plan, len(clf.labels))
    parity["launch"] = launch_command(plan, final, clf)
    (folder / PARITY_FILE).write_text(json.dumps(parity, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    if not parity["passed"]:
        raise KitaeError(f"{run_dir}: parity check for {_engine_name(plan.engine)} failed: max |difference| "
                         f"{parity['max_abs_difference']:.2e} > {PARITY_TOLERANCE:g} on {parity['rows']} rows "
                         f"({parity['labels_agree']} labels agree); nothing was exported")
    return parity


def sample_texts(clf: Any, n: int = SAMPLE_ROWS) -> list[Any]:
    """The first rows of the run's own data (test, else dev, else train), rendered as in training,
    kept only when they fit max_length (engines truncate differently; the README says so)."""
    from kitae.data.readers import iter_rows

    data = clf.config.data
    for name in ("test", "dev", "train"):
        path = getattr(data, name, None)
        if path is None or not Path(path).is_file():
            continue
        texts = []
        for row in iter_rows(path, encoding=data.encoding):
            try:
                text = clf._render(row.values)
            except KitaeError:
                continue
            if not clf.encode([text]).truncated[0]:
                texts.append(text)
            if len(texts) == n:
                break
        if texts:
            return texts
    raise KitaeError(f"{clf.run_dir}: no data file of the run is readable for the parity check "
                     "(its config names train / dev / test files that are gone)")


def check_parity(folder: Path, plan: EnginePlan, num_labels: int) -> dict[str, Any]:
    """The engine's outputs (emulated with transformers on the exported folder; ONNX Runtime
    itself for onnx) against kitae's."""
    assert plan.texts is not None and plan.reference is not None
    texts = plan.texts
    if plan.engine == "onnx":
        return _compare(plan, _onnx_outputs(folder, texts), "ONNX Runtime on model.onnx, texts padded in one batch")
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32).eval()
    engine_tokens = _engine_tokenizer(folder, plan)
    outputs = []
    transformers_rule: list[bool] = []
    with torch.inference_mode():
        for text in texts:
            ids, types = engine_tokens(text)
            input_ids = torch.tensor([ids])
            if plan.is_decoder:
                # vLLM: the prompt alone (no padding), hidden state of its last token, `score` in float32.
                backbone = getattr(model, model.base_model_prefix)
                hidden = backbone(input_ids=input_ids).last_hidden_state[0, -1]
                logits = model.score(hidden.float())
                # transformers pools at the last non-pad token instead: the same unless the
                # tokenizer ends the prompt with an EOS that is also the pad token.
                own = model(input_ids=input_ids).logits[0].float()
                transformers_rule.append(bool(torch.allclose(own, logits, atol=PARITY_TOLERANCE)))
            else:
                kwargs = {"token_type_ids": torch.tensor([types])} if types is not None else {}
                logits = model(input_ids=input_ids, **kwargs).logits[0]
            outputs.append(logits.float().numpy())
    engine_values = _activation(plan.problem_type, num_labels)(np.stack(outputs))
    record = _compare(plan, engine_values, "transformers on the exported folder, with the engine's tokenizer, "
                      "pooling and activation (the engine itself is not run by kitae)")
    if transformers_rule:
        record["transformers_pooling_agrees"] = all(transformers_rule)
        if not all(transformers_rule):
            logger.warning("the tokenizer ends prompts with its pad token: plain transformers' "
                           "*ForSequenceClassification pools one token earlier than vLLM and kitae, so loading "
                           "this folder in transformers gives other logits (vLLM gives kitae's)")
    return record


def _compare(plan: EnginePlan, engine_values: np.ndarray, how: str) -> dict[str, Any]:
    assert plan.texts is not None and plan.reference is not None
    texts, kitae_values = plan.texts, plan.reference
    difference = float(np.max(np.abs(engine_values - kitae_values)))
    if plan.problem_type == "regression":
        agree = int(np.sum(np.all(np.abs(engine_values - kitae_values) <= PARITY_TOLERANCE, axis=1)))
    elif plan.problem_type == "multi_label_classification":
        agree = int(np.sum(np.all((engine_values >= 0.5) == (kitae_values >= 0.5), axis=1)))
    else:
        agree = int(np.sum(engine_values.argmax(1) == kitae_values.argmax(1)))
    return {"engine": plan.engine, "architecture": plan.architecture, "problem_type": plan.problem_type,
            "rows": len(texts), "max_abs_difference": difference, "tolerance": PARITY_TOLERANCE,
            "labels_agree": agree, "passed": bool(difference <= PARITY_TOLERANCE), "how": how}


def _engine_tokenizer(folder: Path, plan: EnginePlan):
    """Token ids as the engine makes them: vLLM calls the Hugging Face tokenizer (special tokens
    added); TEI the Rust tokenizer from tokenizer.json."""
    if plan.engine == "tei":
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        tokenizer.no_truncation()
        tokenizer.no_padding()

        def encode(text: Any) -> tuple[list[int], list[int] | None]:
            encoding = tokenizer.encode(*text) if isinstance(text, tuple) else tokenizer.encode(text)
            return encoding.ids, encoding.type_ids
        return encode
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(folder)

    def encode_hf(text: Any) -> tuple[list[int], list[int] | None]:
        encoded = hf(*text) if isinstance(text, tuple) else hf(text)
        return encoded["input_ids"], encoded.get("token_type_ids")
    return encode_hf


def _activation(problem_type: str, num_labels: int):
    """The activation each engine applies for a problem type (vLLM: by `problem_type`; TEI:
    softmax, sigmoid for one label — multi-label and regression need raw scores there)."""
    if problem_type == "regression":
        return lambda x: x
    if problem_type == "multi_label_classification" or num_labels == 1:
        return lambda x: 1 / (1 + np.exp(-x))

    def softmax(x: np.ndarray) -> np.ndarray:
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    return softmax


def launch_command(plan: EnginePlan, folder: Path, clf: Any) -> str:
    """The exact command to serve the folder, and how to call it."""
    max_length = clf.meta["model"]["max_length"]
    path = shlex.quote(str(folder))
    if plan.engine == "onnx":
        return (f"kitae serve {path}   # or ONNX Runtime directly: InferenceSession('{folder}/{ONNX_FILE}'), inputs "
                "input_ids / attention_mask, outputs logits / outputs; pad on the right "
                f"({'decoders: either side' if plan.is_decoder else 'encoders count absolute positions'})")
    if plan.engine == "vllm":
        return (f"vllm serve {path} --runner pooling --max-model-len {max_length}   "
                f"# POST /classify {{\"model\": \"{path}\", \"input\": [\"...\"]}}; older vLLM: --task classify. "
                "vLLM's --api-key does not guard /classify: keep it on localhost or behind a proxy")
    raw = " (send \"raw_scores\": true and apply sigmoid / thresholds.json)" if plan.problem_type != \
        "single_label_classification" else ""
    return (f"docker run --rm -p 8080:80 -v {shlex.quote(str(folder.resolve()))}:/data "
            f"ghcr.io/huggingface/text-embeddings-inference:cpu-latest --model-id /data   "
            f"# POST /predict {{\"inputs\": \"...\"}}{raw}; send texts within {max_length} tokens")


class _OnnxGraph(torch.nn.Module):
    """What model.onnx computes: kitae's padding-safe pooling and head, then the run's outputs."""

    def __init__(self, classifier: torch.nn.Module, outputs: Activation, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.classifier, self.kind = classifier, outputs
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.classifier(input_ids, attention_mask, token_type_ids=token_type_ids).float()
        if self.kind is Activation.SOFTMAX:
            return logits, torch.softmax(logits, dim=-1)
        if self.kind is Activation.SIGMOID:
            return logits, torch.sigmoid(logits)
        if self.kind is Activation.VALUES:
            return logits, logits * self.std + self.mean
        return logits, logits


def export_onnx(model: Any, clf: Any, folder: Path) -> None:
    """Write folder/model.onnx from the merged model (dynamic batch and sequence length)."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise KitaeError("--for onnx needs the onnx extra: pip install 'kitae[onnx]'") from None
    from kitae.data.batching import collate
    from kitae.models.classifier import SequenceClassifier

    kind = clf.task_class.contract.activation
    state = clf.task.state()  # a regression task's target normalisation, used by Activation.VALUES
    mean = torch.as_tensor(np.asarray(state.get("mean", [0.0]), dtype=np.float32))
    std = torch.as_tensor(np.asarray(state.get("std", [1.0]), dtype=np.float32))
    classifier = SequenceClassifier(model, model, clf.model.pooling, clf.model.is_decoder).float().eval()
    graph = _OnnxGraph(classifier, kind, mean, std).eval()
    sample = clf.encode(sample_texts(clf, 2) * 2)
    batch = collate(sample.encoded.input_ids[:2], clf.tokenizer.pad_token_id, "right",
                    None if sample.encoded.token_type_ids is None else sample.encoded.token_type_ids[:2])
    typed = "token_type_ids" in batch
    args = (batch["input_ids"], batch["attention_mask"]) + ((batch["token_type_ids"],) if typed else ())
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if typed else [])
    rows, length = torch.export.Dim("batch", min=1), torch.export.Dim("sequence", min=2)
    shapes = {name: {0: rows, 1: length} for name in names}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, args, str(folder / ONNX_FILE), input_names=names,
                          output_names=["logits", "outputs"], dynamic_shapes=shapes, dynamo=True,
                          external_data=False, verbose=False)


def _onnx_outputs(folder: Path, texts: list[Any]) -> np.ndarray:
    """model.onnx's `outputs` for texts, through ONNX Runtime, in one right-padded batch."""
    from kitae.predictor import Classifier

    exported = Classifier(folder, device="cpu")
    inputs = exported.encode(texts)
    from kitae.data.batching import collate

    batch = collate(inputs.encoded.input_ids, exported.tokenizer.pad_token_id, "right",
                    inputs.encoded.token_type_ids)
    return exported.model.run(batch)[1]


def _trained_head(head: torch.nn.Module) -> torch.nn.Module:
    """The head as trained: PEFT wraps a trained head (modules_to_save) around the original."""
    copies = getattr(head, "modules_to_save", None)
    return next(iter(copies.values())) if copies else head


def _last_linear(module: torch.nn.Module) -> torch.nn.Linear:
    """The output layer of a head (BERT: `classifier` itself; RoBERTa: `classifier.out_proj`)."""
    if isinstance(module, torch.nn.Linear):
        return module
    linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise KitaeError(f"the classification head {type(module).__name__} has no linear layer")
    return linears[-1]


def _engine_name(engine: str) -> str:
    return {"vllm": "vLLM", "tei": "text-embeddings-inference"}.get(engine, engine)
