"""Planner tests against an in-memory hierarchy whose writes are judged by the kernel-rules model."""

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from ansible_collections.rtvirt.kvm.plugins.module_utils._cpulist import format_cpulist
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_fs import CpusetFs
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_model import (
    ATTACH,
    INHERITED_FLAGS_V1,
    MKDIR,
    RMDIR,
    WRITE,
    CpusetModel,
    KernelRuleError,
    Node,
    Op,
    parent_of,
)
from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_plan import (
    PlanError,
    Request,
    _check_exclusive_v1,
    plan,
)
from tests.support.fake_cpuset import MemorySource, run_on_model

F = frozenset


def v1(nodes=None, tasks=None, online=F(range(4)), mems=F({0})):
    return MemorySource(1, online, mems, dict(nodes or {}), dict(tasks or {}))


def v2(nodes=None, tasks=None, online=F(range(4)), mems=F({0}), exclusive=True):
    return MemorySource(2, online, mems, dict(nodes or {}), dict(tasks or {}),
                        features={"cpus_exclusive": exclusive, "partition": True})


def writes(result):
    return [(op.kind, op.path, op.knob, op.value) for op in result.ops]


# ---- cgroup v1 ----------------------------------------------------------------------------

def test_nested_creation_with_only_cpus_is_parent_first_and_copies_mems():
    result = plan(v1(), [Request("a/b/c", cpus=F({1}))])
    assert writes(result) == [
        (MKDIR, "a", "", ""), (WRITE, "a", "cpus", "0-3"), (WRITE, "a", "mems", "0"),
        (MKDIR, "a/b", "", ""), (WRITE, "a/b", "cpus", "0-3"), (WRITE, "a/b", "mems", "0"),
        (MKDIR, "a/b/c", "", ""), (WRITE, "a/b/c", "cpus", "1"), (WRITE, "a/b/c", "mems", "0"),
    ]
    assert result.after["a/b/c"].mems == F({0})


def test_second_run_plans_nothing():
    source = v1()
    first = plan(source, [Request("a/b", cpus=F({1, 2}))])
    again = plan(run_on_model(source, first.ops), [Request("a/b", cpus=F({1, 2}))])
    assert again.ops == [] and not again.changed


def test_empty_existing_cpuset_is_filled_from_parent_and_said():
    source = v1({"machine": Node()})
    result = plan(source, [Request("machine")])
    assert writes(result) == [(WRITE, "machine", "cpus", "0-3"), (WRITE, "machine", "mems", "0")]
    assert any("filled the empty cpus" in n for n in result.notes)


def test_shrink_under_a_busy_child_narrows_children_first():
    source = v1({"p": Node(cpus=F({0, 1, 2, 3}), mems=F({0})), "p/c": Node(cpus=F({1, 2, 3}), mems=F({0}))},
                tasks={"p/c": [100]})
    result = plan(source, [Request("p", cpus=F({2, 3}))])
    assert writes(result) == [(WRITE, "p/c", "cpus", "2-3"), (WRITE, "p", "cpus", "2-3")]
    assert result.notes == ["narrowed '/p/c' cpus from 1-3 to 2-3 because its parent '/p' narrows to 2-3"]


def test_shrink_that_would_empty_a_descendant_fails_naming_it():
    source = v1({"p": Node(cpus=F({0, 1}), mems=F({0})), "p/c": Node(cpus=F({1}), mems=F({0}))})
    with pytest.raises(PlanError, match=r"'/p/c' holds CPUs 1, none of which its parent '/p' keeps \(0\)"):
        plan(source, [Request("p", cpus=F({0}))])


def test_move_a_populated_cgroup_to_disjoint_cpus_never_empties_it():
    source = v1({"p": Node(cpus=F({0, 1}), mems=F({0})), "p/c": Node(cpus=F({0}), mems=F({0}))},
                tasks={"p/c": [100]})
    result = plan(source, [Request("p", cpus=F({1})), Request("p/c", cpus=F({1}))])
    assert writes(result) == [(WRITE, "p/c", "cpus", "0-1"), (WRITE, "p/c", "cpus", "1"), (WRITE, "p", "cpus", "1")]


