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
    """``module_class(argument_spec, **kwargs)`` (an AnsibleModule), with a clean failure where ansible-core's
    argument validation crashes instead of failing (ansible-core 2.19, and devel as of this writing):

    - a dict option with suboptions given a boolean, a number or a list: its suboption fallbacks are looked up
      before the value is checked to be a dict (TypeError, "argument of type 'bool' is not iterable");
    - an int option given a three-item list with a huge number in it: ``decimal.Decimal`` reads the list as a
      (sign, digits, exponent) tuple and overflows (OverflowError).

    The arguments are then validated again against a lenient copy of the spec (suboptions of dicts dropped, ints
    taken as they are), so that ansible-core's own type check speaks where it can; what it lets through is named
    here. Any other exception, or one this cannot explain, is raised again."""
    try:
        return module_class(argument_spec=argument_spec, **kwargs)
    except (TypeError, OverflowError):
        lenient = module_class(argument_spec=_lenient(argument_spec), **kwargs)
        problem = _int_problem(argument_spec, lenient.params, "")
        if problem is None:
            raise
        lenient.fail_json(msg=problem)


def _lenient(spec):
    result = {}
    for name, option in spec.items():
        option = dict(option)
        if option.get("type") == "int":
            option["type"] = "raw"
        if option.get("elements") == "int":
            option["elements"] = "raw"
        if option.get("options"):
            if option.get("type") == "dict":
                del option["options"]
            else:
                option["options"] = _lenient(option["options"])
        result[name] = option
    return result


def _int_problem(spec, params, prefix):
    """The first int option (or element of a list of ints) that holds a list, in words."""
    for name in sorted(spec):
        option, value = spec[name], (params or {}).get(name)
        where = prefix + name
        if option.get("type") == "int" and isinstance(value, (list, tuple)):
            return "argument '%s' is of type list and we were unable to convert to int: give a number" % where
        if option.get("elements") == "int" and isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                if isinstance(item, (list, tuple)):
                    return ("argument '%s[%d]' is of type list and we were unable to convert to int: give a number"
                            % (where, index))
        if option.get("options") and option.get("type") == "list" and isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, dict):
                    found = _int_problem(option["options"], item, "%s[%d]." % (where, index))
                    if found is not None:
                        return found
    return None
