# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Bad arguments never crash: every module, fed random and hostile arguments, ends in fail_json or exit_json.

For each module in plugins/modules/ (found on disk: a new module without a ``HOSTS`` entry below fails
``test_every_module_is_covered``), hypothesis starts from a valid call and changes a few of its options, each
from a strategy built from the module's own ``get_argument_spec()``: malformed CPU lists, huge numbers, unicode,
NUL bytes, ``..`` and absolute paths, wrong types, unknown keys, missing required and mutually exclusive options.
Every run must end in

- ``fail_json`` with a message a person can act on (a non-empty str, no traceback, not a bare exception), having
  written nothing: the fake host is byte-identical afterwards and the fake libvirt holds the same domains; or
- a normal ``exit_json``, where the random input happens to be valid.

An uncaught exception, a module that prints no JSON, or a touch of the real host fails the test.

The modules run in-process (``_module_runner``) against a fake host under ``tmp_path``: their proc/sys/cgroup
roots are options or ``Host`` attributes pointed there; what a module reads from fixed paths is injected at the
module's own names (``gather``, ``discover_layout``, ...). A fake ``libvirt`` module stands in for libvirt-python,
so no run can reach a libvirtd (one may be running on this machine) or define a domain. Options of type ``path``
only ever name places inside the fake host: a path option's default is the real host, so they are never dropped.
An audit hook (``sys.addaudithook``) turns any other touch of the real host into a failure: a write, a process, a
socket, or a read outside the fake host and Python's own files.

