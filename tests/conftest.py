"""Shared pytest configuration: import paths, and no silent skips of the real-system layers."""
import os
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
# `.venv/ansible_collections/rtvirt/kvm` links to this checkout (hack/bootstrap.sh).
sys.path.insert(0, str(REPO / ".venv"))

REAL_LAYERS = ("real", "libvirt", "v2host", "molecule")

pytest_plugins = ["tests.support.fixtures_libvirt", "tests.support.fixtures_v2host"]


def _must_not_skip(item):
    required = os.environ.get("CI") == "true" or os.environ.get("RTVIRT_REQUIRE_REAL") == "1"
    return required and any(item.get_closest_marker(m) for m in REAL_LAYERS)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and _must_not_skip(item):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = "real-system test skipped in CI, which is a failure: %s" % (reason,)
