# -*- coding: utf-8 -*-
from __future__ import annotations

import pytest

from ansible_collections.rtvirt.kvm.plugins.module_utils._grub import (
    CmdlineParseError,
    apply,
    missing_from_running,
    parse,
    render,
    split_cmdline,
)

GRUB = 'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"\nGRUB_CMDLINE_LINUX="console=ttyS0 isolcpus=3"\n'


def test_parse_and_set_in_place():
    index, words = parse(GRUB)
    assert index == 2 and words == ["console=ttyS0", "isolcpus=3"]
    new = apply(words, {"isolcpus": "domain,1", "nohz_full": "1"})
    assert new == ["console=ttyS0", "isolcpus=domain,1", "nohz_full=1"]
    text = render(GRUB, "GRUB_CMDLINE_LINUX", new)
    assert 'GRUB_CMDLINE_LINUX="console=ttyS0 isolcpus=domain,1 nohz_full=1"' in text
    assert 'GRUB_CMDLINE_LINUX_DEFAULT="quiet"' in text
    # idempotent
    assert render(text, "GRUB_CMDLINE_LINUX", apply(parse(text)[1], {"isolcpus": "domain,1", "nohz_full": "1"})) == text


def test_missing_variable_is_appended():
    text = render("GRUB_DEFAULT=0\n", "GRUB_CMDLINE_LINUX", ["a=1"])
    assert text.endswith('GRUB_CMDLINE_LINUX="a=1"\n')


def test_single_quotes_and_absent():
    _i, words = parse("GRUB_CMDLINE_LINUX='quiet splash x=1'\n")
    assert apply(words, {}, absent=["splash"]) == ["quiet", "x=1"]


@pytest.mark.parametrize("line, match", [
    ('GRUB_CMDLINE_LINUX="$EXTRA quiet"', "expand"),
    ('GRUB_CMDLINE_LINUX="`cat /x`"', "expand"),
    ('GRUB_CMDLINE_LINUX="quiet \\\n splash"', "continues"),
    ('GRUB_CMDLINE_LINUX="quiet', "unterminated"),
    ('GRUB_CMDLINE_LINUX="a"\nGRUB_CMDLINE_LINUX="b"', "assigned on lines 1 and 2"),
    ('GRUB_CMDLINE_LINUX="a" "b"', "after its closing quote"),
])
def test_refuses_what_it_cannot_parse(line, match):
    with pytest.raises(CmdlineParseError, match=match):
        parse(line + "\n")


def test_running_cmdline_comparison():
    running = "BOOT_IMAGE=/vmlinuz isolcpus=1 quiet -- init args isolcpus=9"
    assert missing_from_running(running, {"isolcpus": "1", "nohz_full": "1"}) == ["nohz_full"]
    assert missing_from_running(running, {}, absent=["quiet"]) == ["quiet"]


def test_split_cmdline_groups_quotes_and_stops_at_the_double_dash():
    assert split_cmdline('ro foo="a b" bar -- init "x y"') == ["ro", "foo=a b", "bar"]
    assert split_cmdline("") == [] and split_cmdline(None) == []


def test_running_cmdline_with_a_quoted_value():
    running = 'BOOT_IMAGE=/vmlinuz dyndbg="file x.c +p" isolcpus=1'
    assert missing_from_running(running, {"isolcpus": "1", "dyndbg": "file x.c +p"}) == []
