"""procnetmon with fewer capabilities than root (issue 14, item 11): CAP_BPF
and CAP_PERFMON load the payload probes, but wire mode needs CAP_NET_ADMIN
and other processes' connection counts need CAP_SYS_PTRACE."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from harness import procnetmon_cmd

BPF_ONLY = ["setpriv", "--inh-caps=-all,+bpf,+perfmon", "--bounding-set=-all,+bpf,+perfmon", "--"]


@pytest.fixture(autouse=True)
def tracefs_mounted():
    """These runs may not mount tracefs (no CAP_SYS_ADMIN): as on a machine
    where root mounted it, which the test suite's fresh state has not."""
    from procnetmon.kernel import mounts

    mounts.prepare()


@pytest.fixture
def listener():
    """A process holding one listening TCP socket on loopback."""
    code = ("import socket,sys; s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen();"
            "print('ready', flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    yield proc
    proc.stdin.close()
    proc.wait(5)


def test_unreadable_connection_count_is_null_with_a_warning(listener):
    done = subprocess.run(BPF_ONLY + procnetmon_cmd("-p", str(listener.pid), "-t", "0.5s", "--json"),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    row = json.loads(done.stdout)["processes"][0]
    assert (row["tcp_connections"], row["udp_connections"]) == (None, None)
    assert "unknown" in done.stderr and "CAP_SYS_PTRACE" in done.stderr
    # As root the same process has its count.
    full = subprocess.run(procnetmon_cmd("-p", str(listener.pid), "-t", "0.5s", "--json"),
                          capture_output=True, text=True, timeout=60)
    assert json.loads(full.stdout)["processes"][0]["tcp_connections"] == 1
    assert "unknown" not in full.stderr


def test_check_and_wire_mode_without_net_admin():
    check = subprocess.run(BPF_ONLY + procnetmon_cmd("--check"), capture_output=True, text=True, timeout=120)
    lines = check.stdout.splitlines()
    assert any(line.startswith("payload mode: available") for line in lines), check.stdout
    wire = [line for line in lines if line.startswith("wire mode:")][0]
    assert "UNAVAILABLE" in wire and "CAP_NET_ADMIN" in wire
    run = subprocess.run(BPF_ONLY + procnetmon_cmd("--mode", "wire", "-t", "0.5s"),
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 3
    assert "CAP_NET_ADMIN" in run.stderr and "probes attached" not in run.stderr
    assert "Traceback" not in run.stderr
