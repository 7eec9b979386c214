"""The one route table: Flask's URL map holds every route, and the fast routes and the Flask views share one auth
check, one error renderer, one OPTIONS answer and one request-metrics path."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from flask import url_for
from prometheus_client import REGISTRY

from omni_mev import create_app
from omni_mev.api.routes import ROUTES
from omni_mev.api.table import FAST, GET, Route
from omni_mev.cli import main
from omni_mev.openapi_spec import build, openapi_path

EXAMPLE = [10.5, 1.012, 3, 0.35, 0.87, 0.5, 2, 1.0]
KEY = "key-0123456789abcdef"


def _methods(rule) -> set[str]:
    return set(rule.methods) - {"HEAD", "OPTIONS"}


def test_the_url_map_holds_exactly_the_table(app):
    in_map = {(rule.rule, method) for rule in app.url_map.iter_rules() for method in _methods(rule)}
    assert in_map == {(route.path, method) for route in ROUTES for method in route.methods}
    with app.test_request_context():
        assert url_for("predict.predict") == "/predict"
        assert url_for("v2.infer", name="lstm_omni") == "/v2/models/lstm_omni/infer"


def test_flask_routes_lists_the_fast_routes_too():
    listed = subprocess.run([sys.executable, "-m", "flask", "--app", "omni_mev", "routes"], capture_output=True,
                            text=True, timeout=120, check=True).stdout
    for route in ROUTES:
        assert route.path in listed, route.path


def test_omni_mev_routes_lists_the_table(capsys):
    assert main(["routes", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["path"] for row in rows] == [route.path for route in ROUTES]
    predict = rows[0]
    assert (predict["kind"], predict["auth"], predict["errors"], predict["counted"]) == ("fast", "api key", "api", True)
    assert {row["path"] for row in rows if row["auth"] == "open"} == {"/health", "/v2/health/live", "/v2/health/ready"}


def test_the_openapi_document_describes_every_route_and_only_those():
    documented = {(path, method.upper()) for path, item in build(ROUTES, "v1", True)["paths"].items()
                  for method in item if method != "parameters"}
    assert documented == {(openapi_path(route), method) for route in ROUTES for method in route.methods}


def hello() -> dict[str, str]:
    return {"hello": "a view on a fast route's path"}


def test_a_view_for_another_method_on_a_fast_path_is_reached():
    app = create_app(route_table=(*ROUTES, Route("/predict", hello, GET)))
    client = app.test_client()
    assert client.get("/predict").get_json() == {"hello": "a view on a fast route's path"}
    assert client.post("/predict", json={"features": EXAMPLE}).get_json()["confidence"] > 0
    options = client.options("/predict")
    assert options.status_code == 204
    assert set(options.headers["Allow"].replace(" ", "").split(",")) == {"GET", "HEAD", "OPTIONS", "POST"}


@pytest.mark.parametrize("method, path", [("POST", "/predict"), ("POST", "/outcomes"), ("GET", "/status"),
                                          ("GET", "/quality"), ("GET", "/nowhere"), ("OPTIONS", "/predict"),
                                          ("GET", "/predict")])
def test_one_auth_check_for_every_kind_of_route(make_app, method, path):
    client = make_app(AI_API_KEYS=KEY).test_client()
    refused = client.open(path, method=method, json={"features": EXAMPLE})
    assert refused.status_code == 401
    assert refused.get_json() == {"error": "unauthorized", "message": "Missing or invalid API key."}
    assert refused.headers["WWW-Authenticate"] == 'Bearer realm="omni-mev"'
    assert client.open(path, method=method, json={"features": EXAMPLE},
                       headers={"X-API-Key": KEY}).status_code != 401


def test_probes_are_open(make_app):
    client = make_app(AI_API_KEYS=KEY).test_client()
    assert [client.get(path).status_code for path in ("/health", "/v2/health/live", "/v2/health/ready")] == [200] * 3
    assert client.get("/v2").status_code == 401


def test_errors_take_the_shape_of_their_route(client):
    # The Open Inference Protocol's routes answer {"error": "..."}, a wrong method included; the others the API's.
    for response, status in ((client.get("/v2/models/lstm_omni/infer"), 405),
                             (client.post("/v2/models/other/infer", json={}), 404),
                             (client.get("/v2/models/other"), 404)):
        assert response.status_code == status and list(response.get_json()) == ["error"]
    for response, status in ((client.get("/predict"), 405), (client.post("/predict", data="[]"), 400),
                             (client.get("/nowhere"), 404)):
        assert response.status_code == status and {"error", "message"} <= set(response.get_json())


def _counted(endpoint: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("ai_requests_total", {"endpoint": endpoint, "outcome": outcome}) or 0.0


def test_views_and_fast_routes_are_counted_alike(client):
    checks = [("/quality", "unavailable", lambda: client.get("/quality")),
              ("/predict", "invalid", lambda: client.post("/predict", json={"features": [1]})),
              ("/predict", "ok", lambda: client.post("/predict", json={"features": EXAMPLE}))]
    for endpoint, outcome, send in checks:
        before = _counted(endpoint, outcome)
        send()
        assert _counted(endpoint, outcome) == before + 1, (endpoint, outcome)
    before = {route.path: sum(_counted(route.path, o) for o in ("ok", "invalid", "unavailable", "error"))
              for route in ROUTES}
    client.get("/health")
    client.get("/status")
    assert _counted("/health", "ok") == before["/health"] == 0


def test_the_fast_routes_are_the_scoring_and_outcome_posts():
    assert {route.path for route in ROUTES if route.kind is FAST} == {
        "/predict", "/predict/batch", "/v2/models/<name>/infer", "/v2/models/<name>/versions/<version>/infer",
        "/outcomes"}
