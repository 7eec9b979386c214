"""Settings from the environment and an optional .env file, validated once at start-up."""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from omni_mev.errors import ConfigError  # defined in a leaf; callers may import it from here

ENV_FILE_VARIABLE = "OMNI_MEV_ENV_FILE"
DEFAULT_MAX_BATCH_SIZE = 4096
# Where relative paths and the defaults (models/, logs/) resolve: the source tree's root, or OMNI_MEV_ROOT where the
# package is installed elsewhere (the image installs it into a virtual environment and sets /opt/omni-mev).
ROOT_VARIABLE = "OMNI_MEV_ROOT"
PROJECT_ROOT = Path(os.environ.get(ROOT_VARIABLE) or Path(__file__).resolve().parent.parent)


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean; allowed: true/false, 1/0, yes/no, on/off")


def _number(kind: type, lo: float | None, hi: float | None) -> Callable[[str, str], Any]:
    what = "an integer" if kind is int else "a number"
    if lo is not None and hi is not None:
        allowed = f"{what} from {lo:g} to {hi:g}"
    elif lo is not None:
        allowed = f"{what} of at least {lo:g}"
    else:
        allowed = what

    def parse(name: str, raw: str) -> Any:
        try:
            value = kind(raw.strip())
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not {what}; allowed: {allowed}") from None
        if value != value or (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ConfigError(f"{name}={raw!r} is out of range; allowed: {allowed}")
        return value

    return parse


def _port(name: str, raw: str) -> int:
    return _number(int, 1, 65535)(name, raw)


def project_path(raw: str) -> Path:
    """A path from a setting: relative paths are the project's, wherever the command runs."""
    path = Path(raw.strip()).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


def _path(name: str, raw: str) -> Path:
    return project_path(raw)


def _text(name: str, raw: str) -> str:
    return raw.strip()


def _optional_text(name: str, raw: str) -> str | None:
    return raw.strip() or None


def _http_url(name: str, raw: str) -> str | None:
    value = raw.strip()
    if not value:
        return None
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ConfigError(f"{name}={raw!r} is not a URL; allowed: http(s)://host[:port][/path]")
    try:
        _ = parts.port  # urllib validates the port only when asked
    except ValueError:
        raise ConfigError(f"{name}={raw!r} has a bad port; allowed: 1 to 65535") from None
    return value.rstrip("/")


def _choice(*allowed: str) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        value = raw.strip().lower()
        if value not in allowed:
            raise ConfigError(f"{name}={raw!r} is not allowed; allowed: {', '.join(a or '(unset)' for a in allowed)}")
        return value

    return parse


def _database_url(name: str, raw: str) -> str | None:
    """A SQLAlchemy URL; "off" (or empty) turns the store off; relative SQLite paths are the project's."""
    value = raw.strip()
    if value.lower() in {"", "off", "none"}:
        return None
    scheme, separator, rest = value.partition("://")
    if not separator or not scheme:
        raise ConfigError(f"{name}={raw!r} is not a database URL; allowed: sqlite:///path, "
                          "postgresql+psycopg://user@host/db, or off")
    if scheme.startswith("sqlite") and rest.startswith("/") and not rest.startswith("//"):
        return f"{scheme}:///{PROJECT_ROOT / rest[1:]}"
    return value


def _outbox_url(name: str, raw: str) -> str | None:
    """A database URL for the outbox, or None (unset) for the default; it cannot be off."""
    value = raw.strip()
    if value.lower() in {"off", "none"}:
        raise ConfigError(f"{name}={raw!r}: the dispatch outbox cannot be off; allowed: sqlite:///path, "
                          "postgresql+psycopg://user@host/db, or unset")
    return _database_url(name, raw)


def _window(name: str, raw: str) -> str:
    from omni_mev.windows import ALLOWED, parse_window

    if parse_window(raw) is None:
        raise ConfigError(f"{name}={raw!r} is not a time window; allowed: {ALLOWED}")
    return raw.strip()


def _providers(name: str, raw: str) -> tuple[str, ...]:
    from omni_mev.devices import parse_providers

    return parse_providers(name, raw)


def _torch_device(name: str, raw: str) -> str:
    from omni_mev.devices import parse_torch_device

    return parse_torch_device(name, raw)


def _optional(parse: Callable[[str, str], Any]) -> Callable[[str, str], Any]:
    """`parse`, or None for an empty value or "off"."""

    def optional(name: str, raw: str) -> Any:
        return None if raw.strip().lower() in {"", "off", "none"} else parse(name, raw)

    return optional


def _api_keys(name: str, raw: str) -> tuple[str, ...]:
    keys = tuple(k.strip() for k in raw.split(",") if k.strip())
    if any(len(k) < 16 for k in keys):
        raise ConfigError(f"{name} has a key shorter than 16 characters; allowed: comma-separated keys of 16+ characters")
    return keys


def _setting(env: str, parse: Callable[[str, str], Any], default: Any, doc: str) -> Any:
    return field(default=default, metadata={"env": env, "parse": parse, "doc": doc})


# A container's CPU limit, as the kernel shows it inside the container: cgroup v2's "<quota> <period>" (or
# "max <period>"), or cgroup v1's quota (-1: none) and period in two files.
CGROUP_V2_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_CPU = Path("/sys/fs/cgroup/cpu")


def cpu_limit(cpu_max: Path = CGROUP_V2_CPU_MAX, v1: Path = CGROUP_V1_CPU) -> int | None:
    """The CPUs a cgroup limit allows this process, rounded up; None without a limit."""
    try:
        if cpu_max.exists():
            quota, period = cpu_max.read_text().split()[:2]
        else:
            quota, period = ((v1 / name).read_text().strip() for name in ("cpu.cfs_quota_us", "cpu.cfs_period_us"))
        if quota in ("max", "-1"):
            return None
        return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        return None


def default_workers(cpu_max: Path = CGROUP_V2_CPU_MAX, v1: Path = CGROUP_V1_CPU) -> int:
    """One worker per CPU this process may use: the CPUs it may run on, capped by a container's CPU limit (a
    pod with `limits.cpu: 2` on a 64-core node gets 2 workers, not 64 that the limit would throttle)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    limit = cpu_limit(cpu_max, v1)
    return max(1, min(cpus, limit) if limit is not None else cpus)


@dataclass(frozen=True)
class Settings:
    """Every setting, its environment variable and its documented default."""

    live_trading: bool = _setting("LIVE_TRADING", _parse_bool, False, "LIVE mode dispatches approved trades")
    model_path: Path = _setting(
        "AI_MODEL_PATH", _path, PROJECT_ROOT / "models" / "lstm_omni.onnx", "ONNX model served first"
    )
    torch_weights_path: Path | None = _setting(
        "AI_TORCH_WEIGHTS_PATH", _path, None, "PyTorch state dict for the fallback (default: model path with .pt)"
    )
    last_good_dir: Path | None = _setting(
        "AI_LAST_GOOD_DIR", _path, None, "where workers keep the last ONNX model that loaded (served if a new one fails)"
    )
    ort_providers: tuple[str, ...] = _setting(
        "AI_ORT_PROVIDERS", _providers, ("CPUExecutionProvider",),
        "ONNX Runtime execution providers in order of preference: cpu, cuda, tensorrt or full names",
    )
    torch_device: str = _setting(
        "AI_TORCH_DEVICE", _torch_device, "cpu", "device of the PyTorch fallback: cpu, cuda, cuda:N or auto"
    )
    threshold: float | None = _setting(
        "AI_THRESHOLD", _optional(_number(float, 0.0, 1.0)), None,
        "confidence needed for decision=true; unset: the served model's own (its card's thresholds.decision: 0.78 "
        "for the shipped model, and for a model whose card has none)",
    )
    host: str = _setting("AI_ENGINE_HOST", _text, "127.0.0.1", "address gunicorn binds")
    port: int = _setting("AI_ENGINE_PORT", _port, 8001, "port gunicorn binds")
    workers: int = _setting("AI_ENGINE_WORKERS", _number(int, 1, 256), default_workers(), "gunicorn workers")
    # The stream server (`omni-mev stream`, docs/streaming.md).
    stream_host: str = _setting("AI_STREAM_HOST", _text, "127.0.0.1", "address the stream server binds")
    stream_port: int = _setting("AI_STREAM_PORT", _port, 8003, "WebSocket port of the stream server")
    grpc_port: int = _setting("AI_GRPC_PORT", _port, 8004, "KServe V2 gRPC port of the stream server")
    stream_processes: int = _setting(
        "AI_STREAM_PROCESSES", _number(int, 1, 64), 1,
        "stream server processes sharing its ports (SO_REUSEPORT); each connection is served by one of them",
    )
    stream_max_message_bytes: int = _setting(
        "AI_STREAM_MAX_MESSAGE_BYTES", _number(int, 1024, 16 * 1024 * 1024), 1024 * 1024,
        "largest WebSocket message; a larger one closes the connection (1009)",
    )
    stream_queue: int = _setting(
        "AI_STREAM_QUEUE", _number(int, 1, 1024), 16,
        "messages a WebSocket connection may have waiting; beyond, the server stops reading it (backpressure)",
    )
    stream_send_timeout_s: float = _setting(
        "AI_STREAM_SEND_TIMEOUT_S", _number(float, 0.1, 60.0), 5.0,
        "a client must take each answer within this long, or its connection is dropped",
    )
    stream_ping_interval_s: float = _setting(
        "AI_STREAM_PING_INTERVAL_S", _number(float, 1.0, 50.0), 20.0,
        "WebSocket pings this often (well inside nginx's 60 s idle limit); no pong within as long closes (1011)",
    )
    worker_kind: str = _setting(
        "AI_WORKER_CLASS", _choice("fast", "sync"), "fast",
        "gunicorn worker: fast = omni-mev's keep-alive worker (JSON errors, parked answers, batched metric "
        "writes); sync = gunicorn's stock sync worker (one request per connection, gunicorn's own error pages)",
    )
    rust_engine_url: str | None = _setting("RUST_ENGINE_URL", _http_url, None, "execution engine base URL")
    dispatch_connect_timeout_s: float = _setting(
        "AI_DISPATCH_CONNECT_TIMEOUT_S", _number(float, 0.001, 10.0), 0.1, "execution engine connect timeout"
    )
    dispatch_timeout_s: float = _setting(
        "AI_DISPATCH_TIMEOUT_S", _number(float, 0.001, 10.0), 0.3,
        "how long a /predict waits for the engine's answer; later answers are logged, the response says queued",
    )
    batch_dispatch_wait_s: float = _setting(
        "AI_BATCH_DISPATCH_WAIT_S", _number(float, 0.001, 10.0), 1.0,
        "how long a batch waits, in all, for the engine's answers to its orders; the rest are reported queued",
    )
    dispatch_concurrency: int = _setting(
        "AI_DISPATCH_CONCURRENCY", _number(int, 1, 512), 128, "orders a worker has in flight to the engine at once"
    )
    dispatch_max_age_s: float = _setting(
        "AI_DISPATCH_MAX_AGE_S", _number(float, 0.05, 600.0), 1.0,
        "an order is stale this long after its intent is logged: never sent later, and recorded expired if "
        "still unfinished",
    )
    dispatch_dedupe_ttl_s: int = _setting(
        "AI_DISPATCH_DEDUPE_TTL_S", _number(int, 60, 30 * 86_400), 86_400,
        "how long an opportunity_id stays claimed (in the outbox, and in Redis)"
    )
    decision_log_path: Path = _setting(
        "AI_DECISION_LOG", _path, PROJECT_ROOT / "logs" / "decisions.jsonl",
        "append-only JSON-lines decision log (the audit trail; never read by the service)",
    )
    decision_log_max_bytes: int = _setting(
        "AI_DECISION_LOG_MAX_BYTES", _number(int, 0, None), 256 * 1024 * 1024,
        "the decision log is rotated to <name>.1 past this size; 0 = never (logrotate's job)",
    )
    decision_log_backups: int = _setting(
        "AI_DECISION_LOG_BACKUPS", _number(int, 0, 1000), 10, "rotated decision logs kept (<name>.1 to .N)"
    )
    outbox_database_url: str | None = _setting(
        "AI_OUTBOX_URL", _outbox_url, None,
        "database of the dispatch outbox (intents, outcomes, claims, reconciliation); unset: the ledger's when it "
        "is PostgreSQL (instances sharing it share claims), else SQLite beside the decision log",
    )
    dispatch_claim_fail_open: bool = _setting(
        "AI_DISPATCH_CLAIM_FAIL_OPEN", _parse_bool, False,
        "UNSAFE: with a host-local outbox and Redis unreachable, send without a cross-instance claim",
    )
    reconcile_after_s: float = _setting(
        "AI_RECONCILE_AFTER_S", _number(float, 1.0, 3600.0), 10.0,
        "this long after an order's expires_at, an unknown outcome is asked of the engine by its key (the clocks of "
        "the service and the engine must agree within it)",
    )
    implausible_policy: str = _setting(
        "AI_IMPLAUSIBLE_POLICY", _choice("", "refuse", "flag"), "",
        "implausible opportunities: refuse (decision false) or flag (scored and flagged); "
        "unset = refuse in LIVE, flag in SIMULATION. LIVE never dispatches one either way",
    )
    ledger_url: str | None = _setting(
        "AI_LEDGER_URL", _database_url, f"sqlite:///{PROJECT_ROOT / 'logs' / 'ledger.db'}",
        "prediction ledger (SQLAlchemy URL: SQLite file or PostgreSQL); off = no ledger",
    )
    ledger_dead_letters: Path = _setting(
        "AI_LEDGER_DEAD_LETTERS", _path, PROJECT_ROOT / "logs" / "ledger-dead-letters.jsonl",
        "JSON-lines file where rows the ledger's database refuses are set aside (the rest of their batch is written)",
    )
    ledger_stall_s: float = _setting(
        "AI_LEDGER_STALL_S", _number(float, 0.5, 3600.0), 10.0,
        "a prediction waiting this long for the ledger's database marks the ledger not writable in /status",
    )
    ledger_retention_days: float = _setting(
        "AI_LEDGER_RETENTION_DAYS", _number(float, 0.0, 36_500.0), 30.0,
        "days predictions and outcomes stay in the ledger; 0 = forever",
    )
    quality_dir: Path | None = _setting(
        "AI_QUALITY_DIR", _path, None,
        "where the quality reporter writes the live quality report /quality and the gauges read (gunicorn makes a "
        "temp dir when unset; /run/omni-mev under systemd)",
    )
    quality_refresh_s: float = _setting(
        "AI_QUALITY_REFRESH_S", _number(float, 0.1, 3_600.0), 10.0,
        "seconds between the end of one live quality report and the start of the next",
    )
    shadow_model_path: Path | None = _setting(
        "AI_SHADOW_MODEL_PATH", _path, None, "second ONNX model scored on every request, for comparison only"
    )
    model_registry: Path | None = _setting(
        "AI_MODEL_REGISTRY", _optional(_path), None,
        "model registry: serve its champion, score its challenger as the shadow (instead of AI_MODEL_PATH)",
    )
    model_registry_db: str | None = _setting(
        "AI_MODEL_REGISTRY_DB", _database_url, None,
        "PostgreSQL database of the registry's aliases and history, shared by every host (model files stay in "
        "AI_MODEL_REGISTRY, on storage every host mounts); unset: the registry directory's own",
    )
    promote_window: str = _setting(
        "AI_PROMOTE_WINDOW", _window, "7d", "the promotion gate compares the models on outcomes of this recent window"
    )
    promote_min_outcomes: int = _setting(
        "AI_PROMOTE_MIN_OUTCOMES", _number(int, 1, None), 500,
        "labelled outcomes both models scored before the gate decides",
    )
    promote_min_positives: int = _setting(
        "AI_PROMOTE_MIN_POSITIVES", _number(int, 1, None), 100,
        "successes among those outcomes before the gate decides (AUC and calibration rest on them)",
    )
    promote_min_auc_gain: float = _setting(
        "AI_PROMOTE_MIN_AUC_GAIN", _number(float, -1.0, 1.0), 0.005, "AUC the challenger must gain over the champion"
    )
    promote_auc_confidence: float = _setting(
        "AI_PROMOTE_AUC_CONFIDENCE", _number(float, 0.5, 0.999), 0.95,
        "how sure the paired (DeLong) test must be that the challenger's AUC is higher: no promotion on noise",
    )
    promote_max_brier_increase: float = _setting(
        "AI_PROMOTE_MAX_BRIER_INCREASE", _number(float, 0.0, 1.0), 0.0, "Brier score the challenger may lose"
    )
    promote_max_ece_increase: float = _setting(
        "AI_PROMOTE_MAX_ECE_INCREASE", _number(float, 0.0, 1.0), 0.0, "calibration error the challenger may add"
    )
    retrain_window: str = _setting(
        "AI_RETRAIN_WINDOW", _window, "7d", "omni-mev retrain trains on the labelled outcomes of this recent window"
    )
    retrain_min_outcomes: int = _setting(
        "AI_RETRAIN_MIN_OUTCOMES", _number(int, 50, None), 2000, "labelled outcomes needed to train a challenger"
    )
    retrain_every: str | None = _setting(
        "AI_RETRAIN_EVERY", _optional(_window), "7d",
        "train a challenger when the last one is older than this; off = only when live quality falls",
    )
    retrain_growth: float = _setting(
        "AI_RETRAIN_GROWTH", _number(float, 0.0, None), 0.5,
        "train a challenger when the labelled outcomes since the last training reach this share of the rows it was "
        "trained on (0 = off)",
    )
    retrain_shift_z: float = _setting(
        "AI_RETRAIN_SHIFT_Z", _number(float, 0.0, None), 4.0,
        "train a challenger when, on the outcomes since the last training, the successes depart from the champion's "
        "confidences by this many standard errors (0 = off)",
    )
    retrain_quality_window: str = _setting(
        "AI_RETRAIN_QUALITY_WINDOW", _window, "24h", "the window of live quality the triggers below read"
    )
    retrain_below_auc: float | None = _setting(
        "AI_RETRAIN_BELOW_AUC", _optional(_number(float, 0.0, 1.0)), None,
        "train a challenger when the champion's live AUC falls below this (unset = off)",
    )
    retrain_above_ece: float | None = _setting(
        "AI_RETRAIN_ABOVE_ECE", _optional(_number(float, 0.0, 1.0)), None,
        "train a challenger when the champion's live calibration error rises above this (unset = off)",
    )
    redis_host: str | None = _setting("REDIS_HOST", _optional_text, None, "Redis host; unset = no Redis")
    redis_port: int = _setting("REDIS_PORT", _port, 6379, "Redis port")
    prometheus_port: int = _setting("PROMETHEUS_PORT", _port, 9090, "port of the metrics HTTP server")
    prometheus_host: str = _setting("PROMETHEUS_HOST", _text, "127.0.0.1", "address of the metrics HTTP server")
    max_body_bytes: int = _setting(
        "AI_MAX_BODY_BYTES", _number(int, 1024, 64 * 1024 * 1024), 2 * 1024 * 1024, "largest request body"
    )
    request_read_timeout_s: float = _setting(
        "AI_REQUEST_READ_TIMEOUT_S", _number(float, 0.1, 20.0), 5.0,
        "a request's head and body must arrive within this long of its first byte (408 after)",
    )
    max_batch_size: int = _setting("AI_MAX_BATCH_SIZE", _number(int, 1, 1_000_000), DEFAULT_MAX_BATCH_SIZE,
                                   "most items per batch")
    cache_enabled: bool = _setting("AI_CACHE_ENABLED", _parse_bool, False, "cache predictions in Redis")
    cache_ttl_s: int = _setting("AI_CACHE_TTL_S", _number(int, 1, 86_400), 30, "lifetime of a cached prediction")
    redis_timeout_s: float = _setting(
        "REDIS_TIMEOUT_S", _number(float, 0.001, 5.0), 0.05, "Redis connect and socket timeout"
    )
    redis_retry_s: float = _setting(
        "REDIS_RETRY_S", _number(float, 0.1, 300.0), 2.0, "pause before retrying a Redis that failed"
    )
    api_keys: tuple[str, ...] = _setting("AI_API_KEYS", _api_keys, (), "comma-separated API keys; empty = auth off")
    api_keys_file: Path | None = _setting("AI_API_KEYS_FILE", _path, None, "file with one API key per line")
    log_level: str = _setting("LOG_LEVEL", _text, "info", "gunicorn and application log level")

    @property
    def mode(self) -> str:
        """The mode string every response carries."""
        return "LIVE" if self.live_trading else "SIMULATION"

    @property
    def refuses_implausible(self) -> bool:
        """Whether an implausible opportunity gets decision false whatever its confidence."""
        return self.implausible_policy == "refuse" or (not self.implausible_policy and self.live_trading)

    @property
    def fallback_weights_path(self) -> Path:
        """Where the PyTorch fallback finds its weights."""
        return self.torch_weights_path or self.model_path.with_suffix(".pt")

    @property
    def outbox_url(self) -> str:
        """Where the dispatch outbox lives: AI_OUTBOX_URL, else a PostgreSQL ledger's database (so that the
        instances sharing it share claims), else SQLite beside the decision log."""
        if self.outbox_database_url is not None:
            return self.outbox_database_url
        if self.ledger_url is not None and self.ledger_url.startswith("postgresql"):
            return self.ledger_url
        return f"sqlite:///{self.decision_log_path.parent / 'outbox.db'}"

    @property
    def redis_configured(self) -> bool:
        """Whether a Redis host was given."""
        return self.redis_host is not None


def _read_env_file(path: Path) -> dict[str, str]:
    from dotenv import dotenv_values

    try:
        with open(path, encoding="utf-8") as stream:
            return {k: v for k, v in dotenv_values(stream=stream).items() if v is not None}
    except OSError as error:
        raise ConfigError(f"{ENV_FILE_VARIABLE}: cannot read {path}: {error.strerror}") from None


def raw_values(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables as given: .env, then the environment over it; nothing parsed."""
    environ = os.environ if environ is None else environ
    env_file = Path(environ.get(ENV_FILE_VARIABLE, ".env"))
    values: dict[str, str] = _read_env_file(env_file) if env_file.is_file() else {}
    values.update(environ)
    return values


