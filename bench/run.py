"""Benchmark omni-mev as deployed against the FastAPI/uvicorn reference, with wrk on loopback.

    python -m bench.run            # the full run (~15 minutes): bench/results/<date>.json, docs/benchmarks.{md,png}
    python -m bench.run --smoke    # a few seconds per part, to keep the harness working (the test suite runs it)

Every load is bounded by wrk's duration. Servers are started on free loopback
ports and stopped at the end.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = [10.5, 1.012, 3, 0.35, 0.87, 0.5, 2, 1.0]
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
%s
done = function(summary, latency, requests)
  io.write(string.format(
    '@@{"requests": %%d, "duration_us": %%d, "connect_errors": %%d, "read_errors": %%d, "write_errors": %%d, ' ..
    '"non_2xx": %%d, "timeouts": %%d, "p50_us": %%d, "p90_us": %%d, "p99_us": %%d, "max_us": %%d, "mean_us": %%.1f}\\n',
    summary.requests, summary.duration, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.status, summary.errors.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
"""


# A fresh opportunity_id per request (the ledger keeps one row per scored id, as bots send them).
UNIQUE_ID_REQUEST = """
counter = 0
request = function()
  counter = counter + 1
  return wrk.format(nil, nil, nil, string.format([==[%s]==], counter))
end
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """One server under test, started in its own process group."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    ready_s: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> Server:
        env = {**os.environ, **self.env, "PYTHONPATH": str(ROOT)}
        argv = [a.replace("{port}", str(self.port)) for a in self.argv]
        started = time.monotonic()
        self.process = subprocess.Popen(argv, cwd=ROOT, env={k: v.replace("{port}", str(self.port))
                                                             for k, v in env.items()},
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as response:
                    if response.status == 200:
                        self.ready_s = time.monotonic() - started
                        return self
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.01)
        raise TimeoutError(f"{self.name} not ready within {timeout}s")

    def worker_pids(self) -> list[int]:
        """The processes that serve requests: the master's children."""
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        children = [int(p) for p in path.read_text().split()] if path.exists() else []
        # uvicorn --workers spawns a resource tracker too, and omni-mev's master its quality reporter; keep the
        # processes that listen.
        return [pid for pid in children
                if not any(helper in _cmdline(pid) for helper in ("resource_tracker", "omni_mev.ledger.reporter"))]

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def cpu_s(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds each live process has used."""
    ticks = os.sysconf("SC_CLK_TCK")
    used = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # a worker recycled (max_requests) during the run
            continue
        used[pid] = (int(fields[11]) + int(fields[12])) / ticks
    return used


def cpu_us_per_request(before: dict[int, float], after: dict[int, float], requests: int) -> float | None:
    """Worker CPU per request, or None when a worker was replaced during the run."""
    if set(before) != set(after) or not requests:
        return None
    return (sum(after.values()) - sum(before.values())) / requests * 1e6


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def lua_string(data: str | bytes) -> str:
    """A Lua string literal holding exactly these bytes (a long bracket for text; escapes for binary, which a
    long bracket would alter: Lua turns its line breaks into \\n)."""
    if isinstance(data, str):
        return f"[==[{data}]==]"
    return '"' + "".join(f"\\{byte}" for byte in data) + '"'


def wrk(url: str, body: str | bytes, connections: int, duration_s: float, scratch: Path,
        id_template: str | None = None, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """One wrk run (one thread); its Lua done() prints exact figures as JSON.

    id_template: a body with one %d, filled with a new number per request.
    """
    script = scratch / f"wrk-{abs(hash((body, id_template, str(headers))))}.lua"
    setup = "".join([f"wrk.body = {lua_string(body)}\n",
                     *(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}\n" for k, v in (headers or {}).items())])
    script.write_text(WRK_SCRIPT % setup + (UNIQUE_ID_REQUEST % id_template if id_template else ""))
    result = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration_s))}s", "--timeout", "5s", "-s", str(script),
         url], capture_output=True, text=True, timeout=duration_s + 60)
    line = next((text for text in result.stdout.splitlines() if text.startswith("@@")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {result.stdout}\n{result.stderr}")
    figures = json.loads(line[2:])
    seconds = figures["duration_us"] / 1e6
    errors = figures["connect_errors"] + figures["read_errors"] + figures["write_errors"] + figures["timeouts"]
    return {
        "connections": connections,
        "requests": figures["requests"],
        "requests_per_s": figures["requests"] / seconds,
        "p50_ms": figures["p50_us"] / 1000, "p90_ms": figures["p90_us"] / 1000,
        "p99_ms": figures["p99_us"] / 1000, "max_ms": figures["max_us"] / 1000,
        "non_2xx": figures["non_2xx"], "socket_errors": errors,
    }


# Smoke runs (the test suite's) skip warm-ups: they check that the harness runs, not its figures.
SMOKE = {"on": False}


def warm(url: str, body: str | bytes, scratch: Path) -> None:
    """One second of load before a measured run (first requests allocate, caches are cold); none in smoke runs."""
    if not SMOKE["on"]:
        wrk(url, body, 8, 1, scratch)


def write_results(results: dict[str, Any], folder: str | Path, name: str, smoke: bool = False) -> Path:
    """results as bench/results/<name>-<date>[-smoke].json (the date from results["date"]); its path."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}-{results['date'][:10]}{'-smoke' if smoke else ''}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path


@contextmanager
def session(prefix: str) -> Iterator[tuple[Path, list[Server]]]:
    """A scratch folder and a list of started servers, both gone afterwards whatever happened."""
    scratch = Path(tempfile.mkdtemp(prefix=prefix))
    servers: list[Server] = []
    try:
        yield scratch, servers
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def omni_mev(name: str, env: dict[str, str] | None = None, workers: int = 2) -> Server:
    """omni-mev exactly as deployed: gunicorn with gunicorn.conf.py, metrics on."""
    base = {"AI_ENGINE_PORT": "{port}", "AI_ENGINE_WORKERS": str(workers), "PROMETHEUS_PORT": str(free_port()),
            "OMNI_MEV_ENV_FILE": "/nonexistent", "AI_DECISION_LOG": tempfile.mktemp(suffix=".jsonl"),
            "AI_LEDGER_URL": f"sqlite:///{tempfile.mktemp(suffix='.db')}"}
    return Server(name, [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
                  {**base, **(env or {})})


def reference(workers: int = 2) -> Server:
    """FastAPI + uvicorn[standard] (uvloop, httptools), same model, same fields."""
    return Server("reference", [sys.executable, "-m", "uvicorn", "bench.reference.app:app", "--host", "127.0.0.1",
                                "--port", "{port}", "--workers", str(workers), "--loop", "uvloop", "--http",
                                "httptools", "--no-access-log", "--log-level", "warning"])


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = next((text.split(":", 1)[1].strip() for text in Path("/proc/cpuinfo").read_text().splitlines()
                if text.startswith("model name")), platform.processor())
    memory = next(int(text.split()[1]) for text in Path("/proc/meminfo").read_text().splitlines()
                  if text.startswith("MemTotal"))

    def version(package: str) -> str:
        try:
            from importlib.metadata import version as installed

            return installed(package)
        except Exception:  # noqa: BLE001
            return "?"

    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()[0:1]
    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(memory / 2**20, 1),
        "kernel": platform.release(), "python": platform.python_version(),
        "wrk": wrk_version[0] if wrk_version else "?",
        "packages": {p: version(p) for p in ("flask", "gunicorn", "onnxruntime", "marshmallow", "orjson", "fastapi",
                                             "uvicorn", "pydantic", "uvloop", "httptools", "torch")},
    }


def batch_body(size: int) -> str:
    return json.dumps({"items": [{"features": EXAMPLE}] * size})


def v2_body(size: int) -> str:
    return json.dumps({"inputs": [{"name": "features", "datatype": "FP32", "shape": [size, 8],
                                   "data": EXAMPLE * size}]})


def v2_binary_body(size: int) -> tuple[bytes, dict[str, str]]:
    """What tritonclient.http sends by default: the features as binary FP32, every output asked for in binary."""
    head = json.dumps({"inputs": [{"name": "features", "datatype": "FP32", "shape": [size, 8],
                                   "parameters": {"binary_data_size": size * 8 * 4}}],
                       "parameters": {"binary_data_output": True}}).encode()
    features = struct.pack(f"<{size * 8}f", *(EXAMPLE * size))
    return head + features, {"Inference-Header-Content-Length": str(len(head))}


def paired_runs(scratch: Path, rounds: int, duration_s: float, servers: list[Server], envs: dict[str, dict[str, str]],
                body: str, ids_template: str | None = None) -> dict[str, Any]:
    """Two configurations of omni-mev, A/B in alternating order per round; ratio of the first to the second.

    ids_template, when given, has ROUND (replaced per configuration and round)
    and NUMBER (a counter per request), so every request carries a fresh id.
    """
    started = {name: omni_mev(name, env).start() for name, env in envs.items()}
    servers += started.values()
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in started}
    versions = {}
    try:
        for name, server in started.items():
            with urllib.request.urlopen(server.url + "/health", timeout=5) as response:
                versions[name] = json.loads(response.read())["model_version"]
            warm(server.url + "/predict", body, scratch)
        pairs = list(started.items())
        for round_index in range(rounds):
            for name, server in pairs if round_index % 2 == 0 else pairs[::-1]:
                ids = (ids_template.replace("ROUND", f"{name.replace(' ', '-')}{round_index}").replace("NUMBER", "%d")
                       if ids_template else None)
                pids = server.worker_pids()
                before = cpu_s(pids)
                result = wrk(server.url + "/predict", body, 8, duration_s, scratch, ids)
                result["worker_cpu_us_per_request"] = cpu_us_per_request(before, cpu_s(pids), result["requests"])
                runs[name].append(result)
    finally:
        for server in started.values():
            server.stop()
    first, second = runs.values()
    ratios = [a["requests_per_s"] / b["requests_per_s"] for a, b in zip(first, second)]
    return {"runs": runs, "ratio_per_round": ratios, "median_ratio": statistics.median(ratios),
            "model_versions": versions}


