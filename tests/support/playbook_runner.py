"""Run a playbook on this machine and tell which tasks really ran (tests/support/callback/task_log.py).

    run = run_playbook(tmp_path, [{"hosts": "localhost", "gather_facts": False, "roles": [...]}])
    assert run["rc"] == 0 and run["changed"] == 0, run["out"]
    assert [t["action"] for t in module_runs(run["tasks"])] == ["rtvirt.kvm.host_plan"]

A module run is a task result that was not skipped and whose action the controller does not carry out by
itself: each one is a Python process on the host, the cost the fast paths avoid.
"""
import json
import re
import subprocess

from tests.support.ansible_runner import REPO, ansible_env

RECAP = re.compile(r"^localhost\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.MULTILINE)
CALLBACKS = REPO / "tests" / "support" / "callback"
# Actions (short names) that run on the controller only.
CONTROLLER_ACTIONS = {"set_fact", "debug", "assert", "include_tasks", "include_role", "validate_argument_spec", "meta"}


def run_playbook(tmp_path, plays, inventory=None, check=False, timeout=900, diff=False):
    """Write ``plays`` to tmp_path/play.yml and run it (localhost, local connection, unless ``inventory``).

    Returns {rc, changed, failed, out, tasks}: ``tasks`` are the task-log lines ({action, name, role, status})."""
    path = tmp_path / "play.yml"
    path.write_text(json.dumps(plays))
    log = tmp_path / "tasks.jsonl"
    if log.exists():
        log.unlink()
    env = ansible_env({"ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.default", "ANSIBLE_CALLBACK_PLUGINS": str(CALLBACKS),
                       "ANSIBLE_CALLBACKS_ENABLED": "task_log", "RTVIRT_TASK_LOG": str(log)})
    argv = [str(REPO / ".venv" / "bin" / "ansible-playbook")]
    if inventory is None:
        argv += ["-i", "localhost,", "-c", "local", "-e", "ansible_python_interpreter=%s" % env["RTVIRT_PYTHON_INTERPRETER"]]
    else:
        argv += ["-i", str(inventory)]
    argv += ["--check"] if check else []
    argv += ["--diff"] if diff else []
    proc = subprocess.run(argv + [str(path)], env=env, cwd=str(REPO), capture_output=True, text=True, timeout=timeout,
                          check=False)
    out = proc.stdout + proc.stderr
    match = RECAP.search(proc.stdout)
    assert match, out[-4000:]
    tasks = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return dict(rc=proc.returncode, changed=int(match.group(2)), failed=int(match.group(4)), out=out, tasks=tasks)


def module_runs(tasks):
    """The task-log lines that were a module run on the host."""
    return [t for t in tasks if t["status"] != "skipped" and t["action"].rsplit(".", 1)[-1] not in CONTROLLER_ACTIONS]
