"""kavach.testing.cassettes: what an app's recorded Polar traffic may hold, and its VCR set-up.

Unit tests run the hooks on VCR.py's own request and response values. The end-to-end test
is an app's test suite (conftest.py wiring ``kavach_vcr_config``, a test calling Polar
through kavach's plugin and following the portal link) run twice in a subprocess: once
recording against a live FakePolar, once replaying with FakePolar stopped.
"""

from __future__ import annotations

import gzip
import io
import re
import sys
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import yaml  # type: ignore[import-untyped]
from hypothesis import given
from hypothesis import strategies as st
from vcr import VCR
from vcr.request import Request

from kavach.errors import ConfigurationError
from kavach.testing import (
    LOOPBACK_HOSTS,
    FakePolar,
    UnredactableBodyError,
    polar_vcr_config,
    redact_request,
    redact_response,
    redact_secrets,
)
from tests.local_http import LocalServer

TOKEN = "polar_oat_Ab3xQ9mK2pL7vR4tY8wZ1cN5bH6jD0fG3sE9uI2oP4q"
TOKEN_TAIL = TOKEN.removeprefix("polar_oat_")
WEBHOOK_SECRET = "whsec_dGVzdC13ZWJob29rLXNlY3JldC0wMTIzNDU2Nzg5"

# Every kind of secret Polar issues (the prefix is kept, the rest goes).
SECRET_PREFIXES = [
    "polar_oat_",  # organization access token
    "polar_pat_",  # personal access token
    "polar_cst_",  # customer session token (portal)
    "polar_mst_",  # member session token
    "polar_msel_",  # customer selection token
    "polar_us_",  # user (dashboard) session
    "polar_cs_",  # OAuth client secret
    "polar_crt_",  # OAuth client registration token
    "polar_ac_",  # OAuth authorization code
    "polar_at_u_",  # OAuth access token, user
    "polar_at_o_",  # OAuth access token, organization
    "polar_at_",  # OAuth access token, older form
    "polar_rt_u_",  # OAuth refresh token, user
    "polar_rt_o_",  # OAuth refresh token, organization
    "polar_rt_",  # OAuth refresh token, older form
    "polar_whs_",  # webhook secret, older form
    "whsec_",  # webhook secret
]
# Public or not secret: kept as they are.
KEPT = [
    "polar_c_Qm3kq8fJ0aBxYv7L2nT9wE4rS6uZ1pD5hK8cG0jNXo2Ab3",  # checkout client secret
    "polar_cl_Qm3kq8fJ0aBxYv7L2nT9wE4rS6uZ1",  # checkout-link client secret
    "polar_ci_Qm3kq8fJ0aBxYv7L2nT9wE4rS6uZ1",  # OAuth client id
    '{"polar_customer_id": "c9d8e7f6-5a4b-4c3d-9e2f-1a0b9c8d7e6f"}',
    "polar_subscription_status=active&email=jane%40acme.io",
    "Bearer realm=\"polar\", error=\"invalid_token\"",
]
# An unredacted secret: a prefix followed by anything but REDACTED.
LEFT_OVER = re.compile(
    r"(polar_(?:oat|pat|cst|mst|msel|us|cs|crt|ac|whs|(?:at|rt)(?:_[a-z])?)_|whsec_)"
    r"(?!REDACTED)[A-Za-z0-9]"
)


