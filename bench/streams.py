"""Persistent connections: WebSocket messages and a Triton gRPC stream to `omni-mev stream`, against HTTP/1.1
keep-alive /predict.

The same closed-loop Node client drives both (bench/stream_load.mjs: each
connection sends one opportunity, waits for its answer, sends the next), at 1
and 8 connections, in alternating order per round, on the same machine in the
same run. At 8 connections, also WebSocket to a stream server of two
processes sharing its port (AI_STREAM_PROCESSES=2). Also: the memory an idle
WebSocket connection costs the stream server (RSS before and after opening
1,000).

    python -m bench.streams            # 3 rounds of 10 s (part of `make bench`)
    python -m bench.streams --smoke    # 1 round of 1 s
"""
from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from typing import Any

from bench.run import ROOT, Server, free_port, machine, omni_mev, rss_mb, session, write_results

LOAD = ROOT / "bench" / "stream_load.mjs"
CONNECTIONS = (1, 8)
IDLE_CONNECTIONS = 1000
# The stream server of several processes measured beside the one-process one.
STREAM_PROCESSES = 2


def stream_server(grpc_port: int, env: dict[str, str] | None = None) -> Server:
    """omni-mev stream as deployed beside the HTTP service (its /health answers on the WebSocket port)."""
    base = {"AI_STREAM_PORT": "{port}", "AI_GRPC_PORT": str(grpc_port), "OMNI_MEV_ENV_FILE": "/nonexistent",
            "PROMETHEUS_PORT": str(free_port()),
            "AI_DECISION_LOG": tempfile.mktemp(suffix=".jsonl"),
            "AI_LEDGER_URL": "off"}
    return Server("stream", [sys.executable, "-m", "omni_mev.cli", "stream"], {**base, **(env or {})})


def load(kind: str, url: str, connections: int, seconds: float) -> dict[str, Any]:
    """One run of the Node load generator: messages/s and latency percentiles."""
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not installed (make system-deps)")
    result = subprocess.run([node, str(LOAD), kind, url, str(connections), str(seconds)], capture_output=True,
                            text=True, timeout=seconds + 60)
    if result.returncode != 0:
        raise RuntimeError(f"stream_load.mjs failed: {result.stderr[-2000:]}")
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    return {"connections": connections, **figures, "messages_per_s": figures["messages"] / figures["duration_s"]}