Reproducible: ``derandomize=True`` and no example database. For a longer local hunt (CI uses neither),
``RTVIRT_HOSTILE_EXAMPLES`` raises the number of examples per module and ``RTVIRT_HOSTILE_SEED`` draws other
examples than CI's.
"""
from __future__ import annotations

import functools
import importlib
import json
import os
import pathlib
import re
import resource
import shutil
import sys
import types
import xml.etree.ElementTree as ET

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from _module_runner import run_module
from ansible_collections.rtvirt.kvm.plugins.module_utils import _cgroupfs, _host_plan, _isolation, _partition_host
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_fs import PlainFiles

REPO = pathlib.Path(__file__).resolve().parents[4]
MODULES_DIR = REPO / "plugins" / "modules"
sys.path.insert(0, str(REPO / "tests" / "unit" / "fixtures" / "hosts"))
import make_hosts  # noqa: E402

HOSTILE_EXAMPLES = int(os.environ.get("RTVIRT_HOSTILE_EXAMPLES", "60"))
HOSTILE_SEED = os.environ.get("RTVIRT_HOSTILE_SEED")

# --------------------------------------------------------------------------------------------------------------
# Hostile values, by the type an option declares.

CPU_LISTS = ["1-", "3-1", "0,,1", "-1", "99999999999999999999", "1-2-3", "0x1", " ", "", ",", "0-", "1,", "-",
             "0-3", "2", "2-3,6-7", "0-99999999999999999999", "\u0663", "0-3\n", "1\x00", "4294967296"]
WEIRD_TEXT = ["..", "../etc", "/", "/etc/passwd", "a/../b", "/machine/../x", "/machine/./x", "machine//x",
              "\x00", "a\x00b", "\u00fc", "\u202e", "\U0001f600", "\n", "a b", "%s", "{0}", "'", '"', "\\", "~",
              "$HOME", "x" * 4096, "(", "[", "*", "<", "<domain/>", "<a><b></a>", "/rt", "/machine/rt",
              "machine/rt", "rt.partition", "-"]
HUGE_INTS = [2 ** 31, 2 ** 63, 2 ** 64 + 1, -2 ** 63 - 1, 10 ** 30, -1, 0, 1, 2 ** 1000]
INT_LOOKALIKES = ["1", "abc", "0x10", "1e3", " 3", "", "1.5", "-0", "\u0663", "99999999999999999999"]
BOOL_LOOKALIKES = ["yes", "no", "maybe", "", "1", "0", 2, -1, "on", "TRUE"]

small_text = st.text(max_size=12)
hostile_text = st.one_of(st.sampled_from(CPU_LISTS + WEIRD_TEXT), st.text(max_size=40))
scalars = st.one_of(st.none(), st.booleans(), st.sampled_from(HUGE_INTS), st.integers(),
                    st.floats(allow_nan=False, allow_infinity=False), hostile_text)
wrong_types = st.one_of(st.lists(scalars, max_size=3), st.dictionaries(small_text, scalars, max_size=3),
                        st.booleans(), st.sampled_from(HUGE_INTS), st.floats(allow_nan=False, allow_infinity=False))


class _Omit:
    """The option is left out of the call."""


OMIT = _Omit()


def value_strategy(spec, where, kept=()):
    """Hostile values for one option of an argument spec (``where``: the fake host, for options of type path;
    ``kept``: its suboptions never dropped)."""
    kind = spec.get("type", "str")
    if kind == "path":
        return where.locations
    choices = list(spec.get("choices") or ())
    if kind == "list":
        element = value_strategy(dict(type=spec.get("elements", "str"), options=spec.get("options"),
                                      choices=spec.get("choices")), where)
        return st.one_of(st.lists(element, max_size=4), element, wrong_types)
    if kind == "dict":
        if spec.get("options"):
            return st.one_of(options_strategy(spec["options"], where, base=None, kept=kept), wrong_types,
                             st.sampled_from(["a=b", "a=b c=d", ""]))
        return st.one_of(st.dictionaries(hostile_text, st.one_of(hostile_text, scalars), max_size=4), wrong_types,
                         st.sampled_from(["a=b", "a=b c=d", "", "{", "0=2 1=3"]))
    if kind == "int":
        base = st.one_of(st.sampled_from(HUGE_INTS), st.integers(), st.sampled_from(INT_LOOKALIKES))
    elif kind == "bool":
        base = st.one_of(st.booleans(), st.sampled_from(BOOL_LOOKALIKES))
    else:
        base = hostile_text
    if choices:
        base = st.one_of(st.sampled_from(choices), base)
    return st.one_of(base, wrong_types, st.none())


def options_strategy(options, where, base, kept=()):
    """A call (or suboption dict) from ``base``: a few options changed to hostile values or dropped, unknown keys.

    ``base`` None: every option decided at random (suboptions of a list of dicts). ``kept``: options that are
    changed but never dropped (left out, they mean the real host)."""
    base = dict(base) if base is not None else {}
    keys = sorted(options)
    aliases = sorted(alias for spec in options.values() for alias in spec.get("aliases") or ())

    @st.composite
    def build(draw):
        call = dict(base)
        changed = draw(st.sets(st.sampled_from(keys + aliases), max_size=3)) if not base \
            else draw(st.sets(st.sampled_from(keys + aliases), min_size=1, max_size=3))
        if not base:
            changed |= set(draw(st.sets(st.sampled_from(keys), max_size=len(keys))))
        for key in sorted(changed):
            spec = options.get(key) or next(s for s in options.values() if key in (s.get("aliases") or ()))
            # A path option's default is a real host path: it is changed, never dropped.
            droppable = key not in kept and (spec.get("type") != "path" or spec.get("default") is None)
            inner = tuple(k.split(".", 1)[1] for k in kept if k.startswith(key + "."))
            value = draw(st.one_of(value_strategy(spec, where, inner), st.just(OMIT)) if droppable
                         else value_strategy(spec, where, inner))
            if value is OMIT:
                call.pop(key, None)
            else:
                call[key] = value
        unknown = draw(st.dictionaries(small_text.filter(lambda k: k not in options and k not in aliases
                                                         and not k.startswith("_ansible")), scalars, max_size=1))
        call.update(unknown)
        return call

    return build()


# --------------------------------------------------------------------------------------------------------------
# The fake host.

def _write(path, text):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def build_host(root):
    """The v1-isolcpus recorded host (2 nodes x 2 cores x 2 threads, hybrid cgroups), plus what the modules read
    besides proc and sys: a mountinfo naming the fake cgroup mounts by their real (fake) paths, /etc files, a
    cgroup v2 tree for cgroup_cpuset, and an empty working directory (relative paths land there)."""
    make_hosts.v1_isolcpus(root)
    host = root / "v1-isolcpus"
    cg = host / "sys" / "fs" / "cgroup"
    lines = ["26 25 0:23 / %s rw - cgroup2 cgroup2 rw" % (cg / "unified")]
    for index, name in enumerate(("cpu,cpuacct", "cpuset", "memory", "freezer")):
        (cg / name / "machine").mkdir(parents=True, exist_ok=True)
        lines.append("%d 25 0:%d / %s rw - cgroup cgroup rw,%s" % (29 + index, 26 + index, cg / name, name))
    _write(host / "mountinfo.abs", "\n".join(lines) + "\n")
    cpuset = cg / "cpuset"
    for name, value in (("cpuset.cpus", "0-7"), ("cpuset.mems", "0-1"), ("cpuset.effective_cpus", "0-7"),
                        ("cpuset.effective_mems", "0-1"), ("cpuset.cpu_exclusive", "1"), ("tasks", "")):
        if not (cpuset / name).exists():
            _write(cpuset / name, value + "\n")
    for name, value in (("cpuset.cpus", "0-7"), ("cpuset.mems", "0-1"), ("cpuset.cpu_exclusive", "0"),
                        ("tasks", "")):
        if not (cpuset / "machine" / name).exists():
            _write(cpuset / "machine" / name, value + "\n")
    _write(host / "proc" / "cgroups", "#subsys_name\thierarchy\tnum_cgroups\tenabled\n"
           "cpuset\t3\t1\t1\ncpu\t2\t1\t1\ncpuacct\t2\t1\t1\nmemory\t4\t1\t1\nfreezer\t5\t1\t1\n")
    v2 = host / "cg2"
    for name, value in (("cgroup.controllers", "cpuset cpu memory"), ("cgroup.subtree_control", ""),
                        ("cpuset.cpus.effective", "0-7"), ("cpuset.mems.effective", "0-1"), ("cgroup.procs", "1")):
        _write(v2 / name, value + "\n")
    _write(host / "etc" / "default" / "grub", 'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX="quiet splash"\n')
    _write(host / "etc" / "default" / "irqbalance", "#IRQBALANCE_BANNED_CPULIST=\n")
    _write(host / "etc" / "sysctl.d" / "90-rt.conf", "kernel.sched_rt_runtime_us = -1\n")
    _write(host / "etc" / "libvirt" / "qemu.conf", 'cgroup_controllers = [ "cpu", "cpuset", "memory" ]\n')
    _write(host / "etc" / "libvirt" / "hooks" / "rtvirt-kvm-layout.json",
           json.dumps({"realtime_cpus": "2-3,6-7", "emulator_cpus": "0"}) + "\n")
    _write(host / "var" / "lib" / "dpkg" / "status", "Package: libvirt-daemon\nStatus: install ok installed\n")
    _write(host / "etc" / "os-release", 'ID=debian\nVERSION_ID="12"\n')
    (host / "cwd").mkdir()
    return host


def snapshot(tree):
    """Every file, directory and symlink below ``tree`` with its bytes and mode."""
    result = {}
    for dirpath, dirs, files in os.walk(tree):
        for name in dirs + files:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, tree)
            info = os.lstat(path)
            if os.path.islink(path):
                result[rel] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                result[rel] = ("dir", info.st_mode)
            else:
                with open(path, "rb") as handle:
                    result[rel] = ("file", info.st_mode, handle.read())
    return result


class FakeHost:
    """Where a module's locations point, and how the options of type path are made hostile."""

    def __init__(self, root):
        self.root = root                      # tmp_path: the only place a run may write
        self.host = build_host(root)          # the fake host; compared before and after a failed run
        self.pristine = snapshot(self.host)
        h = str(self.host)
        places = [h, h + "/proc", h + "/sys", h + "/proc/cmdline", h + "/etc/default/grub", h + "/cg2",
                  h + "/sys/fs/cgroup/cpuset", h + "/run/libvirt/qemu", h + "/etc/libvirt", h + "/missing",
                  h + "/etc/libvirt/hooks/rtvirt-kvm-layout.json", h + "/etc/default/irqbalance"]
        suffixes = ["", "/", "//", "/missing", "/\x00", "\x00x", "/\u00fc", "/\n", "/ ", "/.", "/proc/cmdline/x"]
        self.locations = st.one_of(
            st.builds(lambda place, suffix: place + suffix, st.sampled_from(places), st.sampled_from(suffixes)),
            # Relative paths resolve in the run's working directory, inside the fake host. Not "": kernel_cmdline's
            # root="" is the real root, as "/" is.
            st.sampled_from(["relative", "a b", "\u00fc", "x\x00"]),
            # A list or a number becomes a (relative) string; a dict is refused.
            st.sampled_from([["x"], {"a": 1}, 7, True, 1.5]),
        )

    def restore(self):
        """Put the fake host back after a run that was allowed to change it (valid input)."""
        if snapshot(self.host) != self.pristine:
            shutil.rmtree(str(self.root / "v1-isolcpus"))
            self.host = build_host(self.root)
            assert snapshot(self.host) == self.pristine
        os.chdir(str(self.host / "cwd"))


