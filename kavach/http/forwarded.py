"""Reading ``X-Forwarded-*`` headers set by trusted reverse proxies.

Behind a TLS-terminating proxy the socket's peer is the proxy and the scheme is ``http``,
so the sign-in rate limit would see one client, cookies would lack ``Secure`` and the
server's own origin (for CSRF and trusted redirects) would be wrong. With
``create_kavach(proxy_hops=N)`` (CLI ``--proxy-hops N``) the router takes:

* the client address from ``X-Forwarded-For``: the N-th address from the right, i.e. the
  one the outermost trusted proxy saw (addresses further left are client-supplied and
  never trusted);
* the scheme from the last ``X-Forwarded-Proto`` value (``http`` or ``https`` only);
* the host from the last ``X-Forwarded-Host`` value, when present.

With ``proxy_hops=0`` (the default) none of these headers is read: a client could forge them.
"""

from __future__ import annotations

from kavach.http.messages import Request

_MAX_HOST_LENGTH = 255


def _last(value: str) -> str:
    return value.rsplit(",", 1)[-1].strip()


def apply_forwarded(request: Request, hops: int) -> None:
    """Rewrite ``request.client``, ``.scheme`` and ``.host`` from the headers of ``hops``
    trusted proxies (in place). Malformed or missing headers leave the values as they are."""
    if hops <= 0:
        return
    forwarded_for = request.headers.get("x-forwarded-for")
    if forwarded_for:
        addresses = [a.strip() for a in forwarded_for.split(",") if a.strip()]
        if len(addresses) >= hops:
            request.client = addresses[-hops]
    proto = request.headers.get("x-forwarded-proto")
    if proto:
        scheme = _last(proto).lower()
        if scheme in ("http", "https"):
            request.scheme = scheme
    host = request.headers.get("x-forwarded-host")
    if host:
        candidate = _last(host)
        if candidate and len(candidate) <= _MAX_HOST_LENGTH and not any(
            c.isspace() or c in "/\\@" for c in candidate
        ):
            request.host = candidate
