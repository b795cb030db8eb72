"""The CPU map as a page a person opens, on a production-shaped host (issue 21).

The test host boots 6.1 as 2 sockets x 2 cores x 2 threads on 2 NUMA nodes (``v2host_numa``). What is real
and what is given:

- real: the topology (NUMA nodes, SMT siblings, cores, sockets), the tasks, IRQs and cgroups, all read by
  rtvirt.kvm.cpu_isolation_facts on the booted host;
- given, from that real topology (and applied by hand, as host_prep would: IRQs, workqueues and movable tasks
  on the housekeeping CPUs): the realtime CPUs (the collection's own automatic choice, one housekeeping
  core per node, as ``isolated_cpus``), the emulator CPUs (the housekeeping cores' second threads) and two guest
  definitions whose pins the collection's allocator plans (``vrouter-1``: 1 vCPU, SMT ``isolate``;
  ``rt-audio``: 1 vCPU, ``prefer``). The host has no libvirt, so the definitions are written where the facts
  read libvirt's (``libvirt_config_dir``) and the guests are shown as defined and stopped.

The map is rendered by the collection's filter, opened in headless Chromium, and every CPU's role, guest,
vCPU, NUMA node and SMT sibling is read back from the DOM Chromium built, against what the host's sysfs says
over SSH. The screenshot is kept in pytest's temporary directory; with RTVIRT_CPU_MAP_SCREENSHOT set it is also
copied there (how docs/images/cpu-map-2node-smt.png is made).
"""
import html.parser
import json
import os
import re
import shutil
import subprocess

import pytest

from ansible_collections.rtvirt.kvm.plugins.filter.realtime import cpu_map_html
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import format_cpulist, parse_cpulist
from ansible_collections.rtvirt.kvm.plugins.module_utils._pcpu import Holdings
from ansible_collections.rtvirt.kvm.plugins.module_utils._pcpu_allocator import Request, allocate_all
from ansible_collections.rtvirt.kvm.plugins.module_utils._realtime_cpus import choose
from ansible_collections.rtvirt.kvm.plugins.module_utils._topology import Topology
from tests.support.ansible_runner import REPO, ansible_env

pytestmark = pytest.mark.v2host

CONFIG_DIR = "/var/tmp/rtvirt-test-cpumap"
GUESTS = (Request(name="vrouter-1", vcpus=1, smt_policy="isolate"), Request(name="rt-audio", vcpus=1))
RECORD = re.compile(r"^v2host \| SUCCESS => ", re.MULTILINE)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SCREENSHOT_SIZE = (800, 1000)   # the page is about 740 px wide; the height leaves room for a few violations


def _chromium():
    return shutil.which("chromium")


def facts_on(host, tmp_path, name, **args):
    """The cpu_isolation fact, gathered on the test host by rtvirt.kvm.cpu_isolation_facts."""
    playbook = tmp_path / ("%s.yml" % name)
    playbook.write_text(json.dumps([{"hosts": "v2host", "gather_facts": False, "tasks": [
        {"name": "gather", "rtvirt.kvm.cpu_isolation_facts": args}]}]))
    # ansible_env's minimal callback prints the task's result as "v2host | SUCCESS => {json}".
    proc = subprocess.run([str(REPO / ".venv" / "bin" / "ansible-playbook"), "-i", str(host.inventory_path),
                           str(playbook)], env=ansible_env(), cwd=str(REPO), capture_output=True, text=True,
                          timeout=900, stdin=subprocess.DEVNULL, check=False)
    record = RECORD.search(proc.stdout)
    assert proc.returncode == 0 and record, "rc=%d\n%s\n%s" % (proc.returncode, proc.stdout[-4000:], proc.stderr[-2000:])
    result, _end = json.JSONDecoder().raw_decode(proc.stdout, record.end())
    return result["ansible_facts"]["cpu_isolation"]


def sysfs_on(host):
    """{cpu: (node, thread_siblings_list, physical_package_id)} as the host's sysfs tells, read without the
    collection."""
    script = ("for c in /sys/devices/system/cpu/cpu[0-9]*; do n=$(ls -d $c/node[0-9]* | sed 's/.*node//'); "
              "echo ${c##*cpu} $n $(cat $c/topology/thread_siblings_list) $(cat $c/topology/physical_package_id); done")
    proc = host.ssh(script)
    assert proc.returncode == 0, proc.stderr
    rows = {}
    for line in proc.stdout.splitlines():
        cpu, node, siblings, package = line.split()
        rows[int(cpu)] = (int(node), siblings, int(package))
    return rows