# --------------------------------------------------------------------------------------------------------------
# libvirt-python, faked: a connection to nothing that keeps its domains in memory.

class FakeLibvirtError(Exception):
    def __init__(self, msg, code=1):
        super().__init__(msg)
        self.code = code

    def get_error_code(self):
        return self.code


class FakeDomain:
    def __init__(self, conn, xml):
        self.conn, self.xml, self.active = conn, xml, False

    def name(self):
        return ET.fromstring(self.xml).findtext("name")

    def XMLDesc(self, flags):  # noqa: N802 - libvirt's name
        return self.xml

    def isActive(self):  # noqa: N802 - libvirt's name
        return self.active

    def autostart(self):
        return getattr(self, "starts", 0)

    def setAutostart(self, flag):  # noqa: N802 - libvirt's name
        self.starts = flag

    def create(self):
        self.active = True

    def destroy(self):
        self.active = False

    def undefine(self):
        self.conn.domains.pop(self.name(), None)


class FakeConnection:
    def __init__(self, domains):
        self.domains = domains

    def listAllDomains(self, flags):  # noqa: N802 - libvirt's name
        return list(self.domains.values())

    def lookupByName(self, name):  # noqa: N802 - libvirt's name
        if name not in self.domains:
            raise FakeLibvirtError("Domain not found: no domain with matching name '%s'" % name, code=42)
        return self.domains[name]

    def defineXML(self, xml):  # noqa: N802 - libvirt's name
        dom = FakeDomain(self, xml)
        self.domains[dom.name()] = dom
        return dom

    def close(self):
        return 0


