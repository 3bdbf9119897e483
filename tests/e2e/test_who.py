"""Who each process is, on the real kernel: parent, user, executable and
start as read when it was first identified, kept after it exits."""

from __future__ import annotations

import os
import sys
import time
from datetime import datetime

import psutil
from harness import TrafficProcess, by_pid, run_procnetmon


def test_a_process_that_exits_mid_sample_keeps_who_it_was(peer):
    server = TrafficProcess("tcp-server", peer.peer_v4, netns=peer.netns, connections=2, expect=10_000)
    stays = TrafficProcess("tcp-client", peer.peer_v4, server.port, send=10_000, name="pnmstays")
    leaves = TrafficProcess("tcp-client", peer.peer_v4, server.port, send=10_000, name="pnmleaves")
    started = {p.pid: psutil.Process(p.pid).create_time() for p in (stays, leaves)}

    def during():
        for p in (server, stays, leaves):
            p.go()
        for p in (stays, leaves):
            p.result()
        time.sleep(1.5)  # a read identifies it (one gone before that has only its kernel name)
        leaves.finish()
        time.sleep(2.5)  # a read collects its exit, the next retires it to the archive

    try:
        # Every process, so that the one that leaves goes to the archive, not
        # kept as a given PID is.
        run = run_procnetmon("-t", "6s", "--json", during=during)
    finally:
        for p in (server, stays, leaves):
            p.finish()
    assert run.returncode == 0, run.stderr
    rows = by_pid(run.json())
    for p in (stays, leaves):
        row = rows[p.pid]
        assert row["ppid"] == os.getpid() and row["uid"] == os.geteuid() and row["user"] == "root"
        assert os.path.realpath(row["exe"]) == os.path.realpath(sys.executable)
        start = datetime.fromisoformat(row["start_time"]).timestamp()
        assert abs(start - started[p.pid]) < 0.011  # to the clock tick
    assert rows[leaves.pid]["alive"] is False and rows[leaves.pid]["bytes_out"] == 10_000
