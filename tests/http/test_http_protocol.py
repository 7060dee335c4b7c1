"""Routing, methods, body limits and JSON handling, on both adapters."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from urllib.parse import urlsplit

import requests
from http_support import PASSWORD, Live, bearer


def raw_exchange(live: Live, request: bytes) -> bytes:
    """Send raw bytes, return everything the server answers until it closes."""
    parts = urlsplit(live.url)
    assert parts.hostname is not None and parts.port is not None
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_unknown_route_is_404_json(live: Live) -> None:
    response = requests.get(live.base + "/auth/nope", timeout=10)
    assert response.status_code == 404
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {"error": "not_found", "message": "no such route"}


def test_path_outside_the_base_path_is_404(live: Live) -> None:
    response = requests.get(live.url + "/auth/session", timeout=10)
    assert response.status_code == 404


def test_wrong_method_is_405_with_allow(live: Live) -> None:
    response = requests.delete(live.base + "/auth/session", timeout=10)
    assert response.status_code == 405
    assert response.headers["Allow"] == "GET"
    assert response.json()["error"] == "method_not_allowed"


def test_get_on_a_post_route_is_405(live: Live) -> None:
    response = requests.get(live.base + "/auth/sign-in/email", timeout=10)
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"


def test_query_strings_are_ignored_by_routing(live: Live, token: str) -> None:
    response = requests.get(
        live.base + "/auth/session?x=1", headers=bearer(token), timeout=10
    )
    assert response.status_code == 200


def test_a_configured_base_path_moves_the_routes(start: Callable[..., Live]) -> None:
    live = start(base_path="/auth-api")
    assert live.base == live.url + "/auth-api"
    assert requests.get(live.base + "/auth/session", timeout=10).status_code == 401
    assert requests.get(live.url + "/api/kavach/auth/session", timeout=10).status_code == 404


def test_body_over_the_limit_is_413(start: Callable[..., Live]) -> None:
    live = start(max_body_bytes=1000)
    response = requests.post(
        live.base + "/auth/sign-in/email", data=b"x" * 1001, timeout=10
    )
    assert response.status_code == 413
    assert response.json()["error"] == "body_too_large"


def test_body_at_the_limit_is_read(start: Callable[..., Live]) -> None:
    live = start(max_body_bytes=1000)
    body = b'{"email": "a@b.io", "password": "12345678"}'
    response = requests.post(
        live.base + "/auth/sign-in/email", data=body.ljust(1000), timeout=10
    )
    assert response.status_code == 401


def test_default_limit_is_one_mebibyte(live: Live) -> None:
    response = requests.post(
        live.base + "/auth/sign-up/email", data=b" " * (1024 * 1024 + 1), timeout=10
    )
    assert response.status_code == 413


def test_bad_json_is_400_bad_json(live: Live) -> None:
    response = requests.post(live.base + "/auth/sign-up/email", data=b"{", timeout=10)
    assert response.status_code == 400
    assert response.json()["error"] == "bad_json"


def test_empty_body_on_a_json_route_is_400_bad_json(live: Live) -> None:
    response = requests.post(live.base + "/auth/sign-up/email", timeout=10)
    assert response.status_code == 400
    assert response.json()["error"] == "bad_json"


def test_non_object_json_is_400(live: Live) -> None:
    response = requests.post(live.base + "/auth/sign-up/email", json=["a", "b"], timeout=10)
    assert response.status_code == 400
    assert response.json()["error"] == "bad_json"


def test_invalid_utf8_body_is_400(live: Live) -> None:
    response = requests.post(live.base + "/auth/sign-up/email", data=b'{"a":"\xff"}', timeout=10)
    assert response.status_code == 400


def test_lone_surrogate_escape_is_400_and_creates_no_user(live: Live) -> None:
    response = requests.post(
        live.base + "/auth/sign-up/email",
        data=b'{"email": "a\\ud800@b.io", "password": "12345678"}',
        timeout=10,
    )
    assert response.status_code == 400
    assert response.json()["error"] == "bad_json"
    assert live.kavach.store.count_users() == 0


def test_utf8_encoded_surrogate_is_400(live: Live) -> None:
    response = requests.post(
        live.base + "/auth/sign-in/email",
        data=b'{"email": "a@b.io", "password": "\xed\xa0\x80bcdefgh"}',
        timeout=10,
    )
    assert response.status_code == 400


def test_paired_surrogate_escapes_are_one_character(live: Live) -> None:
    response = requests.post(
        live.base + "/auth/sign-up/email",
        data=b'{"email": "a@b.io", "password": "12345678", "name": "\\ud83d\\ude00"}',
        timeout=10,
    )
    assert response.status_code == 200
    assert response.json()["user"]["name"] == "\U0001f600"


def test_json_nan_is_400(live: Live) -> None:
    response = requests.post(
        live.base + "/auth/sign-up/email", data=b'{"email": NaN}', timeout=10
    )
    assert response.status_code == 400


def test_invalid_content_length_is_400(live: Live) -> None:
    answer = raw_exchange(
        live,
        b"POST /api/kavach/auth/sign-out HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert answer.split(b"\r\n", 1)[0].split(b" ")[1] == b"400"


def test_unicode_email_round_trips(live: Live) -> None:
    response = requests.post(
        live.base + "/auth/sign-up/email",
        json={"email": "jöran@exämple.se", "password": PASSWORD, "name": "Jöran"},
        timeout=10,
    )
    assert response.status_code == 200
    assert response.json()["user"]["name"] == "Jöran"


def test_openapi_document_is_served_under_the_base_path(live: Live) -> None:
    response = requests.get(live.base + "/openapi.json", timeout=10)
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.1")
    assert "/api/kavach/auth/polar/subscription" in document["paths"]


def test_concurrent_requests_are_served(live: Live, token: str) -> None:
    statuses: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        with requests.Session() as session:
            for _ in range(10):
                status = session.get(
                    live.base + "/auth/session", headers=bearer(token), timeout=10
                ).status_code
                with lock:
                    statuses.append(status)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert statuses == [200] * 80