def test_child_outside_parent_fails_unless_parent_widened_in_same_call():
    source = v1({"p": Node(cpus=F({0}), mems=F({0}))})
    with pytest.raises(PlanError, match=r"cpus=1 is not within its parent '/p' \(0\).*widen the parent in the same call"):
        plan(source, [Request("p/c", cpus=F({1}))])
    result = plan(source, [Request("p", cpus=F({0, 1})), Request("p/c", cpus=F({1}))])
    assert writes(result)[0] == (WRITE, "p", "cpus", "0-1")


def test_offline_cpus_and_missing_nodes_are_refused():
    with pytest.raises(PlanError, match=r"names CPUs 7 that are offline or absent \(online: 0-3\)"):
        plan(v1(), [Request("a", cpus=F({1, 7}))])
    with pytest.raises(PlanError, match=r"NUMA nodes 1 that do not exist"):
        plan(v1(), [Request("a", mems=F({1}))])


def test_exclusive_siblings_may_not_overlap():
    source = v1({"m": Node(cpus=F({0, 1, 2, 3}), mems=F({0}), cpu_exclusive=True)})
    with pytest.raises(PlanError, match="overlap on 2"):
        plan(source, [Request("m/a", cpus=F({1, 2}), cpu_exclusive=True), Request("m/b", cpus=F({2, 3}))])
    result = plan(source, [Request("m/a", cpus=F({1}), cpu_exclusive=True),
                           Request("m/b", cpus=F({2, 3}), cpu_exclusive=True)])
    flags = [w for w in writes(result) if w[2] == "cpu_exclusive"]
    assert flags == [(WRITE, "m/a", "cpu_exclusive", "1"), (WRITE, "m/b", "cpu_exclusive", "1")]
    assert writes(result).index(flags[0]) > writes(result).index((WRITE, "m/b", "cpus", "2-3"))


def test_exclusive_needs_exclusive_parent():
    source = v1({"m": Node(cpus=F({0, 1}), mems=F({0}))})
    with pytest.raises(PlanError, match="needs its parent '/m' to be cpu_exclusive"):
        plan(source, [Request("m/rt", cpus=F({1}), cpu_exclusive=True)])
    result = plan(source, [Request("m", cpu_exclusive=True), Request("m/rt", cpus=F({1}), cpu_exclusive=True)])
    flags = [w for w in writes(result) if w[2] == "cpu_exclusive"]
    assert flags == [(WRITE, "m", "cpu_exclusive", "1"), (WRITE, "m/rt", "cpu_exclusive", "1")]


def test_flags_the_parent_lacks_are_not_asked_for():
    """v1: a cpuset can only be exclusive if its parent is, so under a parent without a flag the model
    tells the source it need not read it (the root always counts as exclusive)."""
    asked = {}

    class Recording(MemorySource):
        def read_node(self, path, known_false=()):
            asked[path] = tuple(known_false)
            return super().read_node(path, known_false)

    source = Recording(1, F(range(4)), F({0}), {
        "m": Node(cpus=F({0, 1, 2, 3}), mems=F({0}), cpu_exclusive=True),
        "m/rt": Node(cpus=F({1}), mems=F({0}), cpu_exclusive=True),
        "m/rt/g": Node(cpus=F({1}), mems=F({0})),
        "m/rt/g/vcpu0": Node(cpus=F({1}), mems=F({0}))})
    result = plan(source, [Request("m/rt/g/vcpu0", cpus=F({1}))])
    assert result.ops == []
    assert asked == {"": (), "m": (), "m/rt": ("mem_exclusive",), "m/rt/g": ("mem_exclusive",),
                     "m/rt/g/vcpu0": INHERITED_FLAGS_V1}


def test_fs_read_node_leaves_known_false_flags_unread_and_reports_a_missing_cgroup(tmp_path):
    # A fake tree may hold what the kernel never would (a flag under a parent without it): proof
    # that the file is not read when the caller knows better.
    (tmp_path / "a").mkdir()
    for name, value in (("cpuset.cpus", "0-1"), ("cpuset.mems", "0"), ("cpuset.cpu_exclusive", "1"),
                        ("cpuset.mem_exclusive", "1"), ("cpuset.sched_load_balance", "0")):
        (tmp_path / "a" / name).write_text(value + "\n")
    fs = CpusetFs(str(tmp_path), 1)
    assert fs.read_node("a") == Node(cpus=F({0, 1}), mems=F({0}), cpu_exclusive=True, mem_exclusive=True,
                                     sched_load_balance=False)
    assert fs.read_node("a", INHERITED_FLAGS_V1) == Node(cpus=F({0, 1}), mems=F({0}), sched_load_balance=False)
    assert not fs.read_node("b").exists