def ledger_cost(scratch: Path, rounds: int, duration_s: float, servers: list[Server]) -> dict[str, Any]:
    """/predict with a fresh opportunity_id per request, the ledger on (SQLite, the default) against off, A/B."""
    body = json.dumps({"features": EXAMPLE, "opportunity_id": "bench-ledger-0001"})
    template = json.dumps({"features": EXAMPLE, "opportunity_id": f"bench-{os.urandom(4).hex()}-ROUND-NUMBER"})
    return paired_runs(scratch, rounds, duration_s, servers, {"on": {}, "off": {"AI_LEDGER_URL": "off"}}, body,
                       template)


def train_ensemble(scratch: Path, smoke: bool) -> Path:
    """The ensemble `omni-mev train --family ensemble` builds (deterministic: the same graph on any machine)."""
    output = scratch / "ensemble"
    small = ["--opportunities", "6000", "--max-epochs", "1", "--batches-per-epoch", "5"] if smoke else []
    subprocess.run([sys.executable, "-m", "omni_mev.cli", "train", "--family", "ensemble", "--output", str(output),
                    *small], cwd=ROOT, check=True, stdout=subprocess.DEVNULL, timeout=1800)
    return output / "lstm_omni.onnx"


def prediction_us(model_path: Path, repeats: int) -> float:
    """ONNX Runtime's time for one single-vector prediction, warm: median of 5 blocks."""
    from omni_mev.runtime.onnx_runtime import OnnxModel

    model = OnnxModel(model_path)
    model.load()
    x = np.array([[EXAMPLE]], np.float32)
    for _ in range(1000):
        model.predict(x)
    blocks = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats):
            model.predict(x)
        blocks.append((time.perf_counter() - start) / repeats * 1e6)
    return statistics.median(blocks)