def settle_on_housekeeping(host, housekeeping):
    """Move IRQs, unbound workqueues and every task that may move to the housekeeping CPUs, as a prepared host
    has them; the disposable test host is not booted with isolcpus=, so nothing else keeps them off the
    realtime CPUs and the map would be outlined red on every one of them. Per-CPU kernel threads refuse
    (EINVAL) and stay, as on a real host."""
    cpus = format_cpulist(housekeeping)
    mask = "%x" % sum(1 << cpu for cpu in housekeeping)
    script = ("for f in /proc/irq/*/smp_affinity_list; do echo %s > $f 2>/dev/null; done; "
              "echo %s > /proc/irq/default_smp_affinity; echo %s > /sys/devices/virtual/workqueue/cpumask; "
              "for t in $(ps -eLo tid=); do taskset -pc %s $t >/dev/null 2>&1; done; true" % (cpus, mask, mask, cpus))
    proc = host.ssh(script)
    assert proc.returncode == 0, proc.stderr


def domain_xml(plan, emulator):
    pins = "".join("<vcpupin vcpu='%d' cpuset='%s'/>" % (vcpu, cpus) for vcpu, cpus in sorted(plan.vcpupin.items()))
    return ("<domain type='kvm'><name>%s</name><memory unit='MiB'>1024</memory><vcpu placement='static'>%d</vcpu>"
            "<cputune>%s<emulatorpin cpuset='%s'/></cputune><resource><partition>/rt</partition></resource>"
            "<metadata>%s</metadata></domain>\n" % (plan.name, len(plan.pins), pins, emulator, plan.metadata_xml()))


class _Dom(html.parser.HTMLParser):
    """The CPU tiles of the DOM Chromium dumped: {cpu: (data-* attributes, class list, text)}."""

    def __init__(self):
        super().__init__()
        self.tiles, self._cpu, self._depth = {}, None, 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div" and "data-cpu" in attrs:
            self._cpu, self._depth = int(attrs["data-cpu"]), 0
            self.tiles[self._cpu] = ({k[5:]: v for k, v in attrs.items() if k.startswith("data-")},
                                     attrs.get("class", "").split(), [])
        elif tag == "div" and self._cpu is not None:
            self._depth += 1

    def handle_endtag(self, tag):
        if tag == "div" and self._cpu is not None:
            if self._depth == 0:
                self._cpu = None
            else:
                self._depth -= 1

    def handle_data(self, data):
        if self._cpu is not None:
            self.tiles[self._cpu][2].append(data)


def chromium(page, *args):
    proc = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--user-data-dir=%s" % (page.parent / "chromium-profile"), *args, page.as_uri()],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 0, "chromium rc=%d: %s" % (proc.returncode, proc.stderr[-3000:])
    return proc.stdout


@pytest.fixture(scope="module")
def host_map(v2host_numa, tmp_path_factory):
    """The booted 2-node SMT host, its map rendered and loaded in Chromium; yields what the tests read."""
    if _chromium() is None:
        pytest.skip("chromium is not installed (hack/apt-packages.txt)")
    tmp_path = tmp_path_factory.mktemp("cpumap")
    plain = facts_on(v2host_numa, tmp_path, "topology", gather_threads=False)
    online = parse_cpulist(plain["cpus"]["online"])
    nodes = {n["node"]: parse_cpulist(n["cpus"]) for n in plain["numa_nodes"]}
    siblings = {}
    for group in plain["smt_siblings"]:
        for cpu in parse_cpulist(group):
            siblings[cpu] = parse_cpulist(group)
    realtime, housekeeping = choose(online, nodes, siblings)
    # The housekeeping cores' second threads run the emulators; the first thread of each node stays the host's.
    emulator = housekeeping - {min(housekeeping & cpus) for cpus in nodes.values()}
    plans = allocate_all(Topology.from_dict(plain["topology"]), realtime, Holdings(), GUESTS,
                         {g.name: emulator for g in GUESTS})
    settle_on_housekeeping(v2host_numa, housekeeping)
    v2host_numa.ssh("rm -rf %s && mkdir -p %s/qemu" % (CONFIG_DIR, CONFIG_DIR))
    try:
        for plan in plans:
            proc = v2host_numa.ssh("cat > %s/qemu/%s.xml" % (CONFIG_DIR, plan.name),
                                   input=domain_xml(plan, format_cpulist(emulator)))
            assert proc.returncode == 0, proc.stderr
        facts = facts_on(v2host_numa, tmp_path, "map", isolated_cpus=format_cpulist(realtime),
                         libvirt_config_dir=CONFIG_DIR)
    finally:
        v2host_numa.ssh("rm -rf %s" % CONFIG_DIR)
    page = tmp_path / "cpu-map.html"
    page.write_text(cpu_map_html(facts, title="CPU map of a 2-node SMT host", emulator_cpus=format_cpulist(emulator)))
    dom = _Dom()
    dom.feed(chromium(page, "--dump-dom"))
    screenshot = tmp_path / "cpu-map-2node-smt.png"
    chromium(page, "--window-size=%d,%d" % SCREENSHOT_SIZE, "--screenshot=%s" % screenshot)
    copy_to = os.environ.get("RTVIRT_CPU_MAP_SCREENSHOT")
    if copy_to:
        shutil.copyfile(screenshot, copy_to)
    yield {"sysfs": sysfs_on(v2host_numa), "facts": facts, "plain": plain, "realtime": realtime,
           "housekeeping": housekeeping, "emulator": emulator, "plans": plans, "dom": dom.tiles,
           "screenshot": screenshot}