def test_clearing_exclusive_goes_children_first():
    source = v1({"m": Node(cpus=F({0, 1}), mems=F({0}), cpu_exclusive=True),
                 "m/rt": Node(cpus=F({1}), mems=F({0}), cpu_exclusive=True)})
    result = plan(source, [Request("m", cpu_exclusive=False), Request("m/rt", cpu_exclusive=False)])
    assert writes(result) == [(WRITE, "m/rt", "cpu_exclusive", "0"), (WRITE, "m", "cpu_exclusive", "0")]


def test_tasks_are_attached_after_sets():
    source = v1()
    source.task_threads[4242] = [4242, 4243]
    result = plan(source, [Request("app", cpus=F({1}), procs=(4242,))])
    assert writes(result)[-1] == (ATTACH, "app", "procs", "4242")
    assert writes(result)[:3] == [(MKDIR, "app", "", ""), (WRITE, "app", "cpus", "1"), (WRITE, "app", "mems", "0")]


def test_attach_of_missing_process_fails():
    with pytest.raises(PlanError, match="process 999999 does not exist"):
        plan(v1(), [Request("app", procs=(999999,))])


def test_absent_with_tasks_fails_listing_pids_then_migrates():
    source = v1({"g": Node(cpus=F({1}), mems=F({0})), "g/vcpu0": Node(cpus=F({1}), mems=F({0}))},
                tasks={"g/vcpu0": [11, 12]})
    with pytest.raises(PlanError, match=r"'/g/vcpu0': 11 12.*migrate: true"):
        plan(source, [Request("g", state="absent")])
    result = plan(source, [Request("g", state="absent")], migrate=True)
    assert writes(result) == [(ATTACH, "", "threads", "11"), (ATTACH, "", "threads", "12"),
                              (RMDIR, "g/vcpu0", "", ""), (RMDIR, "g", "", "")]


def test_absent_of_missing_cgroup_is_a_no_op():
    assert plan(v1(), [Request("nothing", state="absent")]).ops == []


def test_conflicting_requests():
    with pytest.raises(PlanError, match="listed twice"):
        plan(v1(), [Request("a", cpus=F({1})), Request("a", cpus=F({2}))])
    with pytest.raises(PlanError, match="requested present but '/a' is requested absent"):
        plan(v1(), [Request("a/b"), Request("a", state="absent")])


def test_partition_on_v1_is_refused():
    with pytest.raises(PlanError, match="partition=isolated needs cgroup v2"):
        plan(v1(), [Request("a", partition="isolated")])


# ---- cgroup v2 ----------------------------------------------------------------------------

def test_v2_enables_cpuset_top_down_and_inherits_when_cpus_omitted():
    result = plan(v2(), [Request("a/b", cpus=F({2}))])
    assert writes(result) == [
        (WRITE, "", "subtree_control", "+cpuset"), (MKDIR, "a", "", ""),
        (WRITE, "a", "subtree_control", "+cpuset"), (MKDIR, "a/b", "", ""), (WRITE, "a/b", "cpus", "2"),
    ]


def test_v2_local_partition_is_written_after_its_cpus():
    source = v2({"": Node(subtree_cpuset=True)})
    result = plan(source, [Request("rt", cpus=F({2, 3}), partition="isolated")])
    assert writes(result) == [(MKDIR, "rt", "", ""), (WRITE, "rt", "cpus", "2-3"),
                              (WRITE, "rt", "partition", "isolated")]


def test_v2_remote_partition_writes_exclusive_top_down():
    source = v2({"": Node(subtree_cpuset=True), "machine": Node(subtree_cpuset=True)})
    result = plan(source, [Request("machine/rt", cpus=F({2, 3}), partition="root")])
    assert writes(result)[-3:] == [(WRITE, "machine", "cpus_exclusive", "2-3"),
                                   (WRITE, "machine/rt", "cpus_exclusive", "2-3"),
                                   (WRITE, "machine/rt", "partition", "root")]


def test_v2_remote_partition_without_kernel_support_names_the_kernel():
    source = v2({"": Node(subtree_cpuset=True), "machine": Node(subtree_cpuset=True)}, exclusive=False)
    source.release = "6.1.0-27-amd64"
    with pytest.raises(PlanError, match=r"needs cpuset.cpus.exclusive \(Linux 6.7 or later\); this kernel \(6.1.0-27"):
        plan(source, [Request("machine/rt", cpus=F({2, 3}), partition="root")])


