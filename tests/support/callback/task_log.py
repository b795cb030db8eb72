# -*- coding: utf-8 -*-
"""A callback plugin for the fast-path tests: every task result as one JSON line in $RTVIRT_TASK_LOG.

Each line holds the task's action, name, role and status (ok, changed, failed, skipped), so a test can count
the module calls a run made (every result whose action is not one the controller runs by itself).
"""
from __future__ import annotations

import json
import os

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: task_log
    type: aggregate
    short_description: every task result as a JSON line (tests only)
    description: Writes action, name, role and status of every task result to the file named by RTVIRT_TASK_LOG.
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "task_log"
    CALLBACK_NEEDS_ENABLED = True

    def _log(self, result, status):
        task = result._task
        role = task._role.get_name() if task._role else None
        line = {"action": task.action, "name": task.get_name(), "role": role, "status": status}
        with open(os.environ["RTVIRT_TASK_LOG"], "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")

    def v2_runner_on_ok(self, result):
        self._log(result, "changed" if result._result.get("changed") else "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._log(result, "failed")

    def v2_runner_on_skipped(self, result):
        self._log(result, "skipped")
