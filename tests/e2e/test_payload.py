"""Payload bytes measured by the real probes equal what the test's processes moved."""

from __future__ import annotations

import json
import os
import signal

import pytest
from harness import TrafficProcess, by_pid, json_lines_of, measure_exchange, run_procnetmon, wait_for


def exchange(*procs):
    """Let every process go, and collect the truth each one reports."""
    for p in procs:
        p.go()
    return [p.result() for p in procs]


def assert_exact(row, truth):
    assert row["tcp"]["bytes_out"] == truth["tcp_out"], row
    assert row["tcp"]["bytes_in"] == truth["tcp_in"], row
    assert row["udp"]["bytes_out"] == truth["udp_out"], row
    assert row["udp"]["bytes_in"] == truth["udp_in"], row
    assert row["bytes_out"] == truth["tcp_out"] + truth["udp_out"]
    assert row["bytes_in"] == truth["tcp_in"] + truth["udp_in"]


def sample(procs, *extra, pids=None, wait_exit=()):
    """A 3 s JSON summary of the processes' exchange, and the truth they reported."""
    run, truth = measure_exchange(procs, "-t", "3s", "--json", *extra, pids=pids, wait_exit=wait_exit)
    return run.json(), truth


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_tcp_bytes_exact(peer, family):
    addr = peer.peer_v4 if family == "ipv4" else peer.peer_v6
    server = TrafficProcess("tcp-server", addr, netns=peer.netns, expect=1_000_000, reply=250_000)
    client = TrafficProcess("tcp-client", addr, server.port, send=1_000_000, expect=250_000)
    doc, truth = sample({"server": server, "client": client})
    rows = by_pid(doc)
    assert truth["client"]["tcp_out"] == 1_000_000
    assert_exact(rows[client.pid], truth["client"])
    assert_exact(rows[server.pid], truth["server"])
    assert rows[client.pid]["alive"] and rows[server.pid]["alive"]
    assert doc["mode"] == "payload" and doc["type"] == "summary"


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_udp_bytes_exact(peer, family):
    addr = peer.peer_v4 if family == "ipv4" else peer.peer_v6
    server = TrafficProcess("udp-server", addr, netns=peer.netns, count=200, reply=300)
    client = TrafficProcess("udp-client", addr, server.port, count=200, size=1200, reply=300)
    doc, truth = sample({"server": server, "client": client})
    rows = by_pid(doc)
    assert truth["client"]["udp_out"] == 200 * 1200
    assert truth["server"]["udp_in"] > 0
    assert_exact(rows[client.pid], truth["client"])
    assert_exact(rows[server.pid], truth["server"])


def test_client_that_exits_keeps_its_bytes_and_name(peer):
    server = TrafficProcess("tcp-server", peer.peer_v4, netns=peer.netns, expect=300_000)
    client = TrafficProcess("tcp-client", peer.peer_v4, server.port, send=300_000, name="pnmgone", exit=True)
    doc, truth = sample({"server": server, "client": client}, wait_exit=("client",))
    row = by_pid(doc)[client.pid]
    assert row["alive"] is False
    assert row["name"] == "pnmgone"
    assert_exact(row, truth["client"])
    assert_exact(by_pid(doc)[server.pid], truth["server"])


def test_server_receiving_before_accept(peer):
    server = TrafficProcess("tcp-server", peer.peer_v4, netns=peer.netns, expect=60_000, reply=1000,
                            accept_delay=1.0)
    client = TrafficProcess("tcp-client", peer.peer_v4, server.port, send=60_000, expect=1000)
    doc, truth = sample({"server": server, "client": client})
    rows = by_pid(doc)
    assert truth["server"]["tcp_in"] == 60_000
    assert_exact(rows[server.pid], truth["server"])
    assert_exact(rows[client.pid], truth["client"])