def test_v2_partition_overlapping_sibling_is_refused_before_writing():
    source = v2({"": Node(subtree_cpuset=True), "other": Node(cpus=F({2}))})
    with pytest.raises(PlanError, match="not exclusive"):
        plan(source, [Request("rt", cpus=F({2, 3}), partition="root")])


def test_v2_partition_taking_every_cpu_of_a_busy_parent_is_refused():
    source = v2({"": Node(subtree_cpuset=True)}, tasks={"": [1]})
    with pytest.raises(PlanError, match="no CPU for its own tasks"):
        plan(source, [Request("rt", cpus=F({0, 1, 2, 3}), partition="root")])


def test_v2_dissolving_a_partition_goes_children_first():
    source = v2({"": Node(subtree_cpuset=True),
                 "a": Node(cpus=F({2, 3}), partition="root", subtree_cpuset=True),
                 "a/b": Node(cpus=F({3}), partition="root")})
    result = plan(source, [Request("a", partition="member"), Request("a/b", partition="member")])
    assert writes(result) == [(WRITE, "a/b", "partition", "member"), (WRITE, "a", "partition", "member")]


def test_v2_no_process_in_a_cgroup_whose_children_hold_processes():
    # cgroup_migrate_vet_dst: with cpuset (a threaded controller) enabled below it, "a" could still take a process
    # as a thread root, but not while a child subtree is populated.
    source = v2({"": Node(subtree_cpuset=True), "a": Node(cpus=F({1}), subtree_cpuset=True), "a/b": Node()},
                tasks={"a/b": [41], "": [42]})
    with pytest.raises(PlanError, match=r"child '/a/b' holds processes.*no internal process rule"):
        plan(source, [Request("a", procs=(42,))])
    assert writes(plan(source, [Request("a/c", procs=(42,))]))[-1] == (ATTACH, "a/c", "procs", "42")


def test_v2_no_process_where_a_domain_controller_is_handed_down():
    source = v2({"": Node(subtree_cpuset=True), "a": Node(cpus=F({1}), subtree_domain=True)}, tasks={"": [42]})
    with pytest.raises(PlanError, match=r"enables domain controllers.*no internal process rule"):
        plan(source, [Request("a", procs=(42,))])


def test_v2_a_cgroup_with_processes_and_domain_controllers_does_not_enable_cpuset_for_children():
    source = v2({"": Node(subtree_cpuset=True), "a": Node(subtree_domain=True)}, tasks={"a": [41]})
    with pytest.raises(PlanError, match=r"holds processes 41 of its own and enables domain controllers.*leaf first"):
        plan(source, [Request("a/b", cpus=F({2}))])


def test_v2_a_cgroup_with_processes_and_a_populated_child_does_not_enable_cpuset_for_children():
    source = v2({"": Node(subtree_cpuset=True), "a": Node(), "a/c": Node()}, tasks={"a": [41], "a/c": [42]})
    with pytest.raises(PlanError, match=r"holds processes 41 of its own and its child '/a/c' holds processes"):
        plan(source, [Request("a/b", cpus=F({2}))])


def test_v2_cpuset_alone_may_be_enabled_beside_a_cgroups_own_processes():
    # cpuset is a threaded controller: the kernel (6.1 and 6.12) takes +cpuset there while the cgroup could
    # still become a thread root (the v2 differential test found the model refusing it).
    source = v2({"": Node(subtree_cpuset=True), "a": Node()}, tasks={"a": [41]})
    result = plan(source, [Request("a/b", cpus=F({2}))])
    assert any(op.knob == "subtree_control" and op.path == "a" for op in result.ops)


def test_v2_single_threads_do_not_cross_domain_cgroups():
    source = v2({"": Node(subtree_cpuset=True), "a": Node(), "b": Node()}, tasks={"a": [41]})
    with pytest.raises(PlanError, match=r"separate domain cgroups: move the whole process"):
        plan(source, [Request("b", threads=(41,))])


def test_v1_knobs_on_v2_are_refused():
    with pytest.raises(PlanError, match="sched_load_balance is a cgroup v1 knob"):
        plan(v2(), [Request("a", sched_load_balance=False)])


