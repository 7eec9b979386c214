"""gunicorn settings for omni-mev: `gunicorn -c gunicorn.conf.py wsgi:app`.

Values come from the environment (and .env) through omni_mev.config, so a bad
value stops start-up with one line naming the variable. Only light modules are
imported here: this file runs in the master, which must never load the model
(ONNX Runtime thread pools and torch/OpenMP do not survive fork).
"""
import logging
import os
import shutil
import signal
import sys
import tempfile

from omni_mev.core.keys import load_keys
from omni_mev.config import ConfigError, load_settings
from omni_mev.devices import check_start_up
from omni_mev.database import prepare_location
from omni_mev.registry.serving import with_registry_models
from omni_mev.started import STARTED_AT  # noqa: F401 - the master's start, inherited by every worker
from omni_mev.worker_boot import BOOT_DIR_VARIABLE

try:
    # The registry's champion must be there before any worker starts.
    _settings = with_registry_models(load_settings())
    _auth = "on" if load_keys(_settings) else "OFF (no AI_API_KEYS / AI_API_KEYS_FILE)"
    # A GPU asked for and missing stops here, before any worker starts.
    check_start_up(_settings.ort_providers, _settings.torch_device)
    # So does a SQLite ledger whose directory cannot be made: the service never claims a ledger it cannot write.
    if _settings.ledger_url is not None:
        try:
            prepare_location(_settings.ledger_url)
        except OSError as _error:
            raise ConfigError(f"AI_LEDGER_URL={_settings.ledger_url!r}: cannot create its directory "
                              f"({_error.strerror or _error}); allowed: a writable place, or off") from None
    # And in LIVE, a SQLite outbox whose directory cannot be made: no order may be sent without its intent on record.
    if _settings.live_trading:
        try:
            prepare_location(_settings.outbox_url)
        except OSError as _error:
            raise ConfigError(f"AI_OUTBOX_URL={_settings.outbox_url!r}: cannot create its directory "
                              f"({_error.strerror or _error}); allowed: a writable place") from None
except (ConfigError, OSError) as _error:
    sys.stderr.write(f"omni-mev: configuration error: {_error}\n")
    raise SystemExit(2) from None

# Directories the workers share, made once the settings are known to be good
# (a refused start leaves nothing behind). prometheus_client reads its variable
# when first imported: set it before anything imports it. systemd provides them
# (runtime and state directories); otherwise private temp dirs, removed on
# exit. The environment keeps them across HUP reloads, which re-read this file.
for _variable, _prefix in (("PROMETHEUS_MULTIPROC_DIR", "omni-mev-metrics-"),
                           ("AI_LAST_GOOD_DIR", "omni-mev-last-good-"), ("AI_QUALITY_DIR", "omni-mev-quality-"),
                           (BOOT_DIR_VARIABLE, "omni-mev-boot-")):
    if not os.environ.get(_variable):
        os.environ[_variable] = tempfile.mkdtemp(prefix=_prefix)
        os.environ["OMNI_MEV_OWN_DIRS"] = os.environ.get("OMNI_MEV_OWN_DIRS", "") + ":" + os.environ[_variable]
_metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
_quality_dir = os.environ["AI_QUALITY_DIR"]

#
# Server socket
#
#   bind - AI_ENGINE_HOST:AI_ENGINE_PORT; loopback by default, nginx in front.
#   backlog - pending connections the kernel queues while workers are busy.
#
bind = [f"{_settings.host}:{_settings.port}"]
backlog = 2048

#
# Worker processes
#
#   workers - one per CPU by default: inference is CPU-bound and each worker is
#       single-threaded (ONNX Runtime with 1 intra-op thread).
#   worker_class - AI_WORKER_CLASS: by default (fast) omni-mev's own: prefork
#       with one thread per worker, one request at a time, as gunicorn's sync
#       worker, but an event loop keeps HTTP/1.1 connections alive and spreads
#       new ones over the workers; its errors are JSON (see omni_mev/workers.py
#       and docs/benchmarks.md). `sync` runs gunicorn's stock sync worker: the
#       same application, without those.
#   worker_connections - open connections a worker keeps at most.
#   keepalive - seconds an idle connection stays open for its next request.
#   timeout - a worker silent this long is killed and replaced.
#   graceful_timeout - time to finish in-flight requests on reload/stop.
#   max_requests / max_requests_jitter - recycle workers now and then (bounded
#       memory growth), staggered so they never restart together. A recycled
#       worker leaves its Prometheus counter files behind, and under full load
#       its restart is a latency blip (the model loads in ~0.5 s), so this is
#       high: a worker serving 3,500 requests/s is recycled every ~5 minutes.
#   preload_app - False: the application factory, which loads the model, runs
#       in each worker.
#
workers = _settings.workers
WORKER_CLASSES = {"fast": "omni_mev.workers.KeepAliveWorker", "sync": "sync"}
worker_class = WORKER_CLASSES[_settings.worker_kind]
worker_connections = 1000
timeout = 30
graceful_timeout = 30
keepalive = 5
max_requests = 1_000_000
max_requests_jitter = 100_000
preload_app = False
# Heartbeat files on tmpfs: a slow disk must not get workers killed.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None

#
# Security limits on the request itself (nginx enforces them first).
#
limit_request_line = 4094
limit_request_fields = 50
limit_request_field_size = 8190

