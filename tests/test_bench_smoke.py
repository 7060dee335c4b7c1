"""The benchmarks in ``bench/`` still run against the current code, in their shortest mode.

No figure is checked (speed is for the benchmarks to show, never for a test to assert):
only that each one runs to the end and prints the comparisons it exists for, so a change
to kavach's API cannot leave a benchmark broken until someone next measures.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Server databases stay out of the smoke runs (their benchmarks need their own set-up).
_SERVER_URLS = ("KAVACH_TEST_POSTGRES_URL", "KAVACH_TEST_MYSQL_URL")


def run_bench(name: str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in _SERVER_URLS}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / name), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_webhook_bench_prints_every_target_ratio() -> None:
    out = run_bench("webhooks.py", "--quick", "--events", "60")
    for label in ("memory ingest / standardwebhooks verify+parse",
                  "sqlite ingest / raw sqlite3 loop"):
        assert re.search(rf"^{re.escape(label)}\s+= \d+\.\d\dx \(target >= ", out, re.M), out


def test_http_bench_prints_the_ratio_to_flask() -> None:
    pytest.importorskip("waitress")
    out = run_bench("http_bench.py", "--quick", "--threads", "2", "--requests", "20")
    assert re.search(r"^ratio built-in / Flask\+waitress: \d+\.\d\dx req/s", out, re.M), out
    assert " 0 errors)" in out


def test_store_bench_prints_every_backend_against_raw_sqlite() -> None:
    out = run_bench("stores.py", "--quick")
    for store in ("memory", "json", "sqlite", "raw sqlite3"):
        assert re.search(rf"^{re.escape(store)}\s+10000\s", out, re.M), out


def test_scale_bench_prints_the_growth_table() -> None:
    out = run_bench("scale.py", "--quick", "--stores", "memory,sqlite")
    for store in ("memory", "sqlite"):
        row = rf"^\| {store} \| 10k / 1k \| \d+\.\d\dx \| \d+\.\d\dx \|$"
        assert re.search(row, out, re.M), out
