"""The textfile (``--format prometheus -o FILE``) loses nothing that exits in
its first interval: short-lived processes started the moment the probes are
attached are in the file, to the byte (issue 19, item 7; the daemon's side
is in test_serve_isolation.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest
from harness import DrainingListener, run_procnetmon, wait_for

pytestmark = pytest.mark.root

CLIENT = """
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"x" * int(sys.argv[2]))
s.close()
"""
NAME = "pnmtextfile"


def sent_by_name(text: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("procnetmon_payload_bytes_total{") and f'name="{NAME}"' in line
               and 'direction="out"' in line)


@pytest.fixture
def client_program():
    # comm is the name the program was started as: a symlink names the clients.
    where = tempfile.mkdtemp(prefix="pnm-textfile-")
    path = os.path.join(where, NAME)
    os.symlink(os.path.realpath(sys.executable), path)
    yield path, where
    os.unlink(path)


def run_clients(program: str, port: int, sizes: list[int], gap: float) -> None:
    for size in sizes:
        subprocess.run([program, "-I", "-c", CLIENT, str(port), str(size)], check=True, timeout=30)
        time.sleep(gap)


@pytest.mark.parametrize("sampling", [("-c", "--interval", "1s"), ("-t", "3600s")], ids=["continuous", "timed"])
def test_short_processes_of_the_first_interval_reach_the_textfile(client_program, sampling):
    program, where = client_program
    target = os.path.join(where, "procnetmon.prom")
    sink = DrainingListener()
    sizes = [777_777] + [1000] * 20
    seen_first = {}

    def while_running(procnetmon):
        try:
            run_clients(program, sink.port, sizes[:1], 0)
            if sampling[0] == "-c":
                # The first rewrite already holds the client that ended before it.
                seen_first["value"] = wait_for(
                    lambda: os.path.exists(target) and sent_by_name(open(target).read()) >= sizes[0],
                    timeout=30, what="the first client in the textfile") and sent_by_name(open(target).read())
            run_clients(program, sink.port, sizes[1:], 0.37)
            wait_for(lambda: sink.received == sum(sizes), timeout=30, what="the listener to read every byte")
            time.sleep(1.5)  # one more interval, and the kernel's last calls
        finally:
            procnetmon.send_signal(signal.SIGTERM)

    try:
        run = run_procnetmon(*sampling, "--format", "prometheus", "-o", target, "--include-loopback",
                             while_running=while_running, timeout=60)
    finally:
        sink.close()
    assert run.returncode == 0, run.stderr
    with open(target) as f:
        text = f.read()
    assert sent_by_name(text) == sum(sizes), text
    if sampling[0] == "-c":
        assert seen_first["value"] == sizes[0]