def vcr_request(uri: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
    """A request as VCR.py hands it to ``before_record_request``."""
    return Request("POST", uri, body, headers or {})


def vcr_response(body: Any, headers: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """A response as VCR.py hands it to ``before_record_response``."""
    return {
        "status": {"code": 200, "message": "OK"},
        "headers": headers or {"content-type": ["application/json"]},
        "body": {"string": body},
    }


# --- redact_secrets -----------------------------------------------------------------


@pytest.mark.parametrize("prefix", SECRET_PREFIXES)
def test_every_kind_of_polar_secret_keeps_only_its_prefix(prefix: str) -> None:
    body = f'{{"value": "{prefix}Xy12abc-_+/=Q", "next": 1}}'.encode()
    assert redact_secrets(body) == f'{{"value": "{prefix}REDACTED", "next": 1}}'.encode()


@pytest.mark.parametrize("text", KEPT)
def test_public_values_and_other_text_are_kept(text: str) -> None:
    assert redact_secrets(text) == text
    assert redact_secrets(text.encode()) == text.encode()


def test_a_token_inside_a_url_encoded_url_is_redacted() -> None:
    nested = "return=https%3A%2F%2Fpolar.sh%2Fportal%3Fcustomer_session_token%3Dpolar_cst_Xy12%26e"
    assert redact_secrets(nested).endswith("%3Dpolar_cst_REDACTED%26e")


def test_str_and_bytes_are_redacted_alike() -> None:
    text = f"token={TOKEN}&secret={WEBHOOK_SECRET}"
    assert redact_secrets(text) == "token=polar_oat_REDACTED&secret=whsec_REDACTED"
    assert redact_secrets(text.encode()) == redact_secrets(text).encode()


_TAIL_CHARS = st.text(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-", min_size=1
)
_SEPARATORS = st.text(" \"'&?%:;,.{}[]<>\n", min_size=1, max_size=4)


@given(st.lists(st.tuples(_SEPARATORS, st.sampled_from(SECRET_PREFIXES), _TAIL_CHARS)))
def test_each_secret_tail_is_replaced_and_nothing_else_changes(
    parts: list[tuple[str, str, str]],
) -> None:
    text = "".join(sep + prefix + tail for sep, prefix, tail in parts)
    expected = "".join(sep + prefix + "REDACTED" for sep, prefix, _ in parts)
    assert redact_secrets(text) == expected


@given(st.text())
def test_redacting_twice_is_redacting_once(text: str) -> None:
    once = redact_secrets(text)
    assert redact_secrets(once) == once
    assert LEFT_OVER.findall(once) == []


# --- redact_request -----------------------------------------------------------------


def test_request_body_uri_and_headers_lose_their_secrets() -> None:
    body = b'{"client_secret": "polar_cs_Xy12", "code": "polar_ac_Zz9"}'
    request = vcr_request(
        "https://sandbox-api.polar.sh/v1/x?customer_session_token=polar_cst_Xy12&limit=2",
        body,
        {"Cookie": "polar_session=polar_us_Secret1", "Content-Length": str(len(body))},
    )
    recorded = redact_request(request)
    assert recorded.body == b'{"client_secret": "polar_cs_REDACTED", "code": "polar_ac_REDACTED"}'
    assert recorded.uri.endswith("?customer_session_token=polar_cst_REDACTED&limit=2")
    assert recorded.headers["Cookie"] == "polar_session=polar_us_REDACTED"
    assert recorded.headers["Content-Length"] == str(len(recorded.body))


def test_a_str_request_body_is_redacted() -> None:
    recorded = redact_request(vcr_request("https://x/v1/", f'{{"t": "{TOKEN}"}}'))
    assert recorded.body == b'{"t": "polar_oat_REDACTED"}'


def test_header_values_that_are_bytes_are_redacted_and_others_kept() -> None:
    headers: dict[str, Any] = {"X-Token": TOKEN.encode(), "X-Count": 3}
    recorded = redact_request(vcr_request("https://x/", None, headers))
    assert dict(recorded.headers) == {"X-Token": b"polar_oat_REDACTED", "X-Count": 3}


def test_a_request_without_body_or_secret_is_unchanged() -> None:
    recorded = redact_request(vcr_request("https://x/v1/subscriptions/?page=1", None, {"A": "b"}))
    assert (recorded.uri, recorded.body, dict(recorded.headers)) == (
        "https://x/v1/subscriptions/?page=1", None, {"A": "b"}
    )


# --- redact_response ----------------------------------------------------------------


def test_response_body_and_headers_lose_their_secrets() -> None:
    body = (
        b'{"token":"polar_cst_Xy12abc","customer_portal_url":'
        b'"https://polar.sh/a/portal?customer_session_token=polar_cst_Xy12abc&email=j",'
        b'"client_secret":"polar_c_keepme"}'
    )
    response = vcr_response(
        body,
        {
            "Location": ["https://app.example.com/cb?code=polar_ac_Abc&state=s"],
            "Set-Cookie": ["polar_session=polar_us_Secret1; Path=/; HttpOnly"],
            "Content-Length": [str(len(body))],
            "retry-after": ["2"],
        },
    )
    recorded = redact_response(response)
    stored = recorded["body"]["string"]
    assert b"Xy12abc" not in stored and stored.count(b"polar_cst_REDACTED") == 2
    assert b"polar_c_keepme" in stored
    headers = recorded["headers"]
    assert headers["Location"] == ["https://app.example.com/cb?code=polar_ac_REDACTED&state=s"]
    assert headers["Set-Cookie"] == ["polar_session=polar_us_REDACTED; Path=/; HttpOnly"]
    assert recorded["headers"]["Content-Length"] == [str(len(stored))]
    assert recorded["headers"]["retry-after"] == ["2"]


def test_a_str_response_body_is_redacted() -> None:
    recorded = redact_response(vcr_response(f'{{"secret": "{WEBHOOK_SECRET}"}}'))
    assert recorded["body"]["string"] == b'{"secret": "whsec_REDACTED"}'


def test_a_gzip_body_is_decoded_then_redacted() -> None:
    plain = f'{{"token": "{TOKEN}"}}'.encode()
    response = vcr_response(
        gzip.compress(plain), {"Content-Encoding": ["gzip"], "Content-Length": ["9"]}
    )
    recorded = redact_response(response)
    assert recorded["body"]["string"] == b'{"token": "polar_oat_REDACTED"}'
    assert "Content-Encoding" not in recorded["headers"]
    assert recorded["headers"]["Content-Length"] == [str(len(recorded["body"]["string"]))]


def test_a_deflate_body_is_decoded_then_redacted() -> None:
    response = vcr_response(zlib.compress(TOKEN.encode()), {"content-encoding": ["deflate"]})
    assert redact_response(response)["body"]["string"] == b"polar_oat_REDACTED"


def test_a_gzip_body_through_the_vcr_config_is_stored_decoded_and_redacted() -> None:
    # The chain VCR.py builds from the config (kavach's hook decodes).
    before_record_response = VCR().get_merged_config(**polar_vcr_config())["before_record_response"]
    response = vcr_response(gzip.compress(TOKEN.encode()), {"content-encoding": ["gzip"]})
    recorded = before_record_response(response)
    assert recorded["body"]["string"] == b"polar_oat_REDACTED"
    assert "content-encoding" not in {name.lower() for name in recorded["headers"]}


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        ("br", b"\x1b\x03\x00"),
        ("zstd", b"(\xb5/\xfd"),
        ("gzip", b"\x1f\x8bnot gzip"),  # gzip's magic number, then no gzip
        ("x-br", b""),
    ],
)
def test_a_body_kavach_cannot_decode_is_refused_not_recorded(encoding: str, body: bytes) -> None:
    with pytest.raises(UnredactableBodyError) as caught:
        redact_response(vcr_response(body, {"Content-Encoding": [encoding]}))
    assert caught.value.encoding == encoding