def test_model_refuses_attach_to_empty_cpuset_like_the_kernel():
    model = CpusetModel(v1({"a": Node()}))
    with pytest.raises(KernelRuleError) as caught:
        model.apply(Op(ATTACH, "a", "threads", "1"))
    assert "ENOSPC" in caught.value.message and "cpuset.cpus is empty" in caught.value.message


# ---- properties ---------------------------------------------------------------------------

@st.composite
def v1_trees(draw):
    """A valid v1 tree (every child within its parent, populated cgroups non-empty) of up to 7 cgroups."""
    ncpu = draw(st.integers(min_value=2, max_value=5))
    online = F(range(ncpu))
    mems = F(range(draw(st.integers(min_value=1, max_value=2))))
    nodes, tasks = {}, {}
    paths = []
    next_task = [1000]
    for index in range(draw(st.integers(min_value=0, max_value=7))):
        parent = draw(st.sampled_from([""] + paths))
        path = "%s/n%d" % (parent, index) if parent else "n%d" % index
        parent_cpus = nodes[parent].cpus if parent else online
        parent_mems = nodes[parent].mems if parent else mems
        cpus = F(draw(st.sets(st.sampled_from(sorted(parent_cpus)))) if parent_cpus else set())
        node_mems = F(draw(st.sets(st.sampled_from(sorted(parent_mems)))) if parent_mems else set())
        nodes[path] = Node(cpus=cpus, mems=node_mems)
        if cpus and node_mems and draw(st.booleans()):
            tasks[path] = [next_task[0]]
            next_task[0] += 1
        paths.append(path)
    return MemorySource(1, online, mems, nodes, tasks)


@st.composite
def goal_for(draw, source):
    """A reachable goal: every existing cgroup plus a few new ones, each within its parent's goal."""
    existing = sorted(source.nodes, key=lambda p: (p.count("/"), p))
    new = []
    for index in range(draw(st.integers(min_value=0, max_value=3))):
        parent = draw(st.sampled_from([""] + existing + new))
        new.append("%s/new%d" % (parent, index) if parent else "new%d" % index)
    goal = {}
    for path in sorted(existing + new, key=lambda p: (p.count("/"), p)):
        parent = path.rsplit("/", 1)[0] if "/" in path else ""
        parent_cpus = goal[parent][0] if parent else source.online
        parent_mems = goal[parent][1] if parent else source.mems
        populated = bool(source.tasks_by_path.get(path)) or any(
            source.tasks_by_path.get(p) for p in source.nodes if p.startswith(path + "/"))
        minimum = 1 if populated else 0
        cpus = F(draw(st.sets(st.sampled_from(sorted(parent_cpus)), min_size=minimum))) if parent_cpus else F()
        mems = F(draw(st.sets(st.sampled_from(sorted(parent_mems)), min_size=minimum))) if parent_mems else F()
        if populated and (not cpus or not mems):
            assume(False)
        goal[path] = (cpus, mems)
    return goal


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_every_reachable_goal_is_planned_and_reached(data):
    """For random trees and random reachable goals the planner finds an order the kernel accepts,
    reaches exactly the goal, and a second plan is empty."""
    source = data.draw(v1_trees())
    goal = data.draw(goal_for(source))
    requests = [Request(path, cpus=cpus, mems=mems) for path, (cpus, mems) in goal.items()]
    result = plan(source, requests)
    final = run_on_model(source, result.ops)          # raises KernelRuleError if any op is refused
    for path, (cpus, mems) in goal.items():
        assert final.nodes[path].cpus == cpus, (path, format_cpulist(final.nodes[path].cpus))
        assert final.nodes[path].mems == mems
    assert plan(final, requests).ops == []


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_requests_either_fail_cleanly_or_apply(data):
    """Arbitrary requests (partly unreachable): PlanError before any write, or a plan the model accepts
    that leaves every requested value in place."""
    source = data.draw(v1_trees())
    candidates = sorted(source.nodes) + ["x", "x/y"]
    chosen = data.draw(st.lists(st.sampled_from(candidates), unique=True, max_size=4))
    requests = []
    for path in chosen:
        cpus = data.draw(st.one_of(st.none(), st.frozensets(st.sampled_from(sorted(source.online)))))
        mems = data.draw(st.one_of(st.none(), st.frozensets(st.sampled_from(sorted(source.mems)))))
        exclusive = data.draw(st.sampled_from([None, True, False]))
        absent = data.draw(st.integers(0, 5)) == 0
        requests.append(Request(path, state="absent" if absent else "present", cpus=cpus, mems=mems,
                                cpu_exclusive=exclusive))
    try:
        result = plan(source, requests, migrate=True)
    except PlanError:
        return
    final = run_on_model(source, result.ops)
    for request in requests:
        if request.state == "absent":
            assert request.path not in final.nodes
            continue
        node = final.nodes[request.path]
        if request.cpus is not None:
            assert node.cpus == request.cpus
        if request.mems is not None:
            assert node.mems == request.mems
        if request.cpu_exclusive is not None:
            assert node.cpu_exclusive == request.cpu_exclusive
    assert plan(final, requests, migrate=True).ops == []


