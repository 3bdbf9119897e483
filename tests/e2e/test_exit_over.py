"""--exit-over on the real kernel: the run ends at the first sample over the
threshold, with status 4, after the record that crossed it (and the summary)
is written; with -- COMMAND, COMMAND is stopped. Known bytes through a peer."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time

from harness import TRAFFIC, TrafficProcess, procnetmon_cmd, run_procnetmon

from procnetmon.status import ExitStatus

SEND = 200_000


def pair(peer, send=SEND):
    server = TrafficProcess("tcp-server", peer.peer_v4, netns=peer.netns, expect=send)
    client = TrafficProcess("tcp-client", peer.peer_v4, server.port, send=send)
    return server, client


def test_streaming_ends_with_the_interval_that_crossed_and_the_summary(peer):
    server, client = pair(peer)
    started = time.monotonic()
    try:
        run = run_procnetmon("-p", str(client.pid), "-c", "--interval", "300ms", "--json",
                             "--exit-over", f"out>{SEND - 1}", during=lambda: (server.go(), client.go()),
                             timeout=60)
        truth = client.result()
    finally:
        server.finish()
        client.finish()
    assert run.returncode == ExitStatus.OVER == 4, run.stderr
    assert time.monotonic() - started < 30  # -c would have run until stopped
    lines = run.json_lines()
    crossed, summary = lines[-2], lines[-1]
    assert (crossed["type"], summary["type"]) == ("interval", "summary")
    assert crossed["aggregated"]["total_bytes_out"] == truth["tcp_out"] == SEND
    assert summary["processes"][0]["bytes_out"] == SEND
    assert all(line["aggregated"]["total_bytes_out"] < SEND for line in lines[:-2])
    assert crossed["exit_over"] == summary["exit_over"] == {"threshold": f"out>{SEND - 1}", "value": SEND,
                                                            "pid": None}
    assert not any("exit_over" in line for line in lines[:-2])
    assert f"--exit-over out>{SEND - 1} crossed: {SEND} bytes out since the start" in run.stderr


def test_with_t_alone_the_summary_is_written_early_and_per_process_names_the_pid(peer):
    server, client = pair(peer, send=5000)
    started = time.monotonic()
    try:
        run = run_procnetmon("-t", "60s", "--json", "--exit-over", "proc:out>4KiB", "--exit-over", "in>1GB",
                             during=lambda: (server.go(), client.go()), timeout=60)
    finally:
        server.finish()
        client.finish()
    assert run.returncode == 4, run.stderr
    assert time.monotonic() - started < 30
    doc = run.json()  # one document, the summary
    assert doc["type"] == "summary" and doc["duration_s"] < 30
    row = next(p for p in doc["processes"] if p["pid"] == client.pid)
    assert row["bytes_out"] == 5000
    assert doc["exit_over"]["threshold"] == "proc:out>4KiB" and doc["exit_over"]["value"] >= 4097
    assert "proc:out>4KiB crossed:" in run.stderr and "(PID " in run.stderr


def test_below_the_threshold_the_run_is_as_without_it(peer):
    server, client = pair(peer, send=5000)
    try:
        run = run_procnetmon("-p", str(client.pid), "-t", "2s", "--json", "--exit-over", "out>5000",
                             during=lambda: (server.go(), client.go()))
    finally:
        server.finish()
        client.finish()
    assert run.returncode == 0, run.stderr
    assert run.json()["processes"][0]["bytes_out"] == 5000 and "crossed" not in run.stderr


def sender(peer, port: int, send: int) -> str:
    return (f"echo go | {shlex.quote(sys.executable)} {shlex.quote(TRAFFIC)} tcp-client "
            f"{peer.peer_v4} {port} --send {send} --exit")


def test_a_ci_guard_stops_command_that_talked_and_exits_4(peer):
    server = TrafficProcess("tcp-server", peer.peer_v4, netns=peer.netns, expect=1000)
    server.go()
    started = time.monotonic()
    try:
        run = subprocess.run(procnetmon_cmd("--json", "--exit-over", "out>0", "--", "sh", "-c",
                                            f"{sender(peer, server.port, 1000)}; sleep 60; exit 0"),
                             capture_output=True, text=True, timeout=90)
    finally:
        server.finish()
    assert run.returncode == 4, run.stderr
    assert time.monotonic() - started < 45  # COMMAND's sleep 60 was cut short
    # COMMAND's stderr is procnetmon's too: sh may say "Terminated" about the
    # sleep that was stopped. The record is the one JSON document in it.
    text = run.stderr
    doc, _end = json.JSONDecoder().raw_decode(text[text.index("\n{") + 1:])
    assert doc["aggregated"]["bytes_out"] == 1000
    assert "stopped sh (PID " in run.stderr


def test_a_ci_guard_passes_a_quiet_command_with_its_status():
    run = subprocess.run(procnetmon_cmd("-q", "--json", "--exit-over", "out>0", "--", "sh", "-c", "exit 3"),
                         capture_output=True, text=True, timeout=90)
    assert run.returncode == 3, run.stderr
    assert json.loads(run.stderr)["aggregated"]["bytes_out"] == 0


def test_a_bad_spec_is_one_line_and_status_2_before_anything_is_attached():
    run = subprocess.run(procnetmon_cmd("--exit-over", "out>10Mb", "-t", "1s"),
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 2 and run.stderr.count("\n") == 1
    assert "capital B" in run.stderr and "probes attached" not in run.stderr
