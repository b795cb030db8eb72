# -*- coding: utf-8 -*-
# Copyright (c) rtvirt.kvm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which boot loader decides the next boot's kernel command line, and how to change it there. Pure.

Everything is read below ``root`` (a recorded tree in the unit tests, ``/`` on a host); nothing is run here.
:func:`detect` recognises, in this order (the first match wins):

``bls``
    BLS entries (``/boot/loader/entries/*.conf``) and ``grubby``: the RHEL family (RHEL 8+, CentOS Stream,
    Fedora 30+, Rocky, Alma). These hosts also have ``/etc/default/grub`` (``GRUB_ENABLE_BLSCFG=true``), but
    regenerating grub.cfg from it changes no existing entry: the entries' ``options`` (and on RHEL 8 grubenv's
    ``kernelopts`` they point to) are what boots, and grubby is the tool that edits them all at once.
``grub``
    ``/etc/default/grub`` and no BLS with grubby: Debian and Ubuntu (``update-grub``, or
    ``grub-mkconfig -o /boot/grub/grub.cfg``, which is all update-grub runs, on BIOS and EFI alike: the EFI
    image's stub loads /boot/grub/grub.cfg). A RHEL-family host without BLS gets ``grub2-mkconfig``.
``kernelstub`` and ``systemd-boot``
    recognised (``/etc/kernelstub/configuration``; ``/etc/kernel/cmdline`` or BLS entries with ``bootctl``)
    so that the refusal names them, but not managed: they are desktop and appliance loaders (Pop!_OS,
    unified kernel images), where a hypervisor fleet of this collection does not run, and systemd-boot has no
    tool that rewrites every installed kernel's entry in place.

Nothing recognised is :class:`NoBootloader`, whose message says what was looked for.
"""

from __future__ import annotations

import glob
import os
import re
import shutil

from ansible_collections.rtvirt.kvm.plugins.module_utils._textfile import read_or_none
from ansible_collections.rtvirt.kvm.plugins.module_utils._grub import key_of

ENTRIES_DIR = "/boot/loader/entries"
GRUBENV_PATHS = ("/boot/grub2/grubenv", "/boot/grub/grubenv")
KERNELSTUB_CONFIG = "/etc/kernelstub/configuration"
KERNEL_CMDLINE = "/etc/kernel/cmdline"
DEBIAN_GRUB_CFG = "/boot/grub/grub.cfg"
REDHAT_GRUB_CFG = "/boot/grub2/grub.cfg"
# Where a tool is looked for below a recorded root; on the host itself PATH is asked first, as before.
_TOOL_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
_REDHAT_IDS = {"rhel", "fedora", "centos", "rocky", "almalinux", "ol"}
_DEBIAN_IDS = {"debian", "ubuntu"}
MANAGED = ("bls", "grub")
# What the default kernel boots with next, as grubby reads it from the entries and grubenv.
GRUBBY_INFO = ["grubby", "--info=DEFAULT"]


class BootloaderError(ValueError):
    """The boot loader's state cannot be changed safely; nothing is run or written."""


class NoBootloader(BootloaderError):
    """No boot loader this module knows was found."""


def _under(root, path):
    return os.path.join(root, path.lstrip("/")) if root not in ("", "/") else path


def which(root, name):
    """The host path of tool ``name`` below ``root``, or None."""
    if root in ("", "/"):
        found = shutil.which(name)
        if found:
            return found
    for directory in _TOOL_DIRS:
        if os.path.isfile(_under(root, os.path.join(directory, name))):
            return os.path.join(directory, name)
    return None


def parse_os_release(text):
    """``/etc/os-release`` as a dict (quotes removed)."""
    result = {}
    for line in (text or "").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        result[key.strip()] = value
    return result


def read_os_release(root="/"):
    """``/etc/os-release`` below ``root`` as a dict ({} where it is missing)."""
    return parse_os_release(read_or_none(_under(root, "/etc/os-release")))


def os_family(release):
    """``RedHat``, ``Debian`` (the names of Ansible's os_family fact) or None, from os-release's ID and ID_LIKE."""
    ids = {release.get("ID", "")} | set(release.get("ID_LIKE", "").split())
    if ids & _REDHAT_IDS:
        return "RedHat"
    if ids & _DEBIAN_IDS:
        return "Debian"
    return None


def parse_grubenv(text):
    """GRUB's environment block (``name=value`` lines, ``#`` padding) as a dict."""
    env = {}
    for line in (text or "").splitlines():
        if line.startswith("#") or "=" not in line:
            continue
        name, value = line.split("=", 1)
        env[name] = value
    return env


class Entry:
    """One BLS entry: its file's stem (grub's entry id), path, version and option words as written."""

    def __init__(self, name, path, version, options):
        self.name, self.path, self.version, self.options = name, path, version, options

    def __repr__(self):
        return "Entry(%r)" % self.name


def parse_entry(name, path, text):
    version = None
    options = []
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if not parts:
            continue
        if parts[0] == "version" and len(parts) > 1:
            version = parts[1].strip()
        elif parts[0] == "options" and len(parts) > 1:
            options.extend(parts[1].split())   # several options lines are joined, as grub's blscfg does
    return Entry(name, path, version, options)


def read_entries(root):
    """Every ``*.conf`` in the BLS directory below ``root``, sorted by file name."""
    entries = []
    for path in sorted(glob.glob(os.path.join(_under(root, ENTRIES_DIR), "*.conf"))):
        text = read_or_none(path)
        if text is not None:
            name = os.path.basename(path)[:-len(".conf")]
            entries.append(parse_entry(name, os.path.join(ENTRIES_DIR, os.path.basename(path)), text))
    return entries


def read_grubenv(root):
    """(host path, dict) of the first grubenv found below ``root``, or (None, {})."""
    for path in GRUBENV_PATHS:
        text = read_or_none(_under(root, path))
        if text is not None:
            return path, parse_grubenv(text)
    return None, {}


def _version_key(text):
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text or "") if part]


class Detected:
    """What :func:`detect` found: ``kind`` (``bls``, ``grub``, ``kernelstub``, ``systemd-boot``), the files the
    current parameters are read from (``sources``), the command that regenerates GRUB's configuration after an
    edit of the defaults file (``update_command``, ``grub`` only), where a person reads back what the next boot
    gets (``readback``, in words), and the OS (``os``: os-release, ``family``)."""

    def __init__(self, kind, sources, release, update_command=None, readback=None):
        self.kind, self.sources, self.os = kind, sources, release
        self.family = os_family(release)
        self.update_command = update_command
        self.readback = readback

    @property
    def managed(self):
        return self.kind in MANAGED

    def describe(self):
        name = self.os.get("PRETTY_NAME") or self.os.get("ID") or "unknown OS"
        return "%s on %s (%s)" % (self.kind, name, ", ".join(self.sources))


def _grub_update_command(root):
    """The command that turns /etc/default/grub into grub.cfg: update-grub where it exists (Debian, Ubuntu),
    else grub-mkconfig for Debian's path; grub2-mkconfig (RHEL family without BLS) writes grub2's."""
    if which(root, "update-grub"):
        return ["update-grub"]
    if not which(root, "grub-mkconfig") and which(root, "grub2-mkconfig"):
        return ["grub2-mkconfig", "-o", REDHAT_GRUB_CFG]
    return ["grub-mkconfig", "-o", DEBIAN_GRUB_CFG]


def _bls_enabled(grub_text):
    return bool(re.search(r"^\s*GRUB_ENABLE_BLSCFG=[\"']?true", grub_text or "", re.M))


def looked_for(grub_file):
    return ["%s/*.conf with grubby (BLS, RHEL family)" % ENTRIES_DIR,
            "%s (GRUB, Debian and Ubuntu)" % grub_file,
            "%s (kernelstub)" % KERNELSTUB_CONFIG,
            "%s, or BLS entries with bootctl (systemd-boot)" % KERNEL_CMDLINE]


def detect(root="/", grub_file="/etc/default/grub"):
    """The boot loader below ``root`` (see the module's docstring for the rule); raises NoBootloader, or
    BootloaderError for a half-set-up BLS host that grubby is missing on."""
    release = read_os_release(root)
    entries = glob.glob(os.path.join(_under(root, ENTRIES_DIR), "*.conf"))
    grub_text = read_or_none(_under(root, grub_file))
    if entries and which(root, "grubby"):
        env_path, _env = read_grubenv(root)
        sources = [ENTRIES_DIR + "/*.conf"] + ([env_path] if env_path else [])
        return Detected("bls", sources, release, readback=" ".join(GRUBBY_INFO))
    if entries and (_bls_enabled(grub_text) or os_family(release) == "RedHat"):
        raise BootloaderError("%s holds BLS entries (%s) but grubby is not installed: install grubby (dnf install "
                              "grubby); regenerating grub.cfg from %s would not change the entries that boot"
                              % (ENTRIES_DIR, ", ".join(sorted(os.path.basename(e) for e in entries)), grub_file))
    if grub_text is not None:
        command = _grub_update_command(root)
        cfg = command[-1] if len(command) > 1 else DEBIAN_GRUB_CFG
        return Detected("grub", [grub_file], release, update_command=command,
                        readback="the linux lines of %s's default menu entry" % cfg)
    if os.path.isfile(_under(root, KERNELSTUB_CONFIG)):
        return Detected("kernelstub", [KERNELSTUB_CONFIG], release, readback="kernelstub --print-config")
    if os.path.isfile(_under(root, KERNEL_CMDLINE)) or (entries and which(root, "bootctl")):
        return Detected("systemd-boot", [KERNEL_CMDLINE if os.path.isfile(_under(root, KERNEL_CMDLINE))
                                         else ENTRIES_DIR + "/*.conf"], release, readback="bootctl list")
    raise NoBootloader("no boot loader recognised below %s; looked for %s" % (root, "; ".join(looked_for(grub_file))))


# --- BLS with grubby -------------------------------------------------------------------------------------------


def _word(key, value):
    return key if value is None else "%s=%s" % (key, value)


def effective_options(entry, env):
    """(words, {key: grubenv variable}) of ``entry`` as grub boots it: ``$name`` words are grubenv variables
    (``$kernelopts`` on RHEL 8, ``$tuned_params`` where tuned sets parameters), expanded where grubenv has them."""
    words = []
    origin = {}
    for word in entry.options:
        if word.startswith("$") and len(word) > 1:
            variable = word[1:].strip("{}")
            for inner in env.get(variable, "").split():
                words.append(inner)
                origin.setdefault(key_of(inner), variable)
            continue
        words.append(word)
    return words, origin


def grubby_apply(words, args, remove):
    """What ``grubby --args=... --remove-args=...`` leaves: every occurrence of a named key dropped, ``args``
    appended."""
    keys = {key_of(word) for word in args} | set(remove)
    return [word for word in words if key_of(word) not in keys] + list(args)


class BlsPlan:
    """The one grubby call that brings every entry to ``params``/``absent`` (``argv`` None: nothing to do),
    the entries' options before and after it, and the default entry."""

    def __init__(self, argv, before, after, default):
        self.argv, self.before, self.after, self.default = argv, before, after, default

    @property
    def changed(self):
        return self.argv is not None

    def render(self, which):
        return "".join("%s: %s\n" % (name, " ".join(words)) for name, words in sorted(which.items()))


def default_entry(entries, env):
    """The entry grub boots by default: grubenv's ``saved_entry`` when it names one, else the newest version."""
    saved = env.get("saved_entry")
    for entry in entries:
        if entry.name == saved:
            return entry
    return max(entries, key=lambda e: _version_key(e.version or e.name)) if entries else None


def plan_bls(entries, env, params, absent=()):
    """``grubby --update-kernel=ALL`` with the ``--args`` and ``--remove-args`` that every entry needs
    (``params``: name -> value, None for a bare flag). grubby edits all entries, so a parameter is passed when
    any entry lacks it; nothing is passed for what all entries already have."""
    if not entries:
        raise BootloaderError("%s holds no entry: nothing boots from BLS here" % ENTRIES_DIR)
    both = sorted(set(params) & set(absent))
    if both:
        raise BootloaderError("parameter(s) %s both set and removed" % ", ".join(both))
    before = {}
    needed_args, needed_remove = [], []
    for entry in entries:
        words, origin = effective_options(entry, env)
        before[entry.name] = words
        for key in list(params) + list(absent):
            variable = origin.get(key)
            if variable and variable != "kernelopts":
                # grubby edits the entries (and kernelopts), not other variables: its --args would add a second
                # value beside the one the variable's owner (tuned) keeps setting.
                raise BootloaderError("BLS entry %s gets %s from grubenv's $%s (set by tuned or another tool), "
                                      "which grubby does not edit: remove it there (tuned: another profile) or do "
                                      "not manage %s here" % (entry.name, key, variable, key))
        for key, value in params.items():
            if [w for w in words if key_of(w) == key] != [_word(key, value)] and key not in needed_args:
                needed_args.append(key)
        for key in absent:
            if any(key_of(w) == key for w in words) and key not in needed_remove:
                needed_remove.append(key)
    args = [_word(key, params[key]) for key in params if key in needed_args]
    after = {name: grubby_apply(words, args, needed_remove) for name, words in before.items()}
    argv = None
    if args or needed_remove:
        argv = ["grubby", "--update-kernel=ALL"]
        if args:
            argv.append("--args=" + " ".join(args))
        if needed_remove:
            argv.append("--remove-args=" + " ".join(needed_remove))
    default = default_entry(entries, env)
    return BlsPlan(argv, before, after, default.name if default else None)


def plan_bls_host(root, params, absent=()):
    """:func:`plan_bls` for the entries and grubenv below ``root``."""
    _path, env = read_grubenv(root)
    return plan_bls(read_entries(root), env, params, absent)


def parse_grubby_info(text):
    """The ``args`` of ``grubby --info=...`` output, as words."""
    match = re.search(r'^args="?(.*?)"?\s*$', text or "", re.M)
    return match.group(1).split() if match else None


def apply_bls(plan, run, params, absent=()):
    """Run ``plan.argv`` and read back what the default kernel boots with; ``run(argv)`` -> (rc, out, err) is the
    host's command runner (injected: the unit tests record argv instead of running grubby).  Returns the argvs
    run; raises BootloaderError when grubby fails or the read-back lacks what was asked."""
    ran = []
    if plan.argv is None:
        return ran
    rc, out, err = run(plan.argv)
    ran.append(plan.argv)
    if rc != 0:
        raise BootloaderError("%s failed (rc %d): %s" % (" ".join(plan.argv), rc, (err or out or "").strip()))
    readback = GRUBBY_INFO
    rc, out, err = run(readback)
    ran.append(readback)
    words = parse_grubby_info(out) if rc == 0 else None
    if words is None:
        raise BootloaderError("%s ran, but %s gave no args line (rc %d): %s"
                              % (" ".join(plan.argv), " ".join(readback), rc, (err or out or "").strip()))
    wrong = [key for key, value in params.items() if [w for w in words if key_of(w) == key] != [_word(key, value)]]
    wrong += [key for key in absent if any(key_of(w) == key for w in words)]
    if wrong:
        raise BootloaderError("%s ran, but the default kernel's args (%s) still do not match for %s"
                              % (" ".join(plan.argv), " ".join(words), ", ".join(wrong)))
    return ran
