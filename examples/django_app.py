"""A Django app with kavach mounted under /api/kavach and a page showing the user's plan.

Run it:           python examples/django_app.py [--port 8000] [--database sqlite:///app.db]
Smoke-test it:    python examples/django_app.py --smoke   (port 0, one sign-up, one page view)

One file stands for a Django project: ``configure_django`` is ``settings.py``,
``urlpatterns`` is ``urls.py``, ``home`` and ``polar_webhook`` are views, and
``create_app`` is what ``wsgi.py`` exports as ``application``: Django's WSGI handler
behind ``KavachMount``, which hands every request under kavach's base path to
``kavach.wsgi_app`` before Django sees it (so no Django middleware, CSRF included, runs
for those).

Polar is switched on when POLAR_ACCESS_TOKEN and POLAR_WEBHOOK_SECRET are set
(POLAR_SANDBOX=1 for the sandbox). The webhook is then answered at two URLs, to show both
ways: /api/kavach/auth/polar/webhook (the mount) and /billing/polar-webhook (a Django view
calling ``handle_webhook``). Give Polar one of them. Import ``create_app(kavach)`` to
embed it elsewhere (Django is configured once per process).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterable
from html import escape
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

import requests
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.wsgi import get_wsgi_application
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST, require_safe

from kavach import (
    WebhookCallbackError,
    WebhookInProgressError,
    WebhookPayloadError,
    WebhookVerificationError,
    create_kavach,
)
from kavach.core import Kavach

logger = logging.getLogger(__name__)


# --- settings.py ----------------------------------------------------------------------


def configure_django(kavach: Kavach) -> None:
    """Configure Django for this process, with ``settings.KAVACH`` the ``Kavach`` the views
    use (in a project: build it in a module of yours and import it where needed)."""
    if settings.configured:
        if getattr(settings, "KAVACH", None) is not kavach:
            raise RuntimeError("Django is already configured for another Kavach "
                               "(tests: django.test.override_settings(KAVACH=...))")
        return
    settings.configure(
        DEBUG=False,
        SECRET_KEY=os.environ.get("DJANGO_SECRET_KEY", "dev-only, set DJANGO_SECRET_KEY"),
        ALLOWED_HOSTS=os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(","),
        ROOT_URLCONF=__name__,
        MIDDLEWARE=[
            "django.middleware.security.SecurityMiddleware",
            "django.middleware.common.CommonMiddleware",
            "django.middleware.csrf.CsrfViewMiddleware",
        ],
        USE_TZ=True,
        KAVACH=kavach,
    )


# --- views.py -------------------------------------------------------------------------


@require_safe
def home(request: HttpRequest) -> HttpResponse:
    """The signed-in user's plan. kavach's session cookie says who is signed in (Django's
    own ``request.user`` knows nothing of it)."""
    kavach: Kavach = settings.KAVACH
    token = request.COOKIES.get(kavach.config.cookie_name)
    session = kavach.sessions.resolve(token) if token else None
    user = kavach.users.get(session.user_id) if session else None
    if user is None:
        return HttpResponse(
            "<h1>Not signed in</h1><p>POST your email and password to "
            f"<code>{escape(kavach.config.base_path)}/auth/sign-up/email</code>.</p>",
            status=401,
        )
    plugin = kavach.plugins.get("polar")
    subscription = plugin.get_subscription(user.id) if plugin is not None else None
    if subscription is None:
        plan = "Free plan"
    else:
        ends = subscription.current_period_end
        when = f"{ends:%Y-%m-%d}" if ends else "?"
        verb = "ends" if subscription.cancel_at_period_end else "renews"
        plan = (f"{escape(subscription.product_id or '?')} "
                f"({escape(subscription.status)}), {verb} {when}")
    return HttpResponse(f"<h1>Hello {escape(user.name or user.email)}</h1><p>Plan: {plan}</p>")


@csrf_exempt  # Polar sends no CSRF token: the signature is the authentication
@require_POST
def polar_webhook(request: HttpRequest) -> HttpResponse:
    """The alternative to the mount: Polar's webhook answered by a Django view, with the
    status codes kavach's own webhook route gives."""
    kavach: Kavach = settings.KAVACH
    plugin = kavach.plugins.get("polar")
    if plugin is None:
        return JsonResponse({"error": "not_found"}, status=404)
    try:
        body = request.body  # the raw bytes (not request.POST)
    except RequestDataTooBig:  # over DATA_UPLOAD_MAX_MEMORY_SIZE: 413, as kavach's route
        return JsonResponse({"error": "body_too_large"}, status=413)
    try:
        outcome = plugin.handle_webhook(body, request.headers)  # not request.META
    except WebhookVerificationError as exc:  # forged, stale, not JSON: Polar won't retry
        status = 413 if exc.reason == "body_too_large" else 400
        return JsonResponse({"error": exc.reason}, status=status)
    except WebhookPayloadError as exc:  # signed JSON, but not an event envelope
        return JsonResponse({"error": exc.reason}, status=400)
    except WebhookCallbackError as exc:  # on_subscription_change raised: Polar retries
        logger.error("subscription callback failed: %s", exc, exc_info=exc.cause)
        return JsonResponse({"error": "callback_failed"}, status=500)
    except WebhookInProgressError as exc:  # a copy of this delivery is running right now
        response = JsonResponse({"error": "in_progress"}, status=503)
        response["Retry-After"] = str(exc.retry_after)
        return response
    except Exception:  # a store error...: kavach's route answers 500 internal_error (Polar
        # retries); Django's error page would be HTML, with DEBUG a traceback showing the body
        logger.exception("polar webhook failed")
        return JsonResponse({"error": "internal_error"}, status=500)
    return JsonResponse(outcome.to_json(), status=outcome.status_code)


