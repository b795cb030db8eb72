# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run a module's ``main()`` in-process, the way ansible-core's own unit tests do.

The arguments go in through ``ansible.module_utils.basic._ANSIBLE_ARGS`` (with the ``legacy``
serialization profile, as a controller would send them); the module's real ``exit_json`` /
``fail_json`` run unchanged, print their JSON and call ``sys.exit``; we capture stdout, catch the
``SystemExit`` and return the parsed result.  Nothing of the module is patched, so argument-spec
validation, ``module.warn`` and no_log masking behave as on a target host.

    from _module_runner import run_module
    result = run_module(pcpu_allocation, {"name": "rt1", "vcpus": 2, "pool": "2-7"})
    assert not result.get("failed"), result["msg"]
"""

from __future__ import annotations

import contextlib
import io
import json
from unittest import mock

from ansible.module_utils import _internal as _module_internal
from ansible.module_utils import basic
from ansible.module_utils.common import warnings as _warnings


class ModuleDidNotExit(AssertionError):
    """main() returned without calling exit_json or fail_json."""


def run_module(module, args, check_mode=False, diff=False):
    """Run ``module.main()`` with ``args``; return the result dict (``failed: True`` on failure).

    ``module`` is the imported module object (or anything with a ``main()``).  ``check_mode`` and
    ``diff`` set ``_ansible_check_mode`` / ``_ansible_diff``.  A non-zero exit status always
    yields ``failed: True``; when the module printed no JSON, the result carries ``stdout``.
    ``warnings`` is a list of plain strings (as a playbook shows them), ``deprecations`` a
    list of dicts with at least ``msg``.
    """
    payload = dict(args)
    payload.update(_ansible_check_mode=check_mode, _ansible_diff=diff)
    buffer = json.dumps({"ANSIBLE_MODULE_ARGS": payload}).encode("utf-8")
    out = io.StringIO()
    code = None
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(basic, "_ANSIBLE_ARGS", buffer))
        stack.enter_context(mock.patch.object(basic, "_ANSIBLE_PROFILE", "legacy"))
        # Importing controller code (the collection loader does) flips this flag, and then
        # module.warn() prints to the terminal instead of returning the warning in the result.
        stack.enter_context(mock.patch.object(_module_internal, "is_controller", False))
        # Warnings and deprecations are process-global in ansible-core; give every run its own.
        stack.enter_context(mock.patch.dict(_warnings._global_warnings, clear=True))
        stack.enter_context(mock.patch.dict(_warnings._global_deprecations, clear=True))
        stack.enter_context(contextlib.redirect_stdout(out))
        try:
            module.main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        else:
            raise ModuleDidNotExit("%s.main() returned without exit_json/fail_json" % getattr(module, "__name__", module))
    return _parse(out.getvalue(), code)


def _parse(stdout, code):
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            result = json.loads(line)
            if code != 0:
                result.setdefault("failed", True)
            if "warnings" in result:
                result["warnings"] = [_event_msg(w) for w in result["warnings"]]
            if "deprecations" in result:
                result["deprecations"] = [dict(d, msg=_event_msg(d)) for d in result["deprecations"]]
            return result
    return {"failed": True, "msg": "module printed no JSON result", "stdout": stdout}


def _event_msg(item):
    """ansible-core 2.19 sends WarningSummary/DeprecationSummary objects; older ones plain text."""
    if isinstance(item, dict):
        event = item.get("event")
        if isinstance(event, dict) and "msg" in event:
            return event["msg"]
        if "msg" in item:
            return item["msg"]
    return item
