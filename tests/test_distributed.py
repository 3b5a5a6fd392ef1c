"""Two processes (DDP over gloo, on CPU) against one: the same global batches give the same loss
curve and weights; every dev / test example is predicted exactly once when the splits do not
divide by the world size; only rank 0 writes; a 2-process checkpoint resumes in 1 process.

The runs are launched as users launch them: `kitae train CONFIG --launch accelerate
--num-processes 2` (which re-executes `accelerate launch -m kitae train`), and for the
interrupted run a small script under `accelerate launch` that passes a callback to kitae.train.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import build_tiny_model, separable_rows, tiny_config, write_jsonl
from safetensors.numpy import load_file

import kitae
from kitae.cli import accelerate_command
from kitae.config import config_from_dict
from kitae.training.callbacks import Callback
from kitae.training.loop import TrainingInterrupted

SRC = Path(__file__).resolve().parents[1] / "src"
# 41 train rows: global batches of 8, the last one a single example (rank 1 gets an empty slice);
# dev 11 and test 7 rows do not divide by 2 either.
SIZES = {"train": 41, "dev": 11, "test": 7}
TRAINING = {"epochs": 2, "batch_size": 8, "lr": 5e-3, "select_metric": "loss", "log_every_steps": 1}


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("distributed")
    model = build_tiny_model("llama", root / "llama")
    files = {}
    for seed, (name, size) in enumerate(SIZES.items()):
        rows = separable_rows(size // 3 + 1, seed + 11)[:size]
        files[name] = write_jsonl(root / f"{name}.jsonl", rows)
    return {"root": root, "model": model, "files": files}


def _config(setup: dict, output: Path, **training) -> dict:
    # No dropout: ranks draw from their own RNG streams, so dropout would differ from one process.
    cfg = tiny_config(setup["model"], setup["files"], output, training={**TRAINING, **training})
    cfg["adapter"]["dropout"] = 0.0
    return cfg


def _env(tmp: Path) -> dict[str, str]:
    # OMP_NUM_THREADS=1 must reach both children (a shared 2-core machine); HF_HOME keeps any
    # user accelerate config away, so two processes mean DDP.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1",
            "HF_HOME": str(tmp / "hf_home"), "TOKENIZERS_PARALLELISM": "false"}


def _history(run_dir: Path) -> list[dict]:
    return list(csv.DictReader((run_dir / "history.csv").open(encoding="utf-8")))


def _weights(run_dir: Path) -> dict[str, np.ndarray]:
    return load_file(str(run_dir / "model" / "adapter_model.safetensors"))


def _same_training(one: Path, two: Path, rtol: float = 1e-4) -> None:
    for row1, row2 in zip(_history(one), _history(two), strict=True):
        for key in ("train_loss", "dev_loss", "dev_accuracy"):
            assert float(row2[key]) == pytest.approx(float(row1[key]), rel=rtol, abs=1e-6), key
    w1, w2 = _weights(one), _weights(two)
    assert w1.keys() == w2.keys()
    for name in w1:
        np.testing.assert_allclose(w2[name], w1[name], rtol=1e-3, atol=1e-5, err_msg=name)


@pytest.fixture(scope="module")
def one_process(setup) -> Path:
    out = setup["root"] / "one"
    kitae.train(config_from_dict(_config(setup, out)), progress=False)
    return out


@pytest.fixture(scope="module")
def two_processes(setup) -> tuple[Path, subprocess.CompletedProcess]:
    out = setup["root"] / "two"
    cfg_file = setup["root"] / "two.yaml"
    cfg_file.write_text(yaml.safe_dump(_config(setup, out, batch_size=4), allow_unicode=True), encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "kitae", "train", str(cfg_file), "--launch", "accelerate",
                           "--num-processes", "2"], env=_env(setup["root"]), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


def test_two_processes_train_like_one_with_the_same_global_batch(one_process, two_processes):
    two, done = two_processes
    _same_training(one_process, two)
    summary = json.loads((two / "metrics.json").read_text(encoding="utf-8"))["summary"]
    assert (summary["effective_batch_size"], summary["world_size"]) == (8, 2)
    assert json.loads((two / "run.json").read_text(encoding="utf-8"))["world_size"] == 2
    # The effective batch size is printed (the log goes to stderr).
    printed = " ".join(done.stderr.split())  # rich wraps the console lines
    assert "effective batch size 8: batch_size 4 per device x grad_accum 1 x 2 processes" in printed
    assert done.stdout.count("metrics (selected model)") == 1  # rank 0 alone reports


def test_every_example_is_predicted_once_and_only_rank_0_writes(setup, one_process, two_processes):
    two, done = two_processes
    for split in ("dev", "test"):
        ids = [json.loads(line)["id"] for line in (two / f"predictions_{split}.jsonl").open(encoding="utf-8")]
        assert sorted(ids) == sorted(json.loads(line)["id"] for line in setup["files"][split].open(encoding="utf-8"))
        expected = json.loads((one_process / "metrics.json").read_text(encoding="utf-8"))[split]
        got = json.loads((two / "metrics.json").read_text(encoding="utf-8"))[split]
        assert got["confusion_matrix"] == expected["confusion_matrix"]
        assert sum(map(sum, got["confusion_matrix"])) == SIZES[split]
    log = (two / "train.log").read_text(encoding="utf-8").splitlines()
    assert sum("effective batch size" in line for line in log) == 1
    assert sum("epoch 2: train_loss" in line for line in log) == 1
    assert len([line for line in log if "training: " in line]) == 1
    assert [p.name for p in two.glob("*.log")] == ["train.log"]
    assert not (two / "checkpoints").exists()


RUNNER = textwrap.dedent("""
    # runner.py CONFIG STEP [--fsdp] [--resume]: SIGTERM to rank 0 at update STEP (0: never).
    import os, signal, sys
    import yaml
    import kitae
    from kitae.config import config_from_dict
    from kitae.training.callbacks import Callback

    if "--fsdp" in sys.argv:
        # FSDP 2 on CPU: accelerate turns FSDP on only on accelerators, so it is forced here, on
        # the state accelerate reads (AcceleratorState() re-reads PartialState's type).
        import accelerate
        from accelerate.state import PartialState
        from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

        init = accelerate.Accelerator.__init__

        def fsdp_init(self, *args, **kwargs):
            init(self, *args, **kwargs)
            self.state.fsdp_plugin = FullyShardedDataParallelPlugin(
                fsdp_version=2, auto_wrap_policy="transformer_based_wrap", reshard_after_forward=True)
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP
            self.state.distributed_type = DistributedType.FSDP

        accelerate.Accelerator.__init__ = fsdp_init

    class SignalAtStep(Callback):  # runs on rank 0 only: the other rank learns of it at the step's end
        def on_step_end(self, step):
            if step["global_step"] == int(sys.argv[2]) and step["boundary"]:
                os.kill(os.getpid(), signal.SIGTERM)

    try:
        kitae.train(config_from_dict(yaml.safe_load(open(sys.argv[1]))), progress=False, callbacks=[SignalAtStep()],
                    resume="--resume" in sys.argv)
    except kitae.api.KitaeError as exc:
        sys.exit(str(exc))
    except Exception as exc:
        if type(exc).__name__ == "TrainingInterrupted":
            sys.exit(130)
        raise