def family_cost(scratch: Path, rounds: int, duration_s: float, servers: list[Server], smoke: bool) -> dict[str, Any]:
    """The ensemble against the shipped LSTM: per prediction in-process, and per /predict as served, A/B."""
    ensemble = train_ensemble(scratch, smoke)
    shipped = ROOT / "models" / "lstm_omni.onnx"
    card = json.loads(ensemble.with_suffix(".json").read_text())
    body = json.dumps({"features": EXAMPLE})
    served = paired_runs(scratch, rounds, duration_s, servers,
                         {"ensemble": {"AI_MODEL_PATH": str(ensemble)}, "lstm": {"AI_MODEL_PATH": str(shipped)}}, body)
    repeats = 2000 if smoke else 20000
    return {"ensemble_version": card["version_short"], "trees": card["architecture"]["trees"]["iterations"],
            "shipped_family": json.loads(shipped.with_suffix(".json").read_text()).get("family", "lstm"),
            "prediction_us": {"ensemble": prediction_us(ensemble, repeats), "lstm": prediction_us(shipped, repeats)},
            **served}


def ledger_size(scratch: Path, records: int) -> dict[str, Any]:
    """Bytes on disk per million predictions in a SQLite ledger: single vectors, and 8 steps of history."""
    from omni_mev.ledger.store import PredictionRow, SqlLedger

    sizes = {}
    for steps in (1, 9):
        path = scratch / f"ledger-size-{steps}.db"
        ledger = SqlLedger(f"sqlite:///{path}")
        window = (np.tile(np.array(EXAMPLE, np.float32), (steps, 1))).tobytes()
        now = time.time()
        for start in range(0, records, 50_000):
            ledger.record(PredictionRow(f"opp-{i:012d}", now + i * 1e-3, "predict", "SIMULATION", "onnx",
                                        "bb504f0433ef", 0.5 + (i % 1000) / 2000, None, None, 0.78, False, None,
                                        steps, window)
                          for i in range(start, min(start + 50_000, records)))
            ledger.flush()
        ledger.engine.dispose()
        total = sum(f.stat().st_size for f in scratch.glob(f"ledger-size-{steps}.db*"))
        sizes[f"steps_{steps}"] = {"records": records, "bytes": total,
                                   "mb_per_million": round(total / records * 1e6 / 2**20, 1)}
    return sizes


