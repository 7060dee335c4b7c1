"""Trusted origins: CSRF checks on unsafe requests and the ``successUrl`` redirect check.

A browser names the page that sent a request in ``Origin`` (or, on older paths, only in
``Referer``). A request is from a trusted origin when that origin is the server's own
(``scheme://Host``) or one of ``kavach.config.trusted_origins``. A redirect target
(``successUrl``, ``returnUrl``) must be on a configured trusted origin, or on the own
origin only when that is a loopback host (see :func:`is_safe_redirect`).
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from kavach.core import normalize_origin
from kavach.http.messages import HttpError, Request

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def origin_of(url: str) -> str | None:
    """The normalized origin (``scheme://host[:port]``) of an absolute http(s) URL, or
    ``None`` when it is not one (``"null"``, relative, unparsable)."""
    try:
        return normalize_origin(url)
    except ValueError:  # ConfigurationError is a ValueError; so is a bad port
        return None


def own_origin(request: Request) -> str | None:
    """The server's own origin as the client addressed it (scheme and ``Host`` header)."""
    if not request.host:
        return None
    return origin_of(f"{request.scheme}://{request.host}")


def is_trusted_origin(origin: str | None, request: Request, trusted: tuple[str, ...]) -> bool:
    """``True`` when ``origin`` (already normalized) is the own origin or a configured one."""
    if origin is None:
        return False
    return origin in trusted or origin == own_origin(request)


def sender_origin(request: Request) -> tuple[bool, str | None]:
    """``(present, origin)``: whether the request names its sender (``Origin``, else
    ``Referer``) and that sender's normalized origin (``None`` when unreadable)."""
    header = request.headers.get("origin")
    if header is None:
        header = request.headers.get("referer")
    if header is None:
        return False, None
    return True, origin_of(header)


def check_csrf(request: Request, trusted: tuple[str, ...], *, required: bool) -> None:
    """Raise 403 ``csrf`` unless the request comes from a trusted origin.

    ``required=True`` (cookie-authenticated unsafe requests): the sender must be named
    and trusted. ``required=False`` (sign-up/sign-in, no session yet): a named sender
    must be trusted, an anonymous request (curl, a server) passes.
    """
    present, origin = sender_origin(request)
    if not present:
        if required:
            raise HttpError(
                403, "csrf", "cookie-authenticated requests must send an Origin header"
            )
        return
    if not is_trusted_origin(origin, request, trusted):
        raise HttpError(403, "csrf", "request origin is not trusted")


def is_safe_redirect(url: str, request: Request, trusted: tuple[str, ...]) -> bool:
    """``True`` when ``url`` is an absolute http(s) URL on a trusted origin.

    Strict on purpose: backslashes, whitespace, control characters and user info are
    refused, since browsers and ``urlsplit`` may disagree on the host of such URLs.
    """
    if not url or len(url) > 2048 or "\\" in url:
        return False
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        return False
    try:
        parts = urlsplit(url)
        if parts.username is not None or parts.password is not None:
            return False
    except ValueError:
        return False
    origin = origin_of(url)
    if origin is None:
        return False
    if origin in trusted:
        return True
    # The own origin comes from the Host header, which any client but a browser sets at
    # will: trusting it here would let anyone with an account get a Polar checkout link
    # that sends whoever pays it to their site. It counts only on a loopback host (a
    # development server, where a redirect leads nowhere but the payer's own machine);
    # a deployment names its public origin in ``trusted_origins``.
    return origin == own_origin(request) and _is_loopback(parts.hostname)


def _is_loopback(host: str | None) -> bool:
    """``localhost`` (or a name under it), or a loopback IP address."""
    if not host:
        return False
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
