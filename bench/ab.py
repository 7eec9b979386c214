"""A/B of the request path: this checkout against another commit, both served at once, wrk rounds alternating.

    python -m bench.ab REF [--rounds 5] [--duration 10] [--connections 8]

REF (a commit, a tag, HEAD~1) is checked out into a temporary worktree; each side runs gunicorn with
gunicorn.conf.py and 2 workers on loopback, from its own tree. Each round sends /predict to one side, then the
other (the order alternates), and reads the workers' CPU from /proc. It prints each round and the medians:
requests/s, p99 and worker CPU per request. Both servers share the machine's cores, so compare the two sides,
not these figures with a lone server's. Every load is bounded by wrk's duration.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import subprocess
import tempfile
from pathlib import Path

from bench import run as bench_run
from bench.run import EXAMPLE, Server, cpu_s, cpu_us_per_request, free_port, wrk

ROOT = Path(__file__).resolve().parent.parent


def serve(name: str, tree: Path) -> Server:
    """gunicorn from `tree` (its cwd and PYTHONPATH), 2 workers, state in temporary files."""
    env = {"AI_ENGINE_PORT": "{port}", "AI_ENGINE_WORKERS": "2", "PROMETHEUS_PORT": str(free_port()),
           "OMNI_MEV_ENV_FILE": "/nonexistent", "AI_DECISION_LOG": tempfile.mktemp(suffix=".jsonl"),
           "AI_LEDGER_URL": f"sqlite:///{tempfile.mktemp(suffix='.db')}"}
    bench_run.ROOT = tree  # Server.start runs from bench.run's ROOT
    try:
        return Server(name, [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"], env).start()
    finally:
        bench_run.ROOT = ROOT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ref", help="the commit to compare this checkout with")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    other = Path(tempfile.mkdtemp(prefix="omni-mev-ab-"))
    subprocess.run(["git", "worktree", "add", "--detach", str(other), args.ref], cwd=ROOT, check=True,
                   capture_output=True)
    scratch = Path(tempfile.mkdtemp())
    body = json.dumps({"features": EXAMPLE})
    servers: dict[str, Server] = {}
    runs: dict[str, list[dict]] = {args.ref: [], "this checkout": []}
    try:
        servers = {args.ref: serve(args.ref, other), "this checkout": serve("this checkout", ROOT)}
        for server in servers.values():
            wrk(server.url + "/predict", body, args.connections, 2, scratch)  # warm-up
        for index in range(args.rounds):
            order = list(servers) if index % 2 == 0 else list(servers)[::-1]
            for name in order:
                pids = servers[name].worker_pids()
                before = cpu_s(pids)
                result = wrk(servers[name].url + "/predict", body, args.connections, args.duration, scratch)
                result["cpu_us"] = cpu_us_per_request(before, cpu_s(pids), result["requests"])
                runs[name].append(result)
                print(f"{name:>14}  {result['requests_per_s']:8.0f} req/s  p99 {result['p99_ms']:.3f} ms  "
                      f"worker CPU {result['cpu_us'] or float('nan'):.1f} µs  non-2xx {result['non_2xx']}", flush=True)
    finally:
        for server in servers.values():
            server.stop()
        subprocess.run(["git", "worktree", "remove", "--force", str(other)], cwd=ROOT, capture_output=True)
    for name, results in runs.items():
        cpu = [r["cpu_us"] for r in results if r["cpu_us"]]
        print(f"{name:>14}  median {statistics.median(r['requests_per_s'] for r in results):.0f} req/s, "
              f"p99 {statistics.median(r['p99_ms'] for r in results):.3f} ms, "
              f"worker CPU {statistics.median(cpu) if cpu else float('nan'):.1f} µs per request "
              f"({args.connections} connections, {len(results)} rounds of {args.duration:g} s)")


if __name__ == "__main__":
    main()