def idle_memory(server: Server, count: int) -> dict[str, Any]:
    """RSS of the stream server before and after `count` idle WebSocket connections are opened."""
    before = rss_mb(server.process.pid)
    sockets = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            key = base64.b64encode(os.urandom(16)).decode()
            sock.sendall(f"GET /stream HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
            if not sock.recv(4096).startswith(b"HTTP/1.1 101"):
                raise RuntimeError("the stream server refused an idle connection")
            sockets.append(sock)
        after = rss_mb(server.process.pid)
    finally:
        for sock in sockets:
            sock.close()
    return {"connections": count, "rss_before_mb": before, "rss_after_mb": after,
            "kb_per_connection": (after - before) * 1024 / count}


def measure(servers: list[Server], rounds: int, duration_s: float, idle: int = IDLE_CONNECTIONS) -> dict[str, Any]:
    """Both transports at each connection count, alternating which goes first per round."""
    grpc_port = free_port()
    http_server, stream = omni_mev("omni-mev").start(), stream_server(grpc_port).start()
    two_processes = stream_server(free_port(), {"AI_STREAM_PROCESSES": str(STREAM_PROCESSES)}).start()
    servers += [http_server, stream, two_processes]
    # What each label drives: stream_load.mjs's transport, and where.
    targets = {"ws": ("ws", f"ws://127.0.0.1:{stream.port}/stream"), "http": ("http", http_server.url + "/predict"),
               "grpc": ("grpc", f"127.0.0.1:{grpc_port}"), "ws2": ("ws", f"ws://127.0.0.1:{two_processes.port}/stream")}
    runs: dict[str, list[dict[str, Any]]] = {}
    for round_index in range(rounds):
        for connections in CONNECTIONS:
            kinds = ("ws", "grpc", "http") + (("ws2",) if connections == max(CONNECTIONS) else ())
            for kind in kinds if round_index % 2 == 0 else reversed(kinds):
                runs.setdefault(f"{kind}@{connections}", []).append(load(*targets[kind], connections, duration_s))
    summary = {}
    for connections in CONNECTIONS:
        ws, http, grpc = runs[f"ws@{connections}"], runs[f"http@{connections}"], runs[f"grpc@{connections}"]
        summary[str(connections)] = {
            "grpc_messages_per_s": statistics.median(r["messages_per_s"] for r in grpc),
            "grpc_p99_ms": statistics.median(r["p99_ms"] for r in grpc),
            "grpc_throughput_ratio": statistics.median(g["messages_per_s"] / h["messages_per_s"]
                                                       for g, h in zip(grpc, http)),
            "ws_messages_per_s": statistics.median(r["messages_per_s"] for r in ws),
            "http_messages_per_s": statistics.median(r["messages_per_s"] for r in http),
            "ws_p50_ms": statistics.median(r["p50_ms"] for r in ws),
            "http_p50_ms": statistics.median(r["p50_ms"] for r in http),
            "ws_p99_ms": statistics.median(r["p99_ms"] for r in ws),
            "http_p99_ms": statistics.median(r["p99_ms"] for r in http),
            "throughput_ratio": statistics.median(w["messages_per_s"] / h["messages_per_s"] for w, h in zip(ws, http)),
        }
    several, one = runs[f"ws2@{max(CONNECTIONS)}"], runs[f"ws@{max(CONNECTIONS)}"]
    summary[str(max(CONNECTIONS))].update(
        ws_2_processes_messages_per_s=statistics.median(r["messages_per_s"] for r in several),
        ws_2_processes_p99_ms=statistics.median(r["p99_ms"] for r in several),
        ws_2_processes_ratio=statistics.median(t["messages_per_s"] / o["messages_per_s"] for t, o in zip(several, one)),
    )
    memory = idle_memory(stream, idle)
    for server in (http_server, stream, two_processes):
        server.stop()
    return {"runs": runs, "summary": summary, "idle": memory, "http_workers": 2, "stream_processes": 1}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--results", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args(argv)
    rounds, duration, idle = (1, 1.0, 50) if args.smoke else (args.rounds, args.duration, IDLE_CONNECTIONS)
    with session("omni-mev-streams-") as (_, servers):
        results = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "smoke": args.smoke,
                   "machine": machine(), "rounds": rounds, "duration_s": duration,
                   **measure(servers, rounds, duration, idle)}
    for connections, row in results["summary"].items():
        print(f"{connections} connection(s): WebSocket {row['ws_messages_per_s']:,.0f} msg/s "
              f"(p99 {row['ws_p99_ms']:.2f} ms), HTTP keep-alive {row['http_messages_per_s']:,.0f} req/s "
              f"(p99 {row['http_p99_ms']:.2f} ms): {row['throughput_ratio']:.2f}x; gRPC stream "
              f"{row['grpc_messages_per_s']:,.0f} msg/s (p99 {row['grpc_p99_ms']:.2f} ms): "
              f"{row['grpc_throughput_ratio']:.2f}x", flush=True)
    busiest = results["summary"][str(max(CONNECTIONS))]
    print(f"{max(CONNECTIONS)} connections, {STREAM_PROCESSES} stream processes: WebSocket "
          f"{busiest['ws_2_processes_messages_per_s']:,.0f} msg/s (p99 {busiest['ws_2_processes_p99_ms']:.2f} ms): "
          f"{busiest['ws_2_processes_ratio']:.2f}x one process", flush=True)
    print(f"idle WebSocket connection: {results['idle']['kb_per_connection']:.1f} KB each")
    print(f"wrote {write_results(results, args.results, 'streams', args.smoke)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
