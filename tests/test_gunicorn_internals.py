"""omni_mev/gunicorn_internals.py against the installed gunicorn: a release that changed the internals the worker
uses fails here, by name, before a worker misframes a response."""
from __future__ import annotations

import configparser
import inspect
import socket
from importlib.metadata import version

import pytest
from gunicorn import util
from gunicorn.config import Config
from gunicorn.http import message, wsgi
from gunicorn.workers.base import Worker
from packaging.specifiers import SpecifierSet

from omni_mev import gunicorn_internals
from tests.conftest import ROOT

PEER = ("127.0.0.1", 50000)


def _head(*lines: str) -> bytes:
    return ("\r\n".join(["POST /predict HTTP/1.1", "Host: x", *lines]) + "\r\n\r\n").encode()


def test_the_installed_release_is_one_the_adapter_was_tested_with():
    installed = version("gunicorn")
    assert installed in SpecifierSet(gunicorn_internals.TESTED_RELEASES), (
        f"gunicorn {installed} is outside {gunicorn_internals.TESTED_RELEASES}: check omni_mev/gunicorn_internals.py "
        "against it, then widen the range in setup.cfg and the module")
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    pins = [line.strip() for line in setup["options"]["install_requires"].splitlines() if line.startswith("gunicorn")]
    assert pins == [f"gunicorn{gunicorn_internals.TESTED_RELEASES}"]


def test_gunicorn_looks_its_globals_up_where_the_adapter_replaces_them():
    """install() swaps module globals: they work only while gunicorn reads them from its modules at call time."""
    assert "response_class = Response" in inspect.getsource(wsgi.create)
    assert "util.write_error(" in inspect.getsource(Worker.handle_error)
    assert "util.http_date(" in inspect.getsource(wsgi.Response.default_headers)
    assert "req._expected_100_continue" in inspect.getsource(wsgi.create)
    assert "self._peer_is_trusted_proxy()" in inspect.getsource(message)


def test_install_replaces_them(monkeypatch):
    for module, name in ((wsgi, "Response"), (util, "write_error"), (util, "http_date")):
        monkeypatch.setattr(module, name, getattr(module, name))  # restored after the test

    def write_error(sock, status, reason, mesg):
        pass

    gunicorn_internals.install(write_error)
    assert wsgi.Response is gunicorn_internals.OneSendResponse
    assert util.write_error is write_error
    assert util.http_date() == util.http_date() and util.http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"


@pytest.mark.parametrize("lines, declared", [(["Content-Length: 5"], 5), (["Transfer-Encoding: chunked"], None),
                                             ([], 0)])
def test_the_body_framing_is_read_from_the_head(lines, declared):
    request = gunicorn_internals.parse_head(Config(), _head(*lines), PEER, 1)
    assert gunicorn_internals.declared_body_length(request) == declared


def test_expect_continue_is_taken_once():
    request = gunicorn_internals.parse_head(Config(), _head("Content-Length: 5", "Expect: 100-continue"), PEER, 1)
    assert gunicorn_internals.take_expect_continue(request) is True
    assert gunicorn_internals.take_expect_continue(request) is False


@pytest.mark.parametrize("allowed, trusted", [("127.0.0.1", True), ("10.0.0.1", False)])
def test_the_cached_trust_verdict_is_gunicorns(allowed, trusted):
    cfg = Config()
    cfg.set("forwarded_allow_ips", allowed)
    gunicorn_internals._PEER_TRUST.clear()
    request = gunicorn_internals.parse_head(cfg, _head(), PEER, 1)
    assert message.Request._peer_is_trusted_proxy(request) is trusted
    assert request._peer_is_trusted_proxy() is trusted
    assert gunicorn_internals._PEER_TRUST == {PEER[0]: trusted}


def test_a_response_is_framed_by_its_length_and_sent_with_its_head_at_once():
    cfg = Config()
    request = gunicorn_internals.parse_head(cfg, _head("Content-Length: 0"), PEER, 1)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        response = gunicorn_internals.OneSendResponse(request, ours, cfg)
        response.start_response("201 Created", [("Content-Type", "application/json"), ("X-Late", "yes"),
                                                ("Content-Length", "7")])
        assert (response.status_code, response.response_length, response.chunked) == (201, 7, False)
        response.write(b'{"a":1}')
        response.close()
        ours.shutdown(socket.SHUT_WR)
        first = theirs.recv(65536)
        head, body = first.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 201 Created") and b"Content-Length: 7" in head and b"X-Late: yes" in head
        assert body == b'{"a":1}' and theirs.recv(65536) == b""
