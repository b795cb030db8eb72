# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Kernel command lines: edit one variable of /etc/default/grub (a shell fragment) without a shell,
and split the running kernel's /proc/cmdline. Pure.

Only the simple forms are accepted: ``NAME="words"``, ``NAME='words'`` or ``NAME=words`` on one line,
at most one active assignment. Anything a shell would expand or continue (``$``, backquotes,
backslashes, a quote inside the value, a trailing backslash, several assignments) is refused: the
module cannot know what the bootloader tool would make of it.
"""

from __future__ import annotations

import re


class CmdlineParseError(ValueError):
    """The file or the value cannot be edited safely; nothing is written."""


_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _assignment(name):
    return re.compile(r"^\s*(?:export\s+)?%s=" % re.escape(name))


def _parse_value(name, rest, lineno):
    rest = rest.rstrip("\n")
    stripped = rest.rstrip()
    if stripped.endswith("\\"):
        raise CmdlineParseError("line %d: %s continues on the next line (trailing backslash); join it into one line"
                                % (lineno, name))
    if stripped[:1] in ('"', "'"):
        quote = stripped[0]
        end = stripped.find(quote, 1)
        if end < 0:
            raise CmdlineParseError("line %d: %s has an unterminated %s quote" % (lineno, name, quote))
        value, tail = stripped[1:end], stripped[end + 1:]
        if tail.strip() and not tail.strip().startswith("#"):
            raise CmdlineParseError("line %d: %s has text after its closing quote (%r); the module only edits "
                                    "a single quoted value" % (lineno, name, tail.strip()))
    else:
        quote = '"'
        value = stripped.split("#", 1)[0].strip()
        if " " in value or "\t" in value:
            raise CmdlineParseError("line %d: %s has an unquoted value with spaces" % (lineno, name))
    for bad in ("$", "`", "\\", '"', "'"):
        if bad in value:
            raise CmdlineParseError("line %d: %s contains %r, which the shell would expand or interpret; the "
                                    "module refuses to edit it: write the value out literally" % (lineno, name, bad))
    return value, quote


def parse(text, name="GRUB_CMDLINE_LINUX"):
    """Return (line index or None, list of words) for variable ``name`` in ``text``."""
    if not _NAME.match(name):
        raise CmdlineParseError("%r is not a shell variable name" % name)
    match = _assignment(name)
    found = None
    words = []
    for index, line in enumerate(text.splitlines()):
        if not match.match(line):
            continue
        if found is not None:
            raise CmdlineParseError("%s is assigned on lines %d and %d; keep one assignment" % (name, found + 1, index + 1))
        rest = line.split("=", 1)[1]
        value, _quote = _parse_value(name, rest, index + 1)
        found = index
        words = value.split()
    return found, words


def key_of(word):
    return word.split("=", 1)[0]


def apply(words, params, absent=()):
    """New word list: ``params`` (name -> value, None for a bare flag) set in place or appended, ``absent`` removed."""
    result = []
    done = set()
    for word in words:
        key = key_of(word)
        if key in absent:
            continue
        if key in params:
            if key in done:
                continue  # a repeated parameter collapses into the wanted one
            value = params[key]
            result.append(key if value is None else "%s=%s" % (key, value))
            done.add(key)
        else:
            result.append(word)
    for key in params:
        if key not in done:
            value = params[key]
            result.append(key if value is None else "%s=%s" % (key, value))
    return result


def render(text, name, words):
    """``text`` with the variable set to ``words`` (appended as a new line when it was missing)."""
    index, _old = parse(text, name)
    line = '%s="%s"' % (name, " ".join(words))
    lines = text.splitlines()
    if index is None:
        lines.append(line)
    else:
        lines[index] = line
    return "\n".join(lines) + "\n"


def split_cmdline(text):
    """Split a kernel command line (``/proc/cmdline``) into parameters the way the kernel does.

    Double quotes group a value containing spaces (``foo="a b"``) and are dropped; ``--`` ends the
    kernel's part (what follows goes to init).
    """
    params = []
    current = []
    in_quotes = False
    started = False
    for char in (text or ""):
        if char == '"':
            in_quotes = not in_quotes
            started = True
            continue
        if char.isspace() and not in_quotes:
            if started:
                params.append("".join(current))
                current = []
                started = False
            continue
        current.append(char)
        started = True
    if started:
        params.append("".join(current))
    if "--" in params:
        params = params[:params.index("--")]
    return params


def missing_from_running(cmdline, params, absent=()):
    """Parameters of ``params``/``absent`` that the running kernel's /proc/cmdline does not match."""
    running = {}
    for word in split_cmdline(cmdline):
        running[key_of(word)] = word.split("=", 1)[1] if "=" in word else None
    differ = []
    for key, value in params.items():
        if key not in running or running[key] != value:
            differ.append(key)
    for key in absent:
        if key in running:
            differ.append(key)
    return differ


def plan_edit(text, name, params, absent, running_cmdline):
    """What editing ``text`` for ``params``/``absent`` means: (changed, new text, parameters the running
    kernel lacks).  Raises CmdlineParseError for a file it cannot edit safely."""
    _index, words = parse(text, name)
    new = render(text, name, apply(words, params, absent))
    return new != text, new, missing_from_running(running_cmdline, params, absent)
