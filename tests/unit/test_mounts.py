"""procnetmon.kernel.mounts: a tracefs that is mounted but unreadable (a user
with CAP_BPF and CAP_PERFMON but not CAP_DAC_READ_SEARCH, as a daemon's unit
might grant) is named as such, not as "not mounted"."""

import pytest

from procnetmon.kernel import mounts


def test_mounted_but_unreadable_reads_the_mount_table(tmp_path):
    table = tmp_path / "mounts"
    table.write_text("sysfs /sys sysfs rw 0 0\ntracefs /sys/kernel/tracing tracefs rw 0 0\n")
    assert mounts.mounted_but_unreadable(mounts.TRACEFS_INTERFACE, str(table))
    table.write_text("sysfs /sys sysfs rw 0 0\ntracefs /elsewhere tracefs rw 0 0\n")
    assert not mounts.mounted_but_unreadable(mounts.TRACEFS_INTERFACE, str(table))
    assert not mounts.mounted_but_unreadable(mounts.TRACEFS_INTERFACE, str(tmp_path / "absent"))


def test_prepare_names_the_capability_instead_of_mounting_again(monkeypatch):
    monkeypatch.setattr(mounts, "missing", lambda: [mounts.TRACEFS_INTERFACE])
    monkeypatch.setattr(mounts, "mounted_but_unreadable", lambda interface: True)
    monkeypatch.setattr(mounts, "_mount", lambda interface: pytest.fail("mounted again"))
    with pytest.raises(mounts.MountError, match="only root may read it: run as root, or with CAP_DAC_READ_SEARCH"):
        mounts.prepare()
