"""Optional Redis extension: last-prediction keys, a prediction cache, dispatch claims across instances.

The service runs without Redis: `NullCache` stands in, and both implement the
`Cache` interface, so the rest of the code never asks which one it has. When
REDIS_HOST is set, every call goes through a circuit breaker: after a failure
Redis is left alone for REDIS_RETRY_S, so a dead Redis costs one short timeout
per worker per retry period, not one per request. The last-prediction keys are
written by a background thread that keeps only the newest value and writes at
most every 0.1 s, so predictions never wait for Redis.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np

from omni_mev import metrics
from omni_mev.config import Settings

log = logging.getLogger(__name__)
LAST_CONFIDENCE_KEY = "ai:last_confidence"
LAST_TIMESTAMP_KEY = "ai:last_timestamp"
CACHE_PREFIX = "ai:cache"
LAST_WRITE_INTERVAL_S = 0.1
_FAILED = object()

# Each worker writes the keys on its own schedule: the write only lands if its
# prediction is at least as new as the one stored, so the keys always hold the
# newest prediction of all workers (and instances), not the last flush.
_WRITE_IF_NEWER = """
local stored = redis.call('GET', KEYS[2])
if stored and tonumber(stored) > tonumber(ARGV[2]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2])
return 1
"""


class Cache(ABC):
    """What the service asks of Redis; `caching` says whether predictions are cached."""

    caching: bool = False

    @property
    @abstractmethod
    def connected(self) -> bool:
        """Whether the last call reached Redis."""

    @abstractmethod
    def ping(self) -> bool:
        """Reach Redis now (through the breaker)."""

    @abstractmethod
    def record_last(self, confidence: float) -> None:
        """The newest confidence, for ai:last_confidence / ai:last_timestamp; never waits."""

    @abstractmethod
    def get_prediction(self, model_version: str, features: np.ndarray) -> float | None:
        """A cached confidence for this model and input, if any."""

    @abstractmethod
    def put_prediction(self, model_version: str, features: np.ndarray, confidence: float) -> None:
        """Cache a confidence."""

    @property
    def shared(self) -> bool:
        """Whether other instances may share this store (a Redis was configured), reachable or not."""
        return False

    @abstractmethod
    def claim_many(self, keys: list[str], ttl_s: int) -> list[bool | None]:
        """SET NX of each key: True if this call claimed it, False if taken, None if unknown (no Redis)."""


class NullCache(Cache):
    """What the app uses without Redis: nothing is stored, nothing is connected."""

    @property
    def connected(self) -> bool:
        return False

    def ping(self) -> bool:
        return False

    def record_last(self, confidence: float) -> None:
        pass

    def get_prediction(self, model_version: str, features: np.ndarray) -> float | None:
        return None

    def put_prediction(self, model_version: str, features: np.ndarray, confidence: float) -> None:
        pass

    def claim_many(self, keys: list[str], ttl_s: int) -> list[bool | None]:
        return [None] * len(keys)


def prediction_key(model_version: str, features: np.ndarray) -> str:
    """Cache key: the model version and the exact float32 bytes of the input."""
    digest = hashlib.blake2b(np.ascontiguousarray(features, dtype=np.float32).tobytes(), digest_size=16)
    return f"{CACHE_PREFIX}:{model_version}:{features.shape[1]}:{digest.hexdigest()}"


class RedisCache(Cache):
    """Redis behind a circuit breaker, with short timeouts and a coalescing writer."""

    def __init__(self, settings: Settings) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self._errors = (redis.RedisError, OSError)
        self._client = redis.Redis(
            host=settings.redis_host or "localhost",
            port=settings.redis_port,
            socket_connect_timeout=settings.redis_timeout_s,
            socket_timeout=settings.redis_timeout_s,
            # The breaker decides when to try again; a retry inside a request
            # would only multiply the timeout a dead Redis costs.
            retry=Retry(NoBackoff(), 0),
        )
        self._write_if_newer = self._client.register_script(_WRITE_IF_NEWER)
        metrics.REDIS_CIRCUIT_OPEN.set(0)
        self.caching = settings.cache_enabled
        self._ttl_s = settings.cache_ttl_s
        self._retry_s = settings.redis_retry_s
        self._lock = threading.Lock()
        self._open_until = 0.0
        self._connected: bool | None = None
        self._pending: tuple[float, float] | None = None
        self._pending_lock = threading.Lock()
        self._wake = threading.Event()
        self._writer = threading.Thread(target=self._write_last, name="redis-last-writer", daemon=True)
        self._writer.start()

    @property
    def connected(self) -> bool:
        return bool(self._connected)

    def _call(self, operation: Callable[[Any], Any]) -> Any:
        """Run operation(client) unless the breaker is open; _FAILED on any failure."""
        if time.monotonic() < self._open_until:
            return _FAILED
        try:
            result = operation(self._client)
        except self._errors as error:
            with self._lock:
                self._open_until = time.monotonic() + self._retry_s
                if self._connected is not False:
                    log.warning("redis unreachable (%s); retrying in %.1fs", error, self._retry_s)
                    metrics.REDIS_CIRCUIT_OPEN.set(1)
                self._connected = False
            return _FAILED
        if self._connected is not True:
            log.info("redis connected")
            metrics.REDIS_CIRCUIT_OPEN.set(0)
            self._connected = True
        return result

    def ping(self) -> bool:
        return self._call(lambda client: client.ping()) is not _FAILED

    def record_last(self, confidence: float) -> None:
        with self._pending_lock:
            self._pending = (confidence, time.time())
        self._wake.set()

    def _write_last(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            with self._pending_lock:
                pending, self._pending = self._pending, None
            if pending is None:
                continue
            values = [repr(value) for value in pending]

            def write(client: Any, values: list[str] = values) -> Any:
                return self._write_if_newer(keys=[LAST_CONFIDENCE_KEY, LAST_TIMESTAMP_KEY], args=values, client=client)

            written = self._call(write)
            if written is _FAILED:
                # Keep the value for when the breaker closes, unless a newer one came.
                with self._pending_lock:
                    if self._pending is None:
                        self._pending = pending
                time.sleep(min(self._retry_s, 1.0))
                self._wake.set()
            else:
                # At most one write per interval per worker: the keys are for people
                # and dashboards, and a write per prediction cost a third of the
                # throughput (measured in docs/operations.md).
                time.sleep(LAST_WRITE_INTERVAL_S)

    def get_prediction(self, model_version: str, features: np.ndarray) -> float | None:
        if not self.caching:
            return None
        value = self._call(lambda client: client.get(prediction_key(model_version, features)))
        if value is _FAILED:
            metrics.CACHE_REQUESTS.labels(result="error").inc()
            return None
        metrics.CACHE_REQUESTS.labels(result="miss" if value is None else "hit").inc()
        return None if value is None else float(value)

    def put_prediction(self, model_version: str, features: np.ndarray, confidence: float) -> None:
        if self.caching:
            key = prediction_key(model_version, features)
            self._call(lambda client: client.set(key, repr(confidence), ex=self._ttl_s))

    @property
    def shared(self) -> bool:
        return True

    def claim_many(self, keys: list[str], ttl_s: int) -> list[bool | None]:
        def claim(client: Any) -> list[Any]:
            pipeline = client.pipeline(transaction=False)
            for key in keys:
                pipeline.set(key, "1", nx=True, ex=ttl_s)
            return pipeline.execute()

        result = self._call(claim) if keys else []
        return [None] * len(keys) if result is _FAILED else [bool(answer) for answer in result]


def build_cache(settings: Settings) -> Cache:
    """Redis when REDIS_HOST is set (and the redis package imports), else the null cache."""
    if settings.redis_configured:
        try:
            return RedisCache(settings)
        except ImportError:
            log.warning("REDIS_HOST is set but the redis package is missing (pip install 'omni-mev[redis]'): "
                        "running without Redis")
    elif settings.cache_enabled:
        log.warning("AI_CACHE_ENABLED is set without REDIS_HOST: the prediction cache is off")
    return NullCache()

