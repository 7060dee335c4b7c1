"""Every example runs as it is (short-lived: ``--smoke`` where it serves)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def run_example(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for var in ("POLAR_ACCESS_TOKEN", "POLAR_WEBHOOK_SECRET"):
        env.pop(var, None)
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    return result


def test_quickstart_creates_resolves_and_revokes_a_session() -> None:
    out = run_example("quickstart.py").stdout
    assert "created user jane@acme.io" in out
    assert "resolved the token to user" in out
    assert "resolves now to None" in out


def test_flask_app_shows_the_signed_in_users_plan() -> None:
    out = run_example("flask_app.py", "--smoke").stdout
    assert "sign-up: 200" in out
    assert "page: 200 <h1>Hello Jane</h1><p>Plan: Free plan</p>" in out


def test_django_app_shows_the_signed_in_users_plan_and_keeps_djangos_csrf() -> None:
    out = run_example("django_app.py", "--smoke").stdout
    assert "sign-up: 200" in out
    assert "page: 200 <h1>Hello Jane</h1><p>Plan: Free plan</p>" in out
    assert "POST / without a CSRF token: 403" in out


def test_dev_server_prints_its_url_and_answers() -> None:
    out = run_example("dev_server.py", "--port", "0", "--smoke").stdout
    assert re.search(r"kavach dev server on http://127\.0\.0\.1:\d+/api/kavach", out)
    assert "GET /openapi.json -> 200" in out


def _load_flask_example() -> Any:
    spec = importlib.util.spec_from_file_location("flask_app_example", EXAMPLES / "flask_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class PlanPlugin:
    """Just enough of the Polar plugin for the example page: one active subscription."""

    name = "polar"

    def bind(self, kavach: Any) -> None: ...

    def close(self) -> None: ...

    def get_subscription(self, user_id: str) -> Any:
        return SimpleNamespace(
            id="sub_1", status="active", product_id="pro-monthly",
            current_period_end=datetime(2030, 1, 31, tzinfo=UTC), cancel_at_period_end=False,
        )


def test_flask_example_create_app_shows_a_subscribed_plan() -> None:
    from kavach import create_kavach
    from kavach.passwords import PasswordHasher

    module = _load_flask_example()
    with create_kavach(
        "memory://", plugins=[PlanPlugin()], password_hasher=PasswordHasher.fast()
    ) as kavach:
        user = kavach.users.create("jane@acme.io", password="correct horse battery", name="Jane")
        token = kavach.sessions.create(user.id).token
        client = module.create_app(kavach).test_client()
        client.set_cookie("kavach_session", token)
        page = client.get("/")
    assert page.status_code == 200
    assert "Plan: pro-monthly (active), renews 2030-01-31" in page.get_data(as_text=True)
