"""What the shared parts of a fleet take, as `make bench-capacity` measures it (docs/scaling.md).

- PostgreSQL, the one ledger: prediction rows per second, written as the
  service's ledger writers write them (each worker's writer flushes what it
  queued every 0.1 s in one executemany; 330 rows is a worker at ~3,300
  requests/s), by 1, 2 and 4 writers at once (processes, as the workers of
  several hosts are), and outcomes committed per second (each post one
  synced transaction, as /outcomes does).
- Redis, the dispatch claims: `SET ai:dispatch:<id> 1 NX EX 86400` per
  second, one claim per round trip as a worker sends them, by 1, 2 and 4
  clients at once.

PostgreSQL and Redis run on this machine with default settings (fsync on),
sharing its cores with the clients: the figures are a floor for a dedicated
database host.

    python -m bench.capacity            # 3 rounds of 5 s per point
    python -m bench.capacity --smoke    # 1 round of 1 s
"""
from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing
import statistics
import time
import uuid
from typing import Any

import numpy as np

from bench.run import EXAMPLE, ROOT, machine, write_results
from tests.servers import PostgresServer, RedisServer

WRITERS = (1, 2, 4)
FLUSH_ROWS = 330
CLAIM_TTL_S = 86_400


def _write_predictions(url: str, seconds: float, results: Any) -> None:
    """One ledger writer: flushes of FLUSH_ROWS rows through SqlLedger's own path, as fast as they go."""
    from omni_mev.ledger.store import PredictionRow, SqlLedger

    ledger = SqlLedger(url)
    window = np.array(EXAMPLE, np.float32).tobytes()
    prefix = uuid.uuid4().hex[:8]
    rows, flushes = 0, 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        now = time.time()
        ledger._queue.extend(PredictionRow(f"{prefix}-{flushes}-{i}", now, "predict", "LIVE", "onnx", "bb504f0433ef",
                                           0.5, None, None, 0.78, False, None, 1, window) for i in range(FLUSH_ROWS))
        ledger.flush()
        rows += FLUSH_ROWS
        flushes += 1
    ledger.engine.dispose()
    results.put(rows)


def _post_outcomes(url: str, seconds: float, results: Any) -> None:
    """One client posting outcomes one at a time (each a synced commit), for predictions it first wrote."""
    from omni_mev.ledger.store import Outcome, PredictionRow, SqlLedger

    ledger = SqlLedger(url)
    window = np.array(EXAMPLE, np.float32).tobytes()
    prefix = uuid.uuid4().hex[:8]
    now = time.time()
    ids = [f"{prefix}-{i}" for i in range(20_000)]
    ledger._queue.extend(PredictionRow(i, now, "predict", "LIVE", "onnx", "bb504f0433ef", 0.5, None, None, 0.78, True,
                                       None, 1, window) for i in ids)
    ledger.flush()
    stored = 0
    deadline = time.monotonic() + seconds
    for opportunity_id in ids:
        if time.monotonic() >= deadline:
            break
        ledger.add_outcomes([Outcome(opportunity_id, True, True, 1.0, now)])
        stored += 1
    ledger.engine.dispose()
    results.put(stored)


def _claim(port: int, seconds: float, results: Any) -> None:
    """One Redis client claiming fresh ids, one round trip each, as a worker dispatching does."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    prefix = uuid.uuid4().hex[:8]
    claims = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        client.set(f"ai:dispatch:{prefix}-{claims}", "1", nx=True, ex=CLAIM_TTL_S)
        claims += 1
    client.close()
    results.put(claims)


def _concurrently(target: Any, argument: Any, clients: int, seconds: float) -> float:
    """Operations per second of `clients` processes running `target` together for `seconds`."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    processes = [context.Process(target=target, args=(argument, seconds, results)) for _ in range(clients)]
    for process in processes:
        process.start()
    total = sum(results.get(timeout=seconds + 120) for _ in processes)
    for process in processes:
        process.join(30)
    return total / seconds


def measure(rounds: int, seconds: float) -> dict[str, Any]:
    results: dict[str, Any] = {"ledger_rows_per_s": {}, "outcomes_per_s": {}, "redis_claims_per_s": {}}
    with PostgresServer(durable=True) as postgres, RedisServer() as redis_server:
        for writers in WRITERS:
            runs = [_concurrently(_write_predictions, postgres.url, writers, seconds) for _ in range(rounds)]
            results["ledger_rows_per_s"][str(writers)] = {"runs": runs, "median": statistics.median(runs)}
        for clients in WRITERS:
            runs = [_concurrently(_post_outcomes, postgres.url, clients, seconds) for _ in range(rounds)]
            results["outcomes_per_s"][str(clients)] = {"runs": runs, "median": statistics.median(runs)}
        for clients in WRITERS:
            runs = [_concurrently(_claim, redis_server.port, clients, seconds) for _ in range(rounds)]
            results["redis_claims_per_s"][str(clients)] = {"runs": runs, "median": statistics.median(runs)}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--results", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args(argv)
    rounds, seconds = (1, 1.0) if args.smoke else (args.rounds, args.duration)
    results = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "smoke": args.smoke,
               "machine": machine(), "rounds": rounds, "duration_s": seconds, "flush_rows": FLUSH_ROWS,
               **measure(rounds, seconds)}
    for name, unit in (("ledger_rows_per_s", "prediction rows/s"), ("outcomes_per_s", "outcomes/s"),
                       ("redis_claims_per_s", "claims/s")):
        line = ", ".join(f"{n}: {row['median']:,.0f}" for n, row in results[name].items())
        print(f"{unit} by concurrent clients: {line}", flush=True)
    print(f"wrote {write_results(results, args.results, 'capacity', args.smoke)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
