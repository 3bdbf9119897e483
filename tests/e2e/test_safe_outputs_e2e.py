"""Attacks on what a root run writes, played by a second user (issue 20
items 2, 3, 4, 9): nobody owns a directory on the path, plants a symbolic
link or a file, watches the textfile's directory, holds the output's lock,
or is the user behind a simulated sudo (SUDO_UID set in a root run's
environment, as sudo sets it). Root's run must refuse, or be confined to
what nobody could do alone."""

from __future__ import annotations

import grp
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest
from harness import procnetmon_cmd, wait_for

from procnetmon.status import is_ready

pytestmark = pytest.mark.root

NOBODY = 65534
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
SYSTEM_PYTHON = "/usr/bin/python3"  # nobody may not reach the venv's, nor a PATH's under /root
SUDO_ENV = {"SUDO_UID": str(NOBODY), "SUDO_GID": str(NOBODY), "SUDO_USER": "nobody"}


def env(sudo: bool = False) -> dict:
    result = {k: v for k, v in os.environ.items() if not k.startswith("SUDO_")}
    if sudo:
        result.update(SUDO_ENV)
    return result


def pnm(*args: str, sudo: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(procnetmon_cmd("-q", *args), env=env(sudo), capture_output=True, text=True,
                          timeout=timeout)


def as_nobody(*argv: str) -> None:
    subprocess.run(AS_NOBODY + list(argv), check=True)


def refused(done: subprocess.CompletedProcess, *words: str) -> None:
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    for word in words:
        assert word in done.stderr, done.stderr


@pytest.fixture
def shared():
    """A root-owned directory under /tmp that nobody can traverse, with a
    root-only directory (the victim's), one of nobody's, and a sticky
    world-writable one (as /tmp)."""
    top = tempfile.mkdtemp(prefix="pnm-out-")
    os.chmod(top, 0o755)
    for name, mode, owner in (("root-only", 0o700, 0), ("nobodys", 0o755, NOBODY), ("sticky", 0o1777, 0)):
        path = os.path.join(top, name)
        os.mkdir(path)
        os.chown(path, owner, owner)
        os.chmod(path, mode)
    yield top
    shutil.rmtree(top, ignore_errors=True)


# -- the path: nobody's directories, links and files -----------------------------


def test_a_directory_of_another_user_on_the_path_is_refused(shared):
    # nobody's own directory holds a link into root's: O_NOFOLLOW on the
    # last component alone would create root's file where nobody pointed.
    as_nobody("ln", "-s", os.path.join(shared, "root-only"), os.path.join(shared, "nobodys", "logs"))
    done = pnm("-t", "0.3s", "--csv", "-o", os.path.join(shared, "nobodys", "logs", "net.csv"))
    refused(done, f"{shared}/nobodys belongs to uid {NOBODY}")
    assert os.listdir(os.path.join(shared, "root-only")) == []


def test_a_link_of_another_user_in_a_sticky_directory_is_not_followed(shared):
    as_nobody("ln", "-s", os.path.join(shared, "root-only"), os.path.join(shared, "sticky", "logs"))
    done = pnm("-t", "0.3s", "--csv", "-o", os.path.join(shared, "sticky", "logs", "net.csv"))
    refused(done, f"{shared}/sticky/logs is a symbolic link belonging to uid {NOBODY}")
    assert os.listdir(os.path.join(shared, "root-only")) == []


def test_a_file_planted_in_a_sticky_directory_is_refused(shared):
    # Appending root's rows (every user's command lines) to nobody's file
    # would hand them to nobody.
    planted = os.path.join(shared, "sticky", "net.csv")
    as_nobody("touch", planted)
    done = pnm("-t", "0.3s", "--csv", "-o", planted)
    refused(done, f"{planted} belongs to uid {NOBODY}")
    assert os.path.getsize(planted) == 0


def test_an_output_others_can_write_is_refused(shared):
    # nobody could add rows of their own to root's records.
    path = os.path.join(shared, "net.csv")
    with open(path, "w"):
        pass
    os.chmod(path, 0o666)
    refused(pnm("-t", "0.3s", "--csv", "-o", path), "writable by group or others (mode 0666)")
    assert os.path.getsize(path) == 0


# -- under sudo: as the invoking user ---------------------------------------------


def test_under_sudo_a_root_only_file_is_not_written(shared):
    victim = os.path.join(shared, "root-only", "authorized_keys")
    with open(victim, "w") as f:
        f.write("root's\n")
    os.chmod(victim, 0o600)
    refused(pnm("-t", "0.3s", "--csv", "-o", victim, sudo=True), "Permission denied")
    refused(pnm("-t", "0.3s", "--csv", "-o", os.path.join(shared, "root-only", "new.csv"), sudo=True),
            "Permission denied")
    with open(victim) as f:
        assert f.read() == "root's\n"
    assert os.listdir(os.path.join(shared, "root-only")) == ["authorized_keys"]


def test_under_sudo_the_output_belongs_to_the_invoker(shared):
    path = os.path.join(shared, "nobodys", "net.csv")
    done = pnm("-t", "0.3s", "--csv", "-o", path, sudo=True)
    assert done.returncode == 0, done.stderr
    st = os.stat(path)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (NOBODY, NOBODY, 0o600)
    with open(path) as f:
        assert f.readline().startswith("timestamp,type,pid,name")


def test_under_sudo_the_textfile_is_written_as_the_invoker(shared):
    refused(pnm("-t", "0.3s", "--format", "prometheus", "-o", os.path.join(shared, "root-only", "x.prom"),
                sudo=True), "Permission denied")
    assert os.listdir(os.path.join(shared, "root-only")) == []
    path = os.path.join(shared, "nobodys", "x.prom")
    done = pnm("-t", "0.3s", "--format", "prometheus", "-o", path, sudo=True)
    assert done.returncode == 0, done.stderr
    assert os.stat(path).st_uid == NOBODY
    assert os.listdir(os.path.join(shared, "nobodys")) == ["x.prom"]


def test_under_sudo_pid_interfaces_are_only_the_invokers(shared):
    roots = subprocess.Popen(["sleep", "60"])
    mine = subprocess.Popen(AS_NOBODY + ["sleep", "60"])
    try:
        refused(pnm("-t", "0.3s", "-i", f"pid:{roots.pid}/lo", sudo=True), f"process {roots.pid} is not yours")
        assert pnm("-t", "0.3s", "-i", f"pid:{roots.pid}/lo", "--json").returncode == 0  # without sudo: root's choice
        time.sleep(0.2)  # setpriv has become sleep
        done = pnm("-t", "0.3s", "-i", f"pid:{mine.pid}/lo", "--json", sudo=True)
        assert done.returncode == 0, done.stderr
    finally:
        for proc in (roots, mine):
            proc.kill()
            proc.wait()


def test_under_sudo_command_has_only_the_invokers_rights(shared):
    victim = os.path.join(shared, "root-only", "victim")
    with open(victim, "w") as f:
        f.write("root's\n")
    script = f'grep CapEff /proc/self/status; id -G; echo x >> {victim} 2>/dev/null || echo refused'
    done = pnm("--json", "--", "sh", "-c", script, sudo=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["CapEff:\t0000000000000000", str(NOBODY), "refused"]
    with open(victim) as f:
        assert f.read() == "root's\n"


# -- the textfile -----------------------------------------------------------------------


WATCHER = r"""
import ctypes, os, struct, sys
directory, target, name = sys.argv[1:]
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init()
IN_CREATE = 0x100
assert libc.inotify_add_watch(fd, directory.encode(), IN_CREATE) >= 0
planted = set()
print("watching", flush=True)
while True:  # every name created there, however briefly, as it is created
    data = os.read(fd, 65536)
    while data:
        _, _, _, length = struct.unpack("iIII", data[:16])
        entry = data[16:16 + length].rstrip(b"\0").decode()
        data = data[16 + length:]
        if entry != name and entry not in planted:
            planted.add(entry)
            for _ in range(100000):  # until root's temporary has been renamed away
                try:
                    os.symlink(target, os.path.join(directory, entry))
                    break
                except FileExistsError:
                    pass
            print(entry, flush=True)
"""


def test_textfile_temporaries_cannot_be_taken_over(shared):
    # prometheus_client's write_to_textfile used FILE.<pid>.<thread> at every
    # rewrite, following links: nobody, watching a directory they can write
    # to, links that name to a root-only file once they have seen it, and
    # the next rewrite writes there.
    directory = os.path.join(shared, "sticky")
    victim = os.path.join(shared, "root-only", "shadow")
    with open(victim, "w") as f:
        f.write("root's\n")
    watcher = subprocess.Popen(AS_NOBODY + [SYSTEM_PYTHON, "-c", WATCHER, directory, victim, "x.prom"],
                               stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert watcher.stdout.readline() == "watching\n"
        done = pnm("-n", "100", "--interval", "0.1s", "--format", "prometheus", "-o",
                   os.path.join(directory, "x.prom"))
    finally:
        os.killpg(watcher.pid, signal.SIGKILL)
        planted = watcher.communicate()[0].split()
    print(f"nobody planted {len(planted)} links")
    assert done.returncode == 0, done.stderr
    with open(victim) as f:
        assert f.read() == "root's\n"
    assert not os.path.islink(os.path.join(directory, "x.prom"))
    assert os.lstat(os.path.join(directory, "x.prom")).st_uid == 0


def test_textfile_keeps_its_mode_and_owner(shared):
    # A rewrite must not widen who can read the file or who owns it.
    path = os.path.join(shared, "x.prom")
    with open(path, "w") as f:
        f.write("# old\n")
    group = grp.getgrnam("nogroup").gr_gid
    os.chown(path, 0, group)
    os.chmod(path, 0o640)
    done = pnm("-t", "0.3s", "--format", "prometheus", "-o", path)
    assert done.returncode == 0, done.stderr
    st = os.stat(path)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, group, 0o640)
    with open(path) as f:
        assert "procnetmon_build_info" in f.read()
    assert sorted(os.listdir(shared)) == ["nobodys", "root-only", "sticky", "x.prom"]


def test_textfile_in_a_directory_of_another_user_is_refused(shared):
    refused(pnm("-t", "0.3s", "--format", "prometheus", "-o", os.path.join(shared, "nobodys", "x.prom")),
            f"{shared}/nobodys belongs to uid {NOBODY}")
    assert os.listdir(os.path.join(shared, "nobodys")) == []


# -- the lock ------------------------------------------------------------------------------


def _seconds_from_sigterm_to_exit(path: str) -> float:
    proc = subprocess.Popen(procnetmon_cmd("-c", "--interval", "0.2s", "--json", "-o", path), env=env(),
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: is_ready(proc.stderr.readline()) or proc.poll() is not None, 60,
                 "the probes attached")
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(1.2)  # several interval writes
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, proc.stderr.read()
        return time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_held_lock_does_not_delay_the_end_of_the_run(shared):
    # Any reader may take the flock; SIGTERM while nobody holds it must end
    # the run as soon as without a lock (not after the lock's 0.5 s wait,
    # once for the write under way and once for the summary), and the
    # summary must be written all the same.
    path = os.path.join(shared, "net.jsonl")
    with open(path, "w"):
        pass
    os.chmod(path, 0o644)
    unlocked = _seconds_from_sigterm_to_exit(path)
    holder = subprocess.Popen(AS_NOBODY + [SYSTEM_PYTHON, "-c", HOLDER, path], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        locked = _seconds_from_sigterm_to_exit(path)
    finally:
        holder.kill()
        holder.wait()
    print(f"SIGTERM to exit: {unlocked:.3f} s unlocked, {locked:.3f} s with the lock held")
    with open(path) as f:
        lines = f.read().splitlines()
    assert [json.loads(line)["type"] for line in lines].count("summary") == 2
    assert json.loads(lines[-1])["type"] == "summary"
    assert locked < unlocked + 0.3


HOLDER = r"""
import fcntl, sys, time
f = open(sys.argv[1])
fcntl.flock(f, fcntl.LOCK_SH)
print("held", flush=True)
time.sleep(120)
"""
