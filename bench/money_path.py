"""The money path on day two: start-up and reload by history size, /predict's p99 through a reload under load, and
what a dispatch's claim costs in each claim mode.

- History: 10,000, 100,000 and 1,000,000 past dispatches (bench/history.py: the decision log and the outbox
  table a LIVE service leaves behind). For each, the time from launching gunicorn to the first approved order
  answered `dispatched`; then a SIGHUP, with approved orders sent every 50 ms until the new workers serve: the
  slowest answer and how many were not dispatched.
- Reload under load: wrk at 8 connections on /predict for the whole run, a SIGHUP a third of the way in,
  against the same run without one.
- Claim per dispatch: IntentStore.claim of one intent per commit, as a lone order's claim is made, on SQLite
  (`host`), SQLite with Redis's SET NX in the transaction (`redis`) and PostgreSQL (`database`, fsync on).

The engine is the test suite's stub, in this process. Everything shares the machine's cores.

    python -m bench.money_path            # the sizes above
    python -m bench.money_path --smoke    # 1,000 dispatches, short runs
"""
from __future__ import annotations

import argparse
import datetime as dt
import signal
import statistics
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bench.history import write_history
from bench.run import EXAMPLE, ROOT, SMOKE, Server, machine, omni_mev, rss_mb, session, warm, write_results, wrk
from bench.dispatch import APPROVED, THRESHOLD, _post
from tests.engine_stub import EngineStub
from tests.servers import PostgresServer, RedisServer

SIZES = (10_000, 100_000, 1_000_000)
SMOKE_SIZES = (1_000,)


def _order(server: Server, opportunity_id: str) -> tuple[str, float]:
    started = time.monotonic()
    status, body = _post(server.url, {"features": APPROVED, "opportunity_id": opportunity_id})
    took = time.monotonic() - started
    return (body["execution"]["status"] if status == 200 else f"http {status}"), took


def start_and_reload(scratch: Path, servers: list[Server], dispatches: int) -> dict[str, Any]:
    """Launch-to-first-dispatch, and the orders through a SIGHUP, with `dispatches` past dispatches."""
    state = scratch / f"state-{dispatches}"
    log = state / "decisions.jsonl"
    written = time.monotonic()
    write_history(log, f"sqlite:///{state / 'outbox.db'}", dispatches)
    history_s = time.monotonic() - written
    log_mb, outbox_mb = log.stat().st_size / 1e6, (state / "outbox.db").stat().st_size / 1e6
    with EngineStub() as engine:
        server = omni_mev(f"history {dispatches}", {"LIVE_TRADING": "true", "RUST_ENGINE_URL": engine.url,
                                                    "AI_THRESHOLD": THRESHOLD, "AI_DECISION_LOG": str(log)})
        launched = time.monotonic()
        server.start()
        servers.append(server)
        try:
            status, took = _order(server, "first-after-start")
            first_s = time.monotonic() - launched
            old = set(server.worker_pids())
            server.process.send_signal(signal.SIGHUP)
            hup = time.monotonic()
            answers = []
            while set(server.worker_pids()) & old or len(answers) < 10:
                answers.append(_order(server, f"reload-{len(answers)}"))
                time.sleep(0.05)
                if time.monotonic() - hup > 60:
                    break
            reload_s = time.monotonic() - hup
            rss = [rss_mb(pid) for pid in server.worker_pids()]
        finally:
            server.stop()
    return {"past_dispatches": dispatches, "log_mb": round(log_mb, 1), "outbox_mb": round(outbox_mb, 1),
            "history_written_s": round(history_s, 1),
            "ready_s": round(server.ready_s or 0.0, 3), "first_order_s": round(first_s, 3),
            "first_order_status": status, "first_order_answer_ms": round(took * 1000, 1),
            "reload_s": round(reload_s, 3), "orders_during_reload": len(answers),
            "orders_not_dispatched": sum(1 for s, _ in answers if s != "dispatched"),
            "slowest_order_ms": round(max(t for _, t in answers) * 1000, 1), "worker_rss_mb": rss}


