"""kitae deletes or replaces only what it made: --overwrite never touches a folder that is not a
kitae run (or export), nor one holding the inputs; a replaced run survives a failed start; one
process per run directory; files follow the umask; nothing published names a local path; a run
directory cannot switch on remote code."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import separable_rows, tiny_config, write_jsonl
from typer.testing import CliRunner

import kitae
from kitae.cli import app
from kitae.config import config_from_dict

ROWS = separable_rows(6, seed=11)


def snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` (relative path -> content hash): what must not change."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _files(folder: Path) -> dict[str, Path]:
    return {split: write_jsonl(folder / f"{split}.jsonl", ROWS) for split in ("train", "dev", "test")}


def _write_config(path: Path, cfg: dict, comment: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(comment + yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return path


def _invoke(*args: str):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


@pytest.fixture(scope="module")
def finished(tiny_models, tmp_path_factory):
    """A finished tiny run and the config that made it."""
    root = tmp_path_factory.mktemp("finished")
    cfg = tiny_config(tiny_models["llama"], _files(root / "data"), root / "runs" / "a", training={"epochs": 1})
    kitae.train(config_from_dict(cfg), progress=False)
    return root, cfg


def test_a_users_folder_with_config_yaml_is_not_a_run(tiny_models, tmp_path):
    # The reproduced report: output `exp1`, config at exp1/config.yaml, notes and data beside it.
    exp = tmp_path / "exp1"
    cfg = tiny_config(tiny_models["llama"], _files(exp / "data"), exp, training={"epochs": 1})
    config = _write_config(exp / "config.yaml", cfg, comment="# my carefully commented config\n")
    (exp / "notes.txt").write_text("ideas", encoding="utf-8")
    before = snapshot(tmp_path)
    for extra in ([], ["--overwrite"]):
        result = _invoke("train", config, *extra)
        assert result.exit_code == 2
        assert "holds the config file being run" in result.output and "--overwrite" not in result.output
        assert snapshot(tmp_path) == before


def test_output_dot_never_empties_the_working_directory(tiny_models, tmp_path, monkeypatch):
    work = tmp_path / "work"
    files = _files(tmp_path / "data")
    (work / "src").mkdir(parents=True)
    (work / "src" / "main.py").write_text("print('mine')", encoding="utf-8")
    config = _write_config(tmp_path / "cfg" / "run.yaml", tiny_config(tiny_models["llama"], files, Path(".")))
    monkeypatch.chdir(work)
    before = snapshot(tmp_path)
    for extra in ([], ["--overwrite"]):
        result = _invoke("train", config, *extra)
        assert result.exit_code == 2 and "--overwrite" not in result.output, result.output
        assert snapshot(tmp_path) == before


def test_a_folder_not_made_by_kitae_is_refused_without_suggesting_overwrite(tiny_models, tmp_path):
    out = tmp_path / "results"
    (out / "paper").mkdir(parents=True)
    (out / "paper" / "draft.tex").write_text("\\section{}", encoding="utf-8")
    (out / "config.yaml").write_text("# not kitae's\n", encoding="utf-8")
    config = _write_config(tmp_path / "run.yaml", tiny_config(tiny_models["llama"], _files(tmp_path / "data"), out))
    before = snapshot(tmp_path)
    for extra in ([], ["--overwrite"]):
        result = _invoke("train", config, *extra)
        assert result.exit_code == 2 and "not made by kitae" in result.output and "--overwrite" not in result.output
    assert snapshot(tmp_path) == before


def test_a_run_holding_its_inputs_is_never_replaced(finished, tmp_path):
    root, cfg = finished
    run = root / "runs" / "a"
    inside = write_jsonl(run / "my-data" / "train.jsonl", ROWS)  # the user keeps data in the run
    try:
        config = _write_config(tmp_path / "run.yaml", {**cfg, "data": {**cfg["data"], "train": str(inside)}})
        before = snapshot(run)
        result = _invoke("train", config, "--overwrite")
        assert result.exit_code == 2 and "holds data.train" in result.output
        assert snapshot(run) == before
    finally:
        import shutil

        shutil.rmtree(run / "my-data")


def _replaced_asides(run: Path) -> list[Path]:
    return sorted(run.parent.glob(f".{run.name}.replaced-*"))


def test_overwrite_keeps_the_old_run_when_the_new_one_cannot_start(finished, tmp_path, monkeypatch):
    root, cfg = finished
    run = root / "runs" / "a"
    before = snapshot(run)
    # The reported case: a model name typo.
    config = _write_config(tmp_path / "typo.yaml", {**cfg, "model": {**cfg["model"], "name": cfg["model"]["name"] + "-typo"}})
    result = _invoke("train", config, "--overwrite")
    assert result.exit_code == 2 and "model.name" in result.output
    assert snapshot(run) == before and not _replaced_asides(run)
    # A failure after the run directory was set up (say, out of memory while loading the weights):
    # the new run is removed and the old one put back, byte for byte.
    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr("kitae.models.loading.load_for_classification", out_of_memory)
    with pytest.raises(RuntimeError, match="out of memory"):
        kitae.train(config_from_dict(cfg), overwrite=True, progress=False)
    assert snapshot(run) == before and not _replaced_asides(run)


def test_overwrite_discards_the_old_run_after_the_first_step(finished, tmp_path):
    root, cfg = finished
    run = root / "runs" / "a"
    old_started = json.loads((run / "run.json").read_text())["started"]
    seen = {}

    class Watch(kitae.api.Callback):
        def on_train_begin(self, info):
            seen["aside before"] = [p.name for p in _replaced_asides(run)]
            seen["run.json"] = json.loads((run / "run.json").read_text())

        def on_step_end(self, step):
            seen.setdefault("aside after", [p.name for p in _replaced_asides(run)])

    time.sleep(1.1)  # a new start time
    kitae.train(config_from_dict(cfg), overwrite=True, progress=False, callbacks=[Watch()])
    assert len(seen["aside before"]) == 1 and seen["run.json"]["previous_run"].endswith(seen["aside before"][0])
    assert seen["aside after"] == [] and not _replaced_asides(run)
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["started"] != old_started and "previous_run" not in info


def test_one_process_per_run_directory(finished, tmp_path):
    root, cfg = finished
    run = root / "runs" / "a"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from kitae.runs import RunLock; lock = RunLock(sys.argv[1]).acquire(); "
        "print('locked', flush=True); time.sleep(60)"), str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        config = _write_config(tmp_path / "run.yaml", cfg)
        before = snapshot(run)
        for extra in (["--overwrite"], ["--resume"]):
            result = _invoke("train", config, *extra)
            assert result.exit_code == 2 and f"another kitae process (pid {holder.pid})" in result.output, result.output
        assert snapshot(run) == before
    finally:
        holder.kill()
        holder.wait()


def test_export_replaces_only_an_earlier_export(finished, tmp_path):
    root, _ = finished
    run = root / "runs" / "a"
    runs = root / "runs"
    before = snapshot(runs)
    # `kitae export runs/a runs --overwrite` used to delete every run.
    result = _invoke("export", run, runs, "--overwrite")
    assert result.exit_code == 2 and "--overwrite" not in result.output
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "weights.bin").write_bytes(b"user data")
    result = _invoke("export", run, mine, "--overwrite")
    assert result.exit_code == 2 and "not made by kitae" in result.output
    assert snapshot(runs) == before and (mine / "weights.bin").read_bytes() == b"user data"

    out = tmp_path / "export"
    assert _invoke("export", run, out).exit_code == 0
    again = _invoke("export", run, out)
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert _invoke("export", run, out, "--merge", "--overwrite").exit_code == 0
    assert (out / "model.safetensors").is_file() and not (out / "adapter_model.safetensors").exists()
    assert not list(tmp_path.glob(".export.*"))


def test_nothing_published_names_a_local_path(finished, tmp_path):
    root, cfg = finished
    run = root / "runs" / "a"
    model_dir = Path(cfg["model"]["name"])
    for kind in ("adapter", "merged"):
        out = tmp_path / kind
        assert _invoke("export", run, out, *(["--merge"] if kind == "merged" else [])).exit_code == 0
        published = [p for p in out.iterdir() if p.suffix in (".json", ".md")]
        published += [run / "README.md", run / "model" / "README.md"]
        for path in published:
            text = path.read_text(encoding="utf-8")
            for private in (str(model_dir.parent), str(root), str(Path.home()) + "/"):
                assert private not in text, (path.name, private)
        meta = json.loads((out / "kitae_model.json").read_text())
        assert meta["base_model"]["path"] == meta["model"]["name"] == model_dir.name
        assert meta["export"]["kind"] == kind
    adapter_config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == model_dir.name


def test_public_model_names():
    from kitae.models.sources import hub_model_name, public_model_name

    assert public_model_name("pypi:gemma-3-270m") == "pypi:gemma-3-270m"
    assert hub_model_name("pypi:gemma-3-270m") == "google/gemma-3-270m"
    assert public_model_name("rinna/japanese-gpt-neox-3.6b") == "rinna/japanese-gpt-neox-3.6b"
    assert public_model_name(str(Path.home() / ".cache" / "kitae" / "hf-from-gguf" / "gemma-abc")) == "gemma-abc"


def test_files_follow_the_umask(tiny_models, tmp_path):
    from kitae.runs import write_text_atomic

    previous = os.umask(0o027)
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
        assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640
        cfg = tiny_config(tiny_models["llama"], _files(tmp_path / "data"), tmp_path / "run", training={"epochs": 1})
        run = kitae.train(config_from_dict(cfg), progress=False).run_dir
        os.umask(0o077)
        write_text_atomic(tmp_path / "b.txt", "x")
        assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in run.rglob("*") if p.is_file() and p.name != ".kitae.lock"}
    assert modes["metrics.json"] == modes["adapter_model.safetensors"] == modes["history.png"] == 0o640, sorted((k, oct(v)) for k, v in modes.items() if v != 0o640)
    assert all(mode & 0o007 == 0 for mode in modes.values()), modes


def test_trust_remote_code_is_never_read_from_the_run(finished, monkeypatch):
    root, _ = finished
    run = root / "runs" / "a"
    meta_path = run / "model" / "kitae_model.json"
    original = meta_path.read_text(encoding="utf-8")
    meta = json.loads(original)
    meta["model"]["trust_remote_code"] = True  # what a downloaded run could say
    meta_path.write_text(json.dumps(meta), encoding="utf-8")
    seen: list[bool] = []
    from kitae.models import loading

    for name in ("AutoTokenizer", "AutoConfig", "AutoModelForSequenceClassification"):
        cls = getattr(loading, name)
        real = cls.from_pretrained

        def spy(*args, _real=real, **kwargs):
            seen.append(kwargs.get("trust_remote_code"))
            return _real(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    try:
        kitae.load(run)
        assert seen and not any(seen), seen
        seen.clear()
        kitae.load(run, trust_remote_code=True)
        assert seen and all(seen), seen
    finally:
        meta_path.write_text(original, encoding="utf-8")


def test_previous_run_deletes_only_what_kitae_set_aside_for_that_place(finished, tmp_path):
    """A run.json naming another folder as `previous_run` (edited, or copied from elsewhere) must
    not make kitae delete it, even when that folder is a kitae run."""
    import shutil

    from kitae.runs import Replacement, update_run_info

    root, _ = finished
    victim = tmp_path / "elsewhere" / "someone-elses-run"
    shutil.copytree(root / "runs" / "a", victim)
    runs = tmp_path / "runs"
    target = runs / "b"
    shutil.copytree(root / "runs" / "a", target)
    update_run_info(target, previous_run=str(victim))
    assert Replacement.recorded(target) is None
    # An aside kitae made for runs/b, whose own run.json points at the victim: only the aside goes.
    aside = runs / ".b.replaced-20260101-120000-42"
    shutil.copytree(root / "runs" / "a", aside)
    update_run_info(aside, previous_run=str(victim))
    Replacement(target, aside).discard()
    assert not aside.exists() and victim.is_dir() and target.is_dir()
    Replacement(target, victim).discard()  # named as the aside itself: still refused
    assert victim.is_dir()
