# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""How a module's run stops: raised anywhere below ``run()``, turned into fail_json's arguments once, in main()."""

from __future__ import annotations


class ModuleFailure(Exception):
    """``result`` holds fail_json's arguments: the message and what the run had done or planned so far."""

    def __init__(self, msg, **result):
        super().__init__(msg)
        self.result = dict(result, msg=msg)


def finish(module, run):
    """End the module with ``run(module)``'s result, or with the ModuleFailure it raised: the one fail_json."""
    try:
        result = run(module)
    except ModuleFailure as exc:
        module.fail_json(**exc.result)
    else:
        module.exit_json(**result)
