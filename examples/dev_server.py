"""Run kavach's built-in HTTP server for local development.

    python examples/dev_server.py [--port 8000] [--database memory://]
    python examples/dev_server.py --port 0 --smoke   # start, answer one request, exit

It prints the URL it listens on (the real port when ``--port 0``). Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading

import requests

from kavach import create_kavach
from kavach.http import KavachHTTPServer, make_server, serve


def main(argv: list[str] | None = None) -> int:
    """Start the server; with ``--smoke``, send it one request and stop."""
    parser = argparse.ArgumentParser(description="kavach development server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--database", default="memory://")
    parser.add_argument("--smoke", action="store_true", help="serve one self-request and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    with create_kavach(args.database) as kavach:

        def announce(server: KavachHTTPServer) -> str:
            base = server.url + kavach.config.base_path
            print(f"kavach dev server on {base}", flush=True)
            print(f"  try: curl -i {base}/auth/session", flush=True)
            return base

        if args.smoke:
            server = make_server(kavach, args.host, args.port)
            base = announce(server)
            thread = threading.Thread(target=server.serve_forever, daemon=True)
            thread.start()
            response = requests.get(base + "/openapi.json", timeout=10)
            print(f"GET /openapi.json -> {response.status_code} "
                  f"({len(response.json()['paths'])} paths)", flush=True)
            server.shutdown()
            thread.join(5)
            server.server_close()
            return 0
        serve(kavach, args.host, args.port, on_ready=announce)  # until Ctrl-C
        print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
