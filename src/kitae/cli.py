"""The `kitae` command: parse arguments, call `kitae.api`, print. No logic lives here."""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kitae.errors import KitaeError

app = typer.Typer(help="kitae (鍛え): fine-tune language models into Japanese text classifiers.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
config_app = typer.Typer(help="Check or describe configs.", no_args_is_help=True)
app.add_typer(config_app, name="config")
data_app = typer.Typer(help="Look at data before training.", no_args_is_help=True)
app.add_typer(data_app, name="data")
runs_app = typer.Typer(help="List, show and compare run directories.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")
console = Console()
errors = Console(stderr=True)

SetOption = Annotated[list[str] | None, typer.Option("--set", help="Override one key: --set training.lr=1e-4")]
TrustOption = Annotated[bool, typer.Option(
    "--trust-remote-code", help="Let the base model run code from the hub (never taken from the run directory).")]


def _user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Bad input is one clear message and exit code 2 — never a traceback."""
    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from kitae.errors import TrainingInterrupted

        try:
            return func(*args, **kwargs)
        except TrainingInterrupted as exc:
            errors.print(f"[yellow]{escape(str(exc))}[/yellow]", soft_wrap=True)
            raise typer.Exit(130) from None
        except KitaeError as exc:
            errors.print(f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
    return wrapper


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    kitae_logger = logging.getLogger("kitae")
    for old in [h for h in kitae_logger.handlers if isinstance(h, RichHandler)]:
        kitae_logger.removeHandler(old)  # a second command in one process (a notebook, tests) logs once
    kitae_logger.addHandler(RichHandler(console=errors, show_path=False, show_time=False, markup=False))
    logging.getLogger("kitae").setLevel(logging.DEBUG if verbose else logging.INFO)
    # transformers' own load reports are noise next to kitae's summary.
    logging.getLogger("transformers").setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")


@app.command()
@_user_errors
def train(
    config: Annotated[Path, typer.Argument(help="YAML run config.")],
    set_: SetOption = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run from its last checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option(
        help="Replace a kitae run already in the output directory (kept until the new run's first step).")] = False,
    report_to: Annotated[list[str] | None, typer.Option("--report-to", help="mlflow, tensorboard or wandb "
                                                        "(repeatable): as tracking.report_to.")] = None,
    verbose: Annotated[bool, typer.Option("-v", "--verbose")] = False,
    launch: Annotated[str | None, typer.Option(
        help="accelerate: run on several processes (GPUs, nodes) through `accelerate launch -m kitae train`; "
             "DDP, FSDP or DeepSpeed as accelerate's config says. training.batch_size is per device.")] = None,
    num_processes: Annotated[int | None, typer.Option(
        help="With --launch: processes in all (default: accelerate's config, else one per GPU).")] = None,
    launch_args: Annotated[str | None, typer.Option(
        help="With --launch: more `accelerate launch` arguments, one string "
             "(e.g. '--config_file fsdp.yaml --num_machines 2 --machine_rank 0 --main_process_ip 10.0.0.1').")] = None,
) -> None:
    """Train, select the best epoch on dev, evaluate on test, write the run directory."""
    if launch is not None or num_processes is not None or launch_args is not None:
        from kitae.errors import ConfigError

        if launch != "accelerate":
            raise ConfigError("--launch: the one launcher is 'accelerate' (--num-processes and --launch-args "
                              "go with it)")
        own = [str(config), *[f"--set={item}" for item in set_ or []], *(["--resume"] if resume else []),
               *(["--overwrite"] if overwrite else []), *[f"--report-to={t}" for t in report_to or []],
               *(["--verbose"] if verbose else [])]
        import subprocess

        command = accelerate_command(own, num_processes, launch_args)
        console.print(f"launching: {' '.join(command[2:])}", highlight=False, soft_wrap=True)
        raise typer.Exit(subprocess.call(command))
    from kitae.api import train as train_run

    _setup_logging(verbose)
    overrides = [*(set_ or []), *([f"tracking.report_to=[{', '.join(report_to)}]"] if report_to else [])]
    result = train_run(config, overrides=overrides, resume=resume, overwrite=overwrite)
    if int(os.environ.get("RANK", "0") or 0) != 0:
        return  # under accelerate launch, rank 0 alone reports
    _print_metrics(result.metrics, result.task)
    console.print(f"run directory: [bold]{result.run_dir}[/bold] (selected epoch {result.best_epoch})")


def accelerate_command(train_args: list[str], num_processes: int | None, launch_args: str | None) -> list[str]:
    """`accelerate launch [options] -m kitae train ARGS` (as a python -m command line).

    Without an accelerate config (`accelerate config`), a --config_file or a mode flag in
    `launch_args`, several processes mean DDP (accelerate's --multi_gpu, gloo on a CPU machine)."""
    import os
    import shlex

    from kitae.errors import ConfigError

    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        raise ConfigError("--launch: this process was itself started by a launcher; run `kitae train CONFIG` there")
    if num_processes is not None and num_processes < 1:
        raise ConfigError(f"--num-processes: at least 1 (got {num_processes})")
    extra = shlex.split(launch_args or "")
    options = [*(["--num_processes", str(num_processes)] if num_processes is not None else []), *extra]
    modes = {"--multi_gpu", "--cpu", "--tpu", "--use_fsdp", "--use_deepspeed", "--use_megatron_lm", "--config_file"}
    if (num_processes or 1) > 1 and not modes & {o.split("=")[0] for o in extra} and not _accelerate_config_exists():
        options.insert(0, "--multi_gpu")
    return [sys.executable, "-m", "accelerate.commands.launch", *options, "-m", "kitae", "train", *train_args]


def _accelerate_config_exists() -> bool:
    from accelerate.commands.config.config_args import default_config_file

    return Path(default_config_file).is_file()


@app.command()
@_user_errors
def predict(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory.")],
    input: Annotated[Path, typer.Argument(help="Data file (.jsonl, .csv, .tsv, .parquet).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output .jsonl or .csv.")],
    batch_size: Annotated[int, typer.Option(help="Texts per batch.")] = 32,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, mps.")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace the output file if it exists.")] = False,
    trust_remote_code: TrustOption = False,
) -> None:
    """Predict labels and probabilities for every row of a file (streamed: any file size)."""
    import kitae

    _setup_logging(False)
    clf = kitae.load(run_dir, device=device, batch_size=batch_size, trust_remote_code=trust_remote_code)
    count = clf.predict_file(input, output, overwrite=overwrite)
    console.print(f"wrote {count} predictions to [bold]{output}[/bold]")