def fake_libvirt(domains):
    module = types.ModuleType("libvirt")
    module.libvirtError = FakeLibvirtError
    module.VIR_ERR_NO_DOMAIN = 42
    module.VIR_DOMAIN_XML_INACTIVE = 2
    module.VIR_CONNECT_LIST_DOMAINS_ACTIVE = 1
    module.VIR_CONNECT_LIST_DOMAINS_AUTOSTART = 64
    module.open = lambda uri: FakeConnection(domains)
    return module


# --------------------------------------------------------------------------------------------------------------
# The real host, guarded: an audit hook that records and stops every touch of it while a module runs.

class RealHostTouched(BaseException):
    """Raised in the audit hook (a BaseException, so that no module's ``except Exception`` swallows it)."""


_GUARD = {"active": None}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_WRITE_EVENTS = ("os.mkdir", "os.rmdir", "os.remove", "os.rename", "os.chmod", "os.chown", "os.symlink",
                 "os.link", "os.truncate", "os.utime", "shutil.rmtree", "shutil.move", "shutil.copyfile")
_PROCESS_EVENTS = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
                   "os.forkpty", "pty.spawn")


def _resolved(path):
    if isinstance(path, int) or path is None:
        return None
    path = os.fsdecode(path)
    if "\x00" in path:
        return None  # the call itself refuses it
    return os.path.realpath(os.path.abspath(path))


