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

import importlib
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
# a URL-encoded query (``%3Dpolar_cst_...``) is caught too. The tail takes the characters
# of base64 and base64url, also percent-encoded (``%2B``, ``%2F``, ``%3D``, ``%2D``, ``%5F``, any
# case: a form body or a query) or JSON-escaped (``\/``), or the rest of ``whsec_ab%2Bcd`` would
# be kept. ``REDACTED`` fits the tail: redacting twice changes nothing.
_PREFIX = (
    r"(polar_(?:(?:at|rt)_(?:[a-z]_)?|(?:oat|pat|cst|mst|msel|us|cs|crt|ac|whs)_)|whsec_)"
)
_TAIL = r"(?:[A-Za-z0-9_+/=-]+|%(?:2[BbDdFf]|3[Dd]|5[Ff])|\\/)+"  # runs: linear and fast
_SECRET_BYTES = re.compile((_PREFIX + _TAIL).encode())
_SECRET_TEXT = re.compile(_PREFIX + _TAIL)

#: Hosts a test may still reach while a cassette replays with the network blocked (its own
#: local servers): regexes for pytest-recording's ``allowed_hosts``.
LOOPBACK_HOSTS: tuple[str, ...] = (r"^127\.0\.0\.1$", r"^localhost$", r"^::1$")

#: pytest-recording's record modes (VCR.py's, plus ``rewrite``).
RECORD_MODES = ("none", "once", "new_episodes", "all", "rewrite")

Hook = Callable[[Any], Any]

