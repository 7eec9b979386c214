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

import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from werkzeug.exceptions import HTTPException, MethodNotAllowed

from omni_mev.api import batch, openapi, outcomes, predict, quality, status, v2
from omni_mev.api.errors import ErrorShape, api_error_body

if TYPE_CHECKING:
    from flask import Flask

EXTENSION = "omni_mev.routes"
# Matches remembered per (method, path); paths are the client's to choose, so the memory is bounded.
_MATCH_MEMORY = 1024


class Kind(enum.Enum):
    FAST = "fast"
    VIEW = "view"


FAST, VIEW = Kind.FAST, Kind.VIEW
POST = ("POST",)
GET = ("GET",)


@dataclass(frozen=True)
class Route:
    """One route: `path` in Flask's rule syntax, served by `handler`."""

    path: str
    handler: Callable[..., Any]
    methods: tuple[str, ...] = GET
    kind: Kind = VIEW
    # False: open to load balancers' and orchestrators' probes even when API keys are configured.
    auth: bool = True
    errors: ErrorShape = api_error_body
    # Counted in ai_requests_total (and so in /status total_requests); probes and reads for people are not.
    counted: bool = False

    @property
    def blueprint(self) -> str:
        """The concern the route belongs to: its handler's module (predict, batch, v2, ...)."""
        return self.handler.__module__.rsplit(".", 1)[-1]

    def is_fast_for(self, method: str) -> bool:
        """Whether the front serves this method of the route itself."""
        return self.kind is FAST and method in self.methods

    @property
    def endpoint(self) -> str:
        """Flask's endpoint name: blueprint.handler."""
        return f"{self.blueprint}.{self.handler.__name__}"


ERROR_SHAPE_NAMES = {api_error_body: "api", v2.protocol_error_body: "v2"}

ROUTES: tuple[Route, ...] = (
    # Scoring and learning: the fast path.
    Route("/predict", predict.predict, POST, FAST, counted=True),
    Route("/predict/batch", batch.predict_batch, POST, FAST, counted=True),
    Route("/v2/models/<name>/infer", v2.infer, POST, FAST, errors=v2.protocol_error_body, counted=True),
    Route("/v2/models/<name>/versions/<version>/infer", v2.infer_version, POST, FAST,
          errors=v2.protocol_error_body, counted=True),
    Route("/outcomes", outcomes.post_outcomes, POST, FAST, counted=True),
    Route("/quality", quality.quality, counted=True),
    # Operations.
    Route("/health", status.health, auth=False),
    Route("/status", status.engine_status),
    Route("/metrics_summary", status.metrics_summary),
    Route("/openapi.json", openapi.openapi_json),
    # The Open Inference Protocol's reads.
    Route("/v2", v2.server_metadata, errors=v2.protocol_error_body),
    Route("/v2/health/live", v2.live, auth=False, errors=v2.protocol_error_body),
    Route("/v2/health/ready", v2.ready, auth=False, errors=v2.protocol_error_body),
    Route("/v2/models/<name>/ready", v2.model_ready, errors=v2.protocol_error_body),
    Route("/v2/models/<name>/versions/<version>/ready", v2.model_ready, errors=v2.protocol_error_body),
    Route("/v2/models/<name>", v2.model_metadata, errors=v2.protocol_error_body),
    Route("/v2/models/<name>/versions/<version>", v2.model_metadata, errors=v2.protocol_error_body),
)


def describe(routes: tuple[Route, ...]) -> list[dict[str, Any]]:
    """The table as rows, for `omni-mev routes`."""
    return [{"path": route.path, "methods": ",".join(route.methods), "kind": route.kind.value,
             "auth": "api key" if route.auth else "open", "errors": ERROR_SHAPE_NAMES.get(route.errors, "custom"),
             "counted": route.counted, "endpoint": route.endpoint} for route in routes]


class RouteTable:
    """The app's routes, looked up through Flask's URL map."""

    def __init__(self, app: Flask, routes: tuple[Route, ...]) -> None:
        self.routes = routes
        # Two routes may share a path (for different methods) or a handler (for different paths); not both.
        self._by_rule = {(route.endpoint, route.path): route for route in routes}
        # Flask's URL map, bound once: every lookup passes the path and method explicitly.
        self._adapter = app.url_map.bind("localhost")
        self._matched: dict[tuple[str, str], tuple[Route | None, dict[str, str]]] = {}

    def __iter__(self) -> Iterator[Route]:
        return iter(self.routes)

    def match(self, path: str, method: str) -> tuple[Route | None, dict[str, str]]:
        """The route at this path and its parameters; for a method the path does not serve, the path's route
        (its error shape and auth apply to the 405); (None, {}) for no such path."""
        key = (method, path)
        found = self._matched.get(key)
        if found is None:
            found = self._match(path, method)
            if len(self._matched) >= _MATCH_MEMORY:
                self._matched.clear()
            self._matched[key] = found
        return found

    def _match(self, path: str, method: str) -> tuple[Route | None, dict[str, str]]:
        try:
            rule, params = self._adapter.match(path, method, return_rule=True)
        except MethodNotAllowed as refused:
            allowed = sorted(refused.valid_methods or [])
            if not allowed:
                return None, {}
            return self._match(path, allowed[0])
        except HTTPException:  # no such path, or a redirect to one
            return None, {}
        return self._by_rule.get((rule.endpoint, rule.rule)), params

    def error_shape(self, path: str, method: str) -> ErrorShape:
        """How errors of a request to this path are shaped."""
        route, _ = self.match(path, method)
        return route.errors if route is not None else api_error_body


def table_of(app: Flask) -> RouteTable:
    return app.extensions[EXTENSION]


def init_app(app: Flask, routes: tuple[Route, ...] = ROUTES) -> RouteTable:
    """Every route into Flask's URL map, by blueprint; the front in front of Flask."""
    from flask import Blueprint

    from omni_mev.api import direct

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
