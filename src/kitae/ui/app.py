"""The routes of `kitae ui`: a JSON API over what the CLI and the Python API already do, and the
page (static/) that calls it. Every route names the command it stands for:

    GET  /api/schema               the form (`kitae config schema`)
    POST /api/config/check         form values -> YAML + errors (`kitae config check`)
    POST /api/config/load          an example, a run's config or pasted YAML -> form values
    GET  /api/files                data files in a folder (read only: a path picker)
    POST /api/data/analyze         `kitae data analyze`
    GET  /api/runs                 `kitae runs list` (+ sweeps, + which runs are training)
    GET  /api/run                  `kitae runs show` + progress.json, history, plots, log tail
    POST /api/compare              `kitae runs compare` + histories and plots
    POST /api/jobs/launch|stop|resume   `kitae train CONFIG [--resume]`, SIGTERM
    POST /api/try                  mounts `kitae serve RUN` at /serve/N/ (POST /serve/N/predict)
    POST /api/generate             `kitae generate RUN --prompt` (sft / causal_lm)
    POST /api/export               `kitae export`
    POST /api/push/preview, /api/push   what `kitae push` would upload (staged), then the upload

Every route needs the token (`ui/auth.py`: the login address sets an HttpOnly cookie; scripts send
a bearer header); files are read only inside the folders the UI was started for, and a submitted
config is held to them too (`ui/folders.py`). Bodies, deadlines and JSON errors are the edge
`kitae serve` uses (`serving/guards.py`).
"""

# No `from __future__ import annotations`: FastAPI reads the route annotations (Request) at runtime.

import csv
import hashlib
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kitae.errors import KitaeError
from kitae.runs import read_json, run_status
from kitae.serving.guards import Edge, EdgeLimits, RequestError, install_json_errors, parse_json
from kitae.ui.auth import Access, login_page
from kitae.ui.folders import Folders

STATIC = Path(__file__).parent / "static"
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
SHOWN_FILES = (".png", ".csv", ".json", ".md", ".log", ".yaml", ".jsonl")
UI_LIMITS = EdgeLimits(max_body_bytes=2_000_000)  # a form, a pasted YAML: never megabytes


class UIState:
    """What the routes share: the runs folder, the jobs, the served runs and loaded generators."""

    def __init__(self, runs_dir: Path, access: Access, base_dir: Path, examples_dir: Path | None,
                 data_roots: Sequence[Path] = (), allow_remote_code: bool = False) -> None:
        from kitae.ui.jobs import Jobs

        self.runs_dir = Path(runs_dir).resolve()
        self.access = access
        self.base_dir = Path(base_dir).resolve()
        self.examples_dir = examples_dir
        self.folders = Folders.of(self.base_dir, self.runs_dir, *data_roots, examples_dir,
                                  allow_remote_code=allow_remote_code)
        self.jobs = Jobs(self.runs_dir)
        self.served: dict[str, tuple[int, Any]] = {}  # run name -> (mount number, serving app)
        self.generators: dict[str, Any] = {}
        self.lock = threading.Lock()


def find_examples_dir(base_dir: Path) -> Path | None:
    """examples/ beside where kitae ui runs, or in the source checkout kitae is installed from."""
    for candidate in (base_dir / "examples", Path(__file__).resolve().parents[3] / "examples"):
        if candidate.is_dir() and any(candidate.glob("*.yaml")):
            return candidate
    return None