def test_a_response_without_body_is_left_alone() -> None:
    response = vcr_response(None, {"retry-after": ["2"]})
    assert redact_response(response) == vcr_response(None, {"retry-after": ["2"]})


# --- polar_vcr_config ---------------------------------------------------------------


def test_default_config_replays_filters_authorization_and_redacts() -> None:
    config = polar_vcr_config()
    assert config == {
        "record_mode": "none",
        "filter_headers": [("authorization", "Bearer <REDACTED>")],
        "decode_compressed_response": False,  # kavach decodes: VCR.py drops what it cannot
        "before_record_request": redact_request,
        "before_record_response": redact_response,
        "allowed_hosts": list(LOOPBACK_HOSTS),
    }


def test_record_mode_none_leaves_the_choice_to_pytest_recording() -> None:
    assert "record_mode" not in polar_vcr_config(None)


def test_an_unknown_record_mode_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError) as caught:
        polar_vcr_config("sometimes")
    assert caught.value.field == "record_mode"


def test_own_hooks_run_before_the_redaction_and_options_pass_through() -> None:
    seen: list[bytes] = []

    def keep_body(response: dict[str, Any]) -> dict[str, Any]:
        seen.append(response["body"]["string"])
        return response

    config = polar_vcr_config(
        "once",
        allowed_hosts=[],
        filter_headers=["x-api-key"],
        before_record_response=[keep_body],
        match_on=["method", "path"],
    )
    recorded = config["before_record_response"](vcr_response(TOKEN.encode()))
    assert seen == [TOKEN.encode()]
    assert recorded["body"]["string"] == b"polar_oat_REDACTED"
    assert config["filter_headers"] == [("authorization", "Bearer <REDACTED>"), "x-api-key"]
    assert (config["record_mode"], config["allowed_hosts"], config["match_on"]) == (
        "once", [], ["method", "path"]
    )


