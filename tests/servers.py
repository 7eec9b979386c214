"""Real servers for integration tests: gunicorn, redis-server, nginx, each on a free loopback port."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from http.client import HTTPException
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = [10.5, 1.012, 3, 0.35, 0.87, 0.5, 2, 1.0]


def free_port() -> int:
    """A TCP port nothing listens on right now (loopback)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll check() until it returns something truthy; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as error:  # noqa: BLE001 - keep polling, report the last one
            last_error = error
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached within {timeout}s (last error: {last_error})")


def http(method: str, url: str, body: Any = None, headers: Mapping[str, str] | None = None,
         timeout: float = 5.0, context: Any = None) -> tuple[int, Any, dict[str, str]]:
    """One HTTP request with the standard library: (status, parsed JSON or text, headers)."""
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None and "Content-Type" not in request.headers:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            status, raw, head = response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        status, raw, head = error.code, error.read(), dict(error.headers)
    try:
        return status, json.loads(raw), head
    except ValueError:
        return status, raw.decode(errors="replace"), head


class Process:
    """A child process with its log in a temp file; stopped on exit."""

    def __init__(self, argv: list[str], env: Mapping[str, str] | None = None, cwd: Path = ROOT) -> None:
        self.argv = argv
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.log = tempfile.NamedTemporaryFile(prefix="omni-mev-test-", suffix=".log", delete=False)
        self.proc: subprocess.Popen | None = None

    def start(self) -> Process:
        self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def __enter__(self) -> Process:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        self.log.close()
        os.unlink(self.log.name)


REPORTER_MODULE = "omni_mev.ledger.reporter"


class Gunicorn(Process):
    """The real service: gunicorn -c gunicorn.conf.py wsgi:app."""

    def __init__(self, env: Mapping[str, str] | None = None, workers: int = 2) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        self.metrics_dir = tempfile.mkdtemp(prefix="omni-mev-test-metrics-")
        self.state_dir = Path(tempfile.mkdtemp(prefix="omni-mev-test-state-"))
        self.decision_log = self.state_dir / "decisions.jsonl"
        self.ledger_url = f"sqlite:///{self.state_dir / 'ledger.db'}"
        base = {
            "AI_DECISION_LOG": str(self.decision_log),
            "AI_LEDGER_URL": self.ledger_url,
            "AI_LEDGER_DEAD_LETTERS": str(self.state_dir / "dead-letters.jsonl"),
            # Reports every half second, so that a test waits for its outcomes' report briefly.
            "AI_QUALITY_REFRESH_S": "0.5",
            "AI_ENGINE_HOST": "127.0.0.1",
            "AI_ENGINE_PORT": str(self.port),
            "PROMETHEUS_PORT": str(self.metrics_port),
            "PROMETHEUS_MULTIPROC_DIR": self.metrics_dir,
            "AI_ENGINE_WORKERS": str(workers),
            "OMNI_MEV_ENV_FILE": "/nonexistent",
            "PYTHONPATH": str(ROOT),
        }
        super().__init__([sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), "wsgi:app"],
                         env={**base, **(env or {})})
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> Gunicorn:
        super().start()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        def up() -> bool:
            if not self.alive():
                raise RuntimeError(f"gunicorn exited:\n{self.output()}")
            return self.get("/health")[0] in (200, 503)

        wait_until(up, timeout, what="gunicorn answering /health")

    def get(self, path: str, **kwargs: Any):
        return http("GET", self.url + path, **kwargs)

    def post(self, path: str, body: Any, **kwargs: Any):
        return http("POST", self.url + path, body, **kwargs)

    def _children(self) -> dict[int, str]:
        """The master's children and their command lines, read from /proc (of every thread: the reporter is
        started by one)."""
        pids = set()
        for children in Path(f"/proc/{self.pid}/task").glob("*/children"):
            try:
                pids.update(int(p) for p in children.read_text().split())
            except OSError:
                continue  # the thread just ended
        found = {}
        for pid in pids:
            try:
                found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue  # it just ended
        return found

    def worker_pids(self) -> set[int]:
        """PIDs of the gunicorn workers (the master's children other than the quality reporter)."""
        return {pid for pid, command in self._children().items() if REPORTER_MODULE not in command}

    def reporter_pids(self) -> set[int]:
        """PIDs of the quality reporter (one while the ledger is on)."""
        return {pid for pid, command in self._children().items() if REPORTER_MODULE in command}

    def quality(self, query: str = "window=1h", after: float = 0.0, timeout: float = 30.0,
                **kwargs: Any) -> dict[str, Any]:
        """/quality once a report computed after `after` (a time.time()) is served."""
        def fresh() -> dict[str, Any] | None:
            status, body, _ = self.get(f"/quality?{query}", **kwargs)
            if status == 200 and body["computed_at"] > after:
                return body
            assert status in (200, 503), (status, body)
            return None

        return wait_until(fresh, timeout, what=f"a quality report computed after {after}")

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        shutil.rmtree(self.metrics_dir, ignore_errors=True)
        shutil.rmtree(self.state_dir, ignore_errors=True)


