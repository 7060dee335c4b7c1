"""A Flask app with kavach mounted under /api/kavach and a page showing the user's plan.

Run it:           python examples/flask_app.py [--port 5000] [--database sqlite:///app.db]
Smoke-test it:    python examples/flask_app.py --smoke   (port 0, one sign-up, one page view)

Polar is switched on when POLAR_ACCESS_TOKEN and POLAR_WEBHOOK_SECRET are set
(POLAR_SANDBOX=1 for the sandbox). Import ``create_app(kavach)`` to embed it elsewhere.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from html import escape
from typing import Any

import requests
from flask import Flask, request
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.serving import make_server

from kavach import create_kavach
from kavach.core import Kavach


def create_app(kavach: Kavach) -> Flask:
    """A Flask app serving kavach's routes under its base path and a plan page at ``/``."""
    app = Flask(__name__)
    app.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, {kavach.config.base_path: kavach.wsgi_app}
    )

    @app.get("/")
    def home() -> tuple[str, int]:
        token = request.cookies.get(kavach.config.cookie_name)
        session = kavach.sessions.resolve(token) if token else None
        user = kavach.users.get(session.user_id) if session else None
        if user is None:
            return (
                "<h1>Not signed in</h1><p>POST your email and password to "
                f"<code>{escape(kavach.config.base_path)}/auth/sign-up/email</code>.</p>",
                401,
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
        return f"<h1>Hello {escape(user.name or user.email)}</h1><p>Plan: {plan}</p>", 200

    return app


def _plugins() -> list[Any]:
    token, secret = os.environ.get("POLAR_ACCESS_TOKEN"), os.environ.get("POLAR_WEBHOOK_SECRET")
    if not token or not secret:
        return []
    from kavach.auth import polar

    return [polar(access_token=token, webhook_secret=secret,
                  sandbox=os.environ.get("POLAR_SANDBOX", "1") == "1",
                  base_url=os.environ.get("POLAR_API_URL") or None)]


def smoke(app: Flask, kavach: Kavach) -> None:
    """Serve on a free port, sign up through the API, view the page, stop."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
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
    finally:
        server.shutdown()
        thread.join(5)


def main(argv: list[str] | None = None) -> int:
    """Run the example app (or its smoke test)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--database", default="memory://")
    parser.add_argument("--smoke", action="store_true", help="serve one self-request and exit")
    args = parser.parse_args(argv)
    with create_kavach(args.database, plugins=_plugins()) as kavach:
        app = create_app(kavach)
        if args.smoke:
            smoke(app, kavach)
        else:
            app.run(host=args.host, port=args.port, threaded=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