def test_threads_are_one_process(peer):
    server = TrafficProcess("tcp-server", peer.peer_v4, netns=peer.netns, expect=200_000, connections=4)
    client = TrafficProcess("tcp-client", peer.peer_v4, server.port, send=200_000, threads=4)
    doc, truth = sample({"server": server, "client": client})
    assert [p["pid"] for p in doc["processes"]].count(client.pid) == 1
    assert truth["client"]["tcp_out"] == 800_000
    assert_exact(by_pid(doc)[client.pid], truth["client"])


@pytest.mark.parametrize("extra, counted", [((), False), (("-i", "lo"), True), (("--include-loopback",), True)])
def test_loopback_absent_by_default_present_when_asked(extra, counted):
    server = TrafficProcess("tcp-server", "127.0.0.1", expect=123_456, reply=789)
    client = TrafficProcess("tcp-client", "127.0.0.1", server.port, send=123_456, expect=789)
    doc, truth = sample({"server": server, "client": client}, *extra)
    rows = by_pid(doc)
    for name, proc in (("client", client), ("server", server)):
        if counted:
            assert_exact(rows[proc.pid], truth[name])
        else:
            assert rows[proc.pid]["bytes_out"] == 0 and rows[proc.pid]["bytes_in"] == 0
    assert truth["client"]["tcp_out"] == 123_456
    assert doc["include_loopback"] is counted


def test_interface_filter_counts_only_that_veth(peer, second_peer):
    s1 = TrafficProcess("tcp-server", peer.peer_v4, netns=peer.netns, expect=111_000, reply=11_000)
    s2 = TrafficProcess("tcp-server", second_peer.peer_v4, netns=second_peer.netns, expect=222_000, reply=22_000)
    c1 = TrafficProcess("tcp-client", peer.peer_v4, s1.port, send=111_000, expect=11_000)
    c2 = TrafficProcess("tcp-client", second_peer.peer_v4, s2.port, send=222_000, expect=22_000)
    doc, truth = sample({"s1": s1, "s2": s2, "c1": c1, "c2": c2}, "-i", peer.host_if, pids=[c1.pid, c2.pid])
    rows = by_pid(doc)
    assert doc["interfaces"] == [peer.host_if]
    assert_exact(rows[c1.pid], truth["c1"])
    assert truth["c2"]["tcp_out"] == 222_000
    assert rows[c2.pid]["bytes_in"] == 0 and rows[c2.pid]["bytes_out"] == 0


def test_process_not_in_pids_is_absent(peer):
    server = TrafficProcess("tcp-server", peer.peer_v4, netns=peer.netns, expect=50_000)
    client = TrafficProcess("tcp-client", peer.peer_v4, server.port, send=50_000)
    doc, truth = sample({"server": server, "client": client}, pids=[server.pid])
    assert set(by_pid(doc)) == {server.pid}
    assert_exact(by_pid(doc)[server.pid], truth["server"])


def test_every_process_mode_finds_the_test_processes(peer):
    server = TrafficProcess("udp-server", peer.peer_v6, netns=peer.netns, count=50, reply=100)
    client = TrafficProcess("udp-client", peer.peer_v6, server.port, count=50, size=700, reply=100)
    truth = {}
    try:
        run = run_procnetmon("-t", "3s", "--json",
                             during=lambda: truth.update(zip(("server", "client"), exchange(server, client))))
    finally:
        server.finish()
        client.finish()
    assert run.returncode == 0, run.stderr
    rows = by_pid(run.json())
    assert_exact(rows[client.pid], truth["client"])
    assert_exact(rows[server.pid], truth["server"])


