"""The kernel cache's trust check and the values read back from it (issue 20, item 5)."""

from __future__ import annotations

import os

import pytest

from procnetmon.kernel import cache, cgroup_layout


def test_a_symlink_above_the_cache_is_judged_by_where_it_is_and_where_it_leads(tmp_path):
    # /var/cache -> /data/cache, as a machine with a larger disk has it.
    data = tmp_path / "data"
    (data / "cache").mkdir(parents=True)
    var = tmp_path / "var"
    var.mkdir()
    (var / "cache").symlink_to(data / "cache")
    cache.check_trusted(str(var / "cache" / "procnetmon"))  # was refused: the link's own mode is 0777

    os.chmod(data / "cache", 0o777)  # where it leads, anyone may write
    with pytest.raises(cache.UntrustedCache, match="writable by group or others"):
        cache.check_trusted(str(var / "cache" / "procnetmon"))


def test_the_cache_itself_may_not_be_a_symlink(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "cache").symlink_to(tmp_path / "real")
    with pytest.raises(cache.UntrustedCache, match="symbolic link"):
        cache.check_trusted(str(tmp_path / "cache"))


@pytest.mark.parametrize("value", ["16); bpf_send_signal(9", 1.5, -1, True, None, 1 << 30, [8]])
def test_offsets_other_than_small_ints_are_re_derived(value):
    good = {name: 8 for name in cgroup_layout.FIELDS}
    assert cache.valid_offsets(good, cgroup_layout.FIELDS)
    bad = dict(good, KERNFS_NODE_ID=value)
    assert not cache.valid_offsets(bad, cgroup_layout.FIELDS)
    assert not cache.valid_offsets(dict(good, EXTRA=8), cgroup_layout.FIELDS)


def test_a_planted_cgroup_offset_never_reaches_the_compile(tmp_path, monkeypatch):
    import json

    planted = {name: 8 for name in cgroup_layout.FIELDS}
    planted["KERNFS_NODE_ID"] = "8 + (bpf_send_signal(9), 0)"
    (tmp_path / cgroup_layout.CACHE_FILE).write_text(json.dumps(planted))
    monkeypatch.setattr(cgroup_layout, "offsets_from_btf", lambda *a: {name: 16 for name in cgroup_layout.FIELDS})
    monkeypatch.setattr(cgroup_layout.BTF, "from_file", staticmethod(lambda path: None))
    assert cgroup_layout.cgroup_offsets(cache_dir=str(tmp_path)) == {name: 16 for name in cgroup_layout.FIELDS}
