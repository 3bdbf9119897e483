"""safeopen's path walk and checks on hand-made trees (the attacks by a
second user are in tests/e2e/test_safe_outputs_e2e.py)."""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time

import pytest

from procnetmon import safeopen
from procnetmon.invoker import Credentials
from procnetmon.output import writer as writer_mod

ME = frozenset({0, os.geteuid()})


def test_dot_dot_after_a_link_is_taken_where_the_link_leads(tmp_path):
    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "link").symlink_to(tmp_path / "real" / "sub")
    directory, name = safeopen.resolve_parent(str(tmp_path / "elsewhere" / "link" / ".." / "x.csv"), ME)
    assert (directory, name) == (str(tmp_path / "real"), "x.csv")


def test_a_trusted_link_is_followed_and_its_target_checked(tmp_path):
    (tmp_path / "open").mkdir()
    os.chmod(tmp_path / "open", 0o777)
    (tmp_path / "link").symlink_to(tmp_path / "open")
    with pytest.raises(safeopen.UnsafePath) as e:
        safeopen.open_append(str(tmp_path / "link" / "x.csv"))
    assert e.value.strerror == f"refused: {tmp_path}/open is writable by group or others (mode 0777)"
    assert isinstance(e.value, PermissionError) and e.value.errno == errno.EACCES


def test_a_sticky_directory_is_fine(tmp_path):
    (tmp_path / "tmp").mkdir()
    os.chmod(tmp_path / "tmp", 0o1777)
    os.close(safeopen.open_append(str(tmp_path / "tmp" / "x.csv")))


def test_a_file_with_a_second_hard_link_is_refused(tmp_path):
    (tmp_path / "x.csv").write_text("")
    os.link(tmp_path / "x.csv", tmp_path / "other")
    with pytest.raises(safeopen.UnsafePath, match="has 2 hard links"):
        safeopen.open_append(str(tmp_path / "x.csv"))


@pytest.mark.parametrize("name", ["dir/", "dir/.", "dir/.."])
def test_a_directory_is_not_an_output(tmp_path, name):
    (tmp_path / "dir").mkdir()
    with pytest.raises(IsADirectoryError):
        safeopen.open_append(str(tmp_path / name))


def test_a_new_file_is_created_exclusively_with_the_mode_asked(tmp_path):
    old = os.umask(0)
    try:
        os.close(safeopen.open_append(str(tmp_path / "x.csv"), 0o600))
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "x.csv").st_mode & 0o777 == 0o600


def test_replace_leaves_no_temporary_and_a_new_file_is_0644(tmp_path):
    safeopen.replace_file(str(tmp_path / "x.prom"), b"a 1\n")
    safeopen.replace_file(str(tmp_path / "x.prom"), b"a 2\n")
    assert os.listdir(tmp_path) == ["x.prom"]
    assert (tmp_path / "x.prom").read_bytes() == b"a 2\n"
    assert os.stat(tmp_path / "x.prom").st_mode & 0o777 == 0o644


def test_replace_refuses_a_link_at_the_name(tmp_path):
    (tmp_path / "victim").write_text("kept\n")
    (tmp_path / "x.prom").symlink_to(tmp_path / "victim")
    with pytest.raises(safeopen.UnsafePath, match="is a symbolic link"):
        safeopen.replace_file(str(tmp_path / "x.prom"), b"a 1\n")
    assert (tmp_path / "victim").read_text() == "kept\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another user needs root")
def test_the_childs_refusal_and_errors_come_back(tmp_path):
    nobody = Credentials(65534, 65534, (65534,))
    os.chmod(tmp_path, 0o755)
    with pytest.raises(PermissionError) as e:
        safeopen.as_user(nobody, lambda: os.open(str(tmp_path / "x"), os.O_CREAT | os.O_WRONLY, 0o600))
    assert e.value.errno == errno.EACCES and e.value.filename == str(tmp_path / "x")
    with pytest.raises(safeopen.UnsafePath, match="refused: why"):
        safeopen.as_user(nobody, lambda: (_ for _ in ()).throw(safeopen.UnsafePath("why", "p")))
    fd = safeopen.as_user(nobody, lambda: os.open("/dev/null", os.O_WRONLY))
    assert os.path.samestat(os.fstat(fd), os.stat("/dev/null"))
    os.close(fd)


def test_a_stopping_run_does_not_wait_for_the_lock(tmp_path):
    path = tmp_path / "net.csv"
    path.write_text("")
    holder = open(path)
    fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
    stop = threading.Event()
    fd = os.open(path, os.O_WRONLY)
    try:
        threading.Timer(0.05, stop.set).start()
        started = time.monotonic()
        with writer_mod._FileLock(fd, stop) as lock:
            assert lock.fd is None  # written unlocked
        assert time.monotonic() - started < writer_mod.LOCK_WAIT_S / 2
    finally:
        os.close(fd)
        holder.close()
