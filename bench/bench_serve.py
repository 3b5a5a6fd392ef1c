"""`kitae serve` against a naive server (one request = one forward pass), at several concurrencies.

    python bench/bench_serve.py runs/quickstart [--concurrency 1 4 16 64] [--requests 200]

Both servers run as subprocesses on loopback with the same model and torch threads; the clients
(threads, one HTTP connection each) send one text per request, drawn from the run's own test
file, for the same number of requests. Reports requests/s and p50 / p99 latency per server and
concurrency as a Markdown table (for bench/RESULTS.md); the answers of both servers are checked
against each other. Ratios within one run are the result: absolute times on shared CPUs are noise.
"""


import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path


def naive_app(run_dir: str):
    """The baseline people write first: each request runs its own forward pass, one at a time."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    import kitae

    clf = kitae.load(run_dir)
    lock = threading.Lock()
    app = FastAPI()

    async def predict(request: Request):
        texts = (await request.json())["texts"]
        with lock:
            predictions = clf.predict(texts)
        return JSONResponse({"predictions": [{"label": p.label, "probabilities": p.probabilities}
                                             for p in predictions]})

    app.add_api_route("/predict", predict, methods=["POST"])
    app.add_api_route("/health", lambda: {"status": "ok"}, methods=["GET"])
    return app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(kind: str, run_dir: str, port: int) -> subprocess.Popen:
    if kind == "kitae":
        command = [sys.executable, "-m", "kitae.cli", "serve", run_dir, "--port", str(port)]
    else:
        command = [sys.executable, __file__, "--naive-server", run_dir, "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    import httpx

    deadline = time.time() + 600
    while time.time() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{kind} server exited: {process.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit(f"{kind} server did not start")


def _load(url: str, texts: list[str], concurrency: int, requests: int) -> dict:
    import httpx

    latencies: list[float] = []
    answers: dict[int, str] = {}
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def client() -> None:
        with httpx.Client(base_url=url, timeout=300) as http:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                started = time.perf_counter()
                response = http.post("/predict", json={"texts": [texts[i % len(texts)]]})
                elapsed = time.perf_counter() - started
                with lock:
                    if response.status_code != 200:
                        errors.append(f"{response.status_code} {response.text[:200]}")
                        continue
                    latencies.append(elapsed)
                    answers[i] = response.json()["predictions"][0]["label"]

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    if not latencies:
        raise SystemExit(f"{url}: every request failed, e.g. {errors[:1]}")
    latencies.sort()
    return {"requests_per_s": len(latencies) / wall, "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
            "errors": errors, "answers": answers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--requests", type=int, default=200, help="Requests per server and concurrency.")
    parser.add_argument("--naive-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.naive_server:
        import uvicorn

        uvicorn.run(naive_app(args.run_dir), host="127.0.0.1", port=args.port, log_level="warning")
        return

    import yaml

    config = yaml.safe_load((Path(args.run_dir) / "config.yaml").read_text(encoding="utf-8"))
    test_file = Path(config["data"].get("test") or config["data"]["train"])
    field = config["data"].get("text_field", "text")
    texts = [json.loads(line)[field] for line in test_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows, agree = [], True
    for kind in ("naive", "kitae"):
        port = _free_port()
        process = _start(kind, args.run_dir, port)
        try:
            _load(f"http://127.0.0.1:{port}", texts, 2, 10)  # warm-up
            for concurrency in args.concurrency:
                result = _load(f"http://127.0.0.1:{port}", texts, concurrency, args.requests)
                rows.append({"server": kind, "concurrency": concurrency, **result})
                print(f"{kind:6s} c={concurrency:3d}: {result['requests_per_s']:7.1f} req/s, p50 "
                      f"{result['p50_ms']:7.1f} ms, p99 {result['p99_ms']:7.1f} ms, errors {len(result['errors'])}",
                      file=sys.stderr)
        finally:
            process.terminate()
            process.wait(60)
    for concurrency in args.concurrency:
        naive, ours = (next(r for r in rows if r["server"] == s and r["concurrency"] == concurrency)
                       for s in ("naive", "kitae"))
        agree &= all(ours["answers"].get(i) == label for i, label in naive["answers"].items())
    lines = ["| concurrency | naive req/s | kitae req/s | speed-up | naive p50 / p99 ms | kitae p50 / p99 ms |",
             "|---|---|---|---|---|---|"]
    for concurrency in args.concurrency:
        naive, ours = (next(r for r in rows if r["server"] == s and r["concurrency"] == concurrency)
                       for s in ("naive", "kitae"))
        lines.append(f"| {concurrency} | {naive['requests_per_s']:.1f} | {ours['requests_per_s']:.1f} | "
                     f"{ours['requests_per_s'] / naive['requests_per_s']:.2f}x | {naive['p50_ms']:.0f} / "
                     f"{naive['p99_ms']:.0f} | {ours['p50_ms']:.0f} / {ours['p99_ms']:.0f} |")
    lines.append(f"\nrun: {Path(args.run_dir).name}, {args.requests} requests of one text per cell, "
                 f"torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}; "
                 f"labels of both servers agree: {agree}")
    print("\n".join(lines))
    out = Path(__file__).parent / "runs" / f"serve-{Path(args.run_dir).name}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps([{k: v for k, v in r.items() if k != "answers"} for r in rows], indent=2))


if __name__ == "__main__":
    main()
