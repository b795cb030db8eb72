# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tests only: append one JSON line per task result ({task, action, status, changed}) to $RTVIRT_TASK_LOG,
so a test can tell which modules a run really executed (skipped tasks are recorded as skipped)."""
from __future__ import annotations

DOCUMENTATION = r"""
name: rtvirt_task_log
type: aggregate
short_description: Record each task result as a JSON line (tests only)
description: Appends C({task, action, status, changed}) per task result to the file named by C(RTVIRT_TASK_LOG).
requirements: [enable in configuration]
"""

import json
import os

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "rtvirt_task_log"
    CALLBACK_NEEDS_ENABLED = True

    def _record(self, result, status):
        path = os.environ.get("RTVIRT_TASK_LOG")
        if not path:
            return
        task = result._task
        with open(path, "a") as handle:
            handle.write(json.dumps({"task": task.get_name(), "action": task.action, "status": status,
                                     "changed": bool(result._result.get("changed"))}) + "\n")

    def v2_runner_on_ok(self, result):
        self._record(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, "failed")

    def v2_runner_on_skipped(self, result):
        self._record(result, "skipped")
