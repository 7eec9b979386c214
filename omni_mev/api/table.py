"""The route types: what a route is (Route, Kind) and how requests are matched to one (RouteTable).

Apart from the table itself (omni_mev.api.routes), which imports every view:
the front (omni_mev.api.direct) and the OpenAPI document need the types, and
importing them never imports a view, so no import runs in a circle.
"""
from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from werkzeug.exceptions import HTTPException, MethodNotAllowed

from omni_mev.core.answers import ErrorShape, error_body

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
    errors: ErrorShape = error_body
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
        return self._by_rule.get((rule.endpoint, rule.rule)), dict(params)

    def error_shape(self, path: str, method: str) -> ErrorShape:
        """How errors of a request to this path are shaped."""
        route, _ = self.match(path, method)
        return route.errors if route is not None else error_body


def table_of(app: Flask) -> RouteTable:
    return app.extensions[EXTENSION]


def error_shape_of(app: Any, path: str, method: str) -> ErrorShape:
    """The error shape of a request to `path`, for a server that holds the WSGI application: the route table's,
    or the API's for an application without one."""
    table = getattr(app, "extensions", {}).get(EXTENSION)
    return table.error_shape(path, method) if table is not None else error_body
