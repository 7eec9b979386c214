"""Optional Redis: last-prediction keys, the prediction cache, and a Redis that dies and returns."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from omni_mev.cache import LAST_CONFIDENCE_KEY, LAST_TIMESTAMP_KEY, NullCache, RedisCache
from tests.servers import EXAMPLE, Gunicorn, RedisServer, free_port, wait_until


@pytest.fixture
def redis_server():
    with RedisServer() as server:
        yield server


def test_without_redis_the_null_cache_is_used(app):
    assert type(app.extensions["omni_mev.predictor"].cache) is NullCache


def test_last_prediction_keys_written(make_app, redis_server):
    client = make_app(REDIS_HOST="127.0.0.1", REDIS_PORT=redis_server.port).test_client()
    started = time.time()
    body = client.post("/predict", json={"features": EXAMPLE}).get_json()
    assert "cached" not in body
    wait_until(lambda: redis_server.command("GET", LAST_CONFIDENCE_KEY) != "$-1", 5, what="ai:last_confidence")
    assert float(redis_server.command("GET", LAST_CONFIDENCE_KEY)) == pytest.approx(body["confidence"], abs=1e-6)
    assert started - 1 <= float(redis_server.command("GET", LAST_TIMESTAMP_KEY)) <= time.time() + 1
    assert client.get("/status").get_json()["redis_connected"] is True


def test_prediction_cache_hit(make_app, redis_server):
    client = make_app(REDIS_HOST="127.0.0.1", REDIS_PORT=redis_server.port, AI_CACHE_ENABLED="true",
                      AI_CACHE_TTL_S=60).test_client()
    features = [*EXAMPLE[:5], 0.4242, *EXAMPLE[6:]]
    first = client.post("/predict", json={"features": features}).get_json()
    second = client.post("/predict", json={"features": features}).get_json()
    other = client.post("/predict", json={"features": [*features[:5], 0.4243, *features[6:]]}).get_json()
    assert "cached" not in first and second["cached"] is True and "cached" not in other
    assert second["confidence"] == first["confidence"]
    keys = redis_server.command("KEYS", "ai:cache:*")
    assert keys.startswith("*2")  # two distinct inputs cached
    ttl = int(redis_server.command("TTL", _first_cache_key(redis_server)).lstrip(":"))
    assert 0 < ttl <= 60


def _first_cache_key(server: RedisServer) -> str:
    with socket.create_connection(("127.0.0.1", server.port), timeout=2) as sock:
        sock.sendall(b"*2\r\n$4\r\nKEYS\r\n$10\r\nai:cache:*\r\n")
        reply = sock.recv(65536).decode().split("\r\n")
    return reply[2]


def test_redis_unreachable_at_start(make_app):
    client = make_app(REDIS_HOST="127.0.0.1", REDIS_PORT=free_port(), AI_CACHE_ENABLED="true").test_client()
    for _ in range(10):
        response = client.post("/predict", json={"features": EXAMPLE})
        assert response.status_code == 200 and "cached" not in response.get_json()
    assert client.get("/status").get_json()["redis_connected"] is False


class SilentServer:
    """Accepts TCP connections and never answers: a hung Redis."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.held = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self.held.append(connection)

    def close(self):
        self.sock.close()
        for connection in self.held:
            connection.close()


def test_circuit_breaker_spares_a_hung_redis(make_app):
    silent = SilentServer()
    try:
        app = make_app(REDIS_HOST="127.0.0.1", REDIS_PORT=silent.port, AI_CACHE_ENABLED="true", REDIS_RETRY_S=60)
        client = app.test_client()
        for _ in range(30):
            assert client.post("/predict", json={"features": EXAMPLE}).status_code == 200
        # One failed attempt opens the breaker for REDIS_RETRY_S; without it each of
        # the 30 lookups (and writes) would have opened a connection of its own.
        assert silent.accepted <= 2
        assert isinstance(app.extensions["omni_mev.predictor"].cache, RedisCache)
        assert app.extensions["omni_mev.predictor"].cache.connected is False
    finally:
        silent.close()


def test_redis_killed_mid_traffic_then_back():
    port = free_port()
    redis_server = RedisServer(port).start()
    env = {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(port), "REDIS_RETRY_S": "0.5", "AI_CACHE_ENABLED": "true"}
    failures, done, stop = [], [0], threading.Event()

    def stream():
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline and done[0] < 5000:
            status, body, _ = server.post("/predict", {"features": EXAMPLE})
            if status != 200:
                failures.append((status, body))
            done[0] += 1

    with Gunicorn(env) as server:
        wait_until(lambda: server.get("/status")[1]["redis_connected"], 10, what="redis connected")
        worker = threading.Thread(target=stream)
        worker.start()
        try:
            wait_until(lambda: done[0] > 50, 20, what="traffic flowing")
            redis_server.kill()
            mark = done[0]
            wait_until(lambda: done[0] > mark + 200, 30, what="traffic after the kill")
            assert server.get("/status")[1]["redis_connected"] is False
            redis_server = RedisServer(port).start()
            wait_until(lambda: server.get("/status")[1]["redis_connected"], 15, what="redis reconnected")
            wait_until(lambda: redis_server.command("GET", LAST_CONFIDENCE_KEY) != "$-1", 15,
                       what="keys written to the new redis")
        finally:
            stop.set()
            worker.join(30)
            redis_server.stop()
    assert failures == []
    assert done[0] > 250


def test_last_keys_never_go_back_in_time(redis_server):
    from omni_mev.cache import LAST_WRITE_INTERVAL_S
    from omni_mev.config import load_settings

    cache = RedisCache(load_settings({"REDIS_HOST": "127.0.0.1", "REDIS_PORT": redis_server.port}))
    write = cache._write_if_newer
    keys = [LAST_CONFIDENCE_KEY, LAST_TIMESTAMP_KEY]
    assert write(keys=keys, args=["0.7", "1000.5"]) == 1
    assert write(keys=keys, args=["0.1", "999.0"]) == 0  # an older prediction, flushed late: ignored
    assert redis_server.command("GET", LAST_CONFIDENCE_KEY) == "0.7"
    assert write(keys=keys, args=["0.9", "1001.0"]) == 1
    assert (redis_server.command("GET", LAST_CONFIDENCE_KEY), redis_server.command("GET", LAST_TIMESTAMP_KEY)) == (
        "0.9", "1001.0")
    assert LAST_WRITE_INTERVAL_S > 0


def test_last_confidence_is_the_newest_across_two_workers(redis_server):
    env = {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(redis_server.port)}
    with Gunicorn(env, workers=2) as server:
        seen_pids = set()
        for round_index in range(12):
            bodies = []
            for step in range(6):  # back to back: both workers' writers hold a value at once
                features = [*EXAMPLE[:5], round(0.05 + 0.013 * step + 0.001 * round_index, 4), *EXAMPLE[6:]]
                bodies.append(server.post("/predict", {"features": features})[1])
            seen_pids |= {server.get("/status")[1]["worker_pid"] for _ in range(4)}
            time.sleep(0.35)  # longer than a writer's pause between writes
            stored = float(redis_server.command("GET", LAST_CONFIDENCE_KEY))
            assert stored == pytest.approx(bodies[-1]["confidence"], abs=1e-6), round_index
    assert len(seen_pids) == 2