def _inside(path, roots):
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def _audit(event, args):
    guard = _GUARD["active"]
    if guard is None:
        return
    if event in _PROCESS_EVENTS or event == "socket.connect":
        guard.touch("%s %r" % (event, args[:2]))
    elif event == "open":
        path, mode, flags = args
        resolved = _resolved(path)
        if resolved is None:
            return
        writes = (mode is not None and any(c in mode for c in "wax+")) or (flags or 0) & _WRITE_FLAGS
        if writes and not _inside(resolved, guard.write_roots):
            guard.touch("write %s" % resolved)
        elif not writes and not _inside(resolved, guard.write_roots + guard.read_roots) \
                and not guard.may_read(resolved):
            guard.touch("read %s" % resolved)
    elif event in _WRITE_EVENTS:
        for path in args[:2] if event in ("os.rename", "os.symlink", "os.link", "shutil.move") else args[:1]:
            resolved = _resolved(path)
            if resolved is not None and not _inside(resolved, guard.write_roots):
                guard.touch("%s %s" % (event, resolved))
    elif event in ("os.listdir", "os.scandir"):
        resolved = _resolved(args[0] if args[0] is not None else ".")
        if resolved is not None and not _inside(resolved, guard.write_roots + guard.read_roots) \
                and not guard.may_read(resolved):
            guard.touch("%s %s" % (event, resolved))


sys.addaudithook(_audit)


# A run may grow by this much address space: a module that builds a set of 2**31 vCPU numbers meets MemoryError
# (a crash the test reports) instead of the OOM killer, which on a shared CI machine may pick another process.
MEMORY_HEADROOM = 2 << 30


class Guard:
    def __init__(self, root, reads=None):
        self.reads = reads  # a pattern of real host paths the module may read
        self.write_roots = [os.path.realpath(str(root))]
        # Python and the collection: imports, encodings, ansible-core's own files.
        self.read_roots = sorted({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix,
                                                                str(REPO), "/dev/null", "/dev/urandom")}
                                 | {os.path.realpath(p) for p in sys.path if p and os.path.isabs(p)})
        self.touched = []

    def may_read(self, path):
        return bool(self.reads and self.reads.match(path))

    def touch(self, what):
        self.touched.append(what)
        raise RealHostTouched(what)

    def __enter__(self):
        self.limits = resource.getrlimit(resource.RLIMIT_AS)
        with open("/proc/self/statm") as handle:
            size = int(handle.read().split()[0]) * resource.getpagesize()
        hard = self.limits[1]
        soft = size + MEMORY_HEADROOM if hard == resource.RLIM_INFINITY else min(size + MEMORY_HEADROOM, hard)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        _GUARD["active"] = self
        return self

    def __exit__(self, *exc):
        _GUARD["active"] = None
        resource.setrlimit(resource.RLIMIT_AS, self.limits)
        return False


# --------------------------------------------------------------------------------------------------------------
# Each module: a valid call on the fake host, the options never changed, and where its fixed paths go.