def kernel_counter_pids(procnetmon_pid: int) -> set:
    """Thread groups in the counters map of one procnetmon process, read with bpftool."""
    import json
    import struct
    import subprocess

    held = set()  # ids of the BPF maps whose file descriptors procnetmon holds
    fd_dir = f"/proc/{procnetmon_pid}/fd"
    for fd in os.listdir(fd_dir):
        if os.readlink(os.path.join(fd_dir, fd)) == "anon_inode:bpf-map":
            with open(f"/proc/{procnetmon_pid}/fdinfo/{fd}") as f:
                held.update(int(line.split()[1]) for line in f if line.startswith("map_id:"))
    maps = json.loads(subprocess.run(["bpftool", "-j", "map", "show"], capture_output=True, text=True).stdout)
    pids = set()
    found = False
    for m in maps:
        if m.get("name") != "counters" or m["id"] not in held:
            continue
        found = True
        dump = json.loads(subprocess.run(["bpftool", "-j", "map", "dump", "id", str(m["id"])],
                                         capture_output=True, text=True).stdout)
        for entry in dump:
            key = bytes(int(b, 16) for b in entry["key"])
            pids.add(struct.unpack_from("<I", key)[0])
    assert found, f"no counters map held by procnetmon {procnetmon_pid}"
    return pids


def test_exited_process_leaves_the_kernel_maps_but_keeps_its_totals(peer):
    server = TrafficProcess("tcp-server", peer.peer_v4, netns=peer.netns, expect=77_000)
    client = TrafficProcess("tcp-client", peer.peer_v4, server.port, send=77_000, exit=True)
    seen = {}
    try:
        def while_running(procnetmon):
            for p in (server, client):
                p.go()
            server.result()
            client.result()
            client.proc.wait(5)
            # The read that collects the exit takes the counters out of the map.
            seen["pids"] = wait_for(lambda: (lambda pids: pids if client.pid not in pids else None)(
                kernel_counter_pids(procnetmon.pid)), what="the exited client to leave the counters map")
            procnetmon.send_signal(signal.SIGINT)

        run = run_procnetmon("-p", f"{server.pid},{client.pid}", "--interval", "0.5s", "-c", "--json",
                             while_running=while_running)
    finally:
        server.finish()
        client.finish()
    assert run.returncode == 0, run.stderr
    assert server.pid in seen["pids"]
    assert client.pid not in seen["pids"]
    records = run.json_lines()
    assert by_pid(records[-2])[client.pid]["total_bytes_out"] == 77_000
    assert by_pid(records[-1])[client.pid]["bytes_out"] == 77_000


def test_sendfile_is_counted(peer):
    """sendfile(2) moves the bytes in the kernel (splice into sock_sendmsg): still the process's."""
    server = TrafficProcess("tcp-server", peer.peer_v4, netns=peer.netns, expect=700_000)
    client = TrafficProcess("tcp-client", peer.peer_v4, server.port, send=700_000, sendfile=True)
    doc, truth = sample({"server": server, "client": client})
    assert truth["client"]["tcp_out"] == 700_000
    assert_exact(by_pid(doc)[client.pid], truth["client"])
    assert_exact(by_pid(doc)[server.pid], truth["server"])


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_splice_out_of_and_into_a_tcp_socket_is_counted(peer, family):
    """splice(2) out of a TCP socket (HAProxy, Go's io.Copy) reads without
    recvmsg; into one it sends without sendmsg on older kernels. Both count."""
    addr = peer.peer_v4 if family == "ipv4" else peer.peer_v6
    server = TrafficProcess("tcp-server", addr, netns=peer.netns, expect=300_000, reply=100_000, splice_in=True)
    client = TrafficProcess("tcp-client", addr, server.port, send=300_000, expect=100_000,
                            splice_in=True, splice_out=True)
    doc, truth = sample({"server": server, "client": client})
    assert truth["server"]["tcp_in"] == 300_000 and truth["client"]["tcp_in"] == 100_000
    assert_exact(by_pid(doc)[client.pid], truth["client"])
    assert_exact(by_pid(doc)[server.pid], truth["server"])


