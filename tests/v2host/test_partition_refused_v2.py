"""libvirt_partition on the systemd + cgroup v2 host: a slice systemd refuses to start leaves nothing behind.

The test gives the slice a drop-in of its own with ``AssertPathExists=`` on a path that does not exist, so that
systemd itself refuses the start after the module wrote the unit file and reloaded systemd. The unit file must be
gone again (systemd reloaded), no slice cgroup made, and the message must carry systemd's words; once the drop-in
is gone the same call converges. 6.12 only: the path is systemd's, not the kernel's.
"""
import uuid

import pytest

from tests.v2host.test_modules_v2 import ABSENT, CG, UNIT_DIR, read_files, run_playbook, sh

pytestmark = pytest.mark.v2host


@pytest.fixture(scope="module")
def refused_runs(v2host_612, tmp_path_factory):
    host = v2host_612
    name = "/machine/rttf%s" % uuid.uuid4().hex[:10]
    unit = "machine-%s.slice" % name.rsplit("/", 1)[1]
    drop_in = "%s/%s.d" % (UNIT_DIR, unit)
    present = {"rtvirt.kvm.libvirt_partition": {"name": name, "cpus": "1"}}
    absent = {"rtvirt.kvm.libvirt_partition": {"name": name, "state": "absent"}}
    files = ["%s/%s" % (UNIT_DIR, unit), "%s/machine.slice/%s/cpuset.cpus" % (CG, unit)]
    tmp = tmp_path_factory.mktemp("refused")
    try:
        sh(host, "mkdir -p %s && printf '[Unit]\\nAssertPathExists=/rtvirt-test-missing\\n' > %s/50-assert.conf && "
                 "systemctl daemon-reload" % (drop_in, drop_in))
        before = read_files(host, files)
        refused, = run_playbook(host, tmp, [dict(present, ignore_errors=True)], name="refused")
        after = read_files(host, files)
        load_state = sh(host, "systemctl show -p FragmentPath %s" % unit).strip()
        sh(host, "rm -rf %s && systemctl daemon-reload" % drop_in)
        converged, again, removed = run_playbook(host, tmp, [present, present, absent], name="converge")
        after_removal = read_files(host, files)
    finally:
        host.ssh("systemctl stop %s; rm -rf %s %s/%s; systemctl daemon-reload" % (unit, drop_in, UNIT_DIR, unit))
    return dict(unit=unit, before=before, refused=refused, after=after, load_state=load_state,
                converged=converged, again=again, removed=removed,
                after_removal=after_removal)


def test_refused_slice_start_undoes_the_unit(refused_runs):
    refused, unit = refused_runs["refused"], refused_runs["unit"]
    assert refused.get("failed"), refused
    assert "%s: " % unit in refused["msg"] and "systemctl start %s failed" % unit in refused["msg"], refused["msg"]
    assert "Assertion failed" in refused["msg"], refused["msg"]  # systemd's words
    assert "the unit change was undone" in refused["msg"], refused["msg"]
    assert refused_runs["before"] == refused_runs["after"] == {f: ABSENT for f in refused_runs["before"]}
    assert refused_runs["load_state"] == "FragmentPath=", refused_runs["load_state"]


def test_same_call_converges_once_systemd_accepts(refused_runs):
    converged, again, removed = refused_runs["converged"], refused_runs["again"], refused_runs["removed"]
    assert converged["changed"] and not converged.get("failed"), converged
    assert not again["changed"] and again["writes"] == [], again
    assert removed["changed"] and not removed.get("failed"), removed
    assert set(refused_runs["after_removal"].values()) == {ABSENT}
