"""Attacks on root's outputs and cache: a planted symlink, a held lock, a
hostile cached offset."""

import fcntl
import json
import os
import stat
import time

import pytest

from procnetmon.kernel import layout
from procnetmon.output import writer as writer_mod
from procnetmon.output.writer import Writer


def test_output_symlink_is_not_followed(tmp_path):
    victim = tmp_path / "root-only"
    victim.write_text("secret\n")
    link = tmp_path / "net.csv"
    link.symlink_to(victim)
    with pytest.raises(OSError):
        Writer("csv", str(link))
    assert victim.read_text() == "secret\n"


def test_new_output_is_private_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        Writer("csv", str(tmp_path / "net.csv")).close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "net.csv").st_mode) == 0o600


def test_held_lock_does_not_stall_the_writer(tmp_path):
    path = tmp_path / "net.csv"
    path.write_text("")
    holder = open(path)
    fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
    try:
        fd = os.open(path, os.O_WRONLY)
        start = time.monotonic()
        with writer_mod._FileLock(fd):
            pass
        assert time.monotonic() - start < writer_mod.LOCK_WAIT_S + 1
        os.close(fd)
    finally:
        holder.close()


def test_cached_offset_that_is_not_an_integer_is_rederived(tmp_path, monkeypatch):
    hostile = {name: 1 for name in layout.FIELDS}
    first = next(iter(layout.FIELDS))
    hostile[first] = "1); bpf_send_signal(9); (1"
    (tmp_path / layout.CACHE_FILE).write_text(json.dumps(hostile))
    monkeypatch.setattr(layout, "offsets_from_btf", lambda btf: {n: 8 for n in layout.FIELDS})
    monkeypatch.setattr(layout.BTF, "from_file", staticmethod(lambda p: None))
    offsets = layout.kernel_offsets(cache_dir=str(tmp_path))
    assert all(type(v) is int for v in offsets.values())
    assert not any("bpf_send_signal" in f for f in layout.offset_cflags(offsets))


def test_offset_cflags_refuses_text():
    with pytest.raises(ValueError):
        layout.offset_cflags({"X": "1); evil(); (1"})
