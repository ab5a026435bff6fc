"""Shared pytest policy for moa's tests.

Under `make test` (MOA_REQUIRE_ALL=1) a test that cannot run fails instead of skipping: a skipped
tier in CI would hide a broken tier. Fixtures shared by several test files live in tests/fixtures/.
"""
from __future__ import annotations

import os

import pytest

REQUIRE_ALL = os.environ.get("MOA_REQUIRE_ALL") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_ALL and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"skipped under MOA_REQUIRE_ALL=1, which makes it a failure: {reason}"