def test_a_hook_returning_none_drops_the_interaction() -> None:
    config = polar_vcr_config(before_record_request=[lambda request: None])
    assert config["before_record_request"](vcr_request("https://x/", TOKEN)) is None


def test_importing_the_kit_does_not_import_vcr(pytester: pytest.Pytester) -> None:
    result = pytester.run(
        sys.executable,
        "-c",
        "import sys, kavach.testing, kavach.testing.pytest_plugin;"
        "print(sorted(m for m in ('vcr', 'pytest_recording') if m in sys.modules))",
    )
    assert result.outlines[-1] == "[]"


# --- the kavach_vcr_config fixture --------------------------------------------------

FIXTURE_TEST = """
from kavach.testing import redact_response


def test_mode(kavach_vcr_config):
    assert kavach_vcr_config["record_mode"] == {mode!r}
    assert kavach_vcr_config["before_record_response"] is redact_response
"""

# Autoload off and the plugins named: the run is the same whether kavach is installed.
KAVACH_PLUGIN = ("-p", "kavach.testing.pytest_plugin", "-q")
PLUGINS = ("-p", "pytest_recording.plugin", *KAVACH_PLUGIN)


@pytest.mark.parametrize(
    ("plugins", "args", "mode"),
    [
        (PLUGINS, (), "none"),
        (PLUGINS, ("--record-mode=rewrite",), "rewrite"),
        (KAVACH_PLUGIN, (), "none"),  # without pytest-recording there is no option
    ],
)
def test_kavach_vcr_config_follows_the_record_mode_option(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    plugins: tuple[str, ...],
    args: tuple[str, ...],
    mode: str,
) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makepyfile(test_mode=FIXTURE_TEST.format(mode=mode))
    result = pytester.runpytest_subprocess(*plugins, *args, timeout=120)
    result.assert_outcomes(passed=1)


# --- end to end: an app's suite records, then replays with Polar gone ----------------

USER_CONFTEST = """
import pytest


@pytest.fixture
def vcr_config(kavach_vcr_config):
    return kavach_vcr_config
"""