def create_ui_app(runs_dir: Path, token: str | None = None, base_dir: Path | None = None,
                  local_only: bool = True, data_roots: Sequence[Path] = (), allow_remote_code: bool = False) -> Any:
    """The page and its API. `token` None serves without one (`--no-token`: loopback only)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse
    from fastapi.staticfiles import StaticFiles
    from starlette.concurrency import run_in_threadpool
    from starlette.routing import Mount

    if token is None and not local_only:
        raise KitaeError("kitae ui beyond localhost needs a token")
    base = Path(base_dir or Path.cwd())
    state = UIState(Path(runs_dir), Access(token, local_only), base, find_examples_dir(base), data_roots,
                    allow_remote_code)
    state.runs_dir.mkdir(parents=True, exist_ok=True)

    import contextlib

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any):
        yield
        for _, served in state.served.values():  # mounted apps get no lifespan of their own
            served.state.service.worker.stop()

    app = FastAPI(title="kitae ui", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ui = state
    app.add_middleware(Edge, limits=UI_LIMITS, authorise=state.access.refusal)
    install_json_errors(app)

    @app.exception_handler(KitaeError)
    async def user_error(_request: Request, exc: KitaeError) -> Any:
        return JSONResponse({"error": str(exc)}, status_code=400)

    async def body_of(request: Request) -> dict[str, Any]:
        body = parse_json(await request.body())
        if not isinstance(body, dict):
            raise RequestError(422, "the body must be a JSON object")
        return body

    # --- the page ---------------------------------------------------------------------------

    @app.get("/")
    async def index(request: Request) -> Any:
        given = request.query_params.get("token")
        if given is not None:
            if not state.access.token_matches(given):
                return HTMLResponse(login_page(wrong=True), status_code=401)
            # Jupyter's way: the token once in the address, then a cookie scripts cannot read, and
            # the address without the token (history, screen shares, Referer headers).
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(state.access.cookie_name, state.access.session, httponly=True, samesite="strict")
            return response
        if not state.access.authorised(dict(request.scope["headers"])):
            return HTMLResponse(login_page(wrong=False), status_code=401)
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/static/fonts/ipaexg.ttf")
    async def japanese_font() -> Any:
        # The Japanese font matplotlib-fontja ships (a kitae dependency): the page shows Japanese
        # without a CDN on machines that have no Japanese font installed.
        import matplotlib_fontja

        font = Path(matplotlib_fontja.__file__).parent / "fonts" / "ipaexg.ttf"
        return FileResponse(font, headers={"Cache-Control": "max-age=86400"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # --- config -----------------------------------------------------------------------------

    @app.get("/api/info")
    async def info() -> Any:
        from kitae import __version__

        examples = sorted(p.name for p in state.examples_dir.glob("*.yaml")) if state.examples_dir else []
        return {"runs_dir": str(state.runs_dir), "base_dir": str(state.base_dir), "version": __version__,
                "examples": examples, "examples_dir": str(state.examples_dir or "")}

    @app.get("/api/schema")
    async def schema(task: str | None = None) -> Any:
        # The form of one task: its keys only (the page asks again when the task changes).
        from kitae.config import DEFAULT_TASK
        from kitae.ui.form import form_fields, sections

        task = task or DEFAULT_TASK
        return {"task": task, "fields": form_fields(task), "sections": sections(task)}

    @app.post("/api/config/check")
    async def config_check(request: Request) -> Any:
        body = await body_of(request)
        return await run_in_threadpool(_check, state, body.get("values", {}))

    @app.post("/api/config/load")
    async def config_load(request: Request) -> Any:
        from kitae.ui.form import yaml_to_values

        body = await body_of(request)
        kind = body.get("source")
        if kind == "example":
            if state.examples_dir is None:
                raise KitaeError("no examples folder found")
            path = (state.examples_dir / str(body.get("name", ""))).resolve()
            if path.parent != state.examples_dir.resolve() or not path.is_file():
                raise KitaeError(f"example {body.get('name')!r}: not found")
            values, unknown = yaml_to_values(path.read_text(encoding="utf-8"), path.parent)
            values["output"] = str(Path(state.runs_dir.name) / path.stem)
        elif kind == "run":
            run_dir = state.jobs.run_dir(str(body.get("run", "")))
            values, unknown = yaml_to_values((run_dir / "config.yaml").read_text(encoding="utf-8"))
            values["output"] = str(Path(state.runs_dir.name) / f"{run_dir.name}-2")
        elif kind == "yaml":
            values, unknown = yaml_to_values(str(body.get("text", "")), state.base_dir)
        else:
            raise KitaeError("source: example, run or yaml")
        return {"values": values, "unknown": unknown}

    # --- data -------------------------------------------------------------------------------

    @app.get("/api/files")
    async def files(dir: str = "") -> Any:  # noqa: A002 (the query parameter's name)
        folder = Path(dir).expanduser() if dir else state.base_dir
        folder = state.folders.require(state.base_dir / folder, "folder")
        if not folder.is_dir():
            raise KitaeError(f"{folder}: not a folder")
        entries = []
        try:
            children = sorted(folder.iterdir(), key=lambda p: (not p.is_dir(), p.name.lower()))
        except OSError as exc:
            raise KitaeError(f"{folder}: cannot list it ({exc.strerror})") from None
        for child in children:
            if child.name.startswith("."):
                continue
            if child.is_dir():
                entries.append({"name": child.name, "path": str(child), "dir": True})
            elif child.suffix.lower() in (*DATA_SUFFIXES, ".yaml", ".yml"):
                entries.append({"name": child.name, "path": str(child), "dir": False,
                                "bytes": child.stat().st_size})
        parent = str(folder.parent) if state.folders.contains(folder.parent) else None
        return {"folder": str(folder), "parent": parent, "entries": entries[:500],
                "roots": [str(root) for root in state.folders.roots]}

    @app.post("/api/data/analyze")
    async def data_analyze(request: Request) -> Any:
        body = await body_of(request)
        return await run_in_threadpool(_analyze, state, body)

    @app.get("/api/analysis/file")
    async def analysis_file(id: str, file: str) -> Any:  # noqa: A002
        folder = state.jobs.home / "analysis" / Path(id).name
        return _file_response(folder, file)

    # --- runs -------------------------------------------------------------------------------

    @app.get("/api/runs")
    async def runs() -> Any:
        return await run_in_threadpool(_runs_table, state)

    @app.get("/api/run")
    async def run(run: str) -> Any:
        return await run_in_threadpool(_run_detail, state, run)

    @app.get("/api/run/file")
    async def run_file(run: str, file: str) -> Any:
        return _file_response(state.jobs.run_dir(run), file)

    @app.post("/api/compare")
    async def compare(request: Request) -> Any:
        body = await body_of(request)
        return await run_in_threadpool(_compare, state, list(body.get("runs", [])))

    # --- jobs -------------------------------------------------------------------------------

    @app.post("/api/jobs/launch")
    async def launch(request: Request) -> Any:
        from kitae.ui.form import absolute_inputs, values_to_config
        from kitae.ui.jobs import describe_job

        body = await body_of(request)
        values = body.get("values", {})
        result = await run_in_threadpool(_check, state, values)
        if not result["valid"]:
            return JSONResponse({"error": result["message"], "errors": result["errors"]}, status_code=400)
        config = absolute_inputs(values_to_config(values), state.base_dir)
        job = await run_in_threadpool(lambda: state.jobs.launch(config, overwrite=bool(body.get("overwrite"))))
        return {"job": describe_job(job), "run": job.name}

    @app.post("/api/jobs/stop")
    async def stop(request: Request) -> Any:
        body = await body_of(request)
        pid = state.jobs.stop(str(body.get("run", "")))
        return {"stopped": pid}

    @app.post("/api/jobs/resume")
    async def resume(request: Request) -> Any:
        from kitae.ui.jobs import describe_job

        body = await body_of(request)
        job = await run_in_threadpool(state.jobs.resume, str(body.get("run", "")), state.folders.check_config)
        return {"job": describe_job(job), "run": job.name}

    # --- try, export, push ------------------------------------------------------------------

    @app.post("/api/try")
    async def try_run(request: Request) -> Any:
        body = await body_of(request)
        name = str(body.get("run", ""))
        served = await run_in_threadpool(_served_app, state, name)
        if served is None:
            return {"kind": "generator", "run": name}
        number, serving = served
        if not any(getattr(r, "path", None) == f"/serve/{number}" for r in app.router.routes):
            app.router.routes.insert(0, Mount(f"/serve/{number}", app=serving))
        info = serving.state.service.info
        classifier = serving.state.service.classifier
        # Tuned thresholds where the task decides by them; pairs where the run reads text pairs.
        thresholds = classifier.task.state().get("thresholds")
        data = classifier.task.config.data
        return {"kind": "classifier", "run": name, "predict_url": f"/serve/{number}/predict", "info": info,
                "thresholds": thresholds, "pair": bool(classifier.meta["data"].get("text_fields"))
                or bool(data.pair_fields())}

    @app.post("/api/generate")
    async def generate(request: Request) -> Any:
        body = await body_of(request)
        return await run_in_threadpool(_generate, state, str(body.get("run", "")), list(body.get("prompts", [])))

    @app.post("/api/export")
    async def export(request: Request) -> Any:
        from kitae.export import export_run

        body = await body_of(request)
        name = str(body.get("run", ""))
        run_dir = state.jobs.run_dir(name)
        merge = bool(body.get("merge"))
        out = state.runs_dir / "exports" / f"{name.replace('/', '__')}{'-merged' if merge else ''}"
        folder = await run_in_threadpool(lambda: export_run(run_dir, out, merge=merge, overwrite=True))
        return {"folder": str(folder), "command": f"kitae export {run_dir} {out}{' --merge' if merge else ''} --overwrite"}

    @app.post("/api/push/preview")
    async def push_preview(request: Request) -> Any:
        body = await body_of(request)
        return await run_in_threadpool(_stage_push, state, str(body.get("run", "")), body)

    @app.post("/api/push")
    async def push(request: Request) -> Any:
        from kitae.hub import hub_api, upload_folder

        body = await body_of(request)
        staged = await run_in_threadpool(_stage_push, state, str(body.get("run", "")), body, False)
        # Private unless the form says otherwise: a click must not publish a model by accident.
        url = await run_in_threadpool(lambda: upload_folder(Path(staged["folder"]), staged["repo_id"],
                                                            staged["private"], hub_api(),
                                                            f"kitae: upload {staged['run']}"))
        return {"url": url, "private": staged["private"]}

    return app


# --- the work behind the routes (plain functions: tests call them too) -------------------------

def _file_response(folder: Path, file: str) -> Any:
    from fastapi.responses import FileResponse

    path = (folder / file).resolve()
    if path.parent != folder.resolve() or path.suffix.lower() not in SHOWN_FILES or not path.is_file():
        raise KitaeError(f"{file}: no such file to show")
    return FileResponse(path, headers={"Cache-Control": "no-cache"})


def _check(state: UIState, values: dict[str, Any]) -> dict[str, Any]:
    """`kitae config check` on the form, and the UI's own rules beside its messages: every path
    inside its folders, no remote code unless allowed (checked here, before anything opens a file
    the form names: config check itself only looks at names)."""
    from kitae.ui.form import absolute_inputs, check, values_to_config

    result = check(values, state.base_dir)
    problems = state.folders.config_problems(absolute_inputs(values_to_config(values), state.base_dir))
    if not problems:
        return result
    message = "; ".join(p["message"] for p in problems)
    return {**result, "valid": False, "message": f"{result['message']}\n{message}" if result["message"] else message,
            "errors": [*result["errors"], *problems]}


def _analyze(state: UIState, body: dict[str, Any]) -> dict[str, Any]:
    """`kitae data analyze CONFIG` when the form is a valid config, else `kitae data analyze FILE`
    with the form's task and columns."""
    from kitae.config import config_from_dict
    from kitae.data.analysis import analyze, file_config
    from kitae.ui.form import absolute_inputs, values_to_config

    values = body.get("values", {})
    checked = _check(state, values)
    if checked["valid"]:
        config = config_from_dict(absolute_inputs(values_to_config(values), state.base_dir), source="the form")
        command = "kitae data analyze CONFIG.yaml"
        tokenize = True
    else:
        train = str(values.get("data.train", "")).strip()
        if not train:
            raise KitaeError("data.train: give a data file to analyse")
        path = state.folders.require(state.base_dir / Path(train).expanduser(), "data.train")
        task = str(values.get("task") or "single_label")
        text_field = str(values.get("data.text_field") or "text")
        label_field = str(values.get("data.label_field") or "label")
        config = file_config(path, task, text_field, label_field)
        command = f"kitae data analyze {path} --task {task} --text-field {text_field} --label-field {label_field}"
        tokenize = False
    key = hashlib.sha256(repr(sorted(values.items())).encode()).hexdigest()[:12]
    out = state.jobs.home / "analysis" / key
    report = analyze(config, out, tokenize=tokenize)
    plots = sorted(p.name for p in out.glob("*.png"))
    return {"id": key, "report": report, "plots": plots, "command": command, "folder": str(out)}