""")


def test_a_two_process_checkpoint_resumes_in_one_process(setup, one_process):
    out = setup["root"] / "interrupted"
    cfg = _config(setup, out, batch_size=4)
    cfg_file = setup["root"] / "interrupted.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    runner = setup["root"] / "runner.py"
    runner.write_text(RUNNER, encoding="utf-8")
    # Stopped mid-epoch 2 (6 global batches per epoch): at update 8, on a SIGTERM to rank 0 alone.
    command = accelerate_command([], 2, None)
    command = [*command[:command.index("-m", 3)], str(runner), str(cfg_file), "8"]
    done = subprocess.run(command, env=_env(setup["root"]), capture_output=True, text=True, timeout=300)
    assert done.returncode != 0, done.stderr[-3000:]
    assert "interrupted: checkpoint saved at epoch 2, batch 2" in (out / "train.log").read_text(encoding="utf-8")
    loop = json.loads(next((out / "checkpoints").glob("last-*/loop.json")).read_text(encoding="utf-8"))
    assert (loop["epoch"], loop["batches_done"], loop["global_step"]) == (1, 2, 8)

    # Resumed in this one process with the same config: the run keeps its global batches of
    # 2 x 4 (this process takes all 8), so it ends as the uninterrupted 1-process run does.
    resumed = kitae.train(config_from_dict(cfg), resume=True, progress=False)
    _same_training(one_process, out)
    log = (out / "train.log").read_text(encoding="utf-8")
    assert "the run started on 2 processes and resumes on 1: its global batches of 8 are kept" in log
    assert "the checkpoint was written by 2 processes, this run has 1" in log
    summary = json.loads((out / "metrics.json").read_text(encoding="utf-8"))["summary"]
    assert (summary["effective_batch_size"], summary["world_size"], resumed.best_epoch) == (8, 1, 2)


def _launch_runner(setup: dict, cfg: dict, name: str, *args: str) -> subprocess.CompletedProcess:
    cfg_file = setup["root"] / f"{name}.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    runner = setup["root"] / "runner.py"
    runner.write_text(RUNNER, encoding="utf-8")
    command = accelerate_command([], 2, None)
    command = [*command[:command.index("-m", 3)], str(runner), str(cfg_file), *args]
    return subprocess.run(command, env=_env(setup["root"]), capture_output=True, text=True, timeout=300)


def test_a_one_process_checkpoint_resumes_under_fsdp_and_ends_as_one_process(setup, one_process):
    """FSDP 2 (parameters and optimizer state sharded over 2 ranks, on CPU): a 1-process run
    interrupted at update 3 resumes under FSDP (weights, and the optimizer state loaded into the
    shards) and finishes there — epoch-end checkpoints of the gathered full weights and optimizer
    state, the best epoch's weights loaded back into the shards, evaluation with sharded
    parameters, the adapter saved from the gathered weights. It ends as the uninterrupted
    1-process run does (with the optimizer state left out of the shards, train_loss is 1.1202
    instead of 1.1155 in epoch 1 and this fails)."""
    out = setup["root"] / "one_then_fsdp"
    cfg = _config(setup, out)

    class SignalAtStep(Callback):
        def on_step_end(self, step: dict) -> None:
            if step["global_step"] == 3 and step["boundary"]:
                os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted):
        kitae.train(config_from_dict(cfg), progress=False, callbacks=[SignalAtStep()])
    done = _launch_runner(setup, cfg, "one_then_fsdp", "0", "--fsdp", "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    log = (out / "train.log").read_text(encoding="utf-8")
    assert "resumed from" in log and "the run started on 1 processes and resumes on 2" in log
    _same_training(one_process, out)  # also reads the adapter rank 0 saved from the gathered weights
    got, expected = (json.loads((run / "metrics.json").read_text(encoding="utf-8")) for run in (out, one_process))
    for split in ("dev", "test"):
        assert got[split]["confusion_matrix"] == expected[split]["confusion_matrix"]
        assert got[split]["loss"] == pytest.approx(expected[split]["loss"], rel=1e-6)


def test_accelerate_command_line():
    command = accelerate_command(["c.yaml", "--resume"], 2, "--config_file fsdp.yaml --num_machines 2")
    assert command[1:] == ["-m", "accelerate.commands.launch", "--num_processes", "2", "--config_file", "fsdp.yaml",
                           "--num_machines", "2", "-m", "kitae", "train", "c.yaml", "--resume"]


@pytest.mark.parametrize("balance", [{}, {"class_weights": "balanced"}, {"loss": "focal"},
                                     {"class_weights": "balanced", "loss": "focal"}])
def test_loss_sums_add_up_to_the_batch_mean(setup, balance):
    """Split a batch in two: the summed parts over the summed weights are the whole batch's mean
    (class-weighted and focal means included), which is what ranks add up."""
    import torch

    from kitae.tasks import get_task_class

    cfg = config_from_dict({**_config(setup, setup["root"] / "unused"), "balance": balance})
    task = get_task_class(cfg.task)(cfg, ["a", "b", "c"])
    task.fit_train([0, 0, 0, 1, 2, 2])
    logits, targets = torch.randn(6, 3, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 0, 1, 2, 2, 0])
    parts = [task.loss_sum(logits[:4], targets[:4]), task.loss_sum(logits[4:], targets[4:])]
    total, weight = (sum(p[i] for p in parts) for i in (0, 1))
    assert float(total / weight) == pytest.approx(float(task.loss(logits, targets)), rel=1e-6)


# --- engine selection (DeepSpeed and FSDP 1 cannot run on this CPU machine: their logic is
# checked on stand-ins of accelerate's objects, with accelerate's own DeepSpeed config parser) ---

class _Plugin:
    def __init__(self, config: dict) -> None:
        from accelerate.utils.deepspeed import HfDeepSpeedConfig

        self.hf_ds_config = HfDeepSpeedConfig(config)
        self.deepspeed_config = self.hf_ds_config.config
        self.zero_stage = self.deepspeed_config["zero_optimization"]["stage"]

    def get_value(self, key: str, default=None):
        return self.hf_ds_config.get_value(key, default)


class _Accelerator:
    """What kitae reads of an Accelerator: the engine, its plugins, gradient sync and backward."""

    def __init__(self, kind: str, deepspeed: dict | None = None, fsdp_version: int = 2) -> None:
        from types import SimpleNamespace

        from accelerate.utils import DistributedType

        self.distributed_type = DistributedType[kind]
        self.state = SimpleNamespace(deepspeed_plugin=_Plugin(deepspeed) if deepspeed else None,
                                     fsdp_plugin=SimpleNamespace(fsdp_version=fsdp_version))
        self.gradient_accumulation_steps = 1
        self.synced: list[bool] = []
        self.backwards: list[float] = []
        self.gradient_state = SimpleNamespace(_set_sync_gradients=self.synced.append)

    def backward(self, loss) -> None:
        self.backwards.append(float(loss))


def _ds_config(**top) -> dict:
    return {"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": "auto", "gradient_clipping": "auto", **top}


def test_engines_that_cannot_evaluate_or_save_are_refused_before_any_work():
    from kitae.errors import ConfigError
    from kitae.training.distributed import check_engine

    with pytest.raises(ConfigError, match="fsdp_version: 2"):
        check_engine(_Accelerator("FSDP", fsdp_version=1))
    with pytest.raises(ConfigError, match="ZeRO-3 is not supported"):
        check_engine(_Accelerator("DEEPSPEED", _ds_config(zero_optimization={"stage": 3})))
    for fine in (_Accelerator("FSDP"), _Accelerator("DEEPSPEED", _ds_config()), _Accelerator("MULTI_CPU")):
        check_engine(fine)


def test_deepspeed_auto_values_come_from_the_training_section():
    from kitae.config import TrainingConfig
    from kitae.errors import ConfigError
    from kitae.training.distributed import configure_deepspeed

    training = TrainingConfig(batch_size=6, grad_accum=3, max_grad_norm=0.5)
    accelerator = _Accelerator("DEEPSPEED", _ds_config())
    configure_deepspeed(accelerator, training, loss_scaling=False)
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_clipping"]) == (6, 0.5)
    assert accelerator.gradient_accumulation_steps == 3  # what accelerate writes for "auto"
    # The user's own values stay.
    accelerator = _Accelerator("DEEPSPEED", _ds_config(train_micro_batch_size_per_gpu=2, gradient_clipping=1.0))
    configure_deepspeed(accelerator, training, loss_scaling=False)
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_clipping"]) == (2, 1.0)
    with pytest.raises(ConfigError, match="bfloat16"):
        configure_deepspeed(accelerator, training, loss_scaling=True)


def test_backward_leaves_accumulation_to_deepspeed_and_divides_elsewhere():
    import torch

    from kitae.training.distributed import Distributed

    for kind, expected in (("DEEPSPEED", [6.0, 6.0]), ("MULTI_GPU", [2.0, 2.0])):
        accelerator = _Accelerator(kind, _ds_config() if kind == "DEEPSPEED" else None)
        dist = Distributed(accelerator, 0, 2, 0, "cpu")
        dist.backward(torch.tensor(6.0), grad_accum=3, sync=False)
        dist.backward(torch.tensor(6.0), grad_accum=3, sync=True)
        assert accelerator.backwards == expected
        # DeepSpeed's engine steps at the boundary it is told of; DDP's sync is kitae's no_sync.
        assert accelerator.synced == ([False, True] if kind == "DEEPSPEED" else [])
    assert Distributed(_Accelerator("DEEPSPEED", _ds_config()), 0, 2, 0, "cpu").full_optimizer_state(None) is None


def test_a_checkpoint_without_optimizer_state_resumes_with_fresh_moments(tmp_path, caplog):
    """What a DeepSpeed run commits: weights, schedule, counters and RNG, no optimizer state."""
    import torch

    from kitae.training.checkpoint import CheckpointStore, LoopState, rng_state

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    store = CheckpointStore(tmp_path / "checkpoints")
    store.commit(model, optimizer, scheduler, None, LoopState(global_step=1, batches_done=1), rng_state(),
                 without_optimizer=True, rng_by_rank=[rng_state(), rng_state()])
    fresh = torch.nn.Linear(3, 2)
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    fresh_scheduler = torch.optim.lr_scheduler.LambdaLR(fresh_optimizer, lambda step: 1.0 / (1 + step))
    with caplog.at_level("WARNING"):
        resumed = store.load(fresh, fresh_optimizer, fresh_scheduler, None, rank=0, world_size=2)
    assert resumed is not None and resumed.loop.global_step == 1
    assert torch.equal(fresh.weight, model.weight) and fresh_optimizer.state_dict()["state"] == {}
    assert fresh_scheduler.get_last_lr() == scheduler.get_last_lr()
    assert "AdamW's moments restart" in caplog.text


def test_the_adapter_saved_from_gathered_weights_equals_the_model_s_own(one_process, tmp_path):
    """What rank 0 does under FSDP: save the adapter from a dict of full tensors named as the
    classifier's parameters (here the loaded model's own, copied) rather than from the model."""
    from kitae.models.persist import META_FILE, load_classifier, save_classifier
    from kitae.runs import read_json

    folder = one_process / "model"
    classifier, tokenizer, meta, _ = load_classifier(folder, device="cpu", merge=False)
    weights = {name: p.detach().clone() for name, p in classifier.named_parameters()}
    save_classifier(classifier, tokenizer, tmp_path / "saved", read_json(folder / META_FILE), weights)
    original, saved = _weights(one_process), load_file(str(tmp_path / "saved" / "adapter_model.safetensors"))
    assert original.keys() == saved.keys() and original
    for name in original:
        np.testing.assert_array_equal(saved[name], original[name], err_msg=name)
