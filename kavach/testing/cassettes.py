"""Safe cassettes of Polar traffic: redaction hooks and a VCR config for pytest-recording.

For an app's own test suite, the conftest.py lines (pytest-recording and VCR.py installed)::

    @pytest.fixture
    def vcr_config(kavach_vcr_config):      # kavach's pytest plugin; honours --record-mode
        return kavach_vcr_config

or, to change a setting, the same dict from :func:`polar_vcr_config`. Before anything is
written, the ``Authorization`` header becomes ``Bearer <REDACTED>`` and every Polar token
or webhook secret in a URL, a header or a body keeps its prefix and loses the rest
(``polar_cst_REDACTED``). Compressed answers are stored decoded, so nothing hides from
the redaction in gzip. Neither VCR.py nor pytest-recording is imported here.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Sequence
from typing import Any, AnyStr

from kavach.errors import ConfigurationError, KavachError

__all__ = [
    "LOOPBACK_HOSTS",
    "RECORD_MODES",
    "UnredactableBodyError",
    "polar_vcr_config",
    "redact_request",
    "redact_response",
    "redact_secrets",
]

# Every secret Polar issues, by prefix (polar-api.md §1, §4, §5, and Polar's server:
# oauth2/constants.py, auth/service.py, member_session, customer_session): organization
# and personal access tokens, customer and member session tokens, customer selection
# tokens, user (dashboard) sessions, OAuth client secrets, client registration tokens,
# authorization codes, OAuth access and refresh tokens (polar_at_u_/_o_, formerly
# polar_at_), webhook secrets (whsec_, formerly polar_whs_). Kept, as they are public:
# checkout client secrets (polar_c_) and checkout-link secrets (polar_cl_), both part of
# checkout URLs, and OAuth client ids (polar_ci_). No word boundary before the prefix, so
# a URL-encoded query (``%3Dpolar_cst_...``) is caught too. ``REDACTED`` fits the tail:
# redacting twice changes nothing.
_PREFIX = (
    r"(polar_(?:(?:at|rt)_(?:[a-z]_)?|(?:oat|pat|cst|mst|msel|us|cs|crt|ac|whs)_)|whsec_)"
)
_TAIL = r"[A-Za-z0-9_+/=-]+"
_SECRET_BYTES = re.compile((_PREFIX + _TAIL).encode())
_SECRET_TEXT = re.compile(_PREFIX + _TAIL)

#: Hosts a test may still reach while a cassette replays with the network blocked (its own
#: local servers): regexes for pytest-recording's ``allowed_hosts``.
LOOPBACK_HOSTS: tuple[str, ...] = (r"^127\.0\.0\.1$", r"^localhost$", r"^::1$")

#: pytest-recording's record modes (VCR.py's, plus ``rewrite``).
RECORD_MODES = ("none", "once", "new_episodes", "all", "rewrite")

Hook = Callable[[Any], Any]

# The Content-Encodings kavach undoes, with zlib's ``wbits`` for each (deflate is the
# zlib-wrapped stream, as RFC 9110 says and VCR.py reads it).
_WBITS = {"gzip": zlib.MAX_WBITS | 16, "x-gzip": zlib.MAX_WBITS | 16, "deflate": zlib.MAX_WBITS}


class UnredactableBodyError(KavachError, ValueError):
    """A response body is compressed in a way kavach cannot read, so it cannot be checked
    for secrets; it is not recorded. ``encoding`` is the ``Content-Encoding``."""

    def __init__(self, encoding: str) -> None:
        super().__init__(
            f"cannot redact a response body with Content-Encoding {encoding!r} "
            "(kavach reads gzip and deflate): not recording it"
        )
        self.encoding = encoding


def redact_secrets(data: AnyStr) -> AnyStr:
    """``data`` (bytes or str) with each Polar token or webhook secret replaced by its
    prefix and ``REDACTED`` (``polar_oat_REDACTED``); idempotent, other text untouched."""
    if isinstance(data, bytes):
        return _SECRET_BYTES.sub(rb"\1REDACTED", data)
    return _SECRET_TEXT.sub(r"\1REDACTED", data)


def redact_request(request: Any) -> Any:
    """VCR ``before_record_request`` hook: secrets out of the URI, every header and the body.

    VCR runs it on each live request before matching, too, so a redacted URI still
    matches on replay. (``Authorization`` is replaced whole by ``filter_headers``; a Polar
    token left in it would still lose its tail here.)
    """
    request.uri = redact_secrets(request.uri)
    request.headers = {name: _redacted(value) for name, value in request.headers.items()}
    body = request.body
    if isinstance(body, str):
        body = body.encode("utf-8")
    if isinstance(body, bytes):
        redacted = redact_secrets(body)
        if redacted != body:
            request.body = redacted
            _set_length(request.headers, str(len(redacted)))
    return request


def redact_response(response: dict[str, Any]) -> dict[str, Any]:
    """VCR ``before_record_response`` hook: secrets out of every header and the body.

    A gzip or deflate body is decoded first (``Content-Encoding`` dropped); any other
    encoding, or a body that does not decode, raises :class:`UnredactableBodyError`
    rather than store what it cannot check. ``Content-Length`` follows the body.
    """
    headers: dict[str, Any] = response.setdefault("headers", {})
    for name, values in headers.items():
        if isinstance(values, list):
            headers[name] = [_redacted(value) for value in values]
        else:
            headers[name] = _redacted(values)
    body = response.get("body", {}).get("string")
    if isinstance(body, str):
        body = body.encode("utf-8")
    if not isinstance(body, bytes):
        return response
    body = _decoded(headers, body)
    redacted = redact_secrets(body)
    response["body"]["string"] = redacted
    _set_length(headers, [str(len(redacted))])
    return response


def polar_vcr_config(
    record_mode: str | None = "none",
    *,
    allowed_hosts: Sequence[str] = LOOPBACK_HOSTS,
    filter_headers: Sequence[str | tuple[str, Any]] = (),
    before_record_request: Sequence[Hook] = (),
    before_record_response: Sequence[Hook] = (),
    **options: Any,
) -> dict[str, Any]:
    """The dict for pytest-recording's ``vcr_config`` fixture (or ``vcr.use_cassette``).

    ``record_mode`` is put in the dict, where pytest-recording lets it win over
    ``--record-mode``: pass ``request.config.getoption("--record-mode") or "none"`` (the
    ``kavach_vcr_config`` fixture does), or ``None`` to leave the key out. The
    ``authorization`` header is stored as ``Bearer <REDACTED>``; :func:`redact_request`
    and :func:`redact_response` run after your own ``before_record_*`` hooks;
    ``filter_headers`` adds headers to drop; ``allowed_hosts`` are the hosts a test may
    reach while replaying with the network blocked (loopback by default); ``options``
    (``match_on``, ...) are passed on as they are.
    """
    if record_mode is not None and record_mode not in RECORD_MODES:
        raise ConfigurationError(
            f"record_mode must be one of {', '.join(RECORD_MODES)} or None, not {record_mode!r}",
            field="record_mode",
        )
    config: dict[str, Any] = {
        **options,
        "filter_headers": [("authorization", "Bearer <REDACTED>"), *filter_headers],
        "decode_compressed_response": True,
        "before_record_request": _chain([*before_record_request, redact_request]),
        "before_record_response": _chain([*before_record_response, redact_response]),
        "allowed_hosts": list(allowed_hosts),
    }
    if record_mode is not None:
        config["record_mode"] = record_mode
    return config


def _chain(hooks: list[Hook]) -> Hook:
    """One hook running ``hooks`` in order (a lone hook is returned as it is); a hook
    returning ``None`` drops the interaction, as in VCR.py."""
    if len(hooks) == 1:
        return hooks[0]

    def chained(item: Any) -> Any:
        for hook in hooks:
            if item is None:
                break
            item = hook(item)
        return item

    return chained


def _redacted(value: Any) -> Any:
    """A header value with its secrets redacted (str or bytes; anything else as it is)."""
    if isinstance(value, str):
        return redact_secrets(value)
    if isinstance(value, bytes):
        return redact_secrets(value)
    return value


def _decoded(headers: dict[str, Any], body: bytes) -> bytes:
    """``body`` without its gzip/deflate ``Content-Encoding`` (the header is dropped)."""
    name = next((n for n in headers if n.lower() == "content-encoding"), None)
    if name is None:
        return body
    values = [headers[name]] if isinstance(headers[name], str) else headers[name]
    encodings = [e.strip().lower() for v in values for e in v.split(",") if e.strip()]
    for encoding in reversed(encodings):  # the last one applied is undone first
        if encoding == "identity":
            continue
        if encoding not in _WBITS:
            raise UnredactableBodyError(encoding)
        try:
            body = zlib.decompress(body, _WBITS[encoding])
        except zlib.error:
            raise UnredactableBodyError(encoding) from None
    del headers[name]
    return body


def _set_length(headers: Any, value: Any) -> None:
    """Replace an existing ``Content-Length`` header (any case) with ``value``."""
    for name in list(headers):
        if name.lower() == "content-length":
            headers[name] = value