USER_TEST = """
import pytest
import requests

from kavach import create_kavach
from kavach.auth import polar
from kavach.passwords import PasswordHasher

POLAR_URL = {url!r}
PRODUCT_ID = {product_id!r}


@pytest.mark.vcr
@pytest.mark.block_network
def test_upgrade_then_cancel_in_the_portal():
    plugin = polar(access_token={token!r}, webhook_secret={secret!r}, base_url=POLAR_URL)
    hasher = PasswordHasher.fast()
    with create_kavach("memory://", plugins=[plugin], password_hasher=hasher) as kavach:
        user = kavach.users.create("jane@acme.io")
        checkout = plugin.create_checkout(user.id, PRODUCT_ID)
        [subscription] = plugin.client.list_subscriptions(external_customer_id="user_42")
        portal = plugin.client.create_customer_session(external_customer_id="user_42")
    assert "/checkout/polar_c_" in checkout.url
    assert "customer_session_token=polar_cst_" in portal.customer_portal_url
    assert requests.get(portal.customer_portal_url, timeout=10).status_code == 200
    cancel = requests.post(
        POLAR_URL + "/portal/subscriptions/" + subscription["id"] + "/cancel",
        data={{"customer_session_token": portal.token}},
        allow_redirects=False,
        timeout=10,
    )
    assert cancel.status_code == 303
    assert "customer_session_token=polar_cst_" in cancel.headers["location"]
"""


