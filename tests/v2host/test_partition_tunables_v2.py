"""libvirt_partition's tunables on the real systemd + cgroup v2 host (issue 17), on the 6.12 kernel only: the
knobs are the same on 6.1, and every module call costs 12-17 s under TCG.

- without systemd (``/run/systemd`` hidden by the wrapper interpreter of test_partition_exclusive_v2): a
  top-level ``rtn<hex>.partition`` gets cpu.weight, memory.max (a size that is not whole pages, which the
  kernel rounds down), memory.high and io.weight written and read back; a second run changes nothing.
- with systemd: the slice unit carries CPUWeight=, MemoryMax=, MemoryHigh=, IOWeight= (persistent), systemd
  writes them to the slice's cgroup, which is read back; check mode writes nothing and shows the unit's diff;
  a second run changes nothing; a cgroup file changed by hand is put back by a daemon-reload, with the files'
  before and after in the diff.
"""
import json
import uuid

import pytest

from tests.v2host.test_modules_v2 import CG, UNIT_DIR, read_files, root_subtree, run_playbook, sh
from tests.v2host.test_partition_exclusive_v2 import WRAPPER, lp

pytestmark = pytest.mark.v2host

PAGE = 4096
ODD = 100000001                       # not a whole number of pages: the kernel keeps 99999744
TUNABLES = {"cpu_shares": 300, "memory_hard_limit": str(ODD), "memory_soft_limit": "64M", "blkio_weight": 250}
KNOBS = ("cpu.weight", "memory.max", "memory.high", "io.weight")
EXPECTED = {"cpu.weight": "300", "memory.max": str(ODD // PAGE * PAGE), "memory.high": str(64 << 20),
            "io.weight": "default 250"}


@pytest.fixture(scope="module")
def tunables_v2(v2host_612, tmp_path_factory):
    host = v2host_612
    tag = uuid.uuid4().hex[:10]
    rtn, rts = "/rtn" + tag, "/rts" + tag
    dir_n, unit = rtn[1:] + ".partition", rts[1:] + ".slice"
    subtree_before = root_subtree(host)
    proc = host.ssh("cat > %s && chmod +x %s" % (WRAPPER, WRAPPER), input=(
        "#!/bin/sh\n"
        "exec unshare -m sh -c 'mount -t tmpfs tmpfs /run/systemd && exec /usr/bin/python3 \"$@\"' sh \"$@\"\n"))
    assert proc.returncode == 0, proc.stderr
    cgroupfs = lp(dict(TUNABLES, name=rtn, controllers=["cpu", "memory", "blkio"]))
    cgroupfs["vars"] = {"ansible_python_interpreter": WRAPPER}
    slice_args = dict(TUNABLES, name=rts)
    check = lp(slice_args, check=True)
    check["diff"] = True
    repair = lp(slice_args)
    repair["diff"] = True
    tmp = tmp_path_factory.mktemp("tunables")
    paths = ["%s/%s/%s" % (CG, d, k) for d in (dir_n, unit) for k in KNOBS]
    try:
        # The cgroupfs runs first and are read back before systemd runs: systemd re-realizes the root's controllers
        # for its slice (seen: the hand-made partition's io.weight back at "default 100" afterwards).
        # Verbosity 3 keeps the diffs in the results (below it the callback prints them as text and drops them).
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("ANSIBLE_VERBOSITY", "3")
            n_first, n_again = run_playbook(host, tmp, [cgroupfs, dict(cgroupfs)], name="cgroupfs")
            files = read_files(host, paths[:len(KNOBS)])
            s_check, s_first, s_again = run_playbook(host, tmp, [check, lp(slice_args), lp(slice_args)], name="slice")
        files.update(read_files(host, paths[len(KNOBS):] + ["%s/%s" % (UNIT_DIR, unit)]))
        unit_text = sh(host, "cat %s/%s" % (UNIT_DIR, unit))
        sh(host, "echo 77 > %s/%s/cpu.weight && echo max > %s/%s/memory.high" % (CG, unit, CG, unit))
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("ANSIBLE_VERBOSITY", "3")
            s_repair, = run_playbook(host, tmp, [repair], name="repair")
        repaired = read_files(host, ["%s/%s/%s" % (CG, unit, k) for k in KNOBS])
    finally:
        host.ssh("systemctl stop %s; rm -f %s/%s %s; systemctl daemon-reload; rmdir %s/%s"
                 % (unit, UNIT_DIR, unit, WRAPPER, CG, dir_n))
        for controller in ("io", "cpu", "memory"):
            if controller not in subtree_before and controller in root_subtree(host):
                # Best effort: systemd may still use it for a unit of its own (EBUSY), which harms nothing.
                host.ssh("echo -%s > %s/cgroup.subtree_control" % (controller, CG))
    repair_shown = json.dumps({k: s_repair.get(k) for k in ("planned", "writes")})
    print("tunables v2, %s: %s\nunit %s\nrepair %s" % (
        host.kernel_release, json.dumps(files, indent=1), unit_text, repair_shown))
    return dict(dir_n=dir_n, unit=unit, n_first=n_first, n_again=n_again, s_check=s_check, s_first=s_first,
                s_again=s_again, s_repair=s_repair, files=files, unit_text=unit_text, repaired=repaired)


def test_cgroupfs_tunables_read_back(tunables_v2):
    first, files, dir_n = tunables_v2["n_first"], tunables_v2["files"], tunables_v2["dir_n"]
    assert first["changed"] and not first.get("failed"), first
    assert "unit" not in first and first["cgroup_path"] == dir_n        # the cgroupfs path, not a slice
    assert {k: files["%s/%s/%s" % (CG, dir_n, k)] for k in KNOBS} == EXPECTED
    written = {w["file"].rsplit("/", 1)[1]: w["value"] for w in first["writes"] if w["file"].startswith(CG)}
    assert written["io.weight"] == "default 250" and written["memory.max"] == str(ODD), written


def test_cgroupfs_second_run_changes_nothing(tunables_v2):
    again = tunables_v2["n_again"]
    assert not again.get("failed"), again.get("msg")
    assert again["changed"] is False and again["writes"] == [] and again["planned"] == [], again


def test_slice_check_mode_writes_nothing_and_diffs_the_unit(tunables_v2):
    check, first, unit = tunables_v2["s_check"], tunables_v2["s_first"], tunables_v2["unit"]
    assert check["changed"] and check["writes"] == [], check
    assert check["planned"] == first["planned"]
    assert check["diff"]["before"] == "" and check["diff"]["after"] == tunables_v2["unit_text"], check["diff"]


def test_slice_properties_persist_in_the_unit_and_reach_the_kernel(tunables_v2):
    first, files, unit = tunables_v2["s_first"], tunables_v2["files"], tunables_v2["unit"]
    assert first["changed"] and not first.get("failed"), first
    body = tunables_v2["unit_text"].split("[Slice]\n", 1)[1].splitlines()
    assert body == ["CPUWeight=300", "MemoryMax=%d" % ODD, "MemoryHigh=%d" % (64 << 20), "IOWeight=250"], body
    assert {k: files["%s/%s/%s" % (CG, unit, k)] for k in KNOBS} == EXPECTED


def test_slice_second_run_changes_nothing(tunables_v2):
    again = tunables_v2["s_again"]
    assert not again.get("failed"), again.get("msg")
    assert again["changed"] is False and again["writes"] == [] and again["planned"] == [], again


def test_a_file_changed_by_hand_is_put_back_by_a_daemon_reload(tunables_v2):
    repair, unit = tunables_v2["s_repair"], tunables_v2["unit"]
    assert repair["changed"] and not repair.get("failed"), repair
    assert [(w["file"], w["value"]) for w in repair["writes"]] == [("systemctl daemon-reload", "<run>")]
    weight = "%s/%s/cpu.weight" % (CG, unit)
    assert repair["planned"][0].startswith("systemctl daemon-reload (%s reads 77, not 300 as CPUWeight=300 says"
                                           % weight), repair["planned"]
    assert "%s = 77" % weight in repair["diff"]["before"] and "%s = 300" % weight in repair["diff"]["after"]
    assert {k: tunables_v2["repaired"]["%s/%s/%s" % (CG, unit, k)] for k in KNOBS} == EXPECTED
