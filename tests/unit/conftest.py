"""Unit tests never touch the host: every run of libvirt_partition's code records its partitions in a file of the
test's own (the real record, /etc/libvirt/hooks/rtvirt-kvm-partitions.json, is what host_prep's qemu hook reads)."""
import pytest

from ansible_collections.rtvirt.kvm.plugins.module_utils._partition_host import Host


@pytest.fixture(autouse=True)
def partition_record(tmp_path, monkeypatch):
    path = tmp_path / "partition-record.json"
    monkeypatch.setattr(Host, "partition_record", str(path))
    return path