def _live_status(state: UIState, name: str, status: str) -> tuple[str, int | None]:
    pid = state.jobs.running(name)
    if pid is not None:
        return "running", pid
    if status == "running":  # run.json says running but no process trains it: killed hard
        return "stopped", None
    return status, None


def _runs_table(state: UIState) -> dict[str, Any]:
    from kitae.catalog import KEY_SETTINGS, find_runs, summarize

    rows = []
    names = set()
    for path in find_runs(state.runs_dir):
        if path == state.runs_dir or state.jobs.home in path.parents:
            continue
        summary = summarize(path)
        name = state.jobs.name_of(path)
        names.add(name)
        status, pid = _live_status(state, name, summary.status)
        progress = _read_progress(path)
        rows.append({"run": name, "status": status, "pid": pid, "task": summary.task,
                     "model": _short_model(summary.model), "adapter": summary.adapter,
                     "settings": {k: summary.config.get(k) for k in KEY_SETTINGS},
                     "dev": summary.metrics.get("dev", {}), "test": summary.metrics.get("test", {}),
                     "headline": _headline(summary.task), "train_seconds": summary.summary.get("train_seconds"),
                     "wall_seconds": summary.info.get("wall_seconds"), "started": summary.info.get("started"),
                     "progress": _progress_brief(progress)})
    # Jobs still loading their model (no run directory yet) or that failed before making one.
    for job in state.jobs.jobs():
        if job.name in names:
            continue
        pid = state.jobs.running(job.name)
        rows.append({"run": job.name, "status": "starting" if pid else "failed to start", "pid": pid,
                     "task": "", "model": "", "adapter": "", "settings": {}, "dev": {}, "test": {},
                     "headline": [], "train_seconds": None, "wall_seconds": None, "started": None,
                     "progress": None})
    return {"runs": rows, "sweeps": _sweeps(state)}


