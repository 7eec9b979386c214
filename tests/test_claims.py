"""Claims that survive Redis, and a stalled database that no order outlives: two real instances, a real PostgreSQL,
a real Redis (killed, then restarted empty) and the engine stub."""
from __future__ import annotations

import time
import urllib.request
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from tests.engine_stub import EngineStub
from tests.servers import Gunicorn, PostgresServer, RedisServer, wait_until
from tests.test_outbox import live


def race(first: Gunicorn, second: Gunicorn, payloads: list[dict]) -> list[tuple[dict, dict]]:
    """Each payload to both instances at the same instant; the two executions of each."""
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda job: job[0].post("/predict", job[1])[1],
                                [(server, payload) for payload in payloads for server in (first, second)]))
    return [(answers[i]["execution"], answers[i + 1]["execution"]) for i in range(0, len(answers), 2)]


def test_two_instances_never_both_send_an_opportunity_with_redis_killed_or_emptied(vectors):
    """A PostgreSQL outbox shared by two instances: the intent's insert is the claim. Redis killed: 60 ids raced
    to both, each sent once. Redis back, empty: 40 ids already sent, raced again, none sent again."""
    with PostgresServer() as database, RedisServer() as redis_server, EngineStub() as engine:
        env = live(engine.url, AI_LEDGER_URL=database.url, REDIS_HOST="127.0.0.1", REDIS_PORT=str(redis_server.port))
        with Gunicorn(env, workers=1) as first, Gunicorn(env, workers=1) as second:
            assert first.get("/status")[1]["outbox"]["claims"] == "database"
            redis_server.kill()
            ids = [f"race-{uuid.uuid4().hex[:8]}-{i}" for i in range(60)]
            payloads = [{"features": vectors[True][i % len(vectors[True])], "opportunity_id": opportunity}
                        for i, opportunity in enumerate(ids)]
            for a, b in race(first, second, payloads):
                # One sent; the other refused, or still waiting for its claim when the request's wait ended (it
                # then ends a duplicate: the engine's calls below show it was never sent).
                assert sorted([a["status"], b["status"]]) in (["dispatched", "skipped"], ["dispatched", "queued"],
                                                              ["queued", "queued"], ["queued", "skipped"]), (a, b)
            wait_until(lambda: Counter(engine.ids()) == Counter(ids), 10, what="every id sent once")
            assert Counter(engine.executions()) == Counter(ids)

            with RedisServer(port=redis_server.port):  # back, and empty
                again = race(first, second, payloads[:40])
            assert all(a["status"] == b["status"] == "skipped" for a, b in again)
            assert Counter(engine.ids()) == Counter(ids)  # nothing reached the engine twice


def test_a_host_local_outbox_refuses_to_send_without_redis_unless_told_to_fail_open(vectors):
    """Instances with their own SQLite outboxes claim across instances in Redis. Redis down: not dispatched,
    and the response and the log say why; AI_DISPATCH_CLAIM_FAIL_OPEN=true (unsafe) sends anyway."""
    with RedisServer() as redis_server, EngineStub() as engine:
        redis = {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(redis_server.port), "REDIS_RETRY_S": "0.1"}
        with Gunicorn(live(engine.url, **redis), workers=1) as careful, \
                Gunicorn(live(engine.url, AI_DISPATCH_CLAIM_FAIL_OPEN="true", **redis), workers=1) as reckless:
            assert careful.get("/status")[1]["outbox"]["claims"] == "redis"
            assert careful.post("/predict", {"features": vectors[True][0], "opportunity_id": "with-redis"}
                                )[1]["execution"]["status"] == "dispatched"
            redis_server.kill()
            refused = careful.post("/predict", {"features": vectors[True][1], "opportunity_id": "no-redis"})[1]
            assert refused["execution"]["status"] == "skipped"
            assert "AI_DISPATCH_CLAIM_FAIL_OPEN" in refused["execution"]["reason"]
            assert "not dispatching no-redis" in careful.output()
            sent = reckless.post("/predict", {"features": vectors[True][2], "opportunity_id": "no-redis-2"})[1]
            assert sent["execution"]["status"] == "dispatched"
            assert engine.ids() == ["with-redis", "no-redis-2"]