# ---- cgroup v2: what partitions take out of their parent's effective CPUs --------------------

def test_v2_model_partition_takes_its_cpus_out_of_the_parent():
    """As the kernel reads back: root effective 0-1 and a member sibling inherits 0-1 (seen on 6.1/6.12)."""
    model = CpusetModel(v2({"": Node(subtree_cpuset=True), "rt": Node(cpus=F({2, 3}), partition="isolated"),
                            "other": Node(), "other/deep": Node(cpus=F({1, 2}))}))
    assert model.effective_cpus("") == F({0, 1})
    assert model.effective_cpus("rt") == F({2, 3})
    assert model.effective_cpus("other") == F({0, 1})
    assert model.effective_cpus("other/deep") == F({1})
    # Without the partition (counted as a member) the root has everything again.
    assert model.effective_cpus("", excluding="rt") == F(range(4))


def test_v2_model_invalid_partition_takes_nothing():
    model = CpusetModel(v2({"": Node(subtree_cpuset=True),
                            "rt": Node(cpus=F({2, 3}), partition="isolated invalid (Cpu list in cpuset.cpus not exclusive)")}))
    assert model.effective_cpus("") == F(range(4))
    assert model.effective_cpus("rt") == F({2, 3})


def test_v2_model_remote_partition_leaves_every_member_above_it():
    """6.12, seen on the test host: a remote partition on CPU 1 under a member leaves that member with 0."""
    model = CpusetModel(v2({"": Node(subtree_cpuset=True), "iso": Node(cpus=F({2, 3}), partition="isolated"),
                            "m": Node(cpus_exclusive=F({1}), subtree_cpuset=True),
                            "m/r": Node(cpus=F({1}), cpus_exclusive=F({1}), partition="isolated")}))
    assert model.effective_cpus("") == F({0})
    assert model.effective_cpus("m") == F({0})
    assert model.effective_cpus("m/r") == F({1})


def test_v2_nested_partition_takes_from_its_partition_parent_only():
    model = CpusetModel(v2({"": Node(subtree_cpuset=True),
                            "a": Node(cpus=F({1, 2, 3}), partition="root", subtree_cpuset=True),
                            "a/b": Node(cpus=F({3}), partition="isolated")}))
    assert model.effective_cpus("") == F({0})
    assert model.effective_cpus("a") == F({1, 2})
    assert model.effective_cpus("a/b") == F({3})


def test_v2_partition_taking_the_last_cpus_beside_a_sibling_partition_is_refused():
    """Root 0-3 with rt on 2-3: a second partition on 0-1 would leave the root's tasks no CPU. Before
    the fix the model compared with all online CPUs and let the kernel mark it invalid."""
    source = v2({"": Node(subtree_cpuset=True), "rt": Node(cpus=F({2, 3}), partition="isolated")})
    with pytest.raises(PlanError, match=r"Parent unable to distribute cpu downstream: the parent \(the root cgroup\) "
                                        r"would be left with no CPU for its own tasks \(its effective CPUs 0-1"):
        plan(source, [Request("rt2", cpus=F({0, 1}), partition="root")])
    # One CPU less is fine: the root keeps CPU 0.
    result = plan(source, [Request("rt2", cpus=F({1}), partition="root")])
    assert writes(result)[-1] == (WRITE, "rt2", "partition", "root")
    assert CpusetModel(run_on_model(source, result.ops)).effective_cpus("") == F({0})


def test_v2_partition_overlapping_a_sibling_inside_a_partition_is_refused():
    source = v2({"": Node(subtree_cpuset=True),
                 "a": Node(cpus=F({2, 3}), partition="root", subtree_cpuset=True),
                 "a/b": Node(cpus=F({2, 3}), partition="root")})
    with pytest.raises(PlanError, match="CPUs 3 belong to the sibling partition|not exclusive"):
        plan(source, [Request("a/c", cpus=F({3}), partition="root")])


