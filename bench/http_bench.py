"""HTTP benchmark: ``GET /api/kavach/auth/polar/subscription`` with a bearer session.

Compares kavach's built-in server with the same lookup as a minimal Flask app under
waitress (the Flask view resolves the session with ``kavach.sessions.resolve`` and reads
the subscription through the same plugin). Both serve one SQLite store in a temp dir with
the real Polar plugin (no Polar call is made on this path).

The load generator runs in a separate process (so it does not share the servers' GIL):
N keep-alive client threads (``http.client``), a fixed number of requests each.

    python bench/http_bench.py            # 8 threads x 2000 requests per server
    python bench/http_bench.py --quick    # 4 threads x 250
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

PATH = "/api/kavach/auth/polar/subscription"


# -- load generator (child process) -------------------------------------------------------


def run_client(host: str, port: int, token: str, threads: int, per_thread: int) -> dict[str, Any]:
    """Send ``threads x per_thread`` keep-alive GETs; return throughput and latencies."""
    headers = {"Authorization": f"Bearer {token}"}
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors: list[str] = []
    barrier = threading.Barrier(threads + 1)

    def worker(slot: list[float]) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=30)
        for _ in range(20):  # warm-up: connection, caches
            conn.request("GET", PATH, headers=headers)
            conn.getresponse().read()
        barrier.wait()
        for _ in range(per_thread):
            started = time.perf_counter()
            conn.request("GET", PATH, headers=headers)
            response = conn.getresponse()
            response.read()
            slot.append(time.perf_counter() - started)
            if response.status != 200:
                errors.append(str(response.status))
        conn.close()

    workers = [threading.Thread(target=worker, args=(slot,)) for slot in latencies]
    for thread in workers:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in workers:
        thread.join()
    elapsed = time.perf_counter() - started
    flat = sorted(x for slot in latencies for x in slot)
    return {
        "requests": len(flat),
        "seconds": elapsed,
        "rps": len(flat) / elapsed,
        "p50_ms": statistics.median(flat) * 1000,
        "p99_ms": flat[int(len(flat) * 0.99) - 1] * 1000,
        "errors": len(errors),
    }


def measure(port: int, token: str, threads: int, per_thread: int) -> dict[str, Any]:
    """Run the load generator in a child process against ``127.0.0.1:port``."""
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--client", str(port), token,
         str(threads), str(per_thread)],
        capture_output=True, text=True, check=True, timeout=600,
    ).stdout
    result: dict[str, Any] = json.loads(out)
    return result


# -- servers under test ---------------------------------------------------------------------


def build_kavach(directory: Path) -> tuple[Any, str]:
    """A Kavach on SQLite with the Polar plugin, one subscribed user, and a bearer token."""
    from kavach import create_kavach
    from kavach.auth import polar
    from kavach.passwords import PasswordHasher
    from kavach.records import SubscriptionState

    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    kavach = create_kavach(
        f"sqlite:///{directory / 'bench.db'}",
        plugins=[polar(access_token="polar_oat_x", webhook_secret=secret,
                       base_url="http://127.0.0.1:9")],
        password_hasher=PasswordHasher.fast(),
    )
    user = kavach.users.create("bench@acme.io", password="correct horse battery")
    now = datetime.now(UTC)
    kavach.store.apply_subscription(
        SubscriptionState(
            id="sub_bench", user_id=user.id, status="active", product_id="prod_pro",
            current_period_end=now + timedelta(days=30), cancel_at_period_end=False,
            version=1, created_at=now,
        )
    )
    return kavach, kavach.sessions.create(user.id).token


def start_builtin(kavach: Any) -> tuple[int, Callable[[], None]]:
    from kavach.http import make_server

    server = make_server(kavach, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return server.server_port, stop


def flask_app(kavach: Any) -> Any:
    """The same lookup as a minimal Flask view."""
    from flask import Flask, jsonify, request

    from kavach.http.routes_polar import subscription_json

    app = Flask("bench")
    plugin = kavach.plugins.polar

    @app.get(PATH)
    def subscription() -> Any:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        session = kavach.sessions.resolve(token) if scheme.lower() == "bearer" else None
        if session is None:
            return jsonify(error="unauthorized", message="a valid session is required"), 401
        status = plugin.status(session.user_id)
        return jsonify(
            subscription=subscription_json(status.subscription), access=status.access.to_json()
        )

    return app


def start_waitress(kavach: Any) -> tuple[int, Callable[[], None]]:
    import logging

    from waitress import create_server

    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "Task queue depth" chatter
    server = create_server(flask_app(kavach), host="127.0.0.1", port=0)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()

    def stop() -> None:
        server.close()

    return int(server.effective_port), stop


def report(name: str, result: dict[str, Any]) -> None:
    print(
        f"{name:<18} {result['rps']:>9.0f} req/s   p50 {result['p50_ms']:6.2f} ms   "
        f"p99 {result['p99_ms']:6.2f} ms   ({result['requests']} requests, "
        f"{result['errors']} errors)"
    )


def main(argv: list[str] | None = None) -> int:
    """Benchmark both servers and print req/s, p50, p99 and the ratio."""
    parser = argparse.ArgumentParser(description="kavach HTTP benchmark")
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--threads", type=int, help="client threads (default 8; quick 4)")
    parser.add_argument("--requests", type=int, help="requests per thread (2000; quick 250)")
    parser.add_argument("--client", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        port, token, threads, per_thread = args.client
        result = run_client("127.0.0.1", int(port), token, int(threads), int(per_thread))
        print(json.dumps(result))
        return 0

    threads = args.threads or (4 if args.quick else 8)
    per_thread = args.requests or (250 if args.quick else 2000)
    print(f"GET {PATH} (bearer session, SQLite, Polar plugin), "
          f"{threads} keep-alive client threads x {per_thread} requests")
    with tempfile.TemporaryDirectory() as tmp:
        kavach, token = build_kavach(Path(tmp))
        with kavach:
            results = {}
            for name, start in (("kavach built-in", start_builtin),
                                ("Flask + waitress", start_waitress)):
                port, stop = start(kavach)
                try:
                    results[name] = measure(port, token, threads, per_thread)
                finally:
                    stop()
                report(name, results[name])
    builtin, flask = results["kavach built-in"], results["Flask + waitress"]
    print(f"ratio built-in / Flask+waitress: {builtin['rps'] / flask['rps']:.2f}x req/s, "
          f"p99 {flask['p99_ms'] / builtin['p99_ms']:.2f}x lower")
    return 1 if builtin["errors"] or flask["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
