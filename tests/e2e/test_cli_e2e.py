"""The real command's contract: formats, streaming, signals, closed pipes, errors."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import time

import jsonschema
import pytest
from harness import TrafficProcess, by_pid, measure_exchange, procnetmon_cmd, run_procnetmon

SCHEMA_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "procnetmon", "schema", "record.schema.json")


@pytest.fixture(scope="module")
def validator():
    with open(SCHEMA_PATH) as f:
        return jsonschema.Draft202012Validator(json.load(f))


def tcp_pair(peer, send, reply=0):
    server = TrafficProcess("tcp-server", peer.peer_v4, netns=peer.netns, expect=send, reply=reply)
    client = TrafficProcess("tcp-client", peer.peer_v4, server.port, send=send, expect=reply)
    return server, client


def drive(truth, *procs):
    for p in procs:
        p.go()
    for name, p in zip(("server", "client"), procs):
        truth[name] = p.result()


def test_count_streams_exactly_n_interval_lines_then_a_summary(peer, validator):
    server, client = tcp_pair(peer, 400_000, 4000)
    truth = {}
    try:
        run = run_procnetmon("-p", f"{server.pid},{client.pid}", "--interval", "1s", "-n", "3", "--json",
                             during=lambda: drive(truth, server, client))
    finally:
        server.finish()
        client.finish()
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["type"] for r in records] == ["interval"] * 3 + ["summary"]
    for r in records:
        validator.validate(r)
    # The intervals add up to the summary, which matches the truth exactly.
    summary = by_pid(records[-1])
    assert sum(by_pid(r)[client.pid]["bytes_out"] for r in records[:-1]) == summary[client.pid]["bytes_out"]
    assert summary[client.pid]["bytes_out"] == truth["client"]["tcp_out"] == 400_000
    assert summary[server.pid]["bytes_in"] == truth["server"]["tcp_in"]
    last = by_pid(records[2])[client.pid]
    assert last["total_bytes_out"] == 400_000


def test_csv_appended_twice_has_one_header(peer, tmp_path):
    out = tmp_path / "net.csv"
    for _ in range(2):
        server, client = tcp_pair(peer, 70_000)
        truth = {}
        try:
            run = run_procnetmon("-p", f"{server.pid},{client.pid}", "-t", "2s", "--csv", "-o", str(out),
                                 during=lambda: drive(truth, server, client))
        finally:
            server.finish()
            client.finish()
        assert run.returncode == 0, run.stderr
        assert run.stdout == ""
    text = out.read_text()
    assert text.count("timestamp,type,pid,name") == 1
    rows = list(csv.DictReader(text.splitlines()))
    assert len(rows) == 4  # two processes, two runs
    assert sorted(int(r["bytes_out"]) for r in rows if r["tcp_bytes_out"] != "0") == [70_000, 70_000]


def test_idle_cron_run_still_appends_a_row_with_a_precise_timestamp(peer, tmp_path):
    """An idle minute must leave a trace, or it cannot be told from a run that never happened."""
    out = tmp_path / "net.csv"
    for _ in range(2):
        # Nothing crosses the fresh veth: no process moves a byte there.
        run = run_procnetmon("-i", peer.host_if, "-t", "1s", "--csv", "-o", str(out))
        assert run.returncode == 0, run.stderr
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert len(rows) == 2
    for row in rows:
        assert (row["type"], row["pid"], row["name"], row["bytes_in"], row["bytes_out"]) == \
            ("summary", "", "TOTAL", "0", "0")
        assert row["interfaces"] == peer.host_if
        # ISO 8601 to the millisecond: 2026-11-30T01:23:10.437+00:00
        assert len(row["timestamp"]) == len("2026-11-30T01:23:10.437+00:00") and row["timestamp"][19] == "."
    assert rows[0]["timestamp"] != rows[1]["timestamp"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_run_still_writes_the_summary_with_everything_measured(peer, validator, signum):
    server, client = tcp_pair(peer, 250_000, 2500)
    truth = {}

    def stop_after_traffic(proc):
        time.sleep(1.5)
        proc.send_signal(signum)

    try:
        run = run_procnetmon("-p", f"{server.pid},{client.pid}", "-c", "--interval", "5s", "--json",
                             during=lambda: drive(truth, server, client), after_start=stop_after_traffic)
    finally:
        server.finish()
        client.finish()
    assert run.returncode == 0, run.stderr
    records = run.json_lines()
    assert records[-1]["type"] == "summary"
    for r in records:
        validator.validate(r)
    rows = by_pid(records[-1])
    # Stopped 1.5 s into a 5 s interval: nothing of it is lost.
    assert rows[client.pid]["bytes_out"] == truth["client"]["tcp_out"] == 250_000
    assert rows[server.pid]["bytes_out"] == truth["server"]["tcp_out"] == 2500
    assert records[-1]["duration_s"] < 5


def test_closed_stdout_ends_quietly():
    done = subprocess.run(
        " ".join(procnetmon_cmd("-c", "--interval", "0.2s", "--json", "--include-loopback"))
        + " | head -1 >/dev/null; echo \"status=${PIPESTATUS[0]}\"",
        shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=30)
    assert "Traceback" not in done.stderr
    assert "BrokenPipe" not in done.stderr
    assert "status=0" in done.stdout


def unused_pid() -> int:
    pid = 4_000_000
    while os.path.exists(f"/proc/{pid}"):
        pid += 1
    return pid


def test_nonexistent_pid_is_a_usage_error_before_attaching():
    pid = unused_pid()
    done = subprocess.run(procnetmon_cmd("-p", f"{os.getpid()},{pid}", "-t", "1s"), capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 2
    assert str(pid) in done.stderr
    assert "probes attached" not in done.stderr


def test_unknown_interface_is_a_usage_error_listing_the_real_ones():
    done = subprocess.run(procnetmon_cmd("-i", "nosuchif0", "-t", "1s"), capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 2
    assert "nosuchif0" in done.stderr
    for _, name in socket.if_nameindex():
        assert name in done.stderr


def test_without_privileges_says_which_are_needed():
    # Every capability dropped, the uid kept: a checkout under a root-only
    # directory (CI's clone) stays readable, and privileges are capabilities.
    done = subprocess.run(["setpriv", "--inh-caps=-all", "--bounding-set=-all", *procnetmon_cmd("-t", "1s")],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 3, done.stderr
    assert "CAP_BPF" in done.stderr and "root" in done.stderr
    assert "Traceback" not in done.stderr


def test_details_attribute_bytes_to_the_connection(peer):
    server, client = tcp_pair(peer, 90_000, 900)
    truth = {}
    try:
        def during():
            drive(truth, server, client)

        run = run_procnetmon("-p", str(server.pid), "-t", "2s", "--json", "-d", during=during)
    finally:
        server.finish()
        client.finish()
    assert run.returncode == 0, run.stderr
    row = by_pid(run.json())[server.pid]
    tcp = [c for c in row["connections"] if c["protocol"] == "tcp" and c["remote"]]
    assert len(tcp) == 1
    assert tcp[0]["bytes_in"] == truth["server"]["tcp_in"] == 90_000
    assert tcp[0]["bytes_out"] == truth["server"]["tcp_out"] == 900
    assert tcp[0]["local"].startswith(peer.peer_v4 + ":")
    assert tcp[0]["remote"].startswith(peer.host_v4 + ":")


def test_unwritable_output_is_a_usage_error_before_attaching(tmp_path):
    target = tmp_path / "missing-dir" / "net.csv"
    done = subprocess.run(procnetmon_cmd("-t", "1s", "--csv", "-o", str(target)), capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 2
    assert str(target) in done.stderr and "No such file or directory" in done.stderr
    assert "Traceback" not in done.stderr and "probes attached" not in done.stderr


def test_live_connections_are_counted_and_carry_their_bytes(peer):
    server = TrafficProcess("tcp-server", peer.peer_v6, netns=peer.netns, expect=33_000, reply=3300, hold=True)
    client = TrafficProcess("tcp-client", peer.peer_v6, server.port, send=33_000, expect=3300, hold=True)
    run, truth = measure_exchange({"server": server, "client": client}, "-t", "2s", "--json", "-d")
    rows = by_pid(run.json())
    assert rows[server.pid]["tcp_connections"] == 2  # the listener and the accepted connection
    assert rows[server.pid]["tcp_listening"] == 1  # the listener, reported apart too
    assert rows[client.pid]["tcp_connections"] == 1
    assert rows[client.pid]["tcp_listening"] == 0
    live = [c for c in rows[client.pid]["connections"] if c["state"] == "ESTABLISHED"]
    assert len(live) == 1
    assert live[0]["family"] == "ipv6"
    assert live[0]["remote"] == f"[{peer.peer_v6}]:{server.port}"
    assert (live[0]["bytes_out"], live[0]["bytes_in"]) == (truth["client"]["tcp_out"], truth["client"]["tcp_in"])
    listening = [c for c in rows[server.pid]["connections"] if c["state"] == "LISTEN"]
    assert len(listening) == 1 and listening[0]["bytes_in"] == 0
