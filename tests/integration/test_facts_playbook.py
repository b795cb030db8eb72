"""playbooks/facts.yml (rtvirt.kvm.facts) on this machine: the report and the CPU map, through realtime_vm's
cpu_map entry point, which runs without the role's plan call."""
import pytest

from tests.support.ansible_runner import REPO
from tests.support.playbook_runner import run_playbook

pytestmark = pytest.mark.real


def test_facts_playbook_reports_and_writes_the_cpu_map(tmp_path):
    page = tmp_path / "map" / "cpu-map.html"
    run = run_playbook(tmp_path, [{"import_playbook": str(REPO / "playbooks" / "facts.yml"),
                                   "vars": {"realtime_vm_cpu_map_path": str(page)}}],
                       inventory=REPO / "inventories" / "localhost")
    assert run["rc"] == 0 and run["failed"] == 0, run["out"][-4000:]
    assert "isolated_cpus" in run["out"] and "CPU map of localhost" in run["out"], run["out"][-4000:]
    text = page.read_text()
    assert "CPU map of localhost" in text and "</html>" in text