def run(smoke: bool, rounds: int, duration_s: float, connections: list[int]) -> dict[str, Any]:
    """All measurements, as one JSON-able dict."""
    predict_body = json.dumps({"features": EXAMPLE})
    results: dict[str, Any] = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                               "smoke": smoke, "machine": machine(), "rounds": rounds, "duration_s": duration_s,
                               "wrk_threads": 1}
    SMOKE["on"] = smoke
    with session("omni-mev-bench-") as (scratch, servers):
        omni, ref = omni_mev("omni-mev").start(), reference().start()
        servers += [omni, ref]
        results["ready_s"] = {"omni-mev": omni.ready_s, "reference": ref.ready_s}
        # Warm both (first requests allocate, JIT-free but cache-cold).
        for server in (omni, ref):
            warm(server.url + "/predict", predict_body, scratch)
        single: dict[str, list[dict[str, Any]]] = {"omni-mev": [], "reference": []}
        for round_index in range(rounds):
            order = (omni, ref) if round_index % 2 == 0 else (ref, omni)
            for c in connections:
                for server in order:
                    pids = server.worker_pids()
                    before = cpu_s(pids)
                    run_result = wrk(server.url + "/predict", predict_body, c, duration_s, scratch)
                    # Worker CPU per request: what a request costs, whatever the
                    # spread of connections over workers did to throughput.
                    run_result["worker_cpu_us_per_request"] = cpu_us_per_request(
                        before, cpu_s(pids), run_result["requests"])
                    single[server.name].append({"round": round_index, **run_result})
        results["single"] = single
        results["ratio"] = {}
        for c in connections:
            per_round = []
            for round_index in range(rounds):
                a = next(r for r in single["omni-mev"] if r["round"] == round_index and r["connections"] == c)
                b = next(r for r in single["reference"] if r["round"] == round_index and r["connections"] == c)
                per_round.append({"throughput": a["requests_per_s"] / b["requests_per_s"],
                                  "p99": a["p99_ms"] / b["p99_ms"]})
            results["ratio"][str(c)] = {
                "per_round": per_round,
                "median_throughput": statistics.median(r["throughput"] for r in per_round),
                "median_p99": statistics.median(r["p99"] for r in per_round),
            }
        print(summary(results), flush=True)
        results["rss_mb"] = {"omni-mev": [rss_mb(p) for p in omni.worker_pids()],
                             "reference": [rss_mb(p) for p in ref.worker_pids()]}
        ref.stop()

        batch = []
        v2 = "/v2/models/lstm_omni/infer"
        # A smoke run takes one size per endpoint: every encoder runs, at a fraction of the time.
        for endpoint, path, make_body, sizes in (("/predict/batch", "/predict/batch", batch_body,
                                                  (1024,) if smoke else (1, 64, 1024)),
                                                 ("V2 infer", v2, v2_body, (4096,) if smoke else (1, 64, 1024, 4096)),
                                                 ("V2 infer, binary", v2, v2_binary_body,
                                                  (4096,) if smoke else (1024, 4096))):
            for size in sizes:
                made = make_body(size)
                body, headers = made if isinstance(made, tuple) else (made, None)
                run_result = wrk(omni.url + path, body, 8, duration_s, scratch, headers=headers)
                batch.append({"endpoint": endpoint, "batch_size": size, **run_result,
                              "predictions_per_s": run_result["requests_per_s"] * size})
        results["batch"] = batch
        omni.stop()

        variants = {}
        redis_port = free_port()
        redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "no"], stdout=subprocess.DEVNULL, start_new_session=True)
        try:
            time.sleep(0.3)
            redis_env = {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(redis_port)}
            for name, env in (("no redis", {}), ("redis, cache off", redis_env),
                              ("redis, cache on (all hits)", {**redis_env, "AI_CACHE_ENABLED": "true"}),
                              ("pytorch fallback", {"AI_MODEL_PATH": str(scratch / "absent.onnx"),
                                                    "AI_TORCH_WEIGHTS_PATH": str(ROOT / "models" / "lstm_omni.pt")})):
                server = omni_mev(name, env).start()
                servers.append(server)
                warm(server.url + "/predict", predict_body, scratch)
                variants[name] = {**wrk(server.url + "/predict", predict_body, 8, duration_s, scratch),
                                  "rss_mb": [rss_mb(p) for p in server.worker_pids()], "ready_s": server.ready_s}
                server.stop()
        finally:
            redis.terminate()
            redis.wait(10)
        results["variants"] = variants
        from bench.dispatch import measure as dispatch_cost

        results["dispatch"] = dispatch_cost(servers, scratch, duration_s, smoke)
        results["ledger"] = ledger_cost(scratch, rounds, duration_s, servers)
        results["ensemble"] = family_cost(scratch, rounds, duration_s, servers, smoke)
        results["ledger_size"] = ledger_size(scratch, 20_000 if smoke else 1_000_000)
        from bench import streams  # here: it imports this module

        results["streams"] = streams.measure(servers, rounds, duration_s, 50 if smoke else streams.IDLE_CONNECTIONS)
    return results