class RedisServer(Process):
    """A throwaway redis-server on a free port, no persistence."""

    def __init__(self, port: int | None = None, address: str | None = None) -> None:
        """On loopback, and on `address` too (the test's network namespaces reach it there)."""
        self.port = port or free_port()
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        bind = ["127.0.0.1", address] if address else ["127.0.0.1"]
        super().__init__([binary, "--port", str(self.port), "--bind", *bind, "--save", "",
                          "--appendonly", "no", "--protected-mode", "no" if address else "yes"])

    def start(self) -> RedisServer:
        super().start()
        wait_until(self.ping, 10, what="redis-server PONG")
        return self

    def ping(self) -> bool:
        return self.command("PING") == "+PONG"

    def command(self, *args: str) -> str:
        """One RESP command over a raw socket: the first reply line."""
        payload = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(payload.encode())
            reply = sock.recv(65536).decode()
        if reply.startswith("$") and not reply.startswith("$-1"):
            return reply.split("\r\n")[1]
        return reply.split("\r\n")[0]

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1/localhost: (cert, key)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    return cert, key


NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
SHIPPED_SITE = ROOT / "nginx" / "omni-mev.conf"


def render_site(replacements: Mapping[str, str]) -> str:
    """The shipped site config with test values; each pattern must be present."""
    text = SHIPPED_SITE.read_text()
    for old, new in replacements.items():
        if old not in text:
            raise AssertionError(f"{old!r} is no longer in {SHIPPED_SITE}")
        text = text.replace(old, new)
    return text


class Nginx(Process):
    """nginx in the foreground with the shipped site, in a private prefix directory."""

    def __init__(self, directory: Path, upstream_ports: list[int | str], rate: str | None = None,
                 burst: str | None = None, stream_port: int | None = None, grpc_port: int | None = None,
                 overrides: Mapping[str, str] | None = None) -> None:
        """`overrides`: further replacements in the shipped site (each must be present)."""
        self.directory = directory
        self.http_port, self.https_port, self.grpc_tls_port = free_port(), free_port(), free_port()
        self.cert, key = self_signed_certificate(directory)
        # A port on loopback, or "address:port" (an instance in a network namespace).
        servers = [f"server {port if isinstance(port, str) else f'127.0.0.1:{port}'} max_fails=3 fail_timeout=10s;"
                   for port in upstream_ports]
        replacements = {
            "listen 80;": f"listen 127.0.0.1:{self.http_port};",
            "listen [::]:80;": "",
            "listen 443 ssl http2;": f"listen 127.0.0.1:{self.https_port} ssl http2;",
            "listen [::]:443 ssl http2;": "",
            "listen 8443 ssl http2;": f"listen 127.0.0.1:{self.grpc_tls_port} ssl http2;",
            "listen [::]:8443 ssl http2;": "",
            "/etc/letsencrypt/live/api.example.com/fullchain.pem": str(self.cert),
            "/etc/letsencrypt/live/api.example.com/privkey.pem": str(key),
            "server 127.0.0.1:8001 max_fails=3 fail_timeout=10s;\n    server 127.0.0.1:8002 max_fails=3 fail_timeout=10s;":
                "\n    ".join(servers),
        }
        if stream_port:
            replacements["server 127.0.0.1:8003 max_fails"] = f"server 127.0.0.1:{stream_port} max_fails"
        if grpc_port:
            replacements["server 127.0.0.1:8004 max_fails"] = f"server 127.0.0.1:{grpc_port} max_fails"
        if rate:
            replacements["rate=200r/s"] = f"rate={rate}"
        if burst:
            replacements["burst=100 nodelay"] = f"burst={burst} nodelay"
        replacements.update(overrides or {})
        (directory / "site.conf").write_text(render_site(replacements))
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (directory / sub).mkdir(exist_ok=True)
        user = "user root;\n" if os.geteuid() == 0 else ""
        self.conf = directory / "nginx.conf"
        self.conf.write_text(
            f"{user}worker_processes 1;\npid {directory}/nginx.pid;\nerror_log {directory}/error.log warn;\n"
            "daemon off;\nevents { worker_connections 2048; }\n"
            "http {\n  access_log off;\n"
            + "".join(f"  {kind}_temp_path {directory}/{sub};\n"
                      for kind, sub in (("client_body", "body"), ("proxy", "proxy"), ("fastcgi", "fastcgi"),
                                        ("uwsgi", "uwsgi"), ("scgi", "scgi")))
            + f"  include {directory}/site.conf;\n}}\n"
        )
        super().__init__([NGINX, "-p", str(directory), "-e", str(directory / "error.log"), "-c", str(self.conf)])
        self.https = f"https://127.0.0.1:{self.https_port}"
        self.http = f"http://127.0.0.1:{self.http_port}"

    def check_config(self) -> subprocess.CompletedProcess:
        """nginx -t on the rendered configuration."""
        return subprocess.run([NGINX, "-t", "-p", str(self.directory), "-e", str(self.directory / "error.log"),
                               "-c", str(self.conf)], capture_output=True, text=True)

    def start(self) -> Nginx:
        super().start()
        wait_until(lambda: socket.create_connection(("127.0.0.1", self.https_port), timeout=1).close() or True, 10,
                   what="nginx listening")
        return self

    def ssl_context(self):
        import ssl

        return ssl.create_default_context(cafile=str(self.cert))