def reload_under_load(scratch: Path, servers: list[Server], duration_s: float) -> dict[str, Any]:
    """wrk on /predict at 8 connections, without and with a SIGHUP a third of the way in."""
    body = f'{{"features": {EXAMPLE}}}'
    server = omni_mev("reload under load").start()
    servers.append(server)
    try:
        warm(server.url + "/predict", body, scratch)
        runs = {}
        for name, reload in (("steady", False), ("with a reload", True)):
            before = set(server.worker_pids())
            timer = threading.Timer(duration_s / 3, lambda: server.process.send_signal(signal.SIGHUP))
            if reload:
                timer.start()
            runs[name] = wrk(server.url + "/predict", body, 8, duration_s, scratch)
            if reload:  # the reload's old workers gone before anything else runs
                timer.join()
                deadline = time.monotonic() + 30
                while set(server.worker_pids()) & before and time.monotonic() < deadline:
                    time.sleep(0.05)
    finally:
        server.stop()
    return runs


def claim_cost(scratch: Path, claims: int) -> dict[str, Any]:
    """Microseconds per claim of one intent, committed (median, p99), in each claim mode."""
    from omni_mev.trading.intent_store import Intent, IntentStore

    def timed(store: IntentStore, confirm: Any = None) -> dict[str, float]:
        store.claim([Intent("warm", time.time(), time.time() + 1, {})], "bench", "bench:1:1", confirm)
        times = []
        for i in range(claims):
            intent = Intent(f"claim-{uuid.uuid4().hex}", time.time(), time.time() + 1, {"opportunity_id": str(i),
                                                                                      "features": {}})
            started = time.perf_counter()
            store.claim([intent], "bench", "bench:1:1", confirm)
            times.append((time.perf_counter() - started) * 1e6)
        times.sort()
        return {"median_us": round(statistics.median(times), 1), "p99_us": round(times[int(0.99 * (len(times) - 1))], 1),
                "claims": claims}

    results: dict[str, Any] = {"host (SQLite)": timed(IntentStore(f"sqlite:///{scratch / 'claims-host.db'}"))}
    with RedisServer() as redis_server:
        import redis

        client = redis.Redis(port=redis_server.port)

        def confirm(ids: list[str]) -> set[str]:
            pipeline = client.pipeline(transaction=False)
            for opportunity_id in ids:
                pipeline.set(f"ai:dispatch:{opportunity_id}", "1", nx=True, ex=86_400)
            return {i for i, ok in zip(ids, pipeline.execute()) if ok}

        results["redis (SQLite + Redis SET NX)"] = timed(IntentStore(f"sqlite:///{scratch / 'claims-redis.db'}"),
                                                         confirm)
    with PostgresServer(durable=True) as database:
        results["database (PostgreSQL, fsync on)"] = timed(IntentStore(database.url))
    return results


def measure(servers: list[Server], scratch: Path, smoke: bool, duration_s: float) -> dict[str, Any]:
    return {
        "history": [start_and_reload(scratch, servers, n) for n in (SMOKE_SIZES if smoke else SIZES)],
        "reload_under_load": reload_under_load(scratch, servers, 3.0 if smoke else duration_s),
        "claim_per_dispatch": claim_cost(scratch, 20 if smoke else 1000),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--duration", type=float, default=12.0, help="seconds of each wrk run")
    parser.add_argument("--results", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args(argv)
    SMOKE["on"] = args.smoke
    with session("omni-mev-money-path-") as (scratch, servers):
        results = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "machine": machine(),
                   **measure(servers, scratch, args.smoke, 3.0 if args.smoke else args.duration)}
    path = write_results(results, args.results, "money-path", args.smoke)
    print(f"wrote {path}")
    for row in results["history"]:
        print(f"{row['past_dispatches']:>9,} past dispatches ({row['log_mb']} MB log): first order "
              f"{row['first_order_status']} {row['first_order_s']} s after launch; reload {row['reload_s']} s, "
              f"{row['orders_not_dispatched']}/{row['orders_during_reload']} orders not dispatched, slowest "
              f"{row['slowest_order_ms']} ms")
    for name, run in results["reload_under_load"].items():
        print(f"/predict {name}: {run['requests_per_s']:.0f} req/s, p99 {run['p99_ms']:.2f} ms, max "
              f"{run['max_ms']:.1f} ms, errors {run['socket_errors']}, non-2xx {run['non_2xx']}")
    for name, cost in results["claim_per_dispatch"].items():
        print(f"claim, {name}: median {cost['median_us']} us, p99 {cost['p99_us']} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