class UnredactableBodyError(KavachError, ValueError):
    """A response body is compressed in a way kavach cannot read, so it cannot be checked
    for secrets; it is not recorded. ``encoding`` is the ``Content-Encoding``."""

    def __init__(self, encoding: str) -> None:
        super().__init__(
            f"cannot redact a response body with Content-Encoding {encoding!r} "
            "(kavach reads gzip and deflate, zstd and br with their modules installed): "
            "not recording it"
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
    if hasattr(body, "read") or _is_iterator(body) or isinstance(body, bytearray | memoryview):
        # VCR.py keeps a file-like body as a file and an iterator (a generator sent chunked) as
        # an iterator, and would write them as a pickled BytesIO or iter, out of the regex's
        # reach (a token may even straddle two chunks): the request is remade with the bytes.
        request = type(request)(request.method, request.uri, _joined(body), request.headers)
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

    A gzip or deflate body (zlib-wrapped or raw, gzip members all) is decoded first
    (``Content-Encoding`` dropped), zstd and br too where Python has a decoder for them; a
    body the HTTP client already decoded (urllib3 does, keeping the header) is taken as it
    is. Any other encoding, a body that does not decode, or one that still holds a secret
    once inflated (compressed with no ``Content-Encoding`` left to say so) raises
    :class:`UnredactableBodyError` rather than store what it cannot check.
    ``Content-Length`` follows a body that changed.
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
    redacted = redact_secrets(_decoded(headers, body))
    _refuse_hidden_secrets(redacted)
    response["body"]["string"] = redacted
    if redacted != body:  # a HEAD answer's Content-Length is not its (empty) body's
        _set_length(headers, [str(len(redacted))])
    return response


def polar_vcr_config(
    record_mode: str | None = "none",
    *,
    allowed_hosts: Sequence[str] = LOOPBACK_HOSTS,
    filter_headers: Sequence[str | tuple[str, Any]] = (),
    before_record_request: Hook | Sequence[Hook] = (),
    before_record_response: Hook | Sequence[Hook] = (),
    **options: Any,
) -> dict[str, Any]:
    """The dict for pytest-recording's ``vcr_config`` fixture (or ``vcr.use_cassette``).

    ``record_mode`` is put in the dict, where pytest-recording lets it win over
    ``--record-mode``: pass ``request.config.getoption("--record-mode") or "none"`` (the
    ``kavach_vcr_config`` fixture does), or ``None`` to leave the key out. The
    ``authorization`` header is stored as ``Bearer <REDACTED>``; :func:`redact_request`
    and :func:`redact_response` run after your own ``before_record_*`` hooks (a list, or
    one function as VCR.py takes it); compressed answers are decoded by
    :func:`redact_response`, not by VCR.py, whose decoding keeps a body it cannot read and
    drops its ``Content-Encoding``;
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
        "decode_compressed_response": False,
        "before_record_request": _chain([*_hooks(before_record_request), redact_request]),
        "before_record_response": _chain([*_hooks(before_record_response), redact_response]),
        "allowed_hosts": list(allowed_hosts),
    }
    if record_mode is not None:
        config["record_mode"] = record_mode
    return config


def _hooks(hooks: Hook | Sequence[Hook]) -> list[Hook]:
    """``hooks`` as a list: VCR.py takes one function as well as several."""
    return [hooks] if callable(hooks) else list(hooks)


def _is_iterator(value: Any) -> bool:
    return hasattr(value, "__next__") and hasattr(value, "__iter__")


def _joined(body: Any) -> bytes:
    """The bytes of a file-like, iterator or bytes-like request body (str parts UTF-8)."""
    if isinstance(body, bytearray | memoryview):
        return bytes(body)
    parts = [body.read()] if hasattr(body, "read") else list(body)
    return b"".join(p.encode("utf-8") if isinstance(p, str) else bytes(p) for p in parts)


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
    """``body`` without its ``Content-Encoding`` (the header is dropped).

    urllib3 hands VCR.py the body it decoded itself, header kept: a body that does not
    start as the encoding says (gzip's and zstd's magic numbers, zlib's header or a raw
    deflate stream ending exactly with the body; for br, the decoder) is taken as decoded.
    """
    names = [n for n in headers if n.lower() == "content-encoding"]
    values = [v for n in names for v in _listed(headers[n])]
    encodings = [e.strip().lower() for v in values for e in v.split(",") if e.strip()]
    for encoding in reversed(encodings):  # the last one applied is undone first
        if encoding == "identity":
            continue
        decode = _DECODERS.get(encoding)
        if decode is None:
            raise UnredactableBodyError(encoding)
        body = decode(body, encoding)
    for name in names:
        del headers[name]
    return body


def _listed(value: Any) -> list[str]:
    values = [value] if isinstance(value, str | bytes) else list(value)
    return [v.decode("latin-1") if isinstance(v, bytes) else v for v in values]


def _gunzip(body: bytes, encoding: str) -> bytes:
    if not body.startswith(b"\x1f\x8b"):
        return body  # decoded by the client
    out: list[bytes] = []
    while body:  # every member (RFC 1952 allows several)
        unpacker = zlib.decompressobj(zlib.MAX_WBITS | 16)
        try:
            out.append(unpacker.decompress(body))
        except zlib.error:
            if out:
                break  # garbage after a member: urllib3 drops it too
            raise UnredactableBodyError(encoding) from None
        if not unpacker.eof:
            raise UnredactableBodyError(encoding)  # cut short
        body = unpacker.unused_data
    return b"".join(out)


def _inflate(body: bytes, encoding: str) -> bytes:
    wrapped = len(body) >= 2 and body[0] & 0x0F == 8 and (body[0] << 8 | body[1]) % 31 == 0
    for wbits in (zlib.MAX_WBITS, -zlib.MAX_WBITS) if wrapped else (-zlib.MAX_WBITS,):
        unpacker = zlib.decompressobj(wbits)
        try:
            data = unpacker.decompress(body)
        except zlib.error:
            continue
        if unpacker.eof and not unpacker.unused_data:
            return data  # zlib-wrapped (RFC 9110), or raw as some servers send it
    return body  # decoded by the client (if not, _refuse_hidden_secrets sees through it)


def _unzstd(body: bytes, encoding: str) -> bytes:
    if not body.startswith(b"\x28\xb5\x2f\xfd"):
        return body  # decoded by the client
    decompress = _optional_decompressor("zstd")
    if decompress is None:
        raise UnredactableBodyError(encoding)
    try:
        return bytes(decompress(body))
    except Exception:  # each module has its own error class
        raise UnredactableBodyError(encoding) from None


def _unbrotli(body: bytes, encoding: str) -> bytes:
    decompress = _optional_decompressor("br")
    if decompress is None:
        raise UnredactableBodyError(encoding)  # br has no magic number to tell it apart
    try:
        return bytes(decompress(body))
    except Exception:  # not br: urllib3 (which needs the same module) decoded it
        return body


def _optional_decompressor(encoding: str) -> Callable[[bytes], bytes] | None:
    modules = {
        "zstd": ("compression.zstd", "backports.zstd", "zstandard"),
        "br": ("brotli", "brotlicffi"),
    }[encoding]
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        return module.decompress  # type: ignore[no-any-return]
    return None


_DECODERS: dict[str, Callable[[bytes, str], bytes]] = {
    "gzip": _gunzip,
    "x-gzip": _gunzip,
    "deflate": _inflate,
    "zstd": _unzstd,
    "br": _unbrotli,
}

_LEFT_SECRET = re.compile(_PREFIX.encode() + rb"(?!REDACTED)[A-Za-z0-9_+/=%\\-]")


def _refuse_hidden_secrets(body: bytes) -> None:
    """Raise if ``body`` is a gzip, zlib or raw deflate stream (even cut short) holding a
    secret: a compressed body whose ``Content-Encoding`` is gone (VCR.py's own decoding
    drops it when it fails; so may a hook) would keep the secret out of the regex's sight."""
    for wbits in (zlib.MAX_WBITS | 32, -zlib.MAX_WBITS):  # gzip or zlib, then raw
        unpacker, inflated = zlib.decompressobj(wbits), []
        for start in range(0, len(body), 4096):  # piecewise: a cut stream still yields
            try:
                inflated.append(unpacker.decompress(body[start : start + 4096]))
            except zlib.error:
                break
            if unpacker.eof:
                break
        if _LEFT_SECRET.search(b"".join(inflated)):
            raise UnredactableBodyError("deflate" if wbits < 0 else "gzip")


def _set_length(headers: Any, value: Any) -> None:
    """Replace an existing ``Content-Length`` header (any case) with ``value``."""
    for name in list(headers):
        if name.lower() == "content-length":
            headers[name] = value
