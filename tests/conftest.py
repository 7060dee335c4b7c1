"""Shared pytest configuration.

Cassettes (pytest-recording / VCR.py): they live in the top-level ``cassettes/`` folder as
``cassettes/<test module>/<test name>.yaml`` and replay by default (record mode ``none``;
``--record-mode=rewrite`` re-records, see the README, "Recording cassettes"). Whatever is
recorded passes through kavach's public cassette kit first
(:func:`kavach.testing.polar_vcr_config`: ``Authorization`` filtered, every Polar token or
webhook secret redacted in URLs, headers and bodies), so no token reaches a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kavach.testing import polar_vcr_config

pytest_plugins = ["pytester"]

CASSETTES_DIR = Path(__file__).resolve().parent.parent / "cassettes"


@pytest.fixture(scope="module")
def vcr_cassette_dir(request: pytest.FixtureRequest) -> str:
    """``cassettes/<test module name>/`` at the repository root."""
    return str(CASSETTES_DIR / request.module.__name__.rpartition(".")[2])


@pytest.fixture
def vcr_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    """VCR settings for every ``@pytest.mark.vcr`` test.

    ``record_mode`` is ``none`` unless ``--record-mode`` is given on the command line
    (pytest-recording lets this dict win over the CLI, hence the explicit lookup).
    """
    return polar_vcr_config(request.config.getoption("--record-mode") or "none")
