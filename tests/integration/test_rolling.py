"""site.yml's rolling controls on this machine, in check mode: three inventory hosts that are all this
machine (local connection), the middle one with a realtime CPU list the host cannot give.

Rolling (`rtvirt_serial`) must stop at the first failed host so the next batch never starts; all at once (the
default) lets the failed host drop out alone while the others finish. Check mode writes nothing, so the three
hosts do not race for the same cgroups."""
import re
import shutil
import subprocess

import pytest
import yaml

from tests.support.ansible_runner import REPO, ansible_env

pytestmark = pytest.mark.real

HOSTS = ("rt-a", "rt-b", "rt-c")
RECAP_LINE = re.compile(r"^(?P<host>[\w.-]+)\s+:\s+ok=(?P<ok>\d+)\s+changed=\d+\s+unreachable=\d+\s+failed=(?P<failed>\d+)",
                        re.MULTILINE)


@pytest.fixture
def fleet(tmp_path):
    """An inventory of three aliases of this machine with the localhost inventory's settings."""
    inventory = tmp_path / "inventory"
    shutil.copytree(REPO / "inventories" / "localhost" / "group_vars", inventory / "group_vars")
    local = yaml.safe_load((REPO / "inventories" / "localhost" / "hosts.yml").read_text())["all"]["hosts"]["localhost"]
    hosts = {name: dict(local) for name in HOSTS}
    # Not a CPU list this (or any) host has online: host_prep's plan refuses it before any task writes.
    hosts["rt-b"]["host_prep_realtime_cpus"] = "4000-4001"
    (inventory / "hosts.yml").write_text(yaml.safe_dump({"all": {"hosts": hosts}}))
    return inventory


def run_site(inventory, *extra):
    argv = [str(REPO / ".venv" / "bin" / "ansible-playbook"), "-i", str(inventory), "--check", "--forks", "3",
            str(REPO / "playbooks" / "site.yml")] + list(extra)
    proc = subprocess.run(argv, env=ansible_env({"ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.default"}), cwd=str(REPO),
                          capture_output=True, text=True, timeout=900, check=False)
    out = proc.stdout + proc.stderr
    recap = {m.group("host"): dict(ok=int(m.group("ok")), failed=int(m.group("failed")))
             for m in RECAP_LINE.finditer(proc.stdout.split("PLAY RECAP", 1)[-1])}
    return proc.returncode, recap, out


def test_all_at_once_lets_the_failed_host_drop_out_alone(fleet):
    rc, recap, out = run_site(fleet)
    assert rc != 0, out[-4000:]
    assert set(recap) == set(HOSTS), out[-4000:]
    assert recap["rt-b"]["failed"] == 1, out[-4000:]
    assert "4000-4001" in out, out[-4000:]
    for host in ("rt-a", "rt-c"):
        assert recap[host]["failed"] == 0, out[-4000:]
    # The healthy hosts ran realtime_vm too, after host_prep: the play did not stop for rt-b.
    assert out.count("TASK [rtvirt.kvm.realtime_vm") >= 1, out[-4000:]


# Batches of two: [rt-a, rt-b], [rt-c]. Ansible itself ends a play whose whole batch failed, so a batch of one
# would not show whether the playbook's own failure threshold is in force; a half-failed batch does.
def test_rolling_stops_at_the_first_failed_host(fleet):
    rc, recap, out = run_site(fleet, "-e", "rtvirt_serial=2")
    assert rc != 0, out[-4000:]
    assert recap["rt-b"]["failed"] == 1, out[-4000:]
    assert "rt-a" in recap, out[-4000:]
    assert "rt-c" not in recap, "rt-c's batch started after rt-b failed:\n" + out[-4000:]


def test_rolling_batches_keep_going_when_failures_are_allowed(fleet):
    rc, recap, out = run_site(fleet, "-e", "rtvirt_serial=2", "-e", "rtvirt_max_fail_percentage=100")
    assert rc != 0, out[-4000:]
    assert set(recap) == set(HOSTS), out[-4000:]
    assert [recap[h]["failed"] for h in HOSTS] == [0, 1, 0], out[-4000:]