def _sweeps(state: UIState) -> list[dict[str, Any]]:
    sweeps = []
    for results in sorted(state.runs_dir.rglob("sweep_results.csv")):
        if state.jobs.home in results.parents:
            continue
        folder = results.parent
        with results.open(encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        sweeps.append({"name": folder.relative_to(state.runs_dir).as_posix(), "rows": rows,
                       "plots": sorted(p.name for p in folder.glob("*.png"))})
    return sweeps


def _headline(task: str) -> list[str]:
    from kitae.tasks import TASKS, get_task_class

    return list(get_task_class(task).report_metrics[:3]) if task in TASKS else []


def _short_model(model: str) -> str:
    from kitae.models.sources import public_model_name

    return public_model_name(model)


def _read_progress(run_dir: Path) -> dict[str, Any] | None:
    try:
        return read_json(run_dir / "progress.json")
    except (OSError, ValueError):
        return None


def _progress_brief(progress: dict[str, Any] | None) -> dict[str, Any] | None:
    if not progress:
        return None
    return {k: progress.get(k) for k in ("phase", "epoch", "epochs", "batch", "batches", "global_step", "updates",
                                          "updated")}


def _read_history(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "history.csv"
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as handle:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def _number(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def _run_detail(state: UIState, name: str) -> dict[str, Any]:
    from kitae.catalog import summarize
    from kitae.ui.jobs import describe_job

    run_dir = state.jobs.run_dir(name)
    job = state.jobs.recorded(name)
    if run_status(run_dir) is None:
        pid = state.jobs.running(name)
        if job is None:
            raise KitaeError(f"run {name}: not a kitae run")
        return {"run": name, "status": "starting" if pid else "failed to start", "pid": pid,
                "job": describe_job(job), "log": state.jobs.log_tail(name), "progress": None, "history": [],
                "files": [], "metrics": {}, "config": {}, "summary": {}, "info": {}}
    summary = summarize(run_dir)
    status, pid = _live_status(state, name, summary.status)
    files = sorted(p.name for p in run_dir.iterdir() if p.is_file() and p.suffix in (".png", ".csv")
                   and p.name != "steps.csv")
    config_text = (run_dir / "config.yaml").read_text(encoding="utf-8") if (run_dir / "config.yaml").is_file() else ""
    return {"run": name, "path": str(run_dir), "status": status, "pid": pid, "task": summary.task,
            "capability": run_capability(run_dir), "model": summary.model, "adapter": summary.adapter, "config": summary.config, "config_yaml": config_text,
            "metrics": summary.metrics, "summary": summary.summary, "info": summary.info,
            "progress": _read_progress(run_dir), "history": _read_history(run_dir), "files": files,
            "job": describe_job(job), "log": state.jobs.log_tail(name),
            "card": (run_dir / "README.md").is_file(), "has_model": (run_dir / "model").is_dir(),
            "commands": {"show": f"kitae runs show {run_dir}",
                         "resume": f"kitae train {job.config if job else run_dir / 'config.yaml'} --resume",
                         "stop": f"kill -TERM {pid}" if pid else ""}}


def _compare(state: UIState, names: list[str]) -> dict[str, Any]:
    from kitae.catalog import config_differences, summarize

    if len(names) < 2:
        raise KitaeError("compare: choose two or more runs")
    summaries = [summarize(state.jobs.run_dir(name)) for name in names]
    metric_keys = list(dict.fromkeys(f"{split}.{m}" for s in summaries for split, values in s.metrics.items()
                                     for m in values))
    return {"runs": names,
            "differences": config_differences(summaries),
            "metrics": {key: [s.value(key) for s in summaries] for key in [*metric_keys, "train_seconds"]},
            "status": [s.status for s in summaries],
            "histories": [_read_history(s.path) for s in summaries],
            "plots": [sorted(p.name for p in s.path.glob("*.png")) for s in summaries],
            "command": "kitae runs compare " + " ".join(str(s.path) for s in summaries)}


def _served_app(state: UIState, name: str) -> tuple[int, Any] | None:
    """The `kitae serve` app of a finished classifier run (built once, its worker started), or
    None for a run that generates text."""
    from kitae.runs import require_finished_run
    from kitae.serving import build_app

    with state.lock:
        if name in state.served:
            return state.served[name]
        run_dir = require_finished_run(state.jobs.run_dir(name))
        if run_capability(run_dir) == "generate":
            return None
        serving = build_app(run_dir)  # the UI's own guard stands before /serve/N/ (token, host)
        serving.state.service.worker.start()
        state.served[name] = (len(state.served) + 1, serving)
        return state.served[name]


def run_capability(run_dir: Path) -> str:
    """"predict" or "generate": what the run's task declares (kitae.tasks.contract), as the run
    directory records it; "" before training has written it. Runs of earlier releases did not
    record it: their task class says (which imports torch, once)."""
    from kitae.tasks import TASKS, get_task_class

    path = run_dir / "labels.json"
    labels = read_json(path) if path.is_file() else {}
    if labels.get("capability"):
        return str(labels["capability"])
    task = labels.get("task")
    return str(get_task_class(task).contract.capability) if task in TASKS else ""


def _generate(state: UIState, name: str, prompts: list[str]) -> dict[str, Any]:
    import kitae
    from kitae.runs import require_finished_run
    from kitae.tasks.contract import Capability

    prompts = [str(p) for p in prompts if str(p).strip()]
    if not prompts:
        raise KitaeError("prompt: type a prompt")
    with state.lock:
        if name not in state.generators:
            state.generators[name] = kitae.load(require_finished_run(state.jobs.run_dir(name)))
        generator = state.generators[name]
    generator.require(Capability.GENERATE)
    return {"generations": generator.generate(prompts[:64])}


def _stage_push(state: UIState, name: str, body: dict[str, Any], refresh: bool = True) -> dict[str, Any]:
    """What a push of run `name` uploads: its export, staged under the UI's folder (made again when
    `refresh`, or when missing), with every file and its size, so the page can show it first."""
    from kitae.hub import check_repo_id, stage_push

    run_dir = state.jobs.run_dir(name)
    repo_id = str(body.get("repo_id", "")).strip()
    if not repo_id:
        raise KitaeError("repo id: give user-or-org/name")
    check_repo_id(repo_id)
    folder = state.jobs.home / "push" / state.jobs.name_of(run_dir).replace("/", "__")
    if refresh or not folder.is_dir():
        stage_push(run_dir, folder, overwrite=True)
    files = sorted((p.relative_to(folder).as_posix(), p.stat().st_size) for p in folder.rglob("*") if p.is_file())
    return {"run": name, "repo_id": repo_id, "private": body.get("private", True) is not False,
            "folder": str(folder), "files": [{"name": n, "bytes": b} for n, b in files],
            "bytes": sum(b for _, b in files)}