class PostgresServer(Process):
    """A throwaway PostgreSQL cluster on a free loopback port (run as the postgres user when the tests run as root).

    fsync is off: the tests kill workers, never the database, and it saves seconds.
    """

    def __init__(self, address: str = "127.0.0.1", clients: str | None = None, durable: bool = False) -> None:
        """Listening on loopback, and on `address` too for `clients` (a CIDR: the test's network namespaces);
        `durable` keeps fsync on (the capacity benchmark)."""
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="omni-mev-test-pg-"))
        binaries = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
        if not binaries:
            raise RuntimeError("PostgreSQL is not installed (make test installs the postgresql package)")
        self.bin = binaries[-1]
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres")
        data = self.directory / "data"
        subprocess.run([*self.as_user, str(self.bin / "initdb"), "-D", str(data), "-A", "trust", "-U", "omni",
                        "--no-sync", "-E", "UTF8"], check=True, capture_output=True)
        listen = "127.0.0.1"
        if clients is not None:
            listen += f",{address}"
            with open(data / "pg_hba.conf", "a") as hba:
                hba.write(f"host all all {clients} trust\n")
        super().__init__([*self.as_user, str(self.bin / "postgres"), "-D", str(data), "-p", str(self.port),
                          "-k", str(self.directory), "-c", f"listen_addresses={listen}",
                          "-c", f"fsync={'on' if durable else 'off'}", "-c", "max_connections=100"])
        self.url = f"postgresql+psycopg://omni@127.0.0.1:{self.port}/postgres"
        # The URL the namespaces' hosts use.
        self.shared_url = f"postgresql+psycopg://omni@{address}:{self.port}/postgres"

    def start(self) -> PostgresServer:
        super().start()
        wait_until(lambda: socket.create_connection(("127.0.0.1", self.port), timeout=1).close() or True, 30,
                   what="postgres listening")
        wait_until(self._accepts_queries, 30, what="postgres ready")
        return self

    def _accepts_queries(self) -> bool:
        import sqlalchemy as sa

        engine = sa.create_engine(self.url)
        try:
            with engine.connect() as connection:
                return connection.execute(sa.text("select 1")).scalar() == 1
        finally:
            engine.dispose()

    def _processes(self) -> tuple[int, list[int]]:
        """The postmaster and its backends."""
        postmaster = int((self.directory / "data" / "postmaster.pid").read_text().split()[0])
        children = Path(f"/proc/{postmaster}/task/{postmaster}/children")
        return postmaster, [int(pid) for pid in children.read_text().split()] if children.exists() else []

    def pause(self) -> None:
        """SIGSTOP to every process of the cluster: connections stay open and nothing answers (a stalled database)."""
        postmaster, backends = self._processes()
        for pid in (postmaster, *backends):
            os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        postmaster, backends = self._processes()
        for pid in (postmaster, *backends):
            os.kill(pid, signal.SIGCONT)
        # runuser stops itself when its child stops (job control): it too, or it never reaps the postmaster.
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self, timeout: float = 10.0) -> None:
        """Fast shutdown (SIGINT to the postmaster): clients are disconnected, where SIGTERM's smart shutdown would
        wait for every client to leave (a test's pooled connections never do)."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self._processes()[0], signal.SIGINT)
                self.proc.wait(timeout)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass
        super().stop(timeout)

    def kill(self) -> None:
        """SIGKILL to the postmaster and its backends, as a crash would: runuser may have started it in a
        process group of its own, and a backend outliving its postmaster can still answer a query."""
        postmaster, backends = self._processes()
        for pid in (postmaster, *backends):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)
        wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in (postmaster, *backends)), 10,
                   what="postgres gone")

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        shutil.rmtree(self.directory, ignore_errors=True)


class Stream:
    """Predictions in background threads until stopped (bounded in count and time)."""

    def __init__(self, server: Gunicorn, threads: int = 2, limit: int = 20_000, seconds: float = 90) -> None:
        self.server, self.limit, self.deadline = server, limit, time.monotonic() + seconds
        self.ok, self.failures, self.stopped = 0, [], threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        while not self.stopped.is_set() and time.monotonic() < self.deadline and self.ok + len(self.failures) < self.limit:
            try:
                status, body, _ = self.server.post("/predict", {"features": EXAMPLE}, timeout=10)
            except (OSError, HTTPException) as error:  # reset, refused, or cut mid-response
                status, body = 0, str(error)
            with self.lock:
                if status == 200:
                    self.ok += 1
                else:
                    self.failures.append((status, body))

    def __enter__(self) -> Stream:
        for thread in self.threads:
            thread.start()
        wait_until(lambda: self.ok > 20, 20, what="stream flowing")
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        for thread in self.threads:
            thread.join(30)

    def advance(self, n: int) -> None:
        """Wait until n more requests have succeeded."""
        target = self.ok + n
        wait_until(lambda: self.ok >= target, 30,
                   what=f"{n} more successful requests ({self.ok} ok, {len(self.failures)} failed so far)")


def versions(server: Gunicorn, n: int = 12) -> set[str]:
    return {server.get("/status")[1]["model_version"] for _ in range(n)}


class StreamServer(Process):
    """The real stream server: omni-mev stream, on a free port."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.port, self.grpc_port = free_port(), free_port()
        self.state_dir = Path(tempfile.mkdtemp(prefix="omni-mev-test-stream-"))
        self.decision_log = self.state_dir / "decisions.jsonl"
        base = {
            "AI_DECISION_LOG": str(self.decision_log),
            "AI_LEDGER_URL": f"sqlite:///{self.state_dir / 'ledger.db'}",
            "AI_LEDGER_DEAD_LETTERS": str(self.state_dir / "dead-letters.jsonl"),
            "AI_STREAM_HOST": "127.0.0.1",
            "AI_STREAM_PORT": str(self.port),
            "AI_GRPC_PORT": str(self.grpc_port),
            "OMNI_MEV_ENV_FILE": "/nonexistent",
            "PYTHONPATH": str(ROOT),
        }
        super().__init__([sys.executable, "-m", "omni_mev.cli", "stream"], env={**base, **(env or {})})
        self.url = f"ws://127.0.0.1:{self.port}/stream"
        self.http_url = f"http://127.0.0.1:{self.port}"

    def start(self) -> StreamServer:
        super().start()

        def up() -> bool:
            if not self.alive():
                raise RuntimeError(f"omni-mev stream exited:\n{self.output()}")
            try:
                return http("GET", self.http_url + "/health")[0] == 200
            except OSError:
                return False

        wait_until(up, 30.0, what="omni-mev stream answering /health")
        return self