def _seams(name, fake, monkeypatch):
    """Point what ``name`` reads from fixed host paths at the fake host (the names the module itself calls)."""
    h = str(fake.host)
    roots = dict(proc_root=h + "/proc", sys_root=h + "/sys", run_root=h + "/run/libvirt/qemu",
                 libvirt_config_dir=h + "/etc/libvirt", systemd_run_dir=h + "/no-systemd")
    module = importlib.import_module("ansible_collections.rtvirt.kvm.plugins.modules." + name)
    for attr, value in dict(mountinfo=h + "/mountinfo.abs", proc_cgroups=h + "/proc/cgroups", proc_root=h + "/proc",
                            sys_root=h + "/sys", qemu_run_dir=h + "/run/libvirt/qemu",
                            systemd_run_dir=h + "/no-systemd", unit_dir=h + "/etc/systemd/system",
                            qemu_conf=h + "/etc/libvirt/qemu.conf", lock_path=str(fake.root / "locks" / "partition"),
                            files=PlainFiles()).items():
        monkeypatch.setattr(_partition_host.Host, attr, value)
    fixed_discover = functools.partial(_cgroupfs.discover_layout, h + "/mountinfo.abs")
    if hasattr(module, "discover_layout"):
        monkeypatch.setattr(module, "discover_layout", lambda *_a: fixed_discover())
    if hasattr(module, "gather"):
        if name == "cpu_isolation_facts":  # its roots are options; systemd's run directory is not
            monkeypatch.setattr(module, "gather", functools.partial(_isolation.gather, systemd_run_dir=h + "/no-systemd"))
        else:
            monkeypatch.setattr(module, "gather", functools.partial(_isolation.gather, **roots))
    if hasattr(module, "PCPU_LOCK_PATH"):  # the allocation lock around a define
        monkeypatch.setattr(module, "PCPU_LOCK_PATH", str(fake.root / "locks" / "pcpu"))
    if hasattr(module, "read_access"):
        monkeypatch.setattr(module, "read_access", lambda *_a, **_k: ("libvirt-qemu", None))
    if name == "cgroup_cpuset":
        from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_apply import HostLock
        monkeypatch.setattr(module, "HostLock", functools.partial(HostLock, str(fake.root / "locks" / "cpuset")))
        monkeypatch.setattr(module, "is_cgroup_mount", lambda _mountpoint: False)
    if name == "host_plan":
        monkeypatch.setattr(module, "SYSTEMD_DIR", h + "/no-systemd")
        if hasattr(module, "resolve_os_names"):
            # The OS's defaults name real files (irqbalance's); a run without irqs.irqbalance_file reads the fake one.
            resolve = module.resolve_os_names

            def fake_names(*args, **kwargs):
                names, used = resolve(*args, **kwargs)
                path = names.get("irqbalance_file")
                if isinstance(path, str) and not path.startswith(h):
                    names = dict(names, irqbalance_file=h + path)
                return names, used
            monkeypatch.setattr(module, "resolve_os_names", fake_names)
        if hasattr(module, "read_os_release"):
            from ansible_collections.rtvirt.kvm.plugins.module_utils._bootloader import read_os_release
            monkeypatch.setattr(module, "read_os_release", functools.partial(read_os_release, h))
        monkeypatch.setattr(module, "KVM_DEVICE", h + "/dev/kvm")
        monkeypatch.setattr(module, "udev_manages_devices", lambda *_a: True)
        monkeypatch.setattr(module, "_systemctl_states", lambda verb, units: {})
        monkeypatch.setattr(module, "installed_packages",
                            functools.partial(_host_plan.installed_packages, h + "/var/lib/dpkg/status"))
        monkeypatch.setattr(module, "check_cmdline",
                            functools.partial(_host_plan.check_cmdline, proc_cmdline=h + "/proc/cmdline", root=h))
        monkeypatch.setattr(module, "check_irqs",
                            functools.partial(_host_plan.check_irqs, proc_root=h + "/proc", sys_root=h + "/sys"))
        monkeypatch.setattr(module, "check_sysctl", functools.partial(_host_plan.check_sysctl, proc_root=h + "/proc"))
        if hasattr(module, "check_tuning"):
            real_check_tuning = module.check_tuning

            def fake_check_tuning(mod, options, realtime, housekeeping):
                # The default modprobe and sysctl files are the real host's: read the fake host's instead.
                options = dict(options, **{key: h + options[key] for key in ("modprobe_file", "sysctl_file")
                                           if str(options.get(key) or "").startswith("/etc/")})
                return real_check_tuning(mod, options, realtime, housekeeping, proc_root=h + "/proc",
                                         sys_root=h + "/sys", tuned_dir=h + "/etc/tuned",
                                         tuned_profiles_dir=h + "/usr/lib/tuned")
            monkeypatch.setattr(module, "check_tuning", fake_check_tuning)
        monkeypatch.setattr(module, "check_libvirt",
                            functools.partial(_host_plan.check_libvirt, proc_root=h + "/proc",
                                              log_dir=h + "/var/log/libvirt"))
    if name == "latency_check":
        from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import parse_cpulist

        def fake_oslat(_module, argv, _json_path):
            cpus = sorted(parse_cpulist(argv[argv.index("--cpu-list") + 1]))
            return json.dumps({"thread": {str(i): {"cpu": cpu, "min": 1, "avg": 1.0, "max": 3, "duration": 1.0,
                                                   "histogram": {"1": 100, "3": 1}} for i, cpu in enumerate(cpus)}})
        monkeypatch.setattr(module, "run_oslat", fake_oslat)
        monkeypatch.setattr(module, "WORK_DIR", str(fake.root))
    if name == "host_tuning":
        # Threads of a fake /proc are numbers of real ones: the gate's thread calls touch nothing.
        monkeypatch.setattr(module, "GATE", module.Gate(setaffinity=lambda *_a: None, setscheduler=lambda *_a: None))
    if name == "remediation_findings":
        real = {"/etc/libvirt/qemu.conf": h + "/etc/libvirt/qemu.conf", "/proc/cgroups": h + "/proc/cgroups"}
        read = module._read
        monkeypatch.setattr(module, "_read", lambda path: read(real.get(path, path)))
    return module


