"""kitae ui end to end, in headless Chromium (Debian's package) driven by Playwright: log in with
the token (Jupyter-style: a login form, then an HttpOnly cookie) -> create a run
from the form on a tiny model -> launch -> close the page and restart the server -> find the run
still training -> stop and resume it -> watch it finish -> compare two runs -> try a text.
Screenshots of each step go to tests/artifacts/ui/."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import separable_rows, tiny_config, write_jsonl
from test_ui_form import schema_keys
from typer.testing import CliRunner

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "ui"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]

try:
    from playwright.sync_api import sync_playwright
except ImportError:
    sync_playwright = None

pytestmark = [
    pytest.mark.skipif(sync_playwright is None, reason="playwright is not installed (pip install playwright)"),
    pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason="no chromium (apt-get install chromium)"),
]
pytest.importorskip("fastapi")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_ui(runs: Path, cwd: Path, port: int, token_file: Path, data_root: Path) -> subprocess.Popen:
    """`kitae ui RUNS --port PORT --token-file FILE --data-root DIR`, as a user starts it; returns
    once it answers (401 without the token: it answers)."""
    process = subprocess.Popen([sys.executable, "-m", "kitae.cli", "ui", str(runs), "--port", str(port),
                                "--token-file", str(token_file), "--data-root", str(data_root)], cwd=cwd,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"kitae ui exited: {process.stderr.read().decode()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=2) as response:
                if response.status == 200:
                    return process
        except urllib.error.HTTPError as refused:
            if refused.code == 401:
                return process
            raise
        except OSError:
            time.sleep(0.3)
    process.kill()
    raise AssertionError("kitae ui did not answer within 90 s")


def stop_ui(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield chromium
        chromium.close()


STARTED = time.monotonic()


def shot(page, name: str, full_page: bool = False) -> None:
    print(f"{time.monotonic() - STARTED:6.1f} s  {name}", file=sys.stderr)  # where the time goes, on failure
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.evaluate("document.fonts.ready")  # the Japanese web font, before the picture
    page.screenshot(path=str(ARTIFACTS / name), full_page=full_page)


def test_create_launch_reopen_stop_resume_watch_compare_try(tiny_models, tmp_path, browser):
    data = tmp_path / "data"
    # Long enough (900 rows x 8 epochs) that the run is still training after the page and the
    # server are gone and back; a tiny model keeps it to some 30 s on a CPU.
    files = {"train": write_jsonl(data / "train.jsonl", separable_rows(300, 1)),
             "dev": write_jsonl(data / "dev.jsonl", separable_rows(10, 2)),
             "test": write_jsonl(data / "test.jsonl", separable_rows(10, 3))}
    runs = tmp_path / "runs"
    # A second run to compare with, trained from Python (what the page calls is the same API).
    import kitae
    from kitae.config import config_from_dict
    from kitae.runs import read_json

    small = {**files, "train": write_jsonl(data / "small.jsonl", separable_rows(20, 4))}
    kitae.train(config_from_dict(tiny_config(tiny_models["llama"], small, runs / "baseline",
                                             training={"epochs": 2, "lr": 5e-3, "checkpoint_every_minutes": None})),
                progress=False)
    progress = read_json(runs / "baseline" / "progress.json")
    assert progress["phase"] == "finished" and len(progress["epochs_done"]) == 2 and progress["steps"]
    assert {"step", "loss", "lr", "tokens_per_s", "rss_gib"} <= set(progress["steps"][-1])

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    token_file = tmp_path / "ui-token.txt"
    token_file.write_text("browser-test-token-0123456789abcdef\n")
    token_file.chmod(0o600)
    ui = start_ui(runs, tmp_path, port, token_file, tiny_models["llama"].parent)
    live_pid = None
    try:
        # 0. Log in: without the token the page is a login form; a wrong token is refused; the
        # right one sets a cookie the page's scripts cannot read, kept across a server restart.
        context = browser.new_context(viewport={"width": 1440, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(60_000)
        first = page.goto(f"{url}/#/new")
        assert first.status == 401 and page.query_selector("#launch") is None
        page.fill("input[name='token']", "not-the-token-at-all")
        page.click("button[type='submit']")
        page.wait_for_selector("p.error")
        shot(page, "0-login-refused.png")
        page.fill("input[name='token']", token_file.read_text().strip())
        page.click("button[type='submit']")
        page.wait_for_selector("main#view")
        assert "token=" not in page.url
        [cookie] = context.cookies()
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and page.evaluate("document.cookie") == ""
        page.goto(f"{url}/#/new")
        page.wait_for_selector(".field[data-path='output']")
        # 1. The form: every key of the schema, help in both languages.
        paths = page.eval_on_selector_all(".field[data-path]", "els => els.map(e => e.dataset.path)")
        assert set(paths) == schema_keys() and len(paths) == len(set(paths))
        page.click("#lang-ja")
        page.wait_for_function("document.querySelector('#launch').textContent === '学習を開始'")
        assert "学習データ" in page.inner_text(".field[data-path='data.train'] .help")
        page.click("#lang-en")
        page.wait_for_function("document.querySelector('#launch').textContent === 'Launch training'")
        # The form is the chosen task's: multi_label's has thresholds, single_label's none.
        page.select_option("[name='task']", "multi_label")
        page.wait_for_selector(".field[data-path='evaluation.thresholds']", state="attached")  # a closed section
        paths = page.eval_on_selector_all(".field[data-path]", "els => els.map(e => e.dataset.path)")
        assert set(paths) == schema_keys("multi_label")
        page.select_option("[name='task']", "single_label")
        page.wait_for_selector(".field[data-path='balance.sampling']", state="attached")
        assert page.query_selector(".field[data-path='evaluation.thresholds']") is None

        values = {"data.train": str(files["train"]), "data.dev": str(files["dev"]), "data.test": str(files["test"]),
                  "model.name": str(tiny_models["llama"]), "model.max_length": "32", "adapter.r": "8",
                  "adapter.alpha": "16", "training.lr": "0.01", "training.epochs": "8", "training.batch_size": "8",
                  "training.seed": "7", "training.checkpoint_every_minutes": "", "output": "runs/live"}
        for path, value in values.items():
            page.fill(f"[name='{path}']", value)
        # A wrong value shows, next to its field, what `kitae config check` says.
        page.fill("[name='training.epochs']", "abc")
        error = page.wait_for_selector(".field[data-path='training.epochs'] .error:not([hidden])")
        page.wait_for_function("document.querySelector('#yaml-preview').textContent.includes('epochs: abc')")
        config_file = tmp_path / "wrong.yaml"
        config_file.write_text(page.inner_text("#yaml-preview"), encoding="utf-8")
        from kitae.cli import app as cli

        checked = CliRunner().invoke(cli, ["config", "check", str(config_file)])
        assert checked.exit_code == 2 and error.inner_text().strip() in checked.output
        page.evaluate("document.querySelector(\".field[data-path='training.lr']\").scrollIntoView()")
        shot(page, "1-form-error.png")
        page.fill("[name='training.epochs']", "8")
        page.wait_for_selector("#check-state .ok")
        made = yaml.safe_load(page.inner_text("#yaml-preview"))
        assert made["training"]["epochs"] == 8 and made["model"]["name"] == str(tiny_models["llama"])
        # The data file, previewed with `kitae data analyze`.
        page.click("#preview-data")
        page.wait_for_selector("#data-preview img")
        assert "kitae data analyze" in page.inner_text("#data-preview")
        shot(page, "1-data-preview.png")
        page.evaluate("window.scrollTo(0, 0)")
        shot(page, "1-form.png")

        # 2. Launch: a `kitae train` process of its own.
        page.click("#launch")
        page.wait_for_url("**/#/run/live")
        page.wait_for_selector("#progress-text", timeout=120_000)
        shot(page, "2-watch.png")
        live_pid = json.loads((runs / ".kitae-ui" / "jobs" / "live.json").read_text())["pid"]

        # 3. Close the page and restart the server: the run goes on and is found again.
        page.close()
        stop_ui(ui)
        ui = start_ui(runs, tmp_path, port, token_file, tiny_models["llama"].parent)
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(f"{url}/#/runs")
        page.wait_for_selector("tr[data-run='live'] .badge.s-running")
        assert page.query_selector("tr[data-run='baseline'] .badge.s-finished") is not None
        shot(page, "3-reopened.png")

        # 4. Stop (SIGTERM: a checkpoint, status interrupted), then resume.
        page.click("tr[data-run='live'] a")
        page.click("#stop")
        page.wait_for_selector("h1 .badge.s-interrupted", timeout=90_000)
        assert read_json(runs / "live" / "run.json")["status"] == "interrupted"
        assert (runs / "live" / "checkpoints").is_dir()
        page.click("#resume")
        page.wait_for_selector("h1 .badge.s-running", timeout=30_000)
        live_pid = json.loads((runs / ".kitae-ui" / "jobs" / "live.json").read_text())["pid"]
        page.wait_for_selector("h1 .badge.s-finished", timeout=180_000)
        page.wait_for_selector(".plots img")
        shot(page, "4-finished.png")
        metrics = read_json(runs / "live" / "metrics.json")
        assert metrics["test"]["accuracy"] >= 0.9, metrics["test"]
        assert len(read_json(runs / "live" / "progress.json")["epochs_done"]) == 8

        # 5. Compare the two runs.
        page.goto(f"{url}/#/compare/live,baseline")
        page.wait_for_selector(".compare-plots img")
        assert "training.epochs" in page.inner_text("main") and "test.accuracy" in page.inner_text("main")
        assert len(page.query_selector_all(".charts .chart")) >= 2
        shot(page, "5-compare.png", full_page=True)

        # 6. Try it: a batch of two texts through the run's `kitae serve` app.
        page.goto(f"{url}/#/run/live")
        page.fill("#try-text", "雨晴雪風曇のは雷霧\n肉魚米麺汁菜塩")
        page.click("#try-button")
        page.wait_for_selector(".predicted-label")
        labels = [el.inner_text() for el in page.query_selector_all(".predicted-label")]
        assert labels == ["天気", "料理"], labels
        page.locator("#try-panel").scroll_into_view_if_needed()
        shot(page, "6-try.png")
        page.close()
    finally:
        stop_ui(ui)
        if live_pid is not None:  # the training this test started, if an assertion left it running
            with contextlib.suppress(ProcessLookupError):
                os.kill(live_pid, signal.SIGKILL)