@app.command()
@_user_errors
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory (with --model: a run config).")],
    labelled: Annotated[Path | None, typer.Argument(help="Labelled data file (sft runs and --model: default the "
                                                          "config's own dev and test).")] = None,
    output_dir: Annotated[Path | None, typer.Option("-o", "--output-dir", help="Default: RUN_DIR/eval-<file>.")] = None,
    model: Annotated[str | None, typer.Option(help="Evaluate this base model, untrained, with the config given "
                                                   "as RUN_DIR (sft / causal_lm): the 'before' of a run.")] = None,
    set_: SetOption = None,
    split: Annotated[list[str] | None, typer.Option(help="Without a file: which of the config's splits "
                                                         "(dev, test; default both).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Texts per batch.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, mps.")] = "auto",
    trust_remote_code: TrustOption = False,
) -> None:
    """Metrics and predictions on a labelled file (classifiers: with the confusion matrix; sft:
    generations scored by exact match, char F1, chrF). --set generation.KEY=VALUE changes how an
    sft model generates (e.g. --set generation.min_p=0.1 --set generation.temperature=1.0)."""
    import kitae

    _setup_logging(False)
    if model is not None:
        _evaluate_base(run_dir, labelled, model, output_dir, set_ or [], device, split)
        return
    loaded = kitae.load(run_dir, device=device, batch_size=batch_size, trust_remote_code=trust_remote_code)
    overrides = _generation_overrides(set_ or [])
    if loaded.generates:
        if labelled is None:
            results = loaded.evaluate_splits(_config_splits(loaded.config, split),
                                             output_dir or Path(run_dir) / "eval-splits", **overrides)
            _print_metrics(results, loaded.config.task)
            return
        metrics = loaded.evaluate_file(labelled, output_dir, **overrides)
        _print_metrics({labelled.name: metrics}, loaded.config.task)
        return
    if labelled is None:
        raise KitaeError("give the labelled file to evaluate on")
    if overrides:
        raise KitaeError("--set generation.* is for sft and causal_lm runs")
    metrics = loaded.evaluate_file(labelled, output_dir)
    _print_metrics({labelled.name: metrics}, loaded.meta["task"])


