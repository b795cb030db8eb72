"""Run the host_prep role on a test host (tests/support/v2host) and read its result back.

Shared by tests/v2host/test_host_prep_v1.py (the CI machines' shape: no systemd, cgroup v1) and
test_host_prep_modes_v2.py (systemd + cgroup v2). One ansible-playbook per call, the default callback with
JSON results; the PLAY RECAP gives changed/failed, a ``fatal:`` record the failing task and message.
"""
import json
import re
import subprocess

from tests.support.ansible_runner import REPO, ansible_env

_RECAP = re.compile(r"^v2host\s+: ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)\s+"
                    r"failed=(?P<failed>\d+)", re.MULTILINE)
_TASK = re.compile(r"^TASK \[(?P<name>[^\]]+)\]", re.MULTILINE)
_FATAL = re.compile(r"^fatal: \[v2host\]: FAILED! => ", re.MULTILINE)
_DEBUG = re.compile(r"^ok: \[v2host\] => ", re.MULTILINE)

#: The guest has 4 CPUs: housekeeping 0, emulator threads 1 (dedicated), realtime 2-3. No GRUB (the kernel comes
#: from QEMU's -kernel), no libvirt in the guest; the qemu hook is installed (the reboot test calls it).
DEDICATED = {
    "host_prep_realtime_cpus": "2-3",
    "host_prep_emulator_cpus": "1",
    "host_prep_partitions": [{"name": "/rt"}],
    "host_prep_manage_cmdline": False,
    "host_prep_install_libvirt": False,
    "host_prep_install_hook": True,
    "host_prep_hook_log": "/var/log/rtvirt-qemu-hook.log",
}
SHARED = dict(DEDICATED, host_prep_emulator_cpus="")


def converge(host, tmp_path, extra_vars, check=False, name="converge", post_tasks=()):
    """host_prep on ``host`` with ``extra_vars``; returns rc, changed, failed, the failing task and its result,
    the ``debug`` results of ``post_tasks`` and the output."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    playbook = tmp_path / ("%s.yml" % name)
    playbook.write_text(json.dumps([{"hosts": "v2host", "gather_facts": False,
                                     "roles": [{"role": "rtvirt.kvm.host_prep"}],
                                     "post_tasks": list(post_tasks)}], indent=1))
    variables = tmp_path / ("%s-vars.json" % name)
    variables.write_text(json.dumps(extra_vars))
    argv = [str(REPO / ".venv" / "bin" / "ansible-playbook"), "-i", str(host.inventory_path),
            "-e", "@%s" % variables, str(playbook)]
    if check:
        argv.append("--check")
    env = ansible_env({"ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.default"})
    proc = subprocess.run(argv, env=env, cwd=str(REPO), capture_output=True, text=True, timeout=1200,
                          stdin=subprocess.DEVNULL, check=False)
    out = proc.stdout
    recap = _RECAP.search(out)
    assert recap, "no PLAY RECAP (rc=%d)\n--- stdout\n%s\n--- stderr\n%s" % (
        proc.returncode, out[-6000:], proc.stderr[-3000:])
    assert recap.group("unreachable") == "0", out[-6000:]
    result = {"rc": proc.returncode, "changed": int(recap.group("changed")), "failed": int(recap.group("failed")),
              "stdout": out, "stderr": proc.stderr, "fatal": None, "fatal_task": None, "debug": []}
    decoder = json.JSONDecoder()
    fatal = _FATAL.search(out)
    if fatal:
        result["fatal"], _end = decoder.raw_decode(out, fatal.end())
        tasks = [m.group("name") for m in _TASK.finditer(out, 0, fatal.start())]
        result["fatal_task"] = tasks[-1] if tasks else None
    for match in _DEBUG.finditer(out):
        try:
            result["debug"].append(decoder.raw_decode(out, match.end())[0])
        except ValueError:
            pass
    return result


def changed_tasks(result):
    """Names of the tasks that reported a change (for failure messages)."""
    names, current = [], None
    for line in result["stdout"].splitlines():
        task = _TASK.match(line)
        if task:
            current = task.group("name")
        elif line.startswith("changed: [v2host]") and current not in names:
            names.append(current)
    return names
