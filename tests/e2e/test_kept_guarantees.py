"""What the hostile review found holding up (issue 20, "Also"), kept by tests:
the daemon's loader hands its descriptors over a socket nobody else can
reach, and bad -p, -i and --cgroup values stop the run with one line and
status 2 before anything is compiled or attached."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

import pytest

from testbed.netns import free_port

pytestmark = pytest.mark.root


def _family(pid: int) -> set[int]:
    """``pid`` and its descendants, as /proc has them now."""
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        found.add(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return found


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    except OSError:
        pass
    return inodes


def _unix_sockets() -> dict[int, str]:
    """Inode -> path ("" for an unnamed socket) of every Unix socket."""
    sockets = {}
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            fields = line.split()
            sockets[int(fields[6])] = fields[7] if len(fields) > 7 else ""
    return sockets


def test_the_loaders_handoff_socket_has_no_name_anyone_could_connect_to():
    port = free_port()
    command = os.path.join(os.path.dirname(sys.executable), "procnetmon")
    daemon = subprocess.Popen([command, "--serve", str(port), "-q"], cwd="/", stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    seen_child_sockets, named = 0, []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and daemon.poll() is None:
            family = _family(daemon.pid)
            unix = _unix_sockets()
            for pid in family:
                for inode in _socket_inodes(pid) & set(unix):
                    if pid != daemon.pid:
                        seen_child_sockets += 1
                    if unix[inode]:  # a path, or an abstract name ("@..."): either can be connected to
                        named.append((pid, unix[inode]))
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).read()
                break
            except OSError:
                time.sleep(0.05)
        else:
            pytest.fail(f"the daemon never answered: {daemon.stderr.read() if daemon.poll() is not None else ''}")
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
    assert seen_child_sockets > 0, "the loader child and its socket were never seen"
    assert named == []


@pytest.mark.parametrize("option", [
    ["-p", "0"],
    ["-p", "-5"],
    ["-p", "4194305"],
    ["-p", "12,x"],
    ["-p", "1\n2"],
    ["-i", "no-such-if0"],
    ["-i", "pid:999999999/eth0"],
    ["-i", "../../etc/passwd"],
    ["--cgroup", "no/such/cgroup"],
    ["--cgroup", "../../../etc"],
])
def test_bad_filter_values_stop_with_one_line_before_any_probe(option):
    done = subprocess.run([sys.executable, "-m", "procnetmon", *option, "-t", "1s", "--json"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert "probes attached" not in done.stderr and "mounted tracefs" not in done.stderr