def _generation_overrides(sets: list[str]) -> dict[str, Any]:
    """--set generation.KEY=VALUE pairs as keyword arguments (the only keys evaluation may change)."""
    from kitae.config import apply_override

    raw: dict[str, Any] = {}
    for item in sets:
        if not item.partition("=")[0].strip().startswith("generation."):
            raise KitaeError(f"--set {item!r}: evaluating a trained run can change only generation.* keys")
        apply_override(raw, item)
    return raw.get("generation", {})


def _config_splits(config: Any, names: list[str] | None) -> dict[str, Any]:
    """The examples of a config's dev / test splits (prepared exactly as training did)."""
    from kitae.data.prepare import prepare_data

    wanted = names or ["dev", "test"]
    unknown = [n for n in wanted if n not in ("train", "dev", "test")]
    if unknown:
        raise KitaeError(f"--split {unknown[0]}: expected dev, test or train")
    _, examples = prepare_data(config)
    missing = [n for n in wanted if n not in examples]
    if missing:
        raise KitaeError(f"--split {missing[0]}: the config has no {missing[0]} split")
    return {n: examples[n] for n in wanted}


def _evaluate_base(config_path: Path, labelled: Path | None, model: str, output_dir: Path | None,
                   sets: list[str], device: str, split: list[str] | None = None) -> None:
    from kitae.config import load_config
    from kitae.generator import Generator

    config = load_config(config_path, [*sets, f"model.name={model}"])
    generator = Generator.from_base(config, device=None if device == "auto" else device)
    out = output_dir or Path(f"{config.output}-base")
    if labelled is not None:
        metrics = generator.evaluate_file(labelled, out)
        _print_metrics({labelled.name: metrics}, config.task)
    else:
        results = generator.evaluate_splits(_config_splits(config, split), out)
        _print_metrics(results, config.task)
    console.print(f"evaluation of the untrained {model}: [bold]{out}[/bold]")


@app.command()
@_user_errors
def generate(
    run_dir: Annotated[Path, typer.Argument(help="A finished sft or causal_lm run directory.")],
    input: Annotated[Path | None, typer.Argument(help="A file of prompts: rows with the run's columns "
                                                      "(.jsonl, .csv...).")] = None,
    prompt: Annotated[list[str] | None, typer.Option("--prompt", "-p", help="A prompt (repeatable).")] = None,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Output .jsonl or .csv (with a file).")] = None,
    temperature: Annotated[float | None, typer.Option(help="0 = greedy.")] = None,
    top_p: Annotated[float | None, typer.Option("--top-p")] = None,
    top_k: Annotated[int | None, typer.Option("--top-k")] = None,
    min_p: Annotated[float | None, typer.Option("--min-p")] = None,
    repetition_penalty: Annotated[float | None, typer.Option("--repetition-penalty")] = None,
    max_new_tokens: Annotated[int | None, typer.Option("--max-new-tokens")] = None,
    stop: Annotated[list[str] | None, typer.Option("--stop", help="A stop string (repeatable).")] = None,
    seed: Annotated[int | None, typer.Option(help="Sampling seed: the same seed gives the same text.")] = None,
    raw: Annotated[bool, typer.Option(help="Feed the prompt as it is, not in the run's prompt format.")] = False,
    batch_size: Annotated[int, typer.Option(help="Prompts per batch.")] = 8,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, mps.")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace the output file if it exists.")] = False,
    trust_remote_code: TrustOption = False,
) -> None:
    """Generate with an sft / causal_lm run: --prompt TEXT, or a file of prompts with -o. Settings
    default to the run's generation: section."""
    import kitae
    from kitae.tasks.contract import Capability

    _setup_logging(False)
    if (input is None) == (not prompt):
        raise KitaeError("give --prompt TEXT or a file of prompts (with -o), not both")
    if input is not None and output is None:
        raise KitaeError("a file of prompts needs -o OUTPUT.jsonl (or .csv)")
    loaded = kitae.load(run_dir, device=device, batch_size=batch_size, trust_remote_code=trust_remote_code)
    loaded.require(Capability.GENERATE)
    settings = {"temperature": temperature, "top_p": top_p, "top_k": top_k, "min_p": min_p,
                "repetition_penalty": repetition_penalty, "max_new_tokens": max_new_tokens,
                "stop": stop or None, "seed": seed}
    if prompt:
        for text in loaded.generate(prompt, raw=raw, **settings):
            console.print(text, highlight=False, markup=False)
        return
    assert input is not None and output is not None
    count = loaded.generate_file(input, output, overwrite=overwrite, raw=raw, **settings)
    console.print(f"wrote {count} generations to [bold]{output}[/bold]")


