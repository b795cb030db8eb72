# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""HostLock on a file under tmp_path: it names its holder, excludes a second holder, and dies with its process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_apply import HostLock, LockTimeout, lock_holder

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))

HOLDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[2])
    from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_apply import HostLock
    with HostLock(sys.argv[1], timeout=0, owner="a holder that is killed"):
        print("locked", flush=True)
        time.sleep(600)
""")


def test_holder_is_named_while_it_holds_and_the_file_is_emptied_after(tmp_path):
    path = str(tmp_path / "lock" / "x.lock")         # the directory is made too
    with HostLock(path, timeout=0, owner="cgroup_cpuset"):
        assert open(path).read() == "%d cgroup_cpuset\n" % os.getpid()
        assert lock_holder(path) == "pid %d (cgroup_cpuset)" % os.getpid()
        with pytest.raises(LockTimeout) as caught:
            with HostLock(path, timeout=0):
                pass
    assert "another rtvirt.kvm run (pid %d (cgroup_cpuset)) has held %s for 0 s" % (os.getpid(), path) \
        in str(caught.value)
    assert open(path).read() == "" and lock_holder(path) is None


def test_a_holder_that_wrote_nothing_is_not_named(tmp_path):
    path = str(tmp_path / "x.lock")
    with open(path, "w") as handle:
        handle.write("999999999 long gone\n")        # what a killed holder leaves: no such process
    assert lock_holder(path) is None
    with HostLock(path, timeout=0):
        pass


def test_sigkill_of_the_holder_leaves_no_stale_lock(tmp_path):
    path = str(tmp_path / "x.lock")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, path, os.path.join(REPO, ".venv")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        assert lock_holder(path) == "pid %d (a holder that is killed)" % holder.pid
        with pytest.raises(LockTimeout):
            with HostLock(path, timeout=0):
                pass
        os.kill(holder.pid, signal.SIGKILL)
        assert holder.wait(timeout=60) == -signal.SIGKILL
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=60)
        holder.stdout.close()
    # The kernel dropped the flock with the process; the file still names it, which nobody takes for a holder.
    assert open(path).read() == "%d a holder that is killed\n" % holder.pid
    assert lock_holder(path) is None
    with HostLock(path, timeout=0, owner="the next run"):
        assert lock_holder(path) == "pid %d (the next run)" % os.getpid()
