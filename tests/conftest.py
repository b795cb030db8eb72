"""Shared pytest configuration: import paths, and no silent skips of the real-system layers."""
import os
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
# `.venv/ansible_collections/rtvirt/kvm` links to this checkout (hack/bootstrap.sh).
sys.path.insert(0, str(REPO / ".venv"))

REAL_LAYERS = ("real", "libvirt", "v2host", "molecule")
# The layers that change this machine (cgroupfs, libvirtd, IRQs, /etc); v2host tests change only their QEMU guest.
HOST_LAYERS = ("real", "libvirt", "molecule")

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


# The main job (hack/site.sh) and the tests share this machine: before the first real-system test the host guard
# snapshots what the main job owns and makes room for the tests (tests/support/host_guard.py); the session's end
# puts it back, pass, fail or Ctrl-C. A run killed outright is finished by the next one's save.
# Real-system sessions on one machine also wait for each other (an flock held for the whole session): two of them
# would otherwise share one snapshot, and the first one's restore would land in the middle of the other's tests.
_GUARD = {"saved": False, "lock": None}
SESSION_LOCK = "/run/lock/rtvirt-kvm-tests.lock"


def _wait_for_other_sessions():
    import fcntl
    fd = os.open(SESSION_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        sys.stderr.write("host guard: waiting for the real-system test session of pid %s (%s)\n" % (holder, SESSION_LOCK))
        fcntl.flock(fd, fcntl.LOCK_EX)
    os.ftruncate(fd, 0)
    os.pwrite(fd, ("%d\n" % os.getpid()).encode(), 0)
    return fd


@pytest.fixture(scope="session", autouse=True)
def _host_guard(request):
    wanted = any(item.get_closest_marker(m) for item in request.session.items for m in HOST_LAYERS)
    if wanted and os.geteuid() == 0 and os.environ.get("RTVIRT_HOST_GUARD", "1") != "0" \
            and not hasattr(request.config, "workerinput"):
        from tests.support import host_guard
        _GUARD["lock"] = _wait_for_other_sessions()
        try:
            lines = host_guard.save(os.getpid())
        except host_guard.GuardError as exc:
            pytest.exit("host guard: %s" % exc, returncode=1)
        _GUARD["saved"] = True
        for line in lines:
            sys.stderr.write("host guard: %s\n" % line)
    yield


def pytest_sessionfinish(session, exitstatus):
    if not _GUARD["saved"]:
        return
    from tests.support import host_guard
    try:
        lines = host_guard.restore()
    except host_guard.GuardError as exc:
        sys.stderr.write("\nhost guard: %s\n" % exc)
        session.exitstatus = 1
        return
    sys.stderr.write("\n" + "".join("host guard: %s\n" % line for line in lines))