def test_v2_partition_over_a_populated_member_sibling_keeps_it_a_cpu():
    """partition_is_populated: a member child with tasks counts as the parent's own tasks."""
    source = v2({"": Node(subtree_cpuset=True), "p": Node(cpus=F({2, 3}), partition="root", subtree_cpuset=True),
                 "p/m": Node()}, tasks={"p/m": [42]})
    with pytest.raises(PlanError, match="Parent unable to distribute cpu downstream"):
        plan(source, [Request("p/rt", cpus=F({2, 3}), partition="isolated")])
    source.tasks_by_path = {}
    assert writes(plan(source, [Request("p/rt", cpus=F({2, 3}), partition="isolated")]))[-1] == \
        (WRITE, "p/rt", "partition", "isolated")


def _check_exclusive_reference(model, targets, removed):
    """The exclusive-sibling check as it was before it grouped siblings by parent (every target
    against every sibling): the grouped one must raise the same first error, or none."""
    planned = {}
    for path in targets:
        if path:
            planned.setdefault(parent_of(path), []).append(path)
    for path, target in targets.items():
        if not path:
            continue
        parent = targets.get(parent_of(path)) or model.node(parent_of(path))
        for key, set_key in (("cpu_exclusive", "cpus"), ("mem_exclusive", "mems")):
            if getattr(target, key) and not getattr(parent, key):
                return "parent", path, key
            for sibling in sorted(set(model.siblings(path)) | set(planned.get(parent_of(path), ()))):
                if sibling in removed or sibling == path:
                    continue
                other = targets.get(sibling) or model.node(sibling)
                if not other.exists:
                    continue
                if getattr(target, set_key) & getattr(other, set_key) and (getattr(target, key) or getattr(other, key)):
                    return "overlap", path, sibling
    return None


@st.composite
def exclusive_trees_and_targets(draw):
    """A v1 tree the kernel could hold (flags only below flagged parents, flagged siblings disjoint) and
    a random final state for some of its cgroups and a few new ones (anything, valid or not)."""
    online, mems = F(range(4)), F(range(2))
    nodes, paths = {}, []
    for index in range(draw(st.integers(min_value=0, max_value=8))):
        parent = draw(st.sampled_from([""] + paths))
        path = "%s/n%d" % (parent, index) if parent else "n%d" % index
        above = nodes[parent] if parent else Node(cpus=online, mems=mems, cpu_exclusive=True, mem_exclusive=True)
        cpus = F(draw(st.sets(st.sampled_from(sorted(above.cpus))))) if above.cpus else F()
        node_mems = F(draw(st.sets(st.sampled_from(sorted(above.mems))))) if above.mems else F()
        flags = {}
        for key, set_key, value in (("cpu_exclusive", "cpus", cpus), ("mem_exclusive", "mems", node_mems)):
            siblings = [nodes[p] for p in paths if parent_of(p) == parent]
            flags[key] = getattr(above, key) and draw(st.booleans()) and not any(
                getattr(other, set_key) & value for other in siblings)
        nodes[path] = Node(cpus=cpus, mems=node_mems, **flags)
        paths.append(path)
    source = MemorySource(1, online, mems, nodes)
    chosen = draw(st.lists(st.sampled_from(paths + ["n0", "x", "x/y", "n1/z"]), unique=True, max_size=6))
    targets = {"": Node(cpus=online, mems=mems, cpu_exclusive=True, mem_exclusive=True)}
    for path in sorted(chosen, key=lambda p: (p.count("/"), p)):
        targets[path] = Node(cpus=F(draw(st.sets(st.sampled_from(sorted(online))))),
                             mems=F(draw(st.sets(st.sampled_from(sorted(mems))))),
                             cpu_exclusive=draw(st.booleans()), mem_exclusive=draw(st.booleans()))
    removed = set(draw(st.lists(st.sampled_from(paths), unique=True, max_size=2))) if paths else set()
    return source, targets, removed - set(targets)


