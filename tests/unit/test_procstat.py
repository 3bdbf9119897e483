"""The benchmark's and the soaks' one reading of a process's cost (bench/procstat.py) and the one free port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from bench import procstat
from testbed.netns import free_port


def test_cpu_seconds_counts_the_waited_for_children_unless_told_not_to():
    subprocess.run([sys.executable, "-c", "import time\nend = time.process_time() + 0.3\n"
                                          "while time.process_time() < end: pass"], check=True)
    me = os.getpid()
    with_children, own = procstat.cpu_seconds(me), procstat.cpu_seconds(me, children=False)
    assert own is not None and with_children is not None
    assert with_children - own >= 0.2  # the child's 0.3 s, in 10 ms ticks


def test_rss_mib_is_the_resident_set_now():
    rss = procstat.rss_mib(os.getpid())
    assert rss is not None and 1 < rss < 4096
    peak = procstat.peak_rss_kib(os.getpid())
    assert peak is not None and peak / 1024 >= rss - 1


def test_a_gone_process_costs_none():
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    assert procstat.cpu_seconds(child.pid) is None
    assert procstat.rss_mib(child.pid) is None


def test_free_port_can_be_listened_on():
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