def test_a_process_that_execs_is_named_by_its_new_program_then_by_its_name_at_exit(peer, tmp_path):
    """sh -c '...; exec python3 traffic.py ...': after the exec the row is named
    python3 with the new command line, and still so once it has exited."""
    import subprocess
    import sys

    from harness import TRAFFIC

    new_name = os.path.basename(sys.executable)[:15]  # the kernel's comm after exec

    server = TrafficProcess("udp-server", peer.peer_v4, netns=peer.netns, count=3, reply=10)
    script = f"read go; exec {sys.executable} {TRAFFIC} udp-client {peer.peer_v4} {server.port} " \
             "--count 3 --size 100 --reply 10 --exit"
    sh = subprocess.Popen(["sh", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    truth = {}

    out = tmp_path / "records.jsonl"

    def shown(name):
        return any((r["processes"][0]["name"], r["processes"][0]["alive"]) == (name, True)
                   for r in json_lines_of(out) if r["type"] == "interval")

    def during():
        wait_for(lambda: shown("sh"), what="a record while it is still sh")
        sh.stdin.write("exec\n")
        sh.stdin.flush()
        assert sh.stdout.readline().startswith("ready")
        wait_for(lambda: shown(new_name), what="a record while it is the new program, alive")
        server.go()
        sh.stdin.write("go\n")
        sh.stdin.flush()
        truth["client"] = json.loads(sh.stdout.readline())
        sh.wait(5)

    try:
        run = run_procnetmon("-p", str(sh.pid), "-c", "--interval", "0.5s", "--json", "-o", str(out),
                             during=during, after_start=lambda p: p.send_signal(signal.SIGINT))
    finally:
        server.finish()
        if sh.poll() is None:
            sh.kill()
            sh.wait()
    assert run.returncode == 0, run.stderr
    lines = json_lines_of(out)
    names = [(line["processes"][0]["name"], line["processes"][0]["alive"]) for line in lines[:-1]]
    assert names[0] == ("sh", True)
    assert (new_name, True) in names, names
    alive_after = [line["processes"][0] for line in lines[:-1]
                   if line["processes"][0]["name"] == new_name and line["processes"][0]["alive"]]
    assert "traffic.py" in alive_after[0]["cmdline"]
    row = lines[-1]["processes"][0]
    assert (row["name"], row["alive"]) == (new_name, False), row
    assert "sh -c" not in row["cmdline"]
    assert row["udp"]["bytes_out"] == truth["client"]["udp_out"] == 300


@pytest.mark.parametrize("mode", ["payload", "wire"])
@pytest.mark.parametrize("spec", ["netns", "pid"])
def test_interface_of_another_namespace_counts_only_there(peer, mode, spec):
    """-i NETNS/IFACE (or pid:PID/IFACE): the server inside the namespace is
    counted on its end of the veth; the client on the host end is not."""
    server = TrafficProcess("tcp-server", peer.peer_v4, netns=peer.netns, expect=77_000, reply=7_000)
    client = TrafficProcess("tcp-client", peer.peer_v4, server.port, send=77_000, expect=7_000)
    where = peer.netns if spec == "netns" else f"pid:{server.pid}"
    name = f"{where}/{peer.peer_if}"
    doc, truth = sample({"server": server, "client": client}, "--mode", mode, "-i", name)
    rows = by_pid(doc)
    assert doc["interfaces"] == [name]
    if mode == "payload":
        assert_exact(rows[server.pid], truth["server"])
    else:
        assert rows[server.pid]["bytes_in"] > truth["server"]["tcp_in"]
        assert rows[server.pid]["bytes_out"] > truth["server"]["tcp_out"]
    assert rows[client.pid]["bytes_in"] == 0 and rows[client.pid]["bytes_out"] == 0


def test_interface_of_a_namespace_that_does_not_exist_is_a_usage_error():
    import subprocess

    from harness import procnetmon_cmd

    done = subprocess.run(procnetmon_cmd("-i", "procnetmon-no-such-ns/eth0", "-t", "1s"),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "no network namespace 'procnetmon-no-such-ns'" in done.stderr
    assert "Traceback" not in done.stderr
