# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every module refuses in its arguments that an argument spec cannot say.

A NUL byte: no path, cgroup name, CPU list, kernel parameter or domain XML can hold one, and Python's file
calls raise ValueError (not OSError) on it, deep inside a reader that expects only OSError. Each module asks
``nul_byte_problem`` once, right after the argument spec has run, and fails with its answer.
"""

from __future__ import annotations

_SHOWN = 60  # characters of a value shown in the message: enough to find it, not a page of it


def nul_byte_problem(params):
    """The first argument holding a NUL byte, in words (None: none does).  ``params``: a module's params, whose
    values may nest dicts and lists (suboptions, lists of dicts, free-form dicts); keys are checked too."""
    for name in sorted(params):
        if name.startswith("_ansible_"):
            continue
        found = _find(params[name], name)
        if found is not None:
            where, value = found
            shown = repr(value) if len(value) <= _SHOWN else repr(value[:_SHOWN]) + "..."
            return ("%s is %s: it holds a NUL byte (\\x00), which no path, cgroup name, CPU list, kernel parameter "
                    "or domain XML can hold; remove it" % (where, shown))
    return None


def _find(value, where):
    if isinstance(value, str):
        return (where, value) if "\x00" in value else None
    if isinstance(value, dict):
        for key in sorted(value, key=str):
            if isinstance(key, str) and "\x00" in key:
                return ("a key of %s" % where, key)
            found = _find(value[key], "%s.%s" % (where, key))
            if found is not None:
                return found
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = _find(item, "%s[%d]" % (where, index))
            if found is not None:
                return found
    return None


def new_module(module_class, argument_spec, **kwargs):
    """``module_class(argument_spec, **kwargs)`` (an AnsibleModule), with a clean failure where ansible-core
    crashes.

    ansible-core (2.19, and devel as of this writing) looks up a dict option's suboption fallbacks before it checks
    that the value is a dict: ``cmdline: false`` for a ``type=dict`` option with ``options`` raises TypeError inside
    its validator, a traceback instead of a message. Validating the same arguments again against the spec without
    the suboptions makes ansible-core's own type check speak ("argument 'cmdline' is of type bool and we were
    unable to convert to dict") and fail_json with it."""
    try:
        return module_class(argument_spec=argument_spec, **kwargs)
    except TypeError:
        module_class(argument_spec=_without_suboptions(argument_spec), **kwargs)
        raise  # the arguments were fine after all: not the crash worked around here


def _without_suboptions(spec):
    return {name: {key: value for key, value in option.items() if key != "options"} if option.get("type") == "dict"
            else option for name, option in spec.items()}