# --- urls.py --------------------------------------------------------------------------

urlpatterns = [
    path("", home),
    path("billing/polar-webhook", polar_webhook),  # exactly the URL given to Polar
]


# --- wsgi.py --------------------------------------------------------------------------


class KavachMount:
    """WSGI middleware for ``wsgi.py``: a request under kavach's base path goes to
    ``kavach.wsgi_app``, anything else to ``app`` (Django's handler)."""

    def __init__(self, app: WSGIApplication, kavach: Kavach) -> None:
        self.app = app
        self.kavach_app = kavach.wsgi_app
        self.prefix = kavach.config.base_path
        if not self.prefix:  # base_path "/": every path would go to kavach, none to Django
            raise ValueError("KavachMount needs a base_path other than '/'")

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path_info = environ.get("PATH_INFO", "")
        if path_info == self.prefix or path_info.startswith(self.prefix + "/"):
            return self.kavach_app(environ, start_response)
        return self.app(environ, start_response)


def create_app(kavach: Kavach) -> KavachMount:
    """Django's WSGI application with kavach's routes mounted in front of it."""
    configure_django(kavach)
    return KavachMount(get_wsgi_application(), kavach)


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    """wsgiref's server, one thread per request (as ``manage.py runserver`` runs)."""

    daemon_threads = True


def _plugins() -> list[Any]:
    token, secret = os.environ.get("POLAR_ACCESS_TOKEN"), os.environ.get("POLAR_WEBHOOK_SECRET")
    if not token or not secret:
        return []
    from kavach.auth import polar

    return [polar(access_token=token, webhook_secret=secret,
                  sandbox=os.environ.get("POLAR_SANDBOX", "1") == "1",
                  base_url=os.environ.get("POLAR_API_URL") or None)]


def smoke(app: KavachMount, kavach: Kavach) -> None:
    """Serve on a free port, sign up through the API, view the page, stop."""
    server = make_server("127.0.0.1", 0, app, server_class=ThreadingWSGIServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    print(f"serving on {url}")
    try:
        with requests.Session() as browser:
            signed_up = browser.post(
                url + kavach.config.base_path + "/auth/sign-up/email",
                json={"email": "jane@acme.io", "password": "correct horse battery",
                      "name": "Jane"},
                timeout=10,
            )
            print(f"sign-up: {signed_up.status_code}")
            page = browser.get(url + "/", timeout=10)
            print(f"page: {page.status_code} {page.text}")
            posted = browser.post(url + "/", timeout=10)
            print(f"POST / without a CSRF token: {posted.status_code}")
    finally:
        server.shutdown()
        thread.join(5)
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    """Run the example app (or its smoke test)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--database", default="memory://")
    parser.add_argument("--smoke", action="store_true", help="serve one self-request and exit")
    args = parser.parse_args(argv)
    with create_kavach(args.database, plugins=_plugins()) as kavach:
        app = create_app(kavach)
        if args.smoke:
            smoke(app, kavach)
        else:
            with make_server(args.host, args.port, app, server_class=ThreadingWSGIServer) as s:
                print(f"serving on http://{args.host}:{s.server_port}", flush=True)
                with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C stops it
                    s.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