#
# Logging
#
#   errorlog - stderr (journald under systemd).
#   accesslog - off by default: nginx logs every request already; set
#       GUNICORN_ACCESSLOG=- to get them here too.
#   access_log_format - gunicorn's default without the Basic-auth user name
#       (%(u)s) and the referrer (%(f)s), and with the path instead of the
#       request line (%(r)s): an API key sent by mistake as Basic auth or in
#       the query string never lands in the log.
#
errorlog = "-"
loglevel = _settings.log_level
accesslog = os.environ.get("GUNICORN_ACCESSLOG") or None
access_log_format = '%(h)s - - %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s "%(a)s"'
proc_name = "omni-mev"

#
# Control socket (gunicorn >= 25): off. Its default path is shared by every
# instance of a user and lies under $HOME, which the systemd unit hides.
#
control_socket_disable = True


#
# Server hooks
#
def on_starting(server):
    """Empty the metrics directory once per master start (not on reload)."""
    shutil.rmtree(_metrics_dir, ignore_errors=True)
    os.makedirs(_metrics_dir, exist_ok=True)
    threshold = ("the served model's own (its card)" if _settings.threshold is None
                 else f"{_settings.threshold:g} (AI_THRESHOLD)")
    server.log.info("omni-mev %s mode, threshold %s, API key auth %s, metrics data in %s",
                    _settings.mode, threshold, _auth, _metrics_dir)


def when_ready(server):
    """Serve the aggregated metrics of all workers, and the live quality from the ledger, on PROMETHEUS_PORT.

    With a ledger, start the quality reporter: the one process that computes live quality (workers only read
    its report).

    With a model registry, reload (as HUP does) when its aliases change: a
    promotion or a rollback reaches the workers without a signal from outside.
    """
    from prometheus_flask_exporter.multiprocess import GunicornPrometheusMetrics

    from omni_mev import metrics

    # The series exist from the start, so increase() sees the first event.
    metrics.WORKER_EXITS.inc(0)
    metrics.LEDGER_DEAD_LETTERS.labels(table="predictions").inc(0)
    for cause in ("local", "upstream"):
        metrics.DISPATCH_LATE.labels(cause=cause).inc(0)
    for status in metrics.DISPATCH_STATUSES:
        metrics.DISPATCHES.labels(status=status).inc(0)
    exporter = GunicornPrometheusMetrics()
    if _settings.ledger_url is not None:
        from pathlib import Path

        from omni_mev.ledger.collector import QualityCollector
        from omni_mev.ledger.reporter import ReporterProcess

        server.omni_mev_reporter = ReporterProcess().start()
        exporter.registry.register(QualityCollector(Path(_quality_dir), _settings.quality_refresh_s))
    if _settings.model_registry is not None:
        from omni_mev.registry.collector import RegistryCollector
        from omni_mev.registry.store import Registry
        from omni_mev.registry.watcher import AliasWatcher

        registry = Registry.of(_settings)
        exporter.registry.register(RegistryCollector(registry))
        AliasWatcher(registry, on_change=lambda: os.kill(os.getpid(), signal.SIGHUP)).start()
        server.log.info("serving the champion of %s; reloading when its aliases change", _settings.model_registry)
    exporter.start_http_server(_settings.prometheus_port, _settings.prometheus_host)
    server.log.info("metrics on http://%s:%d/metrics", _settings.prometheus_host, _settings.prometheus_port)


def pre_fork(server, worker):
    """In the master: the worker about to be forked counts as loading from now (omni_mev.worker_boot)."""
    from omni_mev import worker_boot

    worker_boot.mark_forking(worker.age)


def post_fork(server, worker):
    """Application logs go where gunicorn's error log goes, at its level. The worker is loading until
    post_worker_init: a reload's old workers serve until it is done (omni_mev.worker_boot)."""
    from omni_mev import worker_boot

    worker_boot.mark_loading(os.getpid(), worker.age)
    app_log = logging.getLogger("omni_mev")
    app_log.handlers = list(server.log.error_log.handlers)
    app_log.setLevel(server.log.error_log.level)
    app_log.propagate = False


def post_worker_init(worker):
    """With omni-mev's worker, batch the hot path's metric writes: it flushes them whenever it is idle. Another
    worker class has no idle hook, and the writes go straight to the shared files."""
    from omni_mev import metrics, worker_boot

    worker_boot.forget(os.getpid(), worker.age)
    when_idle = getattr(worker, "when_idle", None)
    if when_idle is not None:
        metrics.buffer_writes()
        when_idle(metrics.flush)


def worker_abort(worker):
    """The master aborts a worker silent past `timeout` (SIGABRT): counted, and not a clean exit."""
    from omni_mev import metrics

    worker.omni_mev_aborted = True
    metrics.WORKER_TIMEOUTS.inc()


def worker_exit(server, worker):
    """In the worker, as it ends on its own terms (reload, stop, recycling); a killed worker never gets here."""
    from omni_mev import metrics

    if not getattr(worker, "omni_mev_aborted", False):
        metrics.WORKER_CLEAN_EXITS.inc()


def child_exit(server, worker):
    """In the master, for every worker that ended: counted; its live gauges leave the aggregate."""
    from prometheus_flask_exporter.multiprocess import GunicornPrometheusMetrics

    from omni_mev import metrics, worker_boot

    worker_boot.forget(worker.pid, worker.age)
    metrics.WORKER_EXITS.inc()
    GunicornPrometheusMetrics.mark_process_dead_on_child_exit(worker.pid)


def on_exit(server):
    """Stop the quality reporter (it also stops by itself when the master is gone); remove the directories this
    master created."""
    reporter = getattr(server, "omni_mev_reporter", None)
    if reporter is not None:
        reporter.stop()
    for directory in filter(None, os.environ.get("OMNI_MEV_OWN_DIRS", "").split(":")):
        shutil.rmtree(directory, ignore_errors=True)
