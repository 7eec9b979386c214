"""Markdown tables and a PNG chart from a benchmark result (bench/run.py writes both)."""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

START = "<!-- results:start -->"
END = "<!-- results:end -->"


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def _cpu(rows: list[dict[str, Any]]) -> str:
    measured = [r["worker_cpu_us_per_request"] for r in rows if r.get("worker_cpu_us_per_request") is not None]
    return f"{statistics.median(measured):.0f}" if measured else "n/a"


def tables(results: dict[str, Any], source: str) -> str:
    """The generated part of docs/benchmarks.md."""
    m = results["machine"]
    lines = [
        f"Measured {results['date']} ({source}) on {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, "
        f"Linux {m['kernel']}, Python {m['python']}, {m['wrk']}. Packages: "
        + ", ".join(f"{k} {v}" for k, v in m["packages"].items()) + ".",
        "",
        f"`wrk -t1`, {results['rounds']} rounds of {results['duration_s']:g} s per target and connection count, "
        "the two targets alternating (A/B, then B/A) so that drift of the machine cancels. Medians over rounds; "
        "both targets run 2 workers on the same 2 cores as wrk.",
        "",
        "### Single-request `/predict`",
        "",
        "| connections | target | requests/s | p50 ms | p99 ms | max ms | worker CPU µs per request | non-2xx "
        "| socket errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    connections = sorted({r["connections"] for r in results["single"]["omni-mev"]})
    for c in connections:
        for name in ("omni-mev", "reference"):
            rows = [r for r in results["single"][name] if r["connections"] == c]
            lines.append(
                f"| {c} | {name} | {_median(rows, 'requests_per_s'):,.0f} | {_median(rows, 'p50_ms'):.2f} "
                f"| {_median(rows, 'p99_ms'):.2f} | {max(r['max_ms'] for r in rows):.1f} "
                f"| {_cpu(rows)} "
                f"| {sum(r['non_2xx'] for r in rows)} | {sum(r['socket_errors'] for r in rows)} |")
    lines += ["", "omni-mev / reference, per round and median:", "",
              "| connections | throughput ratio per round | median | p99 ratio (lower is better) median |",
              "|---|---|---|---|"]
    for c in connections:
        ratio = results["ratio"][str(c)]
        rounds = ", ".join(f"{r['throughput']:.2f}" for r in ratio["per_round"])
        lines.append(f"| {c} | {rounds} | **{ratio['median_throughput']:.2f}** | {ratio['median_p99']:.2f} |")
    lines += ["", "### Batches (omni-mev, 8 connections)", "",
              "`/predict/batch` takes items shaped like `/predict` bodies; V2 infer takes one flat FP32 tensor "
              "(`[batch, 8]`), which is cheaper to parse; \"V2 infer, binary\" sends it, and gets the outputs, "
              "as binary tensors (what tritonclient.http does by default).", "",
              "| endpoint | items per request | requests/s | predictions/s | p50 ms | p99 ms |",
              "|---|---|---|---|---|---|"]
    for row in results["batch"]:
        lines.append(f"| {row['endpoint']} | {row['batch_size']} | {row['requests_per_s']:,.0f} "
                     f"| {row['predictions_per_s']:,.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} |")
    lines += ["", "### Variants (omni-mev, `/predict`, 8 connections, one run each)", "",
              "| variant | requests/s | p50 ms | p99 ms | worker RSS MB | ready s |", "|---|---|---|---|---|---|"]
    for name, row in results["variants"].items():
        rss = ", ".join(f"{v:.0f}" for v in row["rss_mb"])
        lines.append(f"| {name} | {row['requests_per_s']:,.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} "
                     f"| {rss} | {row['ready_s']:.2f} |")
    ledger = results.get("ledger")
    if ledger:
        lines += ["", "### The outcome ledger (`/predict` with an `opportunity_id`, 8 connections)", "",
                  "| ledger | requests/s per round | median |", "|---|---|---|"]
        for name in ("on", "off"):
            per_round = [r["requests_per_s"] for r in ledger["runs"][name]]
            lines.append(f"| {name} | {', '.join(f'{v:,.0f}' for v in per_round)} "
                         f"| {statistics.median(per_round):,.0f} |")
        lines += ["", f"With the ledger on (SQLite, the default) `/predict` serves "
                      f"**{ledger['median_ratio']:.3f}×** the requests/s of the same service with it off "
                      f"(rounds: {', '.join(f'{r:.3f}' for r in ledger['ratio_per_round'])})."]
    ensemble = results.get("ensemble")
    if ensemble:
        lines += ["", "### The ensemble against the LSTM (`/predict`, 8 connections)", "",
                  f"The ensemble is what `omni-mev train --family ensemble` builds (version "
                  f"`{ensemble['ensemble_version']}`, {ensemble['trees']} trees blended with the LSTM); the LSTM "
                  f"is the shipped model.", "",
                  "| model | µs per prediction (ONNX Runtime, one vector) | requests/s per round | median "
                  "| worker CPU µs per request (median) |", "|---|---|---|---|---|"]
        for name in ("ensemble", "lstm"):
            runs = ensemble["runs"][name]
            per_round = ", ".join(f"{r['requests_per_s']:,.0f}" for r in runs)
            lines.append(f"| {name} | {ensemble['prediction_us'][name]:.1f} | {per_round} "
                         f"| {_median(runs, 'requests_per_s'):,.0f} | {_cpu(runs)} |")
        lines += ["", f"Serving the ensemble, `/predict` runs at **{ensemble['median_ratio']:.3f}×** the "
                      f"requests/s of the LSTM (rounds: {', '.join(f'{r:.3f}' for r in ensemble['ratio_per_round'])})."]
    dispatch = results.get("dispatch")
    if dispatch:
        lines += ["", "### LIVE dispatch (the engine stub in the benchmark's process, on the same cores)", "",
                  f"A batch of {dispatch['batch'][0]['items']:,} approved opportunities against an engine answering "
                  f"in {dispatch['batch'][0]['engine_latency_ms']} ms: time to the response, time until the last "
                  "order reached the engine, and what became of the orders (per run).", "",
                  "| settings | response s (median) | last order at the engine s (median) | runs: in the response "
                  "→ logged outcomes |", "|---|---|---|---|"]
        for batch in dispatch["batch"]:
            settings = ", ".join(f"{k}={v}" for k, v in batch["settings"].items()) or "defaults"
            runs = "; ".join(f"{r['in_response']} → {r['outcomes']}" for r in batch["runs"])
            lines.append(f"| {settings} | {batch['median_response_s']:.2f} | {batch['median_last_order_s']:.2f} "
                         f"| {runs} |")
        lines += ["", "`/predict` (no dispatch) at 8 connections while approved opportunities are dispatched at "
                      "a fixed rate on other connections:", "",
                  "| engine answers in | dispatches sent | /predict requests/s | p50 ms | p99 ms |",
                  "|---|---|---|---|---|"]
        for row in dispatch["predict_p99"].values():
            lines.append(f"| {row['engine_delay_s']:g} s | {row['dispatches']} at {row['dispatch_rate_per_s']:g}/s "
                         f"| {row['requests_per_s']:,.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} |")
        lines += ["", f"p99 with the slow engine / with the fast one: **{dispatch['p99_ratio_slow_to_fast']:.2f}×** "
                      "(goal ≤ 1.5×)."]
    size = results.get("ledger_size")
    if size:
        lines += ["", "| ledger on disk (SQLite) | records written | MB per million predictions |", "|---|---|---|"]
        for name, label in (("steps_1", "single vectors"), ("steps_9", "with 8 steps of history")):
            lines.append(f"| {label} | {size[name]['records']:,} | {size[name]['mb_per_million']:,} |")
    streams = results.get("streams")
    if streams:
        lines += ["", "### Persistent connections: WebSocket and gRPC streams against HTTP keep-alive", "",
                  "The same closed-loop Node client (bench/stream_load.mjs) on all three: each connection sends one "
                  "opportunity and waits for its answer. WebSocket and the Triton gRPC stream: `omni-mev stream` "
                  "(one process); HTTP: `/predict` on gunicorn (two workers). Medians of the rounds.", "",
                  "| connections | WebSocket msg/s | gRPC stream msg/s | HTTP req/s | WebSocket / HTTP | gRPC / HTTP "
                  "| p99 ms: WebSocket, gRPC, HTTP |",
                  "|---|---|---|---|---|---|---|"]
        for connections, row in streams["summary"].items():
            lines.append(f"| {connections} | {row['ws_messages_per_s']:,.0f} | {row['grpc_messages_per_s']:,.0f} "
                         f"| {row['http_messages_per_s']:,.0f} | **{row['throughput_ratio']:.2f}×** "
                         f"| **{row['grpc_throughput_ratio']:.2f}×** | {row['ws_p99_ms']:.2f}, "
                         f"{row['grpc_p99_ms']:.2f}, {row['http_p99_ms']:.2f} |")
        busiest = streams["summary"][max(streams["summary"], key=int)]
        lines += ["", f"Two stream processes sharing the port (`AI_STREAM_PROCESSES=2`) at "
                      f"{max(streams['summary'], key=int)} connections: {busiest['ws_2_processes_messages_per_s']:,.0f} "
                      f"WebSocket msg/s, **{busiest['ws_2_processes_ratio']:.2f}×** one process (p99 "
                      f"{busiest['ws_2_processes_p99_ms']:.2f} ms)."]
        idle = streams["idle"]
        lines += ["", f"{idle['connections']:,} idle WebSocket connections: the stream server's RSS went from "
                      f"{idle['rss_before_mb']:.0f} to {idle['rss_after_mb']:.0f} MB, "
                      f"{idle['kb_per_connection']:.1f} KB per connection."]
    rss = results["rss_mb"]
    ready = results["ready_s"]
    lines += ["", "### Memory and start-up", "",
              "| target | worker RSS MB (after the load) | start to first `/health` 200 |", "|---|---|---|",
              f"| omni-mev | {', '.join(f'{v:.0f}' for v in rss['omni-mev'])} | {ready['omni-mev']:.2f} s |",
              f"| reference | {', '.join(f'{v:.0f}' for v in rss['reference'])} | {ready['reference']:.2f} s |",
              "", "![requests/s and p99 by connections](benchmarks.png)", ""]
    return "\n".join(lines)


def chart(results: dict[str, Any], path: Path) -> None:
    """Requests/s and p99 latency per connection count, both targets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    connections = sorted({r["connections"] for r in results["single"]["omni-mev"]})
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    width = 0.38
    for offset, name in ((-width / 2, "omni-mev"), (width / 2, "reference")):
        rows = results["single"][name]
        rps = [_median([r for r in rows if r["connections"] == c], "requests_per_s") for c in connections]
        p99 = [_median([r for r in rows if r["connections"] == c], "p99_ms") for c in connections]
        xs = [i + offset for i in range(len(connections))]
        left.bar(xs, rps, width, label=name)
        right.bar(xs, p99, width, label=name)
    for axis, title in ((left, "requests/s (higher is better)"), (right, "p99 latency ms (lower is better)")):
        axis.set_xticks(range(len(connections)), [f"{c} conn." for c in connections])
        axis.set_title(title)
        axis.legend()
    fig.suptitle(f"/predict, medians of {results['rounds']} rounds, {results['machine']['cores']} cores")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(results: dict[str, Any], docs: Path, source: Path) -> None:
    """Replace the generated section of docs/benchmarks.md and redraw docs/benchmarks.png."""
    docs.mkdir(parents=True, exist_ok=True)
    page = docs / "benchmarks.md"
    text = page.read_text() if page.exists() else f"# Benchmarks\n\n{START}\n{END}\n"
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    try:
        label = str(source.relative_to(Path(__file__).resolve().parent.parent))
    except ValueError:
        label = source.name
    page.write_text(f"{head}{START}\n{tables(results, label)}{END}{tail}")
    chart(results, docs / "benchmarks.png")


README_START = "<!-- performance: written by bench.report from the newest bench/results/<date>.json; do not edit -->"
README_END = "<!-- /performance -->"


def newest_results(folder: Path) -> Path:
    """The newest full run of `make bench`: bench/results/<date>.json (not the smoke runs, not the others)."""
    runs = sorted(path for path in folder.glob("20[0-9][0-9]-[0-9][0-9]-[0-9][0-9].json"))
    if not runs:
        raise FileNotFoundError(f"no bench/results/<date>.json in {folder}")
    return runs[-1]


def readme_performance(results: dict[str, Any], source: str) -> str:
    """The README's Performance figures, from one run's results."""
    ratio = results["ratio"]["8"]
    single = {name: _median([r for r in results["single"][name] if r["connections"] == 8], "requests_per_s")
              for name in ("omni-mev", "reference")}
    batch = {(row["endpoint"], row["batch_size"]): row["predictions_per_s"] for row in results["batch"]}
    lines = [f"`make bench` ({source}, {results['date'][:10]}, {results['rounds']} alternating rounds of "
             f"{results['duration_s']:g} s): omni-mev (gunicorn, 2 workers, as deployed) serves **`/predict` at "
             f"{ratio['median_throughput']:.2f}x the requests/s of the FastAPI/uvicorn reference at 8 connections** "
             f"(medians {single['omni-mev']:,.0f} vs {single['reference']:,.0f} req/s; p99 ratio "
             f"{ratio['median_p99']:.2f})"]
    if ("/predict/batch", 1024) in batch:
        lines.append(f"; batches reach {batch[('/predict/batch', 1024)]:,.0f} predictions/s at 1,024 rows through "
                     "`/predict/batch`")
    if ("V2 infer", 1024) in batch:
        lines.append(f" and {batch[('V2 infer', 1024)]:,.0f} through the V2 tensor endpoint")
    ledger = results.get("ledger")
    if ledger:
        lines.append(f"; the outcome ledger costs {1 - ledger['median_ratio']:.1%} of `/predict` throughput")
    rss = max(results["rss_mb"]["omni-mev"])
    lines.append(f"; a worker holds {rss:.0f} MB and the service answers `/health` {results['ready_s']['omni-mev']:.2f} "
                 "s after start.")
    return "".join(lines)


def write_readme_performance(results: dict[str, Any], readme: Path, source: str) -> None:
    """Replace the generated Performance figures of the README."""
    text = readme.read_text()
    head, _, rest = text.partition(README_START)
    _, _, tail = rest.partition(README_END)
    readme.write_text(f"{head}{README_START}\n{readme_performance(results, source)}\n{README_END}{tail}")



def main() -> int:
    """`python -m bench.report`: the README's Performance figures from the newest bench/results/<date>.json."""
    root = Path(__file__).resolve().parent.parent
    newest = newest_results(root / "bench" / "results")
    write_readme_performance(json.loads(newest.read_text()), root / "README.md", f"bench/results/{newest.name}")
    print(f"README.md: Performance figures from {newest.relative_to(root)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
