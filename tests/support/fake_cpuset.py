"""An in-memory cpuset hierarchy for planner tests, and a kernel stand-in built on the rules model.

``MemorySource`` offers the same reading interface as ``CpusetFs``.  ``run_on_model`` applies a plan's
operations to :class:`CpusetModel` (the kernel's rules) and returns the resulting tree as a new
``MemorySource``, so a test can re-plan against the outcome (idempotence) or compare it with the
request.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ansible_collections.rtvirt.kvm.plugins.module_utils._cpuset_model import ABSENT, CpusetModel, Node, parent_of


@dataclass
class MemorySource:
    version: int
    online: frozenset
    mems: frozenset
    nodes: dict = field(default_factory=dict)        # path -> Node (root "" included or not)
    tasks_by_path: dict = field(default_factory=dict)
    features: dict = field(default_factory=dict)
    task_threads: dict = field(default_factory=dict)  # pid -> [tids]
    release: str = "6.12.0-test"

    def online_cpus(self):
        return self.online

    def memory_nodes(self):
        return self.mems

    def exists(self, path):
        return path == "" or path in self.nodes

    def children(self, path):
        return sorted(p.rsplit("/", 1)[-1] for p in self.nodes if p and parent_of(p) == path)

    def read_node(self, path, known_false=()):
        # Everything is in memory: the flags in known_false are handed over as held, unread or not.
        return self.nodes.get(path, Node() if self.exists(path) else ABSENT)

    def tasks(self, path):
        return list(self.tasks_by_path.get(path, []))

    def clone_children(self, path):
        return False

    def has_feature(self, name):
        return self.features.get(name, False)

    def threads_of(self, pid):
        if pid in self.task_threads:
            return list(self.task_threads[pid])
        return [pid] if any(pid in t for t in self.tasks_by_path.values()) else []

    def cgroup_of(self, task):
        for path, tasks in self.tasks_by_path.items():
            if task in tasks:
                return path
        return ""

    def kernel_release(self):
        return self.release


def run_on_model(source, ops):
    """Apply ``ops`` with the kernel's rules; return the resulting tree as a new MemorySource."""
    model = CpusetModel(source)
    for op in ops:
        model.apply(op)
    nodes = {}
    tasks = {}
    stack = [""]
    while stack:
        path = stack.pop()
        for child in model.children(path):
            child_path = "%s/%s" % (path, child) if path else child
            nodes[child_path] = model.node(child_path)
            tasks[child_path] = list(model.tasks(child_path))
            stack.append(child_path)
    root_tasks = model.tasks("")
    if root_tasks:
        tasks[""] = list(root_tasks)
    root = model.node("")
    if source.version == 2:
        nodes[""] = Node(subtree_cpuset=root.subtree_cpuset)
    return MemorySource(source.version, source.online, source.mems, nodes, tasks, dict(source.features),
                        dict(source.task_threads), source.release)
