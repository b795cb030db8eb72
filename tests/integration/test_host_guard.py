"""The host guard clears what an interrupted test run left behind, and names what it cannot clear."""
import pathlib
import subprocess
import uuid

import pytest

from tests.support import host_guard

pytestmark = pytest.mark.real
CPUSET = pathlib.Path("/sys/fs/cgroup/cpuset")


def _leftover(name):
    """A cpuset cgroup as a killed test leaves it: cpus and mems filled, a child below."""
    top = CPUSET / name
    for cgroup in (top, top / "child"):
        cgroup.mkdir()
        for knob in ("cpus", "mems"):
            (cgroup / ("cpuset." + knob)).write_text((CPUSET / ("cpuset." + knob)).read_text())
    return top


def test_empty_leftovers_with_test_names_are_removed_and_others_left():
    leftover = _leftover("rtvirt-p-%s.partition" % uuid.uuid4().hex[:8])
    kept = CPUSET / ("rtvirt-keep-%s" % uuid.uuid4().hex[:8])  # not a test name: never touched
    kept.mkdir()
    try:
        report = []
        assert host_guard.clear_leftovers(report) == []
        assert not leftover.exists()
        assert "removed leftover cgroup %s/child" % leftover in report
        assert kept.is_dir()
    finally:
        for path in (leftover / "child", leftover, kept):
            if path.exists():
                path.rmdir()


def test_a_leftover_with_a_task_is_named_with_what_to_do():
    leftover = _leftover("rtvirt-test-%s" % uuid.uuid4().hex[:10])
    sleeper = subprocess.Popen(["sleep", "300"])
    try:
        (leftover / "child" / "tasks").write_text(str(sleeper.pid))
        report = []
        blocked = host_guard.clear_leftovers(report)
        assert any(str(leftover / "child") in line and "tasks %d" % sleeper.pid in line and "rmdir" in line
                   for line in blocked), blocked
        assert (leftover / "child").is_dir()
    finally:
        sleeper.kill()
        sleeper.wait()
        for path in (leftover / "child", leftover):
            if path.exists():
                path.rmdir()
