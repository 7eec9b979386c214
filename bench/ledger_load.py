"""The outcome ledger under load, as `make bench-ledger` measures it.

- Its cost on /predict (a fresh opportunity_id per request, the ledger on
  against off, A/B in alternating rounds), in several separate runs, each with
  freshly started services.
- /predict's p99 alone and under a mixed load, in alternating rounds: 8
  clients posting outcomes (half of them for ids the ledger does not know) and
  one client polling /quality with a different spelling of a window each time.
  The outcome clients are paced (OUTCOMES_PER_S each), the poller too
  (QUALITY_POLLS_PER_S): a bot reports what happened to its trades, it does
  not flood the service with them.
- /quality's latency, polled alone with changing windows, and the quality
  reporter's time to compute a report, at several ledger sizes.
- The ledger's size on disk per million predictions.

Writes bench/results/ledger-<date>.json; docs/benchmarks.md quotes it.
"""
from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.run import EXAMPLE, ROOT, Server, ledger_cost, ledger_size, machine, omni_mev, session, wrk

OUTCOME_CLIENTS = 8
OUTCOMES_PER_S = 50.0
QUALITY_POLLS_PER_S = 10.0
WINDOW_SPELLINGS = ("1h", "60m", "24h", "1d", "1440m", "7d", "168h")


def seed(url: str, rows: int, labelled: int) -> list[str]:
    """rows predictions spread over the last 6 days, the first `labelled` with an outcome; their ids."""
    from omni_mev.ledger.store import Outcome, PredictionRow, SqlLedger

    ledger = SqlLedger(url)
    window = np.array(EXAMPLE, np.float32).tobytes()
    now = time.time()
    ids = [f"seed-{i:09d}" for i in range(rows)]
    scored = [now - 6 * 86_400 * (1 - i / rows) for i in range(rows)]
    rng = np.random.default_rng(7)
    confidences = rng.uniform(0.01, 0.99, rows)
    for start in range(0, rows, 50_000):
        ledger.record(PredictionRow(ids[i], scored[i], "predict", "SIMULATION", "onnx", "bb504f0433ef",
                                    float(confidences[i]), None, None, 0.78, bool(confidences[i] >= 0.78), None, 1,
                                    window) for i in range(start, min(start + 50_000, rows)))
        ledger.flush()
    for start in range(0, labelled, 4096):
        ledger.add_outcomes([Outcome(ids[i], True, bool(rng.random() < confidences[i]), None, scored[i])
                             for i in range(start, min(start + 4096, labelled))])
    ledger.engine.dispose()
    return ids


def percentiles(samples_ms: list[float]) -> dict[str, Any]:
    if not samples_ms:
        return {"count": 0}
    ordered = np.sort(np.array(samples_ms))
    return {"count": len(ordered), "p50_ms": float(np.percentile(ordered, 50)),
            "p99_ms": float(np.percentile(ordered, 99)), "max_ms": float(ordered[-1])}