@settings(max_examples=400, deadline=None)
@given(exclusive_trees_and_targets())
def test_exclusive_check_raises_what_checking_every_pair_raises(case):
    source, targets, removed = case
    expected = _check_exclusive_reference(CpusetModel(source), targets, removed)
    try:
        _check_exclusive_v1(CpusetModel(source), targets, removed)
    except PlanError as exc:
        message = str(exc)
        assert expected is not None, message
        if expected[0] == "parent":
            assert message.startswith("cgroup '/%s': %s=true needs its parent" % (expected[1], expected[2])), message
        else:
            assert message.startswith("cgroups '/%s' (" % expected[1]) and "and '/%s' (" % expected[2] in message, \
                message
    else:
        assert expected is None


# validate_change's sibling rule on 6.7+ (found by tests/v2host/test_engine_vs_kernel_v2.py, then written by hand
# on the 6.12 test host): exclusive CPUs may overlap a plain sibling's cpuset.cpus, only not swallow them whole.
@pytest.mark.parametrize("sibling, value, refused", [
    (Node(cpus=F({0, 2, 3})), "1-2", None),
    (Node(cpus=F({2})), "1-2", "the sibling '/b' has cpuset.cpus 2, all of them within these exclusive CPUs"),
    (Node(cpus=F({0, 3}), cpus_exclusive=F({2, 3})), "1-2", "CPUs 2 are exclusive to the sibling '/b' as well"),
    (Node(cpus=F({2, 3}), partition="isolated"), "1-2", "CPUs 2 belong to the sibling partition '/b'"),
])
def test_v2_model_exclusive_cpus_against_a_sibling(sibling, value, refused):
    model = CpusetModel(v2({"": Node(subtree_cpuset=True), "a": Node(cpus=F({0})), "b": sibling}))
    if refused is None:
        model.apply(Op(WRITE, "a", "cpus_exclusive", value))
        assert model.node("a").cpus_exclusive == F({1, 2})
    else:
        with pytest.raises(KernelRuleError) as caught:
            model.apply(Op(WRITE, "a", "cpus_exclusive", value))
        assert refused in caught.value.message and "EINVAL" in caught.value.message


def test_v2_model_cpus_may_lie_wholly_in_a_siblings_exclusive_cpus_on_6_12():
    model = CpusetModel(v2({"": Node(subtree_cpuset=True), "a": Node(), "b": Node(cpus_exclusive=F({2, 3}))}))
    model.apply(Op(WRITE, "a", "cpus", "2-3"))
    assert model.node("a").cpus == F({2, 3})


def test_v2_model_a_populated_cpusets_lists_cannot_be_emptied():
    model = CpusetModel(v2({"": Node(subtree_cpuset=True), "a": Node(cpus=F({1}), mems=F({0}))}, tasks={"a": [41]}))
    for knob in ("cpus", "mems"):
        with pytest.raises(KernelRuleError, match=r"cpuset.%s cannot be emptied once set" % knob):
            model.apply(Op(WRITE, "a", knob, ""))


def test_v2_model_remote_partition_needs_its_cpus_passed_down():
    """6.12 (the v2 differential test): a partition under a member is valid only where every cgroup between it and
    a partition above lists its CPUs in cpuset.cpus.exclusive."""
    nodes = {"": Node(subtree_cpuset=True), "m": Node(cpus=F(range(4)), subtree_cpuset=True),
             "m/r": Node(cpus=F({2}), cpus_exclusive=F({2}))}
    assert "not passed down by '/m'" in CpusetModel(v2(nodes)).predict_partition("m/r", "isolated")
    nodes["m"] = Node(cpus=F(range(4)), cpus_exclusive=F({2, 3}), subtree_cpuset=True)
    assert CpusetModel(v2(nodes)).predict_partition("m/r", "isolated") is None


def test_v2_model_below_a_thread_root_is_an_invalid_domain():
    """6.12 and 6.1 (the v2 differential test): a cgroup with processes of its own that enables cpuset becomes a
    thread root; its children can take neither controllers nor processes (EOPNOTSUPP)."""
    model = CpusetModel(v2({"": Node(subtree_cpuset=True), "a": Node(subtree_cpuset=True), "a/y": Node()},
                           tasks={"a": [41]}))
    for op in (Op(WRITE, "a/y", "subtree_control", "+cpuset"), Op(ATTACH, "a/y", "procs", "42")):
        with pytest.raises(KernelRuleError) as caught:
            model.apply(op)
        assert "ENOTSUP" in caught.value.message and "thread root" in caught.value.message
    model.apply(Op(WRITE, "a/y", "cpus", "1"))      # cpuset's own files stay writable there