# Options of type path without a default that, left out, mean the real host: changed, never dropped
# ("a.b": suboption b of option a).
KEPT = {"cgroup_cpuset": ("mountpoint",), "host_plan": ("irqs.irqbalance_file",)}


def calls(fake):
    """{module: (a valid call, options never changed)}. Pinned options keep a run off the real host: a command
    kernel_cmdline would run, for one."""
    h = str(fake.host)
    domain = ("<domain type='kvm'><name>rt0</name><vcpu>2</vcpu><cputune><vcpupin vcpu='0' cpuset='2'/>"
              "<vcpupin vcpu='1' cpuset='3'/></cputune></domain>")
    return {
        "cgroup_cpuset": ({"path": "machine/rt", "cpus": "2-3", "mountpoint": h + "/cg2", "hierarchy_version": 2,
                           "lock_timeout": 0}, {}),
        "cpu_isolation_facts": ({"isolated_cpus": "2-3,6-7", "realtime_partitions": ["/rt"],
                                 "proc_root": h + "/proc", "sys_root": h + "/sys",
                                 "libvirt_run_dir": h + "/run/libvirt/qemu",
                                 "libvirt_config_dir": h + "/etc/libvirt"}, {}),
        "guest_plan": ({"guests": [{"name": "rt1", "vcpus": 2}], "pool": "2-3,6-7", "emulator_cpus": "0",
                        "layout_file": h + "/etc/libvirt/hooks/rtvirt-kvm-layout.json", "uri": "test:///fake"}, {}),
        "host_plan": ({"cpus": "1,3,5,7", "sys_root": h + "/sys", "partitions": [{"name": "/rt", "cpus": "3,7"}],
                       "cmdline": {"path": "/etc/default/grub"},
                       "irqs": {"irqbalance_file": h + "/etc/default/irqbalance"},
                       "sysctl": {"path": h + "/etc/sysctl.d/90-rt.conf",
                                  "content": "kernel.sched_rt_runtime_us = -1\n", "value": -1},
                       "hook": {"path": h + "/etc/libvirt/hooks/qemu", "content": "#!/bin/sh\n",
                                "layout_path": h + "/etc/libvirt/hooks/rtvirt-kvm-layout.json"},
                       "libvirt": {"packages": ["libvirt-daemon"]}, "verify": True}, {}),
        "host_tuning": ({"realtime_cpus": "2-3"},
                        {"proc_root": h + "/proc", "sys_root": h + "/sys", "tuned_dir": h + "/etc/tuned",
                         "tuned_profiles_dir": h + "/usr/lib/tuned", "modprobe_file": h + "/etc/modprobe.d/rt.conf",
                         "sysctl_file": h + "/etc/sysctl.d/91-rt.conf"}),
        "irq_affinity": ({"cpus": "0-1,4-5", "proc_root": h + "/proc", "sys_root": h + "/sys"}, {}),
        "kernel_cmdline": ({"params": {"isolcpus": "2-3", "nohz_full": "2-3"}, "absent": ["splash"],
                            "root": h, "path": "/etc/default/grub", "proc_cmdline": h + "/proc/cmdline"},
                           {"update_command": []}),
        "latency_check": ({"cpus": "2-3", "duration_s": 1, "max_latency_us": 40, "oslat": h, "proc_root": h + "/proc",
                           "sys_root": h + "/sys", "libvirt_run_dir": h + "/run/libvirt/qemu"}, {}),
        "libvirt_partition": ({"name": "/machine/rt", "cpus": "2-3", "lock_timeout": 0}, {}),
        "pcpu_allocation": ({"name": "rt1", "vcpus": 2, "pool": "2-3,6-7", "sys_root": h + "/sys",
                             "domains_xml": [domain]}, {}),
        "realtime_domain": ({"name": "rt1", "vcpus": 2, "memory_mib": 256, "vcpupin": {"0": "2", "1": "3"},
                             "emulator_cpus": "0-1", "uri": "test:///fake"}, {}),
        "remediation_findings": ({"violations": [], "realtime_partitions": ["/rt"], "uri": "test:///fake"}, {}),
    }


