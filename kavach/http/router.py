"""The one router both adapters share: path + method → route function, errors → JSON.

``Router(kavach).dispatch(request)`` never raises: route errors become their JSON error
response, anything unexpected a 500 ``internal_error`` (details only in the log).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from kavach.http import routes_auth, routes_polar
from kavach.http.context import HttpContext
from kavach.http.forwarded import apply_forwarded
from kavach.http.messages import HttpError, Request, Response
from kavach.http.openapi import build_openapi
from kavach.http.ratelimit import FailureLimiter

if TYPE_CHECKING:
    from kavach.core import Kavach

logger = logging.getLogger("kavach.http")

Handler = Callable[[HttpContext, Request], Response]

#: ``(method, path under the base path, route function)``: design.md's HTTP surface.
ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("POST", "/auth/sign-up/email", routes_auth.sign_up),
    ("POST", "/auth/sign-in/email", routes_auth.sign_in),
    ("POST", "/auth/sign-out", routes_auth.sign_out),
    ("GET", "/auth/session", routes_auth.get_session),
    ("POST", "/auth/polar/checkout", routes_polar.checkout),
    ("GET", "/auth/polar/subscription", routes_polar.subscription),
    ("POST", "/auth/polar/webhook", routes_polar.webhook),
    ("POST", "/auth/polar/portal", routes_polar.portal),
    ("POST", "/auth/polar/subscription/cancel", routes_polar.cancel_subscription),
    ("POST", "/auth/polar/subscription/uncancel", routes_polar.uncancel_subscription),
)
ItemHandler = Callable[[HttpContext, Request, str], Response]
#: ``(method, path prefix, route function)``: routes whose last segment is an id,
#: e.g. ``GET /auth/polar/checkout/{id}``; the function receives the id.
ITEM_ROUTES: tuple[tuple[str, str, ItemHandler], ...] = (
    ("GET", "/auth/polar/checkout/", routes_polar.checkout_status),
)
_MAX_ITEM_ID = 200
OPENAPI_PATH = "/openapi.json"
#: The offline demo page's path (outside the base path), served only with ``demo=``.
DEMO_PATH = "/"


class Router:
    """Routes requests under ``kavach.config.base_path`` to the route functions.

    Holds per-app state (the sign-in failure limiter), so build one per app and reuse it;
    the adapters do. ``demo`` (e.g. a :class:`kavach.http.demo.DemoPage`) is served at
    ``GET /``; without it ``/`` is a 404 like any unknown path.
    """

    def __init__(
        self,
        kavach: Kavach,
        *,
        limiter: FailureLimiter | None = None,
        demo: Handler | None = None,
    ) -> None:
        self.kavach = kavach
        self.base_path = kavach.config.base_path
        self.max_body_bytes = kavach.config.max_body_bytes
        self.proxy_hops = kavach.config.proxy_hops
        self.context = HttpContext.build(kavach, limiter)
        table: dict[str, dict[str, Handler]] = {}
        for method, path, handler in ROUTES:
            table.setdefault(self.base_path + path, {})[method] = handler
        openapi = Response.json(200, build_openapi(self.base_path, kavach.config.cookie_name))
        table[self.base_path + OPENAPI_PATH] = {"GET": lambda _ctx, _req: openapi}
        if demo is not None:  # the offline demo page (kavach.http.demo), off by default
            table[DEMO_PATH] = {"GET": demo}
        self._table = table
        self._allow = {path: ", ".join(sorted(methods)) for path, methods in table.items()}
        items: dict[str, dict[str, ItemHandler]] = {}
        for method, prefix, item_handler in ITEM_ROUTES:
            items.setdefault(self.base_path + prefix, {})[method] = item_handler
        self._items = items

    def __repr__(self) -> str:
        return f"Router(base_path={self.base_path!r}, routes={len(self._table)})"

    def dispatch(self, request: Request) -> Response:
        """The response to ``request``; never raises."""
        if self.proxy_hops:
            apply_forwarded(request, self.proxy_hops)
        methods = self._table.get(request.path)
        if methods is None:
            return self._dispatch_item(request)
        handler = methods.get(request.method)
        if handler is None:
            allow = self._allow[request.path]
            return Response.error(
                405,
                "method_not_allowed",
                f"use {allow}",
                headers=[("Allow", allow)],
            )
        try:
            return handler(self.context, request)
        except HttpError as exc:
            return exc.to_response()
        except Exception as exc:
            logger.error(
                "unhandled %s in %s %s", type(exc).__name__, request.method, request.path,
                exc_info=True,
            )
            return Response.error(500, "internal_error", "internal server error")

    def _dispatch_item(self, request: Request) -> Response:
        """Routes ending in an id segment (``.../checkout/{id}``)."""
        prefix, _, item_id = request.path.rpartition("/")
        handlers = self._items.get(prefix + "/")
        if handlers is None or not item_id or len(item_id) > _MAX_ITEM_ID:
            return Response.error(404, "not_found", "no such route")
        handler = handlers.get(request.method)
        if handler is None:
            allow = ", ".join(sorted(handlers))
            return Response.error(
                405, "method_not_allowed", f"use {allow}", headers=[("Allow", allow)]
            )
        try:
            return handler(self.context, request, item_id)
        except HttpError as exc:
            return exc.to_response()
        except Exception as exc:
            logger.error(
                "unhandled %s in %s %s", type(exc).__name__, request.method, prefix + "/{id}",
                exc_info=True,
            )
            return Response.error(500, "internal_error", "internal server error")

    def body_too_large(self) -> Response:
        """The 413 answer adapters send when ``Content-Length`` (or the body read) is over
        ``max_body_bytes``."""
        return Response.error(
            413,
            "body_too_large",
            f"request bodies are limited to {self.max_body_bytes} bytes",
        )
