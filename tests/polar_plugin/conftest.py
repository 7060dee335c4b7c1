"""Fixtures for the Polar plugin tests: a Kavach on every local store, a signer, a recorder."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import pytest

from kavach import FrozenClock, Kavach, PasswordHasher, create_kavach
from kavach.auth import polar
from kavach.polar import PolarPlugin, PolarSubscription, decoding, sign_webhook
from kavach.polar.webhooks import Derivation

SECRET = "whsec_" + base64.b64encode(b"kavach-test-secret-32-bytes-long").decode()
START = datetime(2026, 8, 22, 10, 20, 0, tzinfo=UTC)


@attrs.define
class CallbackRecorder:
    """Collects ``on_subscription_change`` calls; can be told to fail."""

    calls: list[tuple[str, PolarSubscription]] = attrs.Factory(list)
    fail_next: int = 0

    def __call__(self, user_id: str, sub: PolarSubscription) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("app callback failed")
        self.calls.append((user_id, sub))


@attrs.define
class PolarHarness:
    """A Kavach with the Polar plugin and helpers to deliver signed webhooks."""

    kavach: Kavach
    plugin: PolarPlugin
    clock: FrozenClock
    callbacks: CallbackRecorder

    def headers(
        self, body: bytes, msg_id: str, derivation: Derivation | None = None
    ) -> dict[str, str]:
        return sign_webhook(
            body, SECRET, msg_id=msg_id, timestamp=self.clock.now().timestamp(),
            derivation=derivation,
        )

    def deliver(self, body: bytes, msg_id: str, **kwargs: Any) -> Any:
        return self.plugin.handle_webhook(body, self.headers(body, msg_id, **kwargs))


#: The stores every plugin test runs on. "memory-generic" is the memory store with the
#: fast webhook decoder (msgspec) switched off: every body takes the generic path.
STORE_KINDS = ["memory", "json", "sqlite", "memory-generic"]


def store_url(kind: str, tmp_path: Path) -> str:
    kind = kind.removesuffix("-generic")
    if kind == "memory":
        return "memory://"
    if kind == "json":
        return f"json://{tmp_path / 'kavach.json'}"
    return f"sqlite:///{tmp_path / 'kavach.db'}"


@pytest.fixture(params=STORE_KINDS)
def harness(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[PolarHarness]:
    if request.param.endswith("-generic"):
        monkeypatch.setattr(decoding, "_decoder", None)
    clock = FrozenClock(START)
    callbacks = CallbackRecorder()
    plugin = polar(
        access_token="polar_oat_test_token",
        webhook_secret=SECRET,
        base_url="http://127.0.0.1:9",
        on_subscription_change=callbacks,
    )
    kavach = create_kavach(
        store_url(request.param, tmp_path),
        plugins=[plugin],
        clock=clock,
        password_hasher=PasswordHasher.fast(),
    )
    with kavach:
        yield PolarHarness(kavach, plugin, clock, callbacks)
