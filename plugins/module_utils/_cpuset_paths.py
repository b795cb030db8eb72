# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Cgroup paths as the cpuset engine spells them: relative to the hierarchy root, ``""`` is the root.

Pure string helpers shared by the model (``_cpuset_model``) and the planner (``_cpuset_plan``).
"""

from __future__ import annotations


def join_path(path, name):
    return "%s/%s" % (path, name) if path else name


def parent_of(path):
    return path.rsplit("/", 1)[0] if "/" in path else ""


def depth_of(path):
    return 0 if not path else path.count("/") + 1


def display_path(path):
    return "'/%s'" % path if path else "the root cgroup"


def ancestors_of(path):
    """All ancestors from the root ("") down to the parent."""
    result = [""]
    parts = path.split("/") if path else []
    for index in range(1, len(parts)):
        result.append("/".join(parts[:index]))
    return result
