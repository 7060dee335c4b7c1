"""Database URLs in error messages never show a password, in the credentials or the query."""

from __future__ import annotations

import pytest

from kavach.errors import KavachError
from kavach.stores import open_store
from kavach.stores._urls import redacted


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:S3CRET@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u@h/db?sslmode=require&password=S3CRET",
         "postgresql://u@h/db?sslmode=require&password=***"),
        ("mysql://root@h/db?passwd=S3CRET", "mysql://root@h/db?passwd=***"),
        ("postgresql://u@h/db?sslpassword=S3CRET", "postgresql://u@h/db?sslpassword=***"),
        ("sqlite:///kavach.db", "sqlite:///kavach.db"),
        ("kavach.db", "kavach.db"),
    ],
)
def test_redacted(url: str, shown: str) -> None:
    assert redacted(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres@127.0.0.1:1/test?password=S3CRETpw",
        "mysql://root@127.0.0.1:1/test?password=S3CRETpw",
        "postgresql://postgres:S3CRETpw@127.0.0.1:1/test",
        "nosuchscheme://u:S3CRETpw@h/db?password=S3CRETpw",
    ],
)
def test_a_store_that_cannot_open_never_shows_the_password(url: str) -> None:
    # Port 1: nothing listens, the driver fails at once.
    with pytest.raises(KavachError) as caught:
        open_store(url)
    assert "S3CRETpw" not in str(caught.value)
    assert "S3CRETpw" not in repr(caught.value)