@app.command()
@_user_errors
def export(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory.")],
    out_dir: Annotated[Path, typer.Argument(help="Folder to write.")],
    merge: Annotated[bool, typer.Option(help="Fold LoRA into the weights: loads in plain transformers.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier kitae export in that folder.")] = False,
    for_: Annotated[str | None, typer.Option("--for", help="vllm or tei: a merged folder that engine loads, "
                                                            "with a parity check and its launch command.")] = None,
    trust_remote_code: TrustOption = False,
) -> None:
    """A standalone Hugging Face model folder (merged, or the adapter with its head), or one for vLLM / TEI."""
    from kitae.export import export_run

    _setup_logging(False)
    out = export_run(run_dir, out_dir, merge=merge, overwrite=overwrite, trust_remote_code=trust_remote_code,
                     engine=for_)
    console.print(f"exported to [bold]{out}[/bold]")
    if for_ is not None:
        parity = json.loads((out / "parity.json").read_text(encoding="utf-8"))
        console.print(f"parity with {for_}: max |difference| {parity['max_abs_difference']:.2e} on "
                      f"{parity['rows']} rows of the run's data ({parity['labels_agree']} decisions agree)")
        console.print(f"serve it with:\n  {parity['launch']}", highlight=False, markup=False)


@app.command()
@_user_errors
def serve(
    run_dir: Annotated[Path, typer.Argument(help="A finished classification run directory, or a kitae export of one.")],
    host: Annotated[str, typer.Option(help="Address to bind; other than localhost, set a token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    token_file: Annotated[Path | None, typer.Option(help="File holding the bearer token every inference "
                                                         "route then requires.")] = None,
    max_batch_tokens: Annotated[int | None, typer.Option(help="Padded tokens per forward pass (default: the "
                                                               "run's batch size x max_length).")] = None,
    max_queue: Annotated[int, typer.Option(help="Texts that may wait; more is answered 429.")] = 4096,
    max_texts: Annotated[int, typer.Option(help="Texts per request.")] = 256,
    max_text_chars: Annotated[int, typer.Option(help="Characters per text (longer: 413; texts over "
                                                     "max_length tokens are truncated as in training).")] = 20_000,
    max_payload_bytes: Annotated[int, typer.Option(help="Bytes per request body.")] = 1_000_000,
    header_timeout: Annotated[float, typer.Option(help="Seconds a request's headers may take (then 408).")] = 10.0,
    body_timeout: Annotated[float, typer.Option(help="Seconds its body may take after them (then 408).")] = 30.0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, mps.")] = "auto",
    trust_remote_code: TrustOption = False,
) -> None:
    """Serve a classifier over HTTP: POST /predict, GET /info, /metrics (Prometheus), /health.
    Beyond localhost it needs --token-file."""
    from kitae.serving import ServeLimits
    from kitae.serving import serve as run_server

    _setup_logging(False)
    limits = ServeLimits(max_payload_bytes=max_payload_bytes, max_texts_per_request=max_texts,
                         max_text_chars=max_text_chars, max_queue_texts=max_queue, max_batch_tokens=max_batch_tokens,
                         header_timeout_s=header_timeout, body_timeout_s=body_timeout)
    run_server(run_dir, host=host, port=port, token_file=token_file, limits=limits, device=device,
               trust_remote_code=trust_remote_code)


