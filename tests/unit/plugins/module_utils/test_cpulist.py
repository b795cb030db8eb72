import pytest
from hypothesis import given, strategies as st

from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import (
    CpuListError,
    format_cpulist,
    format_cpumask,
    normalize_cpulist,
    parse_cpulist,
    parse_cpumask,
    parse_libvirt_cpuset,
)


@pytest.mark.parametrize("text, expected", [
    ("", set()),
    ("  \n", set()),
    ("0", {0}),
    ("0-3", {0, 1, 2, 3}),
    ("0-3,8,10-11", {0, 1, 2, 3, 8, 10, 11}),
    (" 3 , 1 ", {1, 3}),
    ("0-7:2/4", {0, 1, 4, 5}),
    ("2-2", {2}),
    (5, {5}),
])
def test_parse_valid(text, expected):
    assert parse_cpulist(text) == frozenset(expected)


@pytest.mark.parametrize("text, fragment", [
    ("3-1", "reversed"),
    ("1,,2", "empty element"),
    ("1,", "empty element"),
    ("a", "not a number"),
    ("1-", "not a number"),
    ("-1", "not a number"),
    ("0x3", "not a number"),
    ("0-7:0/4", "stride"),
    ("0-7:5/4", "stride"),
    (["1"], "must be a string"),
    (True, "must be a string"),
])
def test_parse_rejects(text, fragment):
    with pytest.raises(CpuListError, match=fragment):
        parse_cpulist(text, what="cpus")


@pytest.mark.parametrize("text, number", [
    ("0-99999999999999999999", "99999999999999999999"),   # once expanded one number at a time: a hang
    ("99999999999999999999", "99999999999999999999"),     # once parsed, then a mask of 1 << 10**20 built
    ("8192", "8192"),
    (2 ** 64, str(2 ** 64)),
])
def test_numbers_no_linux_can_have_are_refused(text, number):
    with pytest.raises(CpuListError, match=r"cpus '?%s'?: %s is beyond any CPU or NUMA node Linux can have "
                                           r"\(at most 8192" % (text, number)):
        parse_cpulist(text, what="cpus")


def test_the_largest_linux_cpu_is_accepted():
    assert parse_cpulist("8190-8191") == {8190, 8191}


def test_out_of_range_names_the_host_range():
    with pytest.raises(CpuListError, match=r"8 is out of range \(this host has 0-3\)"):
        parse_cpulist("2,8", limit=4)


@pytest.mark.parametrize("numbers, text", [
    ([], ""), ([0], "0"), ([3, 0, 1, 2], "0-3"), ([0, 2, 4], "0,2,4"), ([1, 2, 5, 6, 7, 9], "1-2,5-7,9"),
])
def test_format(numbers, text):
    assert format_cpulist(numbers) == text


def test_normalize():
    assert normalize_cpulist("3,0-2, 8") == "0-3,8"


@given(st.frozensets(st.integers(min_value=0, max_value=300)))
def test_format_parse_round_trip(numbers):
    assert parse_cpulist(format_cpulist(numbers)) == numbers


@given(st.frozensets(st.integers(min_value=0, max_value=200)))
def test_mask_round_trip(numbers):
    assert parse_cpumask(format_cpumask(numbers)) == numbers


def test_mask_parse_kernel_form():
    assert parse_cpumask("00000000,00000005") == {0, 2}
    assert format_cpumask({0, 33}) == "2,00000001"
    with pytest.raises(CpuListError):
        parse_cpumask("zz")


@pytest.mark.parametrize("text, expected", [
    ("2", {2}),
    ("0-3,^2", {0, 1, 3}),
    ("0-3,^2,^3", {0, 1}),
    ("^3,1-4", {1, 2, 3, 4}),  # an exclusion removes only what came before it, as in libvirt
])
def test_libvirt_cpuset(text, expected):
    assert parse_libvirt_cpuset(text) == expected


@pytest.mark.parametrize("text, match", [
    (None, "is empty"),
    ("", "is empty"),
    ("0-3,^2-3", r"not N, N-M or \^N"),  # libvirt refuses a range after ^
    ("0-7:2/4", r"not N, N-M or \^N"),   # the kernel's strides are no libvirt syntax
    ("1,,2", "stray comma"),
    ("^1", "selects no CPU"),
])
def test_libvirt_cpuset_refuses_what_libvirt_refuses(text, match):
    with pytest.raises(CpuListError, match=match):
        parse_libvirt_cpuset(text)
