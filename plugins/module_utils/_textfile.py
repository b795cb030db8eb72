# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reading the configuration and kernel files the planners look at.

One reader for all of them, so that a file that is missing, unreadable or not text (a binary left at
/etc/default/grub, a Latin-1 comment in irqbalance's config) reads as "not there" everywhere alike
instead of crashing one planner while another shrugs.
"""

from __future__ import annotations


def read_or_none(path, errors="strict"):
    """The whole text of ``path``, or None when it is missing, unreadable or (with ``errors="strict"``) not UTF-8.

    ``errors="surrogateescape"`` reads any bytes, for files that the role edits as bytes (lineinfile does).
    """
    try:
        with open(path, encoding="utf-8", errors=errors) as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError):
        return None
