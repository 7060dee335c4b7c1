"""kavach's HTTP surface: one framework-neutral router, two adapters.

* :func:`make_server` / :func:`serve` — the built-in server (stdlib ``http.server``);
* :class:`WSGIApp` — a WSGI callable for Flask, Django or any WSGI server
  (``kavach.wsgi_app`` builds one).

Both hand :class:`Request` values to the same :class:`Router` and write its
:class:`Response` back.
"""

from kavach.http.messages import Headers, HttpError, Request, Response
from kavach.http.openapi import build_openapi
from kavach.http.router import ROUTES, Router
from kavach.http.server import KavachHTTPServer, make_server, serve
from kavach.http.wsgi import WSGIApp

__all__ = [
    "ROUTES",
    "Headers",
    "HttpError",
    "KavachHTTPServer",
    "Request",
    "Response",
    "Router",
    "WSGIApp",
    "build_openapi",
    "make_server",
    "serve",
]