class Paced(threading.Thread):
    """Sends one request every 1/rate s on its own kept-alive connection until stopped; keeps statuses and times."""

    def __init__(self, port: int, rate: float, next_request: Any) -> None:
        super().__init__(daemon=True)
        self.port, self.interval, self.next_request = port, 1.0 / rate, next_request
        self.stop = threading.Event()
        self.statuses: dict[int, int] = {}
        self.latencies_ms: list[float] = []

    def run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        due = time.monotonic()
        while not self.stop.is_set():
            method, path, body = self.next_request()
            started = time.perf_counter()
            try:
                connection.request(method, path, body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                status = 0
            self.latencies_ms.append((time.perf_counter() - started) * 1000)
            self.statuses[status] = self.statuses.get(status, 0) + 1
            due += self.interval
            self.stop.wait(max(0.0, due - time.monotonic()))
        connection.close()


def outcome_clients(port: int, known: list[str]) -> list[Paced]:
    """8 clients; every other outcome of each is for an id the ledger does not know."""
    clients = []
    for k in range(OUTCOME_CLIENTS):
        mine = iter(known[k::OUTCOME_CLIENTS])
        counter = iter(range(10**9))

        def next_request(mine: Any = mine, counter: Any = counter, k: int = k) -> tuple[str, str, str]:
            n = next(counter)
            opportunity_id = f"ghost-{k}-{n}-{os.getpid()}" if n % 2 else next(mine)
            return "POST", "/outcomes", json.dumps({"opportunity_id": opportunity_id, "success": n % 3 == 0})

        clients.append(Paced(port, OUTCOMES_PER_S, next_request))
    return clients


def quality_poller(port: int, rate: float = QUALITY_POLLS_PER_S) -> Paced:
    counter = iter(range(10**9))
    return Paced(port, rate, lambda: ("GET", f"/quality?window={WINDOW_SPELLINGS[next(counter) % 7]}", None))


def wait_for_report(server: Server, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        connection.request("GET", "/quality")
        if connection.getresponse().status == 200:
            return
        connection.close()
        time.sleep(0.5)
    raise TimeoutError("no quality report")


def mixed_load(scratch: Path, rounds: int, duration_s: float, seeded: int, servers: list[Server]) -> dict[str, Any]:
    """/predict with ids alone, and with outcome clients and a /quality poller, alternating per round."""
    url = f"sqlite:///{scratch / 'mixed.db'}"
    ids = seed(url, seeded, seeded // 2)
    known = ids[seeded // 2:]  # predictions without an outcome yet
    server = omni_mev("mixed", {"AI_LEDGER_URL": url}).start()
    servers.append(server)
    wait_for_report(server)
    body = json.dumps({"features": EXAMPLE, "opportunity_id": "mixed-0"})
    wrk(server.url + "/predict", body, 8, 1, scratch)
    runs: dict[str, list[dict[str, Any]]] = {"alone": [], "mixed": []}
    side: dict[str, Any] = {"outcomes": {}, "outcome_latency_ms": [], "quality": {}, "quality_latency_ms": []}
    used = 0
    for round_index in range(rounds):
        for phase in ("alone", "mixed") if round_index % 2 == 0 else ("mixed", "alone"):
            template = json.dumps({"features": EXAMPLE, "opportunity_id": f"mixed-{phase}-{round_index}-NUMBER"})
            helpers: list[Paced] = []
            if phase == "mixed":
                helpers = [*outcome_clients(server.port, known[used:]), quality_poller(server.port)]
                for helper in helpers:
                    helper.start()
            result = wrk(server.url + "/predict", body, 8, duration_s, scratch, template.replace("NUMBER", "%d"))
            for helper in helpers:
                helper.stop.set()
                helper.join(10)
            if helpers:
                *posting, polling = helpers
                used += sum(sum(c.statuses.values()) for c in posting)
                for c in posting:
                    for status, count in c.statuses.items():
                        side["outcomes"][str(status)] = side["outcomes"].get(str(status), 0) + count
                    side["outcome_latency_ms"] += c.latencies_ms
                for status, count in polling.statuses.items():
                    side["quality"][str(status)] = side["quality"].get(str(status), 0) + count
                side["quality_latency_ms"] += polling.latencies_ms
            runs[phase].append(result)
    server.stop()
    ratios = [m["p99_ms"] / a["p99_ms"] for a, m in zip(runs["alone"], runs["mixed"])]
    return {"seeded_predictions": seeded, "rounds": rounds, "duration_s": duration_s, "runs": runs,
            "p99_ratio_per_round": ratios, "median_p99_ratio": statistics.median(ratios),
            "throughput_ratio_per_round": [m["requests_per_s"] / a["requests_per_s"]
                                           for a, m in zip(runs["alone"], runs["mixed"])],
            "outcome_clients": OUTCOME_CLIENTS, "outcomes_per_s_each": OUTCOMES_PER_S,
            "quality_polls_per_s": QUALITY_POLLS_PER_S,
            "outcomes": side["outcomes"], "outcome_latency": percentiles(side["outcome_latency_ms"]),
            "quality": side["quality"], "quality_latency": percentiles(side["quality_latency_ms"])}


def quality_at_size(scratch: Path, rows: int, polls: int, servers: list[Server]) -> dict[str, Any]:
    """The reporter's time for one report, and /quality's latency, with `rows` predictions (half labelled)."""
    from omni_mev.ledger.reporter import compute
    from omni_mev.ledger.store import SqlLedger

    url = f"sqlite:///{scratch / f'quality-{rows}.db'}"
    seed(url, rows, rows // 2)
    ledger = SqlLedger(url)
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        compute(ledger, 0.78, time.time())
        timings.append(time.perf_counter() - started)
    ledger.engine.dispose()
    server = omni_mev(f"quality-{rows}", {"AI_LEDGER_URL": url}).start()
    servers.append(server)
    wait_for_report(server, timeout_s=300)
    poller = quality_poller(server.port, rate=1000.0)  # back to back
    poller.start()
    deadline = time.monotonic() + 120
    while sum(poller.statuses.values()) < polls and time.monotonic() < deadline:
        time.sleep(0.05)
    poller.stop.set()
    poller.join(10)
    server.stop()
    return {"predictions": rows, "labelled": rows // 2, "report_compute_s": [round(t, 3) for t in timings],
            "statuses": {str(k): v for k, v in poller.statuses.items()},
            "latency": percentiles(poller.latencies_ms)}


PARTS = ("cost", "mixed", "quality", "size", "inserts")


def insert_cost(scratch: Path, batches: int) -> dict[str, Any]:
    """The writer's CPU per prediction row (a flush of 330 rows, as a worker at ~3,300 requests/s writes every
    0.1 s), with the schema's indexes and without each: what fewer indexes would save."""
    from omni_mev.ledger.store import PredictionRow, SqlLedger

    window = np.array(EXAMPLE, np.float32).tobytes()
    variants = {"both indexes": [], "without ix_predictions_predicted_at": ["ix_predictions_predicted_at"],
                "without ix_predictions_opportunity_id": ["ix_predictions_opportunity_id"],
                "without both": ["ix_predictions_predicted_at", "ix_predictions_opportunity_id"]}
    results = {}
    for name, dropped in variants.items():
        ledger = SqlLedger(f"sqlite:///{scratch / ('inserts-' + str(len(results)) + '.db')}")
        with ledger.engine.begin() as connection:
            for index in dropped:
                connection.exec_driver_sql(f"DROP INDEX {index}")
        cpu = 0.0
        now = time.time()
        for batch in range(batches):
            ledger._queue.extend(PredictionRow(f"bench-{batch}-{i}", now + batch * 0.1, "predict", "SIMULATION",
                                               "onnx", "bb504f0433ef", 0.5, None, None, 0.78, False, None, 1, window)
                                 for i in range(330))
            started = time.process_time()
            ledger.flush()
            cpu += time.process_time() - started
        ledger.engine.dispose()
        results[name] = {"rows": batches * 330, "cpu_us_per_row": round(cpu / (batches * 330) * 1e6, 2)}
    return results


def run(smoke: bool, parts: tuple[str, ...] = PARTS) -> dict[str, Any]:
    rounds, duration_s = (1, 1.0) if smoke else (5, 10.0)
    results: dict[str, Any] = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                               "smoke": smoke, "machine": machine()}
    with session("omni-mev-bench-ledger-") as (scratch, servers):
        if "cost" in parts:
            results["ledger_cost"] = [ledger_cost(scratch, rounds, duration_s, servers)
                                      for _ in range(1 if smoke else 3)]
        if "mixed" in parts:
            results["mixed"] = mixed_load(scratch, 1 if smoke else 3, duration_s, 5_000 if smoke else 56_000,
                                          servers)
        if "quality" in parts:
            results["quality"] = [quality_at_size(scratch, rows, 200 if smoke else 2_000, servers)
                                  for rows in ((5_000,) if smoke else (56_000, 500_000))]
        if "size" in parts:
            results["ledger_size"] = ledger_size(scratch, 20_000 if smoke else 1_000_000)
        if "inserts" in parts:
            results["insert_cost"] = insert_cost(scratch, 10 if smoke else 300)
    return results


def summary(results: dict[str, Any]) -> str:
    lines = []
    if "ledger_cost" in results:
        costs = [1 - r["median_ratio"] for r in results["ledger_cost"]]
        lines.append(f"ledger cost on /predict per run: {', '.join(f'{c:.1%}' for c in costs)} (goal <= 5%)")
    if "mixed" in results:
        mixed = results["mixed"]
        lines.append(f"/predict p99 mixed / alone, median of {mixed['rounds']} rounds: "
                     f"{mixed['median_p99_ratio']:.2f}x (goal <= 1.5x)")
    for name, row in results.get("insert_cost", {}).items():
        lines.append(f"ledger writer, {name}: {row['cpu_us_per_row']} us CPU per row")
    for row in results.get("quality", []):
        lines.append(f"/quality at {row['predictions']:,} predictions: p99 {row['latency'].get('p99_ms', 0):.2f} ms, "
                     f"max {row['latency'].get('max_ms', 0):.2f} ms (goal <= 10 ms); report computed in "
                     f"{min(row['report_compute_s']):.2f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a few seconds, to check the harness")
    parser.add_argument("--results", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--parts", default=",".join(PARTS), help=f"which of {', '.join(PARTS)} to measure")
    args = parser.parse_args(argv)
    parts = tuple(args.parts.split(","))
    results = run(args.smoke, parts)
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    name = "" if parts == PARTS else "-" + "-".join(parts)
    path = out / f"ledger-{results['date'][:10]}{name}{'-smoke' if args.smoke else ''}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(summary(results))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
