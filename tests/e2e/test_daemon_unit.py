"""contrib/procnetmon.service: the capabilities it grants are enough. procnetmon
runs as an unprivileged user holding exactly the unit's AmbientCapabilities
(through setpriv, as systemd would give them) and measures exactly."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest
from harness import TrafficProcess, by_pid

UNIT = os.path.join(os.path.dirname(__file__), "..", "..", "contrib", "procnetmon.service")
NOBODY = 65534


def unit_settings() -> dict:
    settings = {}
    with open(UNIT) as f:
        for line in f:
            m = re.match(r"^(\w+)=(.*)$", line.strip())
            if m:
                settings[m.group(1)] = m.group(2)
    return settings


def test_unit_is_hardened():
    s = unit_settings()
    assert s["NoNewPrivileges"] == "yes" and s["ProtectSystem"] == "strict"
    assert s["CapabilityBoundingSet"].split() == s["AmbientCapabilities"].split()
    assert "CAP_SYS_ADMIN" not in s["CapabilityBoundingSet"]
    assert "--serve" in s["ExecStart"]


@pytest.mark.skipif(not shutil.which("setpriv"), reason="needs setpriv (util-linux)")
@pytest.mark.parametrize("mode", ["payload", "wire"])
def test_the_units_capabilities_are_enough(peer, mode):
    caps = ",".join("+" + c[len("CAP_"):].lower() for c in unit_settings()["AmbientCapabilities"].split())
    cache = tempfile.mkdtemp(prefix="pnmcaps-")
    os.chown(cache, NOBODY, NOBODY)
    server = TrafficProcess("tcp-server", peer.peer_v4, netns=peer.netns, expect=120_000, reply=900)
    client = TrafficProcess("tcp-client", peer.peer_v4, server.port, send=120_000, expect=900, hold=True)
    cmd = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", f"--inh-caps={caps}",
           f"--ambient-caps={caps}", f"--bounding-set=-all,{caps}",
           "env", f"PROCNETMON_CACHE_DIR={cache}", "HOME=/nonexistent",
           sys.executable, "-m", "procnetmon", "-p", f"{server.pid},{client.pid}", "-t", "4s", "--json",
           "--mode", mode]
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=os.path.join(os.path.dirname(UNIT), ".."))
        line = proc.stderr.readline()
        assert "probes attached" in line, line + proc.stderr.read()
        server.go()
        client.go()
        truth = {"server": server.result(), "client": client.result()}
        out, err = proc.communicate(timeout=60)
    finally:
        server.finish()
        client.finish()
        shutil.rmtree(cache, ignore_errors=True)
    assert proc.returncode == 0, err
    rows = by_pid(json.loads(out))
    if mode == "payload":
        assert rows[client.pid]["bytes_out"] == truth["client"]["tcp_out"] == 120_000
        assert rows[server.pid]["bytes_in"] == truth["server"]["tcp_in"]
    else:
        assert rows[client.pid]["bytes_out"] > 120_000
    # CAP_SYS_PTRACE: the held connection of another user's process is seen.
    assert rows[client.pid]["tcp_connections"] == 1
