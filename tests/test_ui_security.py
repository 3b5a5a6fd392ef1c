"""`kitae ui` locked like a notebook server, tried as an attacker would, through a real server on
loopback: no route answers without the token; files outside the UI's folders (symlinks followed)
are refused without a byte of them in the answer; a submitted config cannot reach outside them or
turn on remote code; bodies are bounded and every error is one JSON object."""

from __future__ import annotations

import os

import pytest
from conftest import LiveServer, separable_rows, write_jsonl

pytest.importorskip("fastapi")
import httpx  # noqa: E402

from kitae.ui import create_ui_app  # noqa: E402

TOKEN = "ui-token-for-tests-0123456789abcdef"


@pytest.fixture
def ui(tmp_path):
    """A UI started in `tmp_path/work` (its folder) on runs under it, with its token."""
    work = tmp_path / "work"
    write_jsonl(work / "data" / "train.jsonl", separable_rows(4, 1))
    app = create_ui_app(work / "runs", token=TOKEN, base_dir=work)
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        yield client, work


def logged_in(client: httpx.Client) -> httpx.Client:
    login = client.get("/", params={"token": TOKEN})
    assert login.status_code == 303 and login.headers["location"] == "/"
    cookie = login.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict") and TOKEN not in cookie
    client.headers["X-Kitae"] = "1"
    return client


def test_no_route_answers_without_the_token_and_the_login_sets_an_httponly_cookie(ui):
    client, _ = ui
    page = client.get("/")
    assert page.status_code == 401 and "<form" in page.text and "app.js" not in page.text
    assert client.get("/", params={"token": "wrong-token-wrong-token"}).status_code == 401
    for method, route in (("GET", "/api/info"), ("GET", "/api/runs"), ("GET", "/static/app.js"),
                          ("GET", "/static/fonts/ipaexg.ttf"), ("GET", "/serve/1/info"),
                          ("POST", "/api/jobs/launch"), ("POST", "/api/push"), ("GET", "/nope")):
        refused = client.request(method, route, json={})
        assert refused.status_code == 401, route
        assert refused.json() == {"error": "log in first: open the address kitae ui printed (…/?token=…)"}
    bearer = client.get("/api/info", headers={"Authorization": f"Bearer {TOKEN}"})
    assert bearer.status_code == 200
    logged_in(client)
    assert client.get("/").status_code == 200 and "app.js" in client.get("/").text
    assert client.get("/static/app.js").status_code == 200 and client.get("/api/runs").status_code == 200
    assert client.post("/api/jobs/stop", json={"run": "x"}, headers={"X-Kitae": ""}).status_code == 403
    # DNS rebinding: another site's name for 127.0.0.1 is refused, the test client's too.
    for host in ("evil.example:7860", "testserver"):
        assert client.get("/api/info", headers={"Host": host}).status_code == 403


def test_files_outside_the_ui_folders_are_refused_without_their_content(ui, tmp_path):
    client, work = logged_in(ui[0]), ui[1]
    secret = tmp_path / "private" / "id_key"
    secret.parent.mkdir()
    secret.write_text("-----BEGIN PRIVATE KEY-----\nMIIEvQ\n", encoding="utf-8")
    secret.chmod(0o600)
    os.symlink("/etc/passwd", work / "x.tsv")
    os.symlink(secret, work / "key.tsv")
    os.symlink("/etc/passwd", work / "x.csv")
    for name in ("x.tsv", "key.tsv", "x.csv", str(secret)):
        answer = client.post("/api/data/analyze", json={"values": {"data.train": name}})
        assert answer.status_code == 400, (name, answer.text)
        error = answer.json()["error"]
        assert "outside the folders kitae ui may read" in error and "--data-root" in error
        assert "root:" not in answer.text and "PRIVATE" not in answer.text
    assert client.get("/api/files", params={"dir": "/etc"}).status_code == 400
    listing = client.get("/api/files").json()
    assert listing["parent"] is None and "train.jsonl" not in {e["name"] for e in listing["entries"]}
    assert client.get("/api/files", params={"dir": "data"}).json()["entries"][0]["name"] == "train.jsonl"
    # The guard of the UI's own folder holds after `..` is resolved.
    escaped = client.get("/api/run", params={"run": "x/../.kitae-ui/jobs"})
    assert escaped.status_code == 400 and "not a run name" in escaped.json()["error"]


def test_a_submitted_config_stays_inside_the_folders_and_runs_no_remote_code(ui, tmp_path):
    client, work = logged_in(ui[0]), ui[1]
    model = tmp_path / "elsewhere" / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text('{"auto_map": {"AutoModel": "evil.Model"}}', encoding="utf-8")
    inside = work / "data" / "train.jsonl"
    base = {"task": "single_label", "data.train": str(inside), "model.name": "gpt2", "output": "runs/r"}
    cases = {"data.dev": ({"data.dev": "/etc/passwd"}, "outside"),
             "model.name": ({"model.name": str(model)}, "outside"),
             "tracking.mlflow_uri": ({"tracking.mlflow_uri": f"sqlite:///{tmp_path}/elsewhere/m.db"}, "outside"),
             "model.trust_remote_code": ({"model.trust_remote_code": "true"}, "--allow-remote-code")}
    for field, (change, words) in cases.items():
        for route in ("/api/config/check", "/api/jobs/launch"):
            answer = client.post(route, json={"values": {**base, **change}})
            body = answer.json()
            errors = body["errors"] if route.endswith("check") else body.get("errors", [])
            assert any(e["field"] == field and words in e["message"] for e in errors), (route, field, body)
            assert route.endswith("check") or answer.status_code == 400
    assert not (work / "runs" / ".kitae-ui" / "jobs").exists()  # nothing was launched
    assert client.post("/api/config/check", json={"values": base}).json()["valid"]
    allowed = create_ui_app(work / "runs", token=TOKEN, base_dir=work, allow_remote_code=True)
    with LiveServer(allowed) as server, httpx.Client(base_url=server.url, timeout=30) as other:
        other.headers.update({"Authorization": f"Bearer {TOKEN}", "X-Kitae": "1"})
        checked = other.post("/api/config/check", json={"values": {**base, "model.trust_remote_code": "true"}})
        assert checked.json()["valid"], checked.json()


def test_bodies_are_bounded_and_every_error_is_json(ui):
    client = logged_in(ui[0])
    big = client.post("/api/config/check", content=b'{"values": "' + b"a" * 20_000_000 + b'"}',
                      headers={"Content-Type": "application/json"})
    assert big.status_code == 413 and "limit is 2000000" in big.json()["error"]
    nested = client.post("/api/config/check", content=b"[" * 100_000, headers={"Content-Type": "application/json"})
    assert nested.status_code == 422 and nested.json() == {"error": "the body nests too deeply"}
    assert client.post("/api/config/check", content=b"[]").json() == {"error": "the body must be a JSON object"}
    missing = client.get("/api/nothing-here")
    assert missing.status_code == 404 and "error" in missing.json()
    assert client.get("/api/run").status_code == 422 and "run" in client.get("/api/run").json()["error"]


def test_the_cli_refuses_unsafe_starts():
    from typer.testing import CliRunner

    from kitae.cli import app

    no_token = CliRunner().invoke(app, ["ui", "--host", "0.0.0.0", "--no-token"])
    assert no_token.exit_code == 2 and "--no-token is only for a page bound to localhost" in no_token.output
    serve = CliRunner().invoke(app, ["serve", "no-such-run", "--host", "0.0.0.0"])
    assert serve.exit_code == 2 and "needs a token" in serve.output

