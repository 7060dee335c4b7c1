"""The WSGI adapter: mounting in Flask, SCRIPT_NAME handling, environ details."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from typing import Any
from wsgiref.simple_server import make_server as make_wsgi_server

import pytest
import requests
from flask import Flask
from http_support import PASSWORD, QuietWSGIHandler, ThreadedWSGIServer, bearer
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from kavach import create_kavach
from kavach.core import Kavach
from kavach.http import WSGIApp
from kavach.passwords import PasswordHasher


@pytest.fixture
def kavach() -> Iterator[Kavach]:
    with create_kavach("memory://", password_hasher=PasswordHasher.fast()) as k:
        yield k


def serve_wsgi(app: Any) -> tuple[str, Any]:
    server = make_wsgi_server(
        "127.0.0.1", 0, app, server_class=ThreadedWSGIServer, handler_class=QuietWSGIHandler
    )
    threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}", server


@pytest.fixture
def flask_url(kavach: Kavach) -> Iterator[str]:
    flask_app = Flask("host")

    @flask_app.get("/")
    def home() -> str:
        return "host page"

    flask_app.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
        flask_app.wsgi_app, {"/api/kavach": kavach.wsgi_app}
    )
    url, server = serve_wsgi(flask_app)
    yield url
    server.shutdown()
    server.server_close()


def call(app: WSGIApp, **environ: Any) -> tuple[str, list[tuple[str, str]], bytes]:
    base = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/",
        "QUERY_STRING": "",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
    }
    base.update(environ)
    captured: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        captured["status"], captured["headers"] = status, headers
        return lambda data: None

    body = b"".join(app(base, start_response))
    return captured["status"], captured["headers"], body


def test_mounted_under_flask_the_routes_answer(flask_url: str) -> None:
    response = requests.post(
        flask_url + "/api/kavach/auth/sign-up/email",
        json={"email": "jane@acme.io", "password": PASSWORD},
        timeout=10,
    )
    assert response.status_code == 200
    token = response.json()["session"]["token"]
    session = requests.get(
        flask_url + "/api/kavach/auth/session", headers=bearer(token), timeout=10
    )
    assert session.json()["user"]["email"] == "jane@acme.io"


def test_mounted_under_flask_the_host_app_keeps_its_routes(flask_url: str) -> None:
    assert requests.get(flask_url + "/", timeout=10).text == "host page"


def test_mounted_at_the_root_the_full_path_is_matched(kavach: Kavach) -> None:
    url, server = serve_wsgi(kavach.wsgi_app)
    try:
        response = requests.get(url + "/api/kavach/auth/session", timeout=10)
    finally:
        server.shutdown()
        server.server_close()
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("script_name", "path_info"),
    [
        ("/shop/api/kavach", "/auth/session"),  # mounted at the base path, site under /shop
        ("/shop", "/api/kavach/auth/session"),  # mounted at the site's root, under /shop
        ("/api/kavach", "/auth/session"),  # no outer prefix
        ("", "/api/kavach/auth/session"),
    ],
)
def test_routes_answer_whatever_prefix_the_site_runs_under(
    kavach: Kavach, script_name: str, path_info: str
) -> None:
    status, _, body = call(kavach.wsgi_app, SCRIPT_NAME=script_name, PATH_INFO=path_info)
    assert status.startswith("401"), body  # the session route, not 404


@pytest.mark.parametrize(
    ("script_name", "path_info"),
    [("/shop", "/other/auth/session"), ("/shop/api", "/auth/session"), ("", "/auth/session")],
)
def test_paths_outside_the_base_path_stay_404(
    kavach: Kavach, script_name: str, path_info: str
) -> None:
    status, _, _ = call(kavach.wsgi_app, SCRIPT_NAME=script_name, PATH_INFO=path_info)
    assert status.startswith("404")


def test_with_base_path_slash_the_routes_are_at_the_mount_point_under_any_prefix() -> None:
    with create_kavach("memory://", base_path="/", password_hasher=PasswordHasher.fast()) as k:
        for script_name in ("", "/shop", "/shop/auth-app"):
            status, _, _ = call(k.wsgi_app, SCRIPT_NAME=script_name, PATH_INFO="/auth/session")
            assert status.startswith("401"), script_name


def test_flask_deployed_under_a_prefix_reaches_the_routes(kavach: Kavach) -> None:
    # gunicorn --env SCRIPT_NAME=/shop (or a proxy prefix): Flask strips /shop, the
    # dispatcher mounts kavach at /api/kavach, kavach sees SCRIPT_NAME=/shop/api/kavach.
    flask_app = Flask("host")
    flask_app.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
        flask_app.wsgi_app, {"/api/kavach": kavach.wsgi_app}
    )
    client = flask_app.test_client()
    response = client.post(
        "/api/kavach/auth/sign-up/email",
        json={"email": "jane@acme.io", "password": PASSWORD},
        base_url="http://localhost/shop",
    )
    assert response.status_code == 200


def test_https_url_scheme_marks_the_cookie_secure(kavach: Kavach) -> None:
    body = b'{"email": "jane@acme.io", "password": "correct horse battery"}'
    status, headers, _ = call(
        kavach.wsgi_app,
        REQUEST_METHOD="POST",
        PATH_INFO="/api/kavach/auth/sign-up/email",
        CONTENT_LENGTH=str(len(body)),
        **{"wsgi.input": io.BytesIO(body), "wsgi.url_scheme": "https"},
    )
    assert status == "200 OK"
    assert "Secure" in dict(headers)["Set-Cookie"]


def test_a_terminated_input_without_length_is_read_up_to_the_limit(kavach: Kavach) -> None:
    status, _, body = call(
        kavach.wsgi_app,
        REQUEST_METHOD="POST",
        PATH_INFO="/api/kavach/auth/sign-in/email",
        **{"wsgi.input": io.BytesIO(b"x" * (1024 * 1024 + 1)), "wsgi.input_terminated": True},
    )
    assert status.startswith("413")
    assert b"body_too_large" in body


def test_without_a_host_header_the_server_name_is_the_own_origin(kavach: Kavach) -> None:
    user = kavach.users.create("jane@acme.io", password=PASSWORD)
    token = kavach.sessions.create(user.id).token
    status, _, _ = call(
        kavach.wsgi_app,
        REQUEST_METHOD="POST",
        PATH_INFO="/api/kavach/auth/sign-out",
        SERVER_NAME="app.local",
        SERVER_PORT="8080",
        HTTP_COOKIE=f"kavach_session={token}",
        HTTP_ORIGIN="http://app.local:8080",
    )
    assert status.startswith("204")


def test_204_responses_carry_no_content_length(kavach: Kavach) -> None:
    user = kavach.users.create("jane@acme.io", password=PASSWORD)
    token = kavach.sessions.create(user.id).token
    status, headers, body = call(
        kavach.wsgi_app,
        REQUEST_METHOD="POST",
        PATH_INFO="/api/kavach/auth/sign-out",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )
    assert status == "204 No Content"
    assert "Content-Length" not in dict(headers)
    assert body == b""