def test_an_apps_recorded_polar_traffic_holds_no_secret_and_replays_offline(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makeconftest(USER_CONFTEST)
    with FakePolar(token=TOKEN) as fake:  # answers 401 to any other bearer
        paid = fake.create_checkout(external_customer_id="user_42", customer_email="jo@acme.io")
        fake.complete_checkout(paid["id"])
        pytester.makepyfile(
            test_billing=USER_TEST.format(
                url=fake.url, product_id=fake.product_id, token=TOKEN, secret=WEBHOOK_SECRET
            )
        )
        recording = pytester.runpytest_subprocess(*PLUGINS, "--record-mode=once", timeout=120)
        recording.assert_outcomes(passed=1)

    cassettes = pytester.path / "cassettes" / "test_billing"  # pytest-recording's default
    cassette = cassettes / "test_upgrade_then_cancel_in_the_portal.yaml"
    text = cassette.read_text(encoding="utf-8")
    interactions = yaml.safe_load(text)["interactions"]
    assert [(i["request"]["method"], _path(i["request"]["uri"])) for i in interactions] == [
        ("POST", "/v1/checkouts/"),
        ("GET", "/v1/subscriptions/"),
        ("POST", "/v1/customer-sessions/"),
        ("GET", "/portal"),
        ("POST", f"/portal/subscriptions/{_subscription_id(interactions)}/cancel"),
    ]
    # No secret anywhere: not the bearer, not the portal token (JSON body, portal URL, the
    # portal page, the form posted back, the redirect's Location header).
    assert TOKEN_TAIL not in text and WEBHOOK_SECRET not in text
    assert LEFT_OVER.findall(text) == []
    assert [_header(i["request"], "authorization") for i in interactions] == [
        ["Bearer <REDACTED>"]
    ] * 3 + [None] * 2
    assert _header(interactions[4]["response"], "location") == [
        "/portal?customer_session_token=polar_cst_REDACTED"
    ]

    # FakePolar is gone: the same suite passes from the cassette alone, which stays as it was.
    replay = pytester.runpytest_subprocess(*PLUGINS, timeout=120)
    replay.assert_outcomes(passed=1)
    assert cassette.read_text(encoding="utf-8") == text


def _path(uri: str) -> str:
    return re.sub(r"^https?://[^/]+", "", uri).split("?")[0]


def _header(message: dict[str, Any], name: str) -> list[str] | None:
    return next((v for k, v in message["headers"].items() if k.lower() == name), None)


def _subscription_id(interactions: list[dict[str, Any]]) -> str:
    listing = yaml.safe_load(interactions[1]["response"]["body"]["string"])
    return str(listing["items"][0]["id"])


# --- from a review: bodies VCR.py keeps in other shapes, encodings it strips, markers --------


class _Answer(BaseHTTPRequestHandler):
    """Reads the request (chunked or not) and answers ``ANSWER`` for the path, a JSON body
    holding the token, gzip, raw deflate or zstd compressed as the path says."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_POST(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while size := int(self.rfile.readline().strip(), 16):
                self.rfile.read(size + 2)
            self.rfile.readline()
        else:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body, encoding = f'{{"token": "{TOKEN}"}}'.encode(), None
        if self.path == "/raw-deflate":
            packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
            body, encoding = packer.compress(body) + packer.flush(), "deflate"
        elif self.path == "/gzip":
            body, encoding = gzip.compress(body), "gzip"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if encoding:
            self.send_header("Content-Encoding", encoding)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def answering_server() -> Iterator[LocalServer]:
    server = LocalServer(_Answer)
    yield server
    server.close()


def _recorded(tmp_path: Path, call: Callable[[], Any]) -> str:
    """The cassette ``call`` records through ``polar_vcr_config`` with VCR.py, as YAML text."""
    path = tmp_path / "cassette.yaml"
    with VCR().use_cassette(str(path), **polar_vcr_config("once")):
        call()
    return path.read_text(encoding="utf-8")


def _chunks() -> Iterator[bytes]:
    # The token split over two chunks: no chunk holds a whole one.
    yield b'{"t": "' + TOKEN[:14].encode()
    yield TOKEN[14:].encode() + b'"}'


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(lambda: io.BytesIO(f'{{"t": "{TOKEN}"}}'.encode()), id="file-like"),
        pytest.param(_chunks, id="generator, chunked"),
        pytest.param(lambda: iter([f'{{"t": "{TOKEN}"}}'.encode()]), id="iterator"),
        pytest.param(lambda: bytearray(f'{{"t": "{TOKEN}"}}'.encode()), id="bytearray"),
    ],
)
def test_a_request_body_vcr_keeps_as_a_file_an_iterator_or_a_bytearray_is_redacted(
    tmp_path: Path, answering_server: LocalServer, body: Callable[[], Any]
) -> None:
    url = answering_server.origin + "/v1/x"
    text = _recorded(tmp_path, lambda: requests.post(url, data=body(), timeout=10))
    assert TOKEN_TAIL[:10] not in text and TOKEN_TAIL[-10:] not in text
    assert "python/" not in text  # stored as plain text, not as a pickled BytesIO or iter
    [interaction] = yaml.safe_load(text)["interactions"]
    assert interaction["request"]["body"] == '{"t": "polar_oat_REDACTED"}'


def test_a_file_like_request_body_is_redacted_by_the_hook() -> None:
    recorded = redact_request(vcr_request("https://x/v1/", io.BytesIO(TOKEN.encode())))
    assert recorded.body == b"polar_oat_REDACTED"


@pytest.mark.parametrize(
    "encoded",
    [
        "secret=whsec_dGVz%2BdC13%2FZWJob29r%3D%3D&next=1",  # form body or query, %XX upper
        "secret=whsec_dGVz%2bdC13%2fZWJob29r%3d%3d&next=1",  # and lower case
        '{"secret": "whsec_dGVz+dC13\\/ZWJob29r=="}&next=1',  # JSON with an escaped slash
    ],
)
def test_a_secret_with_percent_encoded_or_escaped_characters_is_redacted_whole(
    encoded: str,
) -> None:
    redacted = redact_secrets(encoded)
    assert "dC13" not in redacted and "ZWJob29r" not in redacted
    assert redacted.endswith("&next=1")


def test_a_raw_deflate_answer_is_stored_decoded_not_compressed(
    tmp_path: Path, answering_server: LocalServer
) -> None:
    # httpx hands VCR.py the body as sent; VCR.py's own decoding fails on raw deflate, keeps
    # the compressed bytes and drops Content-Encoding, which hid them from the redaction.
    url = answering_server.origin + "/raw-deflate"
    with httpx.Client() as client:
        text = _recorded(tmp_path, lambda: client.get(url))
    [interaction] = yaml.safe_load(text)["interactions"]
    assert interaction["response"]["body"]["string"] == '{"token": "polar_oat_REDACTED"}'


def test_a_compressed_body_the_redaction_cannot_see_is_refused() -> None:
    # No Content-Encoding left to say so (a hook, or VCR.py's decoding, dropped it).
    for body in (gzip.compress(TOKEN.encode()), zlib.compress(TOKEN.encode())):
        with pytest.raises(UnredactableBodyError):
            redact_response(vcr_response(body))
    truncated = gzip.compress(f'{{"token": "{TOKEN}", "pad": "{"x" * 40}"}}'.encode())[:-8]
    with pytest.raises(UnredactableBodyError):
        redact_response(vcr_response(truncated, {"Content-Encoding": ["gzip"]}))


@pytest.mark.parametrize("encoding", ["gzip", "x-gzip", "deflate", "zstd"])
def test_a_body_the_client_already_decoded_keeps_its_content_encoding_header(
    encoding: str,
) -> None:
    # urllib3 decodes what it asked for (zstd with Python 3.14's compression.zstd or
    # backports.zstd) and VCR.py records that, with the header as sent. (br has no magic
    # number: without a br module kavach refuses it, see above.)
    body = f'{{"token": "{TOKEN}"}}'.encode()
    response = vcr_response(body, {"Content-Encoding": [encoding], "Content-Length": ["9"]})
    recorded = redact_response(response)
    assert recorded["body"]["string"] == b'{"token": "polar_oat_REDACTED"}'
    assert "Content-Encoding" not in recorded["headers"]


def test_a_multi_member_gzip_body_is_decoded_whole() -> None:
    body = gzip.compress(b'{"a": 1, ') + gzip.compress(f'"token": "{TOKEN}"}}'.encode())
    recorded = redact_response(vcr_response(body, {"Content-Encoding": ["gzip"]}))
    assert recorded["body"]["string"] == b'{"a": 1, "token": "polar_oat_REDACTED"}'


def test_garbage_after_a_gzip_member_is_dropped_as_urllib3_drops_it() -> None:
    body = gzip.compress(f'{{"token": "{TOKEN}"}}'.encode()) + b"\x00" * 8
    recorded = redact_response(vcr_response(body, {"Content-Encoding": ["gzip"]}))
    assert recorded["body"]["string"] == b'{"token": "polar_oat_REDACTED"}'


def test_the_content_length_of_an_unchanged_body_is_kept() -> None:
    # A HEAD answer: no body, the length of the one a GET would get.
    response = vcr_response(b"", {"Content-Length": ["1234"]})
    assert redact_response(response)["headers"]["Content-Length"] == ["1234"]


def test_a_lone_hook_is_taken_like_vcr_takes_it() -> None:
    seen: list[Any] = []
    config = polar_vcr_config(before_record_response=seen.append, before_record_request=print)
    assert config["before_record_response"](vcr_response(b"x")) is None  # append returns None
    assert len(seen) == 1


MARKER_TEST = """
import pytest


@pytest.mark.vcr({key}=[lambda item: item])
def test_own_hook(vcr):
    pass
"""


@pytest.mark.parametrize(
    "key", ["before_record_response", "before_record_request", "before_record", "filter_headers"]
)
def test_a_vcr_marker_replacing_kavachs_redaction_fails_the_test(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    # pytest-recording lets a marker's keyword win over vcr_config: kavach's hook would be
    # gone and the cassette written unredacted.
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makeconftest(USER_CONFTEST)
    pytester.makepyfile(test_marker=MARKER_TEST.format(key=key))
    result = pytester.runpytest_subprocess(*PLUGINS, timeout=120)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*{key}*polar_vcr_config*"])
