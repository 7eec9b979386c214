"""The route table: every route of the service, declared once.

Each route names its full path, its methods, its kind, whether it needs an API
key, the shape of its errors, and whether it counts in the request metrics
(ai_requests_total, ai_request_duration_ms; the endpoint label is the path).
`init_app` puts every route into Flask's URL map, grouped into one blueprint
per concern (predict, batch, v2, outcomes, quality, status, openapi); the URL
map is then the only routing table: the front (omni_mev.api.direct) matches
every request with it, and `flask routes`, `url_for` and `omni-mev routes`
see every route.

Kinds:
- FAST: served by the front straight from WSGI (it saves Flask's request
  context, hooks and response objects, about 100 µs, a third of a /predict);
  the handler takes a DirectRequest and returns a body, an Answer or a Later.
- VIEW: a Flask view.

Whatever the kind, the front checks the API key, Flask's default OPTIONS
answer lists the methods, one renderer (omni_mev.api.errors) writes every
error, and the front counts the request.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from omni_mev.api import direct, openapi, outcomes, predict, quality, status, v2
from omni_mev.core.answers import error_body
from omni_mev.core.v2 import protocol_error_body, server_metadata
from omni_mev.api.table import EXTENSION, FAST, POST, VIEW, Route, RouteTable

if TYPE_CHECKING:
    from flask import Flask

ERROR_SHAPE_NAMES: dict[Callable[..., dict[str, Any]], str] = {error_body: "api", protocol_error_body: "v2"}

ROUTES: tuple[Route, ...] = (
    # Scoring and learning: the fast path.
    Route("/predict", predict.predict, POST, FAST, counted=True),
    Route("/predict/batch", predict.predict_batch, POST, FAST, counted=True),
    Route("/v2/models/<name>/infer", v2.infer, POST, FAST, errors=protocol_error_body, counted=True),
    Route("/v2/models/<name>/versions/<version>/infer", v2.infer_version, POST, FAST,
          errors=protocol_error_body, counted=True),
    Route("/outcomes", outcomes.post_outcomes, POST, FAST, counted=True),
    Route("/quality", quality.quality, counted=True),
    # Operations.
    Route("/health", status.health, auth=False),
    Route("/status", status.engine_status),
    Route("/metrics_summary", status.metrics_summary),
    Route("/openapi.json", openapi.openapi_json),
    # The Open Inference Protocol's reads.
    Route("/v2", server_metadata, errors=protocol_error_body),
    Route("/v2/health/live", v2.live, auth=False, errors=protocol_error_body),
    Route("/v2/health/ready", v2.ready, auth=False, errors=protocol_error_body),
    Route("/v2/models/<name>/ready", v2.model_ready, errors=protocol_error_body),
    Route("/v2/models/<name>/versions/<version>/ready", v2.model_ready, errors=protocol_error_body),
    Route("/v2/models/<name>", v2.model_metadata, errors=protocol_error_body),
    Route("/v2/models/<name>/versions/<version>", v2.model_metadata, errors=protocol_error_body),
)


def describe(routes: tuple[Route, ...]) -> list[dict[str, Any]]:
    """The table as rows, for `omni-mev routes`."""
    return [{"path": route.path, "methods": ",".join(route.methods), "kind": route.kind.value,
             "auth": "api key" if route.auth else "open", "errors": ERROR_SHAPE_NAMES.get(route.errors, "custom"),
             "counted": route.counted, "endpoint": route.endpoint} for route in routes]


def init_app(app: Flask, routes: tuple[Route, ...] = ROUTES) -> RouteTable:
    """Every route into Flask's URL map, by blueprint; the front in front of Flask."""
    from flask import Blueprint

    blueprints: dict[str, Blueprint] = {}
    for route in routes:
        blueprint = blueprints.get(route.blueprint)
        if blueprint is None:
            blueprint = blueprints[route.blueprint] = Blueprint(route.blueprint, route.handler.__module__)
        # A fast route is in the URL map for matching, listing and url_for; the front serves it, so Flask has
        # no view for it (Flask still answers its OPTIONS).
        blueprint.add_url_rule(route.path, route.handler.__name__,
                               route.handler if route.kind is VIEW else None, methods=list(route.methods))
    for blueprint in blueprints.values():
        app.register_blueprint(blueprint)
    table = app.extensions[EXTENSION] = RouteTable(app, routes)
    direct.install(app, table)
    return table
