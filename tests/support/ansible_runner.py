"""Run one module through the real `ansible` ad-hoc CLI and return the host's result as a dict.

    from tests.support.ansible_runner import run_module
    result = run_module("rtvirt.kvm.cpu_isolation_facts", {"isolated_cpus": "1"})
    assert not result.get("failed"), result.get("msg")

Without ``inventory`` the module runs on this machine (``-i localhost, -c local``) with
``ansible_python_interpreter`` set to ``$RTVIRT_PYTHON_INTERPRETER`` (or this repository's
``.venv/bin/python``): interpreter discovery is broken on these machines (docs/DEVELOPING.md).
With ``inventory`` the inventory decides connection and interpreter.

Output: the stdout callback is ``ansible.builtin.minimal`` with ``result_format=json`` and the
result is decoded from the ``<host> | STATUS => {...}`` record (the ``json`` callback lives in
ansible.posix, which this project does not install).  The returned dict is the module result as
Ansible reports it (``failed``, ``changed``, ``msg``, ``ansible_facts``, ``diff``, ...) plus
``_status`` (SUCCESS, CHANGED, FAILED!, UNREACHABLE!) and ``_stderr`` (warnings, errors).
"""
import json
import os
import pathlib
import re
import subprocess

REPO = pathlib.Path(__file__).resolve().parent.parent.parent
DEFAULT_TIMEOUT = 600

_RECORD = re.compile(r"^(?P<host>\S+) \| (?P<status>[A-Z]+!?)(?: \| rc=-?\d+)? => ", re.MULTILINE)


class AnsibleRunError(RuntimeError):
    """ansible produced no result for the host; the message carries the command and its output."""


def ansible_env(extra_env=None):
    """The environment hack/env.sh sets up, on top of the current one."""
    env = dict(os.environ)
    venv_bin = str(REPO / ".venv" / "bin")
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
    env.setdefault("ANSIBLE_COLLECTIONS_PATH", str(REPO / ".venv"))
    env.setdefault("ANSIBLE_CONFIG", str(REPO / "ansible.cfg"))
    env.setdefault("RTVIRT_PYTHON_INTERPRETER", str(REPO / ".venv" / "bin" / "python"))
    env.update({
        "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.minimal",
        "ANSIBLE_CALLBACK_RESULT_FORMAT": "json",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_DEPRECATION_WARNINGS": "0",
        "LC_ALL": "C.UTF-8",
    })
    env.update(extra_env or {})
    return env


def run_module(name, args, check=False, diff=False, inventory=None, host="localhost", extra_env=None,
               timeout=DEFAULT_TIMEOUT):
    """Run module ``name`` with ``args`` (a dict) on ``host`` and return that host's result dict."""
    env = ansible_env(extra_env)
    argv = [str(REPO / ".venv" / "bin" / "ansible"), host, "-m", name, "-a", json.dumps(args or {})]
    if inventory is None:
        argv += ["-i", "%s," % host, "-c", "local", "-e",
                 "ansible_python_interpreter=%s" % env["RTVIRT_PYTHON_INTERPRETER"]]
    else:
        argv += ["-i", str(inventory)]
    if check:
        argv.append("--check")
    if diff:
        argv.append("--diff")
    proc = subprocess.run(argv, env=env, cwd=str(REPO), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False)
    return parse_adhoc_output(proc.stdout, host, proc.stderr, argv)


def parse_adhoc_output(stdout, host, stderr="", argv=()):
    """Decode the last ``<host> | STATUS => {json}`` record of the minimal callback's output."""
    result = None
    for match in _RECORD.finditer(stdout):
        if match.group("host") != host:
            continue
        try:
            value, _end = json.JSONDecoder().raw_decode(stdout, match.end())
        except ValueError:
            continue
        result = value
        result["_status"] = match.group("status")
        if result["_status"] in ("FAILED!", "UNREACHABLE!"):
            result.setdefault("failed", True)
    if result is None:
        raise AnsibleRunError("no result for host %s from %s\n--- stdout\n%s\n--- stderr\n%s"
                              % (host, " ".join(argv), stdout[-4000:], stderr[-4000:]))
    result["_stderr"] = stderr
    return result
