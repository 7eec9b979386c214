"""Several hosts on one machine: network namespaces on a bridge, each running the real service.

    root namespace: bridge <address>.1/24 - nginx, PostgreSQL, Redis, the engine stub
    namespace h1:   <address>.11/24       - gunicorn -c gunicorn.conf.py (its own loopback and ports)
    namespace h2:   <address>.12/24 ...

Every name carries a random tag, and everything is removed on exit, so runs
never collide and nothing outlives a test. Needs root (CAP_NET_ADMIN).
"""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

from tests.servers import ROOT, Gunicorn, http, wait_until

PORT = 8001


def _ip(*args: str, namespace: str | None = None) -> None:
    prefix = ["ip", "netns", "exec", namespace] if namespace else []
    subprocess.run([*prefix, "ip", *args], check=True, capture_output=True, timeout=10)


def can_make_hosts() -> str | None:
    """None when network namespaces can be made here; else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    name = f"omcheck{secrets.token_hex(3)}"
    try:
        _ip("netns", "add", name)
        _ip("netns", "del", name)
    except (subprocess.CalledProcessError, FileNotFoundError) as error:
        return f"cannot make network namespaces: {error}"
    return None


class HostNetwork:
    """A bridge in the root namespace and `count` hosts (namespaces) attached to it."""

    def __init__(self, count: int) -> None:
        tag = secrets.token_hex(2)
        # 10.<a>.<b>.0/24 picked at random: clear of other runs' and of the machine's own networks in practice.
        self.prefix = f"10.{secrets.randbelow(200) + 20}.{secrets.randbelow(250) + 1}"
        self.bridge = f"omb{tag}"
        self.gateway = f"{self.prefix}.1"
        self.cidr = f"{self.prefix}.0/24"
        self.namespaces = [f"omh{tag}{i}" for i in range(1, count + 1)]
        self.addresses = [f"{self.prefix}.{10 + i}" for i in range(1, count + 1)]
        self._links = [f"omv{tag}{i}" for i in range(1, count + 1)]

    def __enter__(self) -> HostNetwork:
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for namespace, address, link in zip(self.namespaces, self.addresses, self._links):
                _ip("netns", "add", namespace)
                _ip("link", "add", link, "type", "veth", "peer", "name", f"{link}p")
                _ip("link", "set", f"{link}p", "netns", namespace)
                _ip("link", "set", link, "master", self.bridge)
                _ip("link", "set", link, "up")
                _ip("link", "set", "lo", "up", namespace=namespace)
                _ip("addr", "add", f"{address}/24", "dev", f"{link}p", namespace=namespace)
                _ip("link", "set", f"{link}p", "up", namespace=namespace)
                _ip("route", "add", "default", "via", self.gateway, namespace=namespace)
        except BaseException:
            self.__exit__()
            raise
        return self

    def kill_everything_in(self, namespace: str) -> None:
        """SIGKILL every process of a host, as a crash would."""
        pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass

    def run(self, namespace: str, argv: list[str], env: Mapping[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
        """A command on a host, to its end."""
        return subprocess.run(["ip", "netns", "exec", namespace, *argv], cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})

    def __exit__(self, *exc: Any) -> None:
        for namespace in self.namespaces:
            self.kill_everything_in(namespace)
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


class HostService(Gunicorn):
    """The real service (gunicorn with gunicorn.conf.py) on one host of a HostNetwork, on its address."""

    def __init__(self, network: HostNetwork, index: int, env: Mapping[str, str]) -> None:
        self.namespace, self.address = network.namespaces[index], network.addresses[index]
        super().__init__({"AI_ENGINE_HOST": self.address, "AI_ENGINE_PORT": str(PORT), **env})
        self.port = PORT
        self.argv = ["ip", "netns", "exec", self.namespace, *self.argv]
        self.url = f"http://{self.address}:{PORT}"
        self.upstream = f"{self.address}:{PORT}"

    def model_version(self) -> str:
        return http("GET", self.url + "/status")[1]["model_version"]


def omni_mev_on(network: HostNetwork, namespace: str, *args: str, env: Mapping[str, str]) -> subprocess.CompletedProcess:
    """`omni-mev ARGS` run on a host."""
    return network.run(namespace, [sys.executable, "-m", "omni_mev.cli", *args],
                       env={"OMNI_MEV_ENV_FILE": "/nonexistent", **env})


def wait_serving(service: HostService, version: str, timeout: float = 30.0) -> None:
    wait_until(lambda: {service.model_version() for _ in range(6)} == {version}, timeout,
               what=f"{service.namespace} serving {version}")