def load_settings(overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from .env, then the environment, then `overrides` (tests), validated."""
    values = raw_values(environ)
    values.update({k: str(v) for k, v in (overrides or {}).items()})
    parsed: dict[str, Any] = {}
    for spec in fields(Settings):
        name = spec.metadata["env"]
        if name in values:
            parsed[spec.name] = spec.metadata["parse"](name, values[name])
    clashing = [name for name in ("AI_MODEL_PATH", "AI_TORCH_WEIGHTS_PATH", "AI_SHADOW_MODEL_PATH") if values.get(name)]
    if parsed.get("model_registry") is not None and clashing:
        # The registry's champion is served and its challenger is the shadow (omni_mev.registry.serving).
        raise ConfigError(f"AI_MODEL_REGISTRY is set: unset {', '.join(clashing)} (the registry's champion is "
                          "served and its challenger is the shadow)")
    settings = Settings(**parsed)
    _check(settings)
    return settings


def _check(settings: Settings) -> None:
    """Rules that involve several settings."""
    if settings.live_trading and not settings.rust_engine_url:
        raise ConfigError("LIVE_TRADING=true needs RUST_ENGINE_URL (http(s)://host:port of the execution engine)")
    if settings.model_registry_db is not None:
        if settings.model_registry is None:
            raise ConfigError("AI_MODEL_REGISTRY_DB is set without AI_MODEL_REGISTRY (where the model files are)")
        if not settings.model_registry_db.startswith("postgresql"):
            raise ConfigError(f"AI_MODEL_REGISTRY_DB={settings.model_registry_db!r}; allowed: a PostgreSQL URL "
                              "(postgresql+psycopg://user@host/db), or unset for the directory's own aliases")
    if settings.api_keys_file is not None and not settings.api_keys_file.is_file():
        raise ConfigError(f"AI_API_KEYS_FILE={settings.api_keys_file} does not exist; allowed: a readable file")
