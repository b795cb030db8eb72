"""pytest fixtures for the libvirt layer; registered via `pytest_plugins` in tests/conftest.py."""
import os
import uuid

import pytest

from tests.support import libvirt_rig as rig_lib


@pytest.fixture(scope="session")
def libvirt_rig(tmp_path_factory):
    """A running libvirtd for the whole session: started (or reused) once, stopped at the end.

    Only daemons this session started are stopped (see libvirt_rig.stop); the daemons' logs are
    /var/log/libvirt/libvirtd.log and virtlogd.log.
    """
    if os.geteuid() != 0:
        pytest.skip("the libvirt rig needs root")
    rig_lib.ensure_installed()
    state_dir = tmp_path_factory.mktemp("libvirt-rig")
    # holder_pid: if this session dies without stopping, other rigs must not hand daemons to it.
    rig = rig_lib.start(state_dir, holder_pid=os.getpid())
    yield rig
    rig_lib.stop(state_dir)


@pytest.fixture
def unique_name():
    """A domain name no other test uses: rtvirt-t-<8 hex digits> (short enough that libvirt
    keeps it whole in cgroup names)."""
    return "rtvirt-t-%s" % uuid.uuid4().hex[:8]