def metric(server: Gunicorn, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_stalled_database_is_shown_and_no_order_outlives_its_deadline(vectors):
    """PostgreSQL stopped (SIGSTOP) for 3 s under a LIVE instance whose ledger and outbox live in it: /status says
    the ledger is not writable and the outbox stalled, naming why; the scoring answers meanwhile; the orders
    that waited for their claim are never sent, and the late-order metric counts them as made late locally."""
    with PostgresServer() as database, EngineStub() as engine:
        env = live(engine.url, AI_LEDGER_URL=database.url, AI_LEDGER_STALL_S="1")
        with Gunicorn(env, workers=1) as server:
            assert server.post("/predict", {"features": vectors[True][0], "opportunity_id": "before"}
                               )[1]["execution"]["status"] == "dispatched"
            status = server.get("/status")[1]
            assert status["ledger"]["writable"] is True and status["outbox"]["problem"] is None
            database.pause()
            try:
                started = time.monotonic()
                answer = server.post("/predict", {"features": vectors[True][1], "opportunity_id": "during"})[1]
                assert answer["execution"]["status"] == "queued" and time.monotonic() - started < 2
                for i in range(5):  # scored, recorded for the ledger, never waiting for it
                    assert server.post("/predict", {"features": vectors[False][i], "opportunity_id": f"n{i}"})[0] == 200

                def stalled() -> dict | None:
                    body = server.get("/status")[1]
                    return body if not body["ledger"]["writable"] and body["outbox"]["problem"] else None

                status = wait_until(stalled, 10, what="/status showing the stall")
                assert status["ledger"]["problem"].startswith("stalled") and status["ledger"]["pending"] >= 5
                assert status["ledger"]["oldest_pending_age_s"] > 1
                assert "stalled" in status["outbox"]["problem"]
                time.sleep(2)  # the stall outlasts the order's deadline (1 s)
            finally:
                database.resume()
            wait_until(lambda: server.get("/status")[1]["ledger"]["writable"], 20, what="the ledger writable again")
            wait_until(lambda: metric(server, "ai_dispatch_late_total") >= 1, 20, what="the late order counted")
            assert metric(server, 'ai_dispatch_late_total{cause="local"}') >= 1
            assert engine.ids() == ["before"]  # "during" was never sent


def test_a_live_instance_starts_while_its_outbox_database_is_down_and_trades_once_it_is_up(vectors):
    """PostgreSQL down at start-up: the workers start and score; approved orders are not dispatched, each saying
    why; once the database is up, orders are claimed and sent."""
    database = PostgresServer()  # made, not started
    try:
        with EngineStub() as engine, Gunicorn(live(engine.url, AI_LEDGER_URL=database.url), workers=1) as server:
            assert server.get("/health")[0] == 200
            refused = server.post("/predict", {"features": vectors[True][0], "opportunity_id": "while-down"})[1]
            assert refused["execution"]["status"] == "skipped"
            assert "the outbox cannot be written" in refused["execution"]["reason"]
            assert server.get("/status")[1]["outbox"]["problem"].startswith("database unreachable")
            database.start()
            attempts: list[str] = []

            def dispatched() -> bool:
                attempts.append(f"when-up-{len(attempts)}")
                answer = server.post("/predict", {"features": vectors[True][1], "opportunity_id": attempts[-1]})[1]
                return answer["execution"]["status"] == "dispatched"

            wait_until(dispatched, 30, what="a dispatch once the database is up")
            assert attempts[-1] in engine.executions() and "while-down" not in engine.ids()
    finally:
        database.__exit__(None, None, None)
