"""The ``kavach`` command: serve (as a real process), users create, migrate, settings."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from kavach import create_kavach
from kavach.cli import build_parser, main, polar_settings, serve_settings
from kavach.stores import SCHEMA_VERSION

ROOT = Path(__file__).resolve().parents[2]
LISTENING = re.compile(r"kavach listening on (http://\S+)")


class ServeProcess:
    """``python -m kavach serve ...`` with its stderr collected in a background thread."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.url = ""
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kavach", "serve", "--port", "0", *args],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._collector = threading.Thread(target=self._collect, daemon=True)
        self._collector.start()
        if not self._ready.wait(20):
            self.process.kill()
            raise AssertionError("server did not start:\n" + "".join(self.lines))

    def _collect(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            match = LISTENING.search(line)
            if match:
                self.url = match.group(1)
                self._ready.set()
        self._ready.set()

    def stop(self, sig: int = signal.SIGINT) -> int:
        self.process.send_signal(sig)
        status = self.process.wait(20)
        self._collector.join(5)  # every line the process wrote is in self.lines
        return status

    @property
    def log(self) -> str:
        return "".join(self.lines)


@pytest.fixture
def served() -> Iterator[ServeProcess]:
    proc = ServeProcess("--database", "memory://")
    yield proc
    if proc.process.poll() is None:
        proc.process.kill()
        proc.process.wait(10)


def test_serve_answers_on_the_announced_url(served: ServeProcess) -> None:
    assert served.url.endswith("/api/kavach")
    assert requests.get(served.url + "/auth/session", timeout=10).status_code == 401


def test_serve_logs_one_line_per_request(served: ServeProcess) -> None:
    requests.get(served.url + "/auth/session", timeout=10)
    served.stop()
    assert re.search(r"GET /api/kavach/auth/session 401 \d+\.\dms", served.log)


def test_serve_exits_0_on_ctrl_c(served: ServeProcess) -> None:
    assert served.stop(signal.SIGINT) == 0
    assert "shutting down" in served.log


def test_serve_exits_0_on_sigterm(served: ServeProcess) -> None:
    assert served.stop(signal.SIGTERM) == 0


def test_serve_keeps_the_polar_plugin_off_without_credentials(served: ServeProcess) -> None:
    response = requests.get(served.url + "/auth/polar/subscription", timeout=10)
    assert response.status_code == 404


def test_serve_with_fake_polar_runs_a_checkout_offline() -> None:
    proc = ServeProcess("--database", "memory://", "--fake-polar")
    try:
        signed_up = requests.post(
            proc.url + "/auth/sign-up/email",
            json={"email": "jane@acme.io", "password": "correct horse battery"},
            timeout=10,
        )
        token = signed_up.json()["session"]["token"]
        match = re.search(r"fake Polar at (\S+) \(product (\S+)\)", proc.log)
        assert match is not None
        response = requests.post(
            proc.url + "/auth/polar/checkout",
            json={"productId": match.group(2)},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        assert response.json()["url"].startswith(match.group(1))
    finally:
        assert proc.stop() == 0


def test_users_create_reads_the_password_from_stdin(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/k.db"
    out = io.StringIO()
    status = main(
        ["users", "create", "jane@acme.io", "--name", "Jane", "--password-stdin",
         "--database", url],
        environ={},
        stdin=io.StringIO("correct horse battery\n"),
        stdout=out,
    )
    assert status == 0
    assert "jane@acme.io" in out.getvalue()
    with create_kavach(url) as kavach:
        assert kavach.users.authenticate("jane@acme.io", "correct horse battery").name == "Jane"


def test_users_create_refuses_a_short_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(
        ["users", "create", "jane@acme.io", "--password-stdin",
         "--database", f"sqlite:///{tmp_path}/k.db"],
        environ={},
        stdin=io.StringIO("short\n"),
    )
    assert status == 2
    assert "password" in capsys.readouterr().err


def test_migrate_prints_the_schema_version(tmp_path: Path) -> None:
    out = io.StringIO()
    status = main(
        ["migrate"], environ={"KAVACH_DATABASE_URL": f"sqlite:///{tmp_path}/k.db"}, stdout=out
    )
    assert status == 0
    assert out.getvalue().strip() == f"sqlite schema version {SCHEMA_VERSION}"


def test_python_dash_m_kavach_is_the_same_program() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kavach", "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode == 0
    assert "serve" in result.stdout and "migrate" in result.stdout


def test_building_the_parser_loads_neither_requests_nor_the_polar_plugin() -> None:
    # ``kavach --help`` and every parse start fast: the HTTP client and the plugin load
    # only when a command needs them (kavach.polar's names load on first use).
    code = (
        "import sys; from kavach.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('requests', 'kavach.polar.plugin', 'kavach.polar.client') "
        "if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT, capture_output=True, text=True, timeout=30, check=True,
    )
    assert result.stdout.strip() == "[]"


def test_the_polar_package_still_gives_its_names() -> None:
    import kavach.polar
    from kavach.polar.plugin import PolarPlugin

    assert kavach.polar.PolarPlugin is PolarPlugin
    assert set(kavach.polar.__all__) == set(kavach.polar._EXPORTS)
    assert set(kavach.polar.__all__) <= set(dir(kavach.polar))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = kavach.polar.nope  # type: ignore[attr-defined]


def test_flags_win_over_the_environment() -> None:
    args = build_parser().parse_args(
        ["serve", "--database", "memory://", "--trusted-origin", "https://a.example"]
    )
    settings = serve_settings(
        args,
        {
            "KAVACH_DATABASE_URL": "sqlite:///other.db",
            "KAVACH_TRUSTED_ORIGINS": "https://b.example,https://c.example",
        },
    )
    assert settings.database == "memory://"
    assert settings.trusted_origins == ("https://a.example",)


def test_environment_fills_what_flags_leave_out() -> None:
    args = build_parser().parse_args(["serve"])
    settings = serve_settings(
        args,
        {
            "KAVACH_DATABASE_URL": "sqlite:///other.db",
            "KAVACH_TRUSTED_ORIGINS": "https://b.example, https://c.example",
        },
    )
    assert settings.database == "sqlite:///other.db"
    assert settings.trusted_origins == ("https://b.example", "https://c.example")
    assert (settings.host, settings.port, settings.base_path) == ("127.0.0.1", 8000, "/api/kavach")


def test_polar_is_configured_from_the_environment() -> None:
    polar, warnings = polar_settings(
        {
            "POLAR_ACCESS_TOKEN": "polar_oat_x",
            "POLAR_WEBHOOK_SECRET": "whsec_abc",
            "POLAR_SANDBOX": "1",
            "POLAR_ORGANIZATION_ID": "org_1",
            "POLAR_API_URL": "http://127.0.0.1:9",
        }
    )
    assert polar is not None and warnings == ()
    assert (polar.sandbox, polar.organization_id, polar.base_url) == (
        True, "org_1", "http://127.0.0.1:9",
    )
    assert "polar_oat_x" not in repr(polar) and "whsec_abc" not in repr(polar)


def test_polar_stays_off_with_a_warning_when_the_secret_is_missing() -> None:
    polar, warnings = polar_settings({"POLAR_ACCESS_TOKEN": "polar_oat_x"})
    assert polar is None
    assert "POLAR_WEBHOOK_SECRET" in warnings[0]


def test_a_bad_polar_sandbox_value_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(
        ["serve", "--database", "memory://"],
        environ={
            "POLAR_ACCESS_TOKEN": "polar_oat_x",
            "POLAR_WEBHOOK_SECRET": "whsec_abc",
            "POLAR_SANDBOX": "maybe",
        },
    )
    assert status == 2
    assert "POLAR_SANDBOX" in capsys.readouterr().err


def test_proxy_hops_from_flag_and_environment() -> None:
    flag = serve_settings(build_parser().parse_args(["serve", "--proxy-hops", "2"]),
                          {"KAVACH_PROXY_HOPS": "1"})
    env = serve_settings(build_parser().parse_args(["serve"]), {"KAVACH_PROXY_HOPS": "1"})
    default = serve_settings(build_parser().parse_args(["serve"]), {})
    assert (flag.proxy_hops, env.proxy_hops, default.proxy_hops) == (2, 1, 0)