@app.command()
def ui(
    runs_dir: Annotated[Path, typer.Argument(help="Folder the page finds runs in and creates them in.")] = Path("runs"),
    host: Annotated[str, typer.Option(help="Address to bind (default: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 7860,
    token_file: Annotated[Path | None, typer.Option(help="File holding the token (default: a new one, "
                                                         "printed once in the login address).")] = None,
    no_token: Annotated[bool, typer.Option("--no-token", help="No login (localhost only): any user or "
                                                              "process on this machine can then use the page.")] = False,
    data_root: Annotated[list[Path] | None, typer.Option("--data-root", help="Another folder the page may read "
                                                         "data and models from (repeatable; default: the "
                                                         "current folder and RUNS_DIR).")] = None,
    allow_remote_code: Annotated[bool, typer.Option("--allow-remote-code", help="Let configs from the page turn "
                                                    "on model.trust_remote_code.")] = False,
) -> None:
    """A local web page to set up, launch, watch, compare and try runs (training keeps running
    when the page closes). Like a Jupyter server it needs its token, even on localhost."""
    from kitae.ui import run_ui

    # Neither _setup_logging nor _user_errors: they import transformers and torch, seconds the
    # page need not wait for (the training processes it starts import them).
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        run_ui(runs_dir, host=host, port=port, token_file=token_file, no_token=no_token,
               data_roots=data_root or [], allow_remote_code=allow_remote_code)
    except KitaeError as exc:
        errors.print(f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


@app.command()
@_user_errors
def push(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory.")],
    repo_id: Annotated[str, typer.Option("--repo-id", help="user-or-org/name on the Hugging Face hub.")],
    private: Annotated[bool, typer.Option(help="Create the repo private.")] = False,
    merge: Annotated[bool | None, typer.Option(help="Merged weights (default when possible) or the adapter.")] = None,
    trust_remote_code: TrustOption = False,
) -> None:
    """Export the run and upload it with its model card to the Hugging Face hub."""
    from kitae.hub import push_run

    _setup_logging(False)
    url = push_run(run_dir, repo_id, private=private, merge=merge, trust_remote_code=trust_remote_code)
    console.print(f"pushed to [bold]{url}[/bold]")


@config_app.command("check")
@_user_errors
def config_check(config: Annotated[Path, typer.Argument(help="YAML run config.")], set_: SetOption = None) -> None:
    """Validate a config without training; print it resolved (every default filled in)."""
    from kitae.config import config_to_dict, dump_yaml, load_config

    resolved = load_config(config, set_ or [])
    console.print(dump_yaml(config_to_dict(resolved)), highlight=False, markup=False)
    console.print(f"[green]ok[/green]: {config} is valid")


@config_app.command("schema")
@_user_errors
def config_schema(
    task: Annotated[str | None, typer.Option(help="One task's keys (single_label, multi_label, pair, regression, "
                                             "reward, sft, causal_lm). Default: every task's, as one schema "
                                             "whose `task` picks the keys.")] = None,
) -> None:
    """Print the config's JSON schema (every key, type, default and description)."""
    from kitae.config import task_schema

    sys.stdout.write(json.dumps(task_schema(task), ensure_ascii=False, indent=2) + "\n")


@data_app.command("analyze")
@_user_errors
def data_analyze(
    source: Annotated[Path, typer.Argument(help="A YAML run config, or a data file (.jsonl/.csv/...).")],
    output_dir: Annotated[Path | None, typer.Option("-o", "--output-dir", help="Default: analysis/<name>.")] = None,
    set_: SetOption = None,
    task: Annotated[str, typer.Option(help="For a data file: single_label, multi_label, pair, regression or reward.")] = "single_label",
    text_field: Annotated[str, typer.Option(help="For a data file: the text column.")] = "text",
    label_field: Annotated[str, typer.Option(help="For a data file: the label (or label-list) column.")] = "label",
    model: Annotated[str | None, typer.Option(help="Tokenizer to count tokens with (default: the config's).")] = None,
) -> None:
    """Label rates, labels per example, co-occurrence (regression: target statistics) and
    token lengths, per split."""
    from kitae.config import load_config
    from kitae.data.analysis import analyze, file_config

    _setup_logging(False)
    if source.suffix.lower() in (".yaml", ".yml"):
        config = load_config(source, set_ or [])
    else:
        config = file_config(source, task, text_field, label_field, model)
    if model:
        config.model.name = model
    out = output_dir or Path("analysis") / source.stem
    report = analyze(config, out, tokenize=bool(model) or source.suffix.lower() in (".yaml", ".yml"))
    if (out / "label_rates.csv").is_file():
        _print_label_rates(out / "label_rates.csv", report)
    for split, entry in report["splits"].items():
        for label, stats in entry.get("targets", {}).items():
            console.print(f"{label} ({split}): mean {stats['mean']}, std {stats['std']}, "
                          f"range {stats['min']} to {stats['max']}")
    lengths = Table(title="lengths")
    lengths.add_column("split")
    for column in ("examples", "chars p50", "chars p95", "tokens p50", "tokens p95", "tokens max", "over max_length"):
        lengths.add_column(column, justify="right")
    for split, entry in report["splits"].items():
        tokens = entry.get("tokens", {})
        lengths.add_row(split, str(entry["examples"]), str(entry["characters"]["p50"]), str(entry["characters"]["p95"]),
                        str(tokens.get("p50", "")), str(tokens.get("p95", "")), str(tokens.get("max", "")),
                        str(tokens.get("over_max_length", "")))
    console.print(lengths)
    for split, entry in report["splits"].items():
        if "label_count_histogram" in entry:
            console.print(f"labels per example ({split}): {entry['label_count_histogram']}")
    train = report["splits"].get("train", {})
    if "cooccurrence" in train:
        cooc = Table(title="co-occurrence in train (diagonal: positives)")
        cooc.add_column("")
        for label in report["labels"]:
            cooc.add_column(label, justify="right")
        for label, row in zip(report["labels"], train["cooccurrence"]):
            cooc.add_row(label, *map(str, row))
        console.print(cooc)
    console.print(f"report: [bold]{out}[/bold] ({', '.join(sorted(p.name for p in out.iterdir()))})")


@data_app.command("filter")
@_user_errors
def data_filter(
    config: Annotated[Path, typer.Argument(help="A YAML run config (task sft): its data.train is filtered.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The kept rows (.jsonl, .csv or .tsv); "
                                         "<stem>.report.json and <stem>.dropped.jsonl are written beside it.")],
    input: Annotated[Path | None, typer.Option("--input", help="Filter this file instead of data.train "
                                               "(read with the config's columns).")] = None,
    set_: SetOption = None,
    exact_dup: Annotated[bool, typer.Option("--exact-dup/--no-exact-dup", help="Drop rows whose text "
                                            "(NFKC, whitespace collapsed) equals an earlier kept row's.")] = True,
    near_dup: Annotated[bool, typer.Option("--near-dup/--no-near-dup", help="Drop near duplicates "
                                           "(character 5-gram MinHash + LSH, confirmed by Jaccard).")] = True,
    near_dup_threshold: Annotated[float, typer.Option(help="Jaccard similarity of a near duplicate.")] = 0.85,
    min_chars: Annotated[int, typer.Option(help="Drop responses shorter than this (characters).")] = 1,
    max_chars: Annotated[int | None, typer.Option(help="Drop responses longer than this (characters).")] = None,
    max_prompt_chars: Annotated[int | None, typer.Option(help="Drop prompts longer than this (characters).")] = None,
    min_japanese: Annotated[float, typer.Option(help="Drop rows whose share of Japanese characters is below "
                                                     "this, e.g. 0.3 (0: off).")] = 0.0,
    score_with: Annotated[Path | None, typer.Option(help="A trained kitae classifier run that scores the "
                                                         "remaining rows (with --keep).")] = None,
    keep: Annotated[list[str] | None, typer.Option(help="Keep rows whose prediction satisfies this: "
                                                        "label==NAME, label!=NAME, p(NAME)>=0.7 (also >, <=, <); "
                                                        "repeatable, all must hold.")] = None,
    batch_size: Annotated[int, typer.Option(help="Texts per classifier batch.")] = 32,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, mps (the classifier's).")] = "auto",
    strict: Annotated[bool, typer.Option(help="A row that cannot be read is an error, not a dropped row.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace the output, report and dropped files.")] = False,
    trust_remote_code: TrustOption = False,
    verbose: Annotated[bool, typer.Option("-v", "--verbose")] = False,
) -> None:
    """Select SFT data: drop exact and near duplicates, too short / long responses, non-Japanese
    rows and rows a trained classifier rejects; write the kept rows, a report and the dropped rows."""
    from kitae.config import load_config
    from kitae.data.filtering import FilterOptions, filter_file

    _setup_logging(verbose)
    options = FilterOptions(exact_duplicates=exact_dup, near_duplicates=near_dup,
                            near_dup_threshold=near_dup_threshold, min_chars=min_chars, max_chars=max_chars,
                            max_prompt_chars=max_prompt_chars, min_japanese=min_japanese, score_with=score_with,
                            keep=tuple(keep or ()), batch_size=batch_size, device=device,
                            trust_remote_code=trust_remote_code, strict=strict)
    report = filter_file(load_config(config, set_ or []), output, input=input, options=options,
                         overwrite=overwrite, progress=True)
    table = Table(title=f"filter {report.input.name}")
    table.add_column("rows")
    table.add_column("count", justify="right")
    table.add_column("share", justify="right")
    share = (lambda count: f"{count / report.rows:.1%}") if report.rows else (lambda count: "")
    table.add_row("kept", str(report.kept), share(report.kept))
    for reason, count in report.reasons.items():
        table.add_row(f"dropped: {reason}", str(count), share(count))
    table.add_row("total", str(report.rows), share(report.rows))
    console.print(table)
    if report.classifier is not None:
        scored = report.classifier["scored"]
        predicted = ", ".join(f"{label} {count}" for label, count in report.classifier["predicted"].items())
        console.print(f"classifier {escape(report.classifier['run'])}: scored {scored['row']} rows on their columns, "
                      f"{scored['response']} on the response; predicted: {escape(predicted) or '-'}", highlight=False)
    console.print(f"kept rows: [bold]{escape(str(report.output))}[/bold]; report: {escape(str(report.report_file))}; "
                  f"dropped rows: {escape(str(report.dropped_file))}", highlight=False)


def _print_label_rates(path: Path, report: dict[str, Any]) -> None:
    import csv

    rates = Table(title=f"label rates ({report['task']})")
    rates.add_column("label")
    for split in report["splits"]:
        rates.add_column(split, justify="right")
    rows = list(csv.DictReader(path.open(encoding="utf-8")))
    for label in report["labels"]:
        cells = []
        for split in report["splits"]:
            row = next(r for r in rows if r["split"] == split and r["label"] == label)
            count = row.get("yes") or row.get("count")
            cells.append(f"{count} ({float(row['rate']):.1%})")
        rates.add_row(label, *cells)
    console.print(rates)


def _print_metrics(metrics: dict[str, dict[str, Any]], task: str) -> None:
    from kitae.tasks import get_task_class

    names = [name for name in (*get_task_class(task).report_metrics, "n")
             if any(name in values for values in metrics.values())]
    table = Table(title="metrics (selected model)")
    table.add_column("metric")
    for split in metrics:
        table.add_column(split, justify="right")
    for name in names:
        cells = []
        for values in metrics.values():
            value = values.get(name)
            cells.append("" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value)))
        table.add_row(name, *cells)
    console.print(table)


def _headline(task: str) -> list[str]:
    from kitae.tasks import TASKS, get_task_class

    return list(get_task_class(task).report_metrics[:2]) if task in TASKS else []


@app.command()
@_user_errors
def sweep(
    sweep_file: Annotated[Path, typer.Argument(help="A sweep YAML (base:, method:, space:, seeds:, output:).")],
    worker: Annotated[bool, typer.Option(help="Join the sweep's Optuna study and run trials from it (start "
                                               "several, on one machine or many).")] = False,
    report: Annotated[bool, typer.Option(help="Run nothing: select and write the results from the trials "
                                               "so far.")] = False,
    verbose: Annotated[bool, typer.Option("-v", "--verbose")] = False,
) -> None:
    """Hyperparameter sweep: every configuration x seed an ordinary run, selected on dev (mean over
    seeds), the selected one evaluated on test. Run it again to resume."""
    from kitae.sweep import describe, run_sweep

    _setup_logging(verbose)
    results, selected = run_sweep(sweep_file, worker=worker, report_only=report, progress=None)
    if not results:
        console.print("trials of this sweep are still running in other workers; the last one writes the results")
        return
    from kitae.sweep import load_sweep

    output = load_sweep(sweep_file).output
    console.print((output / "sweep_results.md").read_text(encoding="utf-8"), markup=False, highlight=False)
    if selected is not None:
        console.print(f"selected: configuration {selected.number} ({describe(selected.point)}); results in "
                      f"[bold]{output}[/bold]")


@runs_app.command("list")
@_user_errors
def runs_list(
    root: Annotated[Path, typer.Argument(help="Folder to search for run directories.")] = Path("runs"),
    filter_: Annotated[list[str] | None, typer.Option("--filter", help="KEY=VALUE, KEY!=VALUE, KEY>=N (repeatable): "
                                                       "task=sft, status=finished, dev.macro_f1>=0.8.")] = None,
    sort: Annotated[str | None, typer.Option(help="Column to sort on: a metric (dev.macro_f1), a setting "
                                                 "(training.lr), train_seconds, name...")] = None,
    desc: Annotated[bool, typer.Option(help="Sort descending.")] = False,
    columns: Annotated[list[str] | None, typer.Option("--column", help="Extra column (repeatable).")] = None,
    format_: Annotated[str, typer.Option("--format", help="table, csv, json (one object per run) or markdown.")]
    = "table",
) -> None:
    """A table of the runs under a folder: task, model, adapter, key settings, dev/test metrics,
    runtime, status."""
    from kitae.catalog import list_runs, run_record, runs_table

    if format_ not in ("table", "csv", "json", "markdown"):
        raise KitaeError(f"--format {format_}: table, csv, json or markdown")
    runs = list_runs(root, filter_ or [], sort, desc)
    if format_ == "json":
        sys.stdout.write(json.dumps([run_record(run, root, columns or []) for run in runs], ensure_ascii=False,
                                    indent=2) + "\n")
        return
    if not runs:
        console.print(f"no runs under {root}")
        return
    headers, rows = runs_table(runs, root, [_headline(run.task)[:1] for run in runs], columns or [])
    cells = [[_cell(value) for value in row] for row in rows]
    if format_ == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerows([headers, *cells])
    elif format_ == "markdown":
        sys.stdout.write("\n".join("| " + " | ".join(c.replace("|", "\\|") for c in line) + " |"
                                   for line in [headers, ["---"] * len(headers), *cells]) + "\n")
    else:
        table = Table(title=f"runs under {root} ({len(runs)})")
        for name in headers:
            table.add_column(name.removeprefix("training.").removeprefix("adapter."), no_wrap=name == "run",
                             justify="right" if "." in name or name == "train s" else "left")
        for line in cells:
            table.add_row(*line)
        # Piped or redirected, rich would fit the table to 80 columns and cut every cell to "…".
        (console if console.is_terminal else Console(width=100_000)).print(table)


@runs_app.command("show")
@_user_errors
def runs_show(run: Annotated[Path, typer.Argument(help="A run directory.")]) -> None:
    """Everything a run is and scored: status, timings, settings, metrics of every split."""
    from kitae.catalog import summarize

    summary = summarize(run)
    console.print(f"[bold]{summary.path}[/bold]: {summary.status}, task {summary.task}, {summary.model}, "
                  f"adapter {summary.adapter}", highlight=False)
    for key in ("started", "wall_seconds"):
        if key in summary.info:
            console.print(f"{key}: {summary.info[key]}")
    for key in ("selected_epoch", "epochs_run", "stop_reason", "train_seconds", "peak_rss_gib", "test"):
        if summary.summary.get(key) is not None:
            console.print(f"{key}: {summary.summary[key]}")
    if summary.metrics:
        _print_metrics(summary.metrics, summary.task)
    settings = Table(title="settings")
    settings.add_column("key")
    settings.add_column("value")
    for key, value in summary.config.items():
        settings.add_row(key, _cell(value))
    console.print(settings)


@runs_app.command("compare")
@_user_errors
def runs_compare(runs: Annotated[list[Path], typer.Argument(help="Two or more run directories.")]) -> None:
    """The settings that differ between runs, and their metrics side by side."""
    from kitae.catalog import config_differences, summarize

    summaries = [summarize(path) for path in runs]
    names = [s.name if [t.name for t in summaries].count(s.name) == 1 else str(s.path) for s in summaries]
    differences = Table(title="settings that differ")
    differences.add_column("key")
    for name in names:
        differences.add_column(name)
    for key, values in config_differences(summaries).items():
        differences.add_row(key, *map(_cell, values))
    console.print(differences)
    metrics = Table(title="metrics (selected model)")
    metrics.add_column("metric")
    for name in names:
        metrics.add_column(name, justify="right")
    keys = list(dict.fromkeys(f"{split}.{m}" for s in summaries for split, values in s.metrics.items()
                              for m in values))
    for key in keys:
        metrics.add_row(key, *(_cell(s.value(key)) for s in summaries))
    metrics.add_row("train_seconds", *(_cell(s.value("train_seconds")) for s in summaries))
    metrics.add_row("status", *(s.status for s in summaries))
    console.print(metrics)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.4f}".rstrip("0").rstrip(".")
    return str(value)


if __name__ == "__main__":
    app()