def test_the_host_has_the_production_shape(host_map):
    sysfs = host_map["sysfs"]
    assert sorted(sysfs) == list(range(8))
    assert sorted({node for node, _s, _p in sysfs.values()}) == [0, 1]
    assert sorted({package for _n, _s, package in sysfs.values()}) == [0, 1]
    pairs = {siblings for _n, siblings, _p in sysfs.values()}
    assert len(pairs) == 4 and all(len(parse_cpulist(p)) == 2 for p in pairs)
    # Each node is one socket, and a core's two threads are on the same node.
    for cpu, (node, siblings, package) in sysfs.items():
        assert package == node and {sysfs[s][0] for s in parse_cpulist(siblings)} == {node}, (cpu, sysfs)
    assert host_map["plain"]["smt_active"] is True


def test_every_cpu_shows_its_role_guest_node_and_sibling(host_map):
    sysfs, dom = host_map["sysfs"], host_map["dom"]
    assert sorted(dom) == sorted(sysfs)
    vcpus = {}
    reserved = {}
    for plan in host_map["plans"]:
        for vcpu, pcpu in plan.pins:
            vcpus[pcpu] = (plan.name, vcpu)
        for cpu in plan.siblings_reserved:
            reserved[cpu] = plan.name
    assert len(vcpus) == 2 and len(reserved) == 1, host_map["plans"]
    for cpu, (node, siblings, _package) in sysfs.items():
        data, classes, text = dom[cpu]
        text = " ".join("".join(text).split())
        assert data["node"] == str(node) and data["siblings"] == siblings, (cpu, data, sysfs[cpu])
        other = format_cpulist(parse_cpulist(siblings) - {cpu})
        assert "SMT sibling of CPU %s" % other in text, (cpu, text)
        if cpu in vcpus:
            name, vcpu = vcpus[cpu]
            assert (data["role"], data["guests"], data["vcpus"]) == ("vcpu", name, "%s:%d" % (name, vcpu)), (cpu, data)
            assert "%s vCPU %d" % (name, vcpu) in text and "stopped" in classes
        elif cpu in reserved:
            assert (data["role"], data["guests"]) == ("reserved", ""), (cpu, data)
            assert "idle for %s" % reserved[cpu] in text
        elif cpu in host_map["realtime"]:
            assert (data["role"], data["guests"]) == ("free", ""), (cpu, data)
        elif cpu in host_map["emulator"]:
            assert data["role"] == "emulator" and "vrouter-1 emu (stopped)" in text, (cpu, data, text)
        else:
            assert data["role"] == "housekeeping" and "host threads, IRQs" in text, (cpu, data, text)
    roles = sorted({data["role"] for data, _c, _t in dom.values()})
    assert roles == ["emulator", "free", "housekeeping", "reserved", "vcpu"]


def test_the_map_is_drawn_from_the_hosts_facts(host_map):
    facts = host_map["facts"]
    assert facts["isolated_cpus"] == format_cpulist(host_map["realtime"])
    assert [d["name"] for d in facts["domains"]] == ["rt-audio", "vrouter-1"]
    # The facts read the booted host's threads: the map is of a live host, not of a recording.
    assert facts["threads_scanned"] > 50 and facts["cgroup"]["mode"] == "v2"


def test_the_screenshot_is_a_png(host_map):
    data = host_map["screenshot"].read_bytes()
    assert data[:8] == PNG_MAGIC
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == SCREENSHOT_SIZE
