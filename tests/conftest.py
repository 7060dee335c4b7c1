"""Shared pytest configuration.

Cassettes (pytest-recording / VCR.py): they live in the top-level ``cassettes/`` folder as
``cassettes/<test module>/<test name>.yaml`` and replay by default (record mode ``none``;
``--record-mode=rewrite`` re-records, see the README, "Recording cassettes"). Whatever is
recorded passes through :func:`redact_request` / :func:`redact_response` first, so no
token reaches a file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["pytester"]

CASSETTES_DIR = Path(__file__).resolve().parent.parent / "cassettes"

# Bearer tokens and webhook secrets Polar may put in a body (customer-session tokens,
# OAuth tokens, webhook-endpoint secrets). Checkout client secrets (polar_c_...) are
# public: they are in the checkout URL. "REDACTED" matches the tail, so this is idempotent.
_SECRET = re.compile(
    rb"\b(polar_(?:oat|pat|cst|mst|whs|at_[a-z]|rt_[a-z])_|whsec_)[A-Za-z0-9_+/=-]+"
)
_REDACTED = rb"\1REDACTED"
# Blocking the network during replay must never stop a test's own local servers.
_LOOPBACK = [r"^127\.0\.0\.1$", r"^localhost$", r"^::1$"]


def redact_secrets(body: bytes) -> bytes:
    """``body`` with every Polar token or webhook secret replaced by ``<prefix>REDACTED``."""
    return _SECRET.sub(_REDACTED, body)


def redact_request(request: Any) -> Any:
    """VCR ``before_record_request`` hook: strip secrets from the request body."""
    body = request.body
    if isinstance(body, str):
        body = body.encode("utf-8")
    if isinstance(body, bytes):
        request.body = redact_secrets(body)
    return request


def redact_response(response: dict[str, Any]) -> dict[str, Any]:
    """VCR ``before_record_response`` hook: strip secrets from the response body."""
    body = response.get("body", {}).get("string")
    if isinstance(body, str):
        body = body.encode("utf-8")
    if isinstance(body, bytes):
        response["body"]["string"] = redact_secrets(body)
    return response


@pytest.fixture(scope="module")
def vcr_cassette_dir(request: pytest.FixtureRequest) -> str:
    """``cassettes/<test module name>/`` at the repository root."""
    return str(CASSETTES_DIR / request.module.__name__.rpartition(".")[2])


@pytest.fixture
def vcr_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    """VCR settings for every ``@pytest.mark.vcr`` test.

    ``record_mode`` is ``none`` unless ``--record-mode`` is given on the command line
    (pytest-recording lets this dict win over the CLI, hence the explicit lookup).
    """
    return {
        "record_mode": request.config.getoption("--record-mode") or "none",
        "filter_headers": [("authorization", "Bearer <REDACTED>")],
        "decode_compressed_response": True,
        "before_record_request": redact_request,
        "before_record_response": redact_response,
        "allowed_hosts": _LOOPBACK,
    }