# cgroup_cpuset moves real tasks: whether one exists, and where it is, it asks the real /proc (read only).
REAL_READS = {"cgroup_cpuset": re.compile(r"^/proc/\d+/(task|cgroup)$")}

MODULES = sorted(p.stem for p in MODULES_DIR.glob("*.py") if not p.name.startswith("_"))
COVERED = ("cgroup_cpuset", "cpu_isolation_facts", "guest_plan", "host_plan", "host_tuning", "irq_affinity",
           "kernel_cmdline", "latency_check", "libvirt_partition", "pcpu_allocation", "realtime_domain",
           "remediation_findings")


def test_every_module_is_covered(tmp_path):
    assert MODULES, "no module found in %s" % MODULES_DIR
    missing = sorted(set(MODULES) - set(calls(FakeHost(tmp_path))))
    assert not missing, "modules without a hostile-arguments call in %s: %s" % (__file__, missing)
    assert sorted(COVERED) == MODULES, "COVERED (the parametrization) and plugins/modules/ differ"


# --------------------------------------------------------------------------------------------------------------
# The property.

TRACEBACK = "Traceback (most recent call last)"
# A message that is only an exception's name or repr: "KeyError", "ValueError('x')", "'name'" (str of a KeyError).
BARE_EXCEPTION = re.compile(r"^\s*(<class '[\w.]+'>|[\w.]*(Error|Exception)(\(.*\))?|'[^']*'|\d+|None)\s*$", re.S)


def assert_actionable(msg, args):
    assert isinstance(msg, str), "fail_json msg is %r, not a str, for %r" % (msg, args)
    assert msg.strip(), "fail_json with an empty msg for %r" % (args,)
    assert TRACEBACK not in msg, "a traceback as the message for %r: %s" % (args, msg)
    assert not BARE_EXCEPTION.match(msg), "a bare exception as the message for %r: %r" % (args, msg)


@pytest.mark.parametrize("name", COVERED)
def test_hostile_arguments_fail_cleanly_and_write_nothing(name, tmp_path, monkeypatch):
    fake = FakeHost(tmp_path)
    module = _seams(name, fake, monkeypatch)
    domains = {}
    monkeypatch.setitem(sys.modules, "libvirt", fake_libvirt(domains))
    monkeypatch.chdir(str(fake.host / "cwd"))
    base, pinned = calls(fake)[name]
    spec = module.get_argument_spec()
    for key in pinned:
        spec.pop(key)
    valid = run_module(module, dict(base, **pinned, _ansible_no_log=True), check_mode=True)
    assert not valid.get("failed"), "the valid call of %s fails: %s" % (name, valid.get("msg"))
    fake.restore()

    @settings(max_examples=HOSTILE_EXAMPLES, deadline=None, database=None, derandomize=HOSTILE_SEED is None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.filter_too_much])
    @given(args=options_strategy(spec, fake, base, KEPT.get(name, ())), check_mode=st.booleans(), diff=st.booleans())
    def hostile(args, check_mode, diff):
        before = dict(domains)
        guard = Guard(tmp_path, REAL_READS.get(name))
        call = dict(args, **pinned, _ansible_no_log=True)
        try:
            with guard:
                result = run_module(module, call, check_mode=check_mode, diff=diff)
        except RealHostTouched:
            result = None
        assert not guard.touched, "%s touched the real host (%s) for %r" % (name, guard.touched, args)
        assert "stdout" not in result, "%s printed no JSON for %r: %s" % (name, args, result["stdout"])
        if result.get("failed"):
            assert_actionable(result.get("msg"), args)
            assert snapshot(fake.host) == fake.pristine, "%s failed for %r and changed the fake host" % (name, args)
            assert domains == before, "%s failed for %r and changed libvirt's domains" % (name, args)
        fake.restore()
        domains.clear()

    (seed(int(HOSTILE_SEED))(hostile) if HOSTILE_SEED is not None else hostile)()