def summary(results: dict[str, Any]) -> str:
    """The two figures the project is held to: /predict throughput and p99 against the reference."""
    ratio = results["ratio"].get("8") or next(iter(results["ratio"].values()))
    return (f"/predict vs reference at 8 connections, median of {results['rounds']} rounds: "
            f"throughput {ratio['median_throughput']:.2f}x (goal >= 1.0), p99 {ratio['median_p99']:.2f}x (goal <= 1.0)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="1 round of 1-second runs, 8 connections")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument("--connections", default="1,8,64")
    parser.add_argument("--results", default=str(ROOT / "bench" / "results"), help="folder for <date>.json")
    parser.add_argument("--docs", default=str(ROOT / "docs"), help="folder for benchmarks.md/png ('' to skip)")
    parser.add_argument("--readme", default=str(ROOT / "README.md"),
                        help="README whose Performance figures a full run rewrites ('' to skip)")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench: wrk is not installed (apt-get install wrk; make bench does it)", file=sys.stderr)
        return 2
    if args.smoke:
        rounds, duration, connections = 1, 1.0, [8]
    else:
        rounds, duration, connections = args.rounds, args.duration, [int(c) for c in args.connections.split(",")]
    results = run(args.smoke, rounds, duration, connections)
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{results['date'][:10]}{'-smoke' if args.smoke else ''}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")
    if args.docs:
        from bench.report import write_report

        write_report(results, Path(args.docs), path)
    # The README quotes full runs only: a smoke run's figures say nothing about speed.
    if args.readme and not args.smoke:
        from bench.report import write_readme_performance

        source = path.resolve().relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path
        write_readme_performance(results, Path(args.readme), str(source))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
