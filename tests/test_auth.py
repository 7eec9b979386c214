"""API keys: required everywhere but the health checks when configured; never leaked."""
from __future__ import annotations

import pytest

from tests.servers import EXAMPLE, Gunicorn

KEY = "k3y-0123456789abcdef"
OTHER = "second-key-0123456789"


@pytest.fixture
def secured(make_app):
    return make_app(AI_API_KEYS=f"{KEY},{OTHER}").test_client()


def test_no_key_or_wrong_key_is_401(secured):
    for headers in ({}, {"Authorization": "Bearer wrong-key-000000000"}, {"X-API-Key": KEY[:-1]},
                    {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"}):
        response = secured.post("/predict", json={"features": EXAMPLE}, headers=headers)
        assert response.status_code == 401
        body = response.get_json()
        assert body == {"error": "unauthorized", "message": "Missing or invalid API key."}
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert secured.get("/status").status_code == 401
    assert secured.get("/metrics_summary").status_code == 401
    assert secured.get("/openapi.json").status_code == 401


@pytest.mark.parametrize("headers", [{"Authorization": f"Bearer {KEY}"}, {"authorization": f"bearer {OTHER}"},
                                     {"X-API-Key": KEY}])
def test_right_key_passes(secured, headers):
    assert secured.post("/predict", json={"features": EXAMPLE}, headers=headers).status_code == 200
    assert secured.get("/status", headers=headers).status_code == 200


def test_health_open(secured):
    assert secured.get("/health").status_code == 200


def test_keys_from_file(make_app, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text(f"# rotated monthly\n{KEY}\n\n")
    client = make_app(AI_API_KEYS_FILE=keys).test_client()
    assert client.post("/predict", json={"features": EXAMPLE}).status_code == 401
    assert client.post("/predict", json={"features": EXAMPLE}, headers={"X-API-Key": KEY}).status_code == 200


def test_short_keys_refused_at_start():
    from omni_mev.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match="AI_API_KEYS has a key shorter than 16"):
        load_settings(environ={"AI_API_KEYS": "short"})


def test_without_keys_everything_open(client):
    assert client.post("/predict", json={"features": EXAMPLE}).status_code == 200


def test_gunicorn_logs_auth_state_and_never_the_key():
    with Gunicorn({"AI_API_KEYS": KEY, "GUNICORN_ACCESSLOG": "-", "LOG_LEVEL": "debug"}, workers=1) as server:
        assert server.post("/predict", {"features": EXAMPLE})[0] == 401
        assert server.post("/predict", {"features": EXAMPLE}, headers={"Authorization": f"Bearer {KEY}"})[0] == 200
        assert server.get("/health")[0] == 200
        server.stop()
        log = server.output()
    assert "API key auth on" in log
    assert KEY not in log
    with Gunicorn(workers=1) as server:
        server.stop()
        assert "API key auth OFF" in server.output()


def test_v2_probes_open_other_v2_routes_protected(secured):
    assert secured.get("/v2/health/live").status_code == 200
    assert secured.get("/v2/health/ready").status_code == 200
    assert secured.get("/v2/models/lstm_omni").status_code == 401
    assert secured.get("/v2/models/lstm_omni", headers={"X-API-Key": KEY}).status_code == 200
