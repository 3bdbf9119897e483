"""Processes in cgroups the test makes: attributed to their cgroup and
container, and filtered by --cgroup in the kernel, exactly to the byte."""

from __future__ import annotations

import subprocess

import pytest
from cgrouptree import CgroupTree
from harness import TrafficProcess, by_pid, procnetmon_cmd, run_procnetmon


@pytest.fixture
def tree():
    t = CgroupTree()
    yield t
    t.destroy()


def containers(tree, peer, **client_opts):
    """A TCP server in the peer (root cgroup) and two clients: one in a
    Docker-like scope, one in a systemd-like service, both under the tree."""
    docker, ident = tree.docker()
    service = tree.make(f"{tree.top}/system.slice/foo.service")
    server = TrafficProcess("tcp-server", peer.peer_v4, netns=peer.netns, connections=2,
                            expect=200_000, reply=3000)
    a = TrafficProcess("tcp-client", peer.peer_v4, server.port, send=200_000, expect=3000, **client_opts)
    b = TrafficProcess("tcp-client", peer.peer_v4, server.port, send=200_000, expect=3000)
    tree.move(a.pid, docker)
    tree.move(b.pid, service)
    return server, a, b, docker, ident, service


def exchange(args, server, a, b, wait_exit=()):
    truth = {}

    def during():
        for p in (server, a, b):
            p.go()
        for name, p in (("server", server), ("a", a), ("b", b)):
            truth[name] = p.result()
        for p in wait_exit:
            p.proc.wait(5)

    try:
        run = run_procnetmon(*args, during=during)
    finally:
        for p in (server, a, b):
            p.finish()
    assert run.returncode == 0, run.stderr
    return run.json(), truth


def test_rows_carry_cgroup_and_container(tree, peer):
    server, a, b, docker, ident, service = containers(tree, peer)
    doc, truth = exchange(["--cgroup", tree.top, "-t", "3s", "--json"], server, a, b)
    rows = by_pid(doc)
    assert set(rows) == {a.pid, b.pid}  # the server is in the root cgroup: not counted
    assert rows[a.pid]["cgroup"] == docker
    assert rows[a.pid]["container"] == f"docker://{ident}"
    assert rows[b.pid]["cgroup"] == service
    assert rows[b.pid]["container"] == "foo.service"
    for p, name in ((a, "a"), (b, "b")):
        assert rows[p.pid]["tcp"] == {"bytes_in": truth[name]["tcp_in"], "bytes_out": truth[name]["tcp_out"]}
    assert truth["a"]["tcp_out"] == 200_000


@pytest.mark.parametrize("mode", ["payload", "wire"])
def test_cgroup_filter_leaves_the_other_container_out(tree, peer, mode):
    server, a, b, docker, ident, service = containers(tree, peer)
    # Absolute, as under the mount.
    doc, truth = exchange(["--cgroup", tree.full(docker), "--mode", mode, "-t", "3s", "--json"],
                          server, a, b)
    rows = by_pid(doc)
    assert set(rows) == {a.pid}
    if mode == "payload":
        assert rows[a.pid]["bytes_out"] == truth["a"]["tcp_out"] == 200_000
        assert rows[a.pid]["bytes_in"] == truth["a"]["tcp_in"]
    else:
        assert rows[a.pid]["bytes_out"] > truth["a"]["tcp_out"]  # headers on top
    assert doc["aggregated"]["bytes_out"] == rows[a.pid]["bytes_out"]


def test_cgroup_made_after_start_is_counted(tree, peer):
    """A cgroup made below a --cgroup target while procnetmon runs is a
    target from the start (the kernel adds it at mkdir)."""
    server = TrafficProcess("tcp-server", peer.peer_v4, netns=peer.netns, expect=100_000)
    client = TrafficProcess("tcp-client", peer.peer_v4, server.port, send=100_000)
    truth = {}

    def during():
        late = tree.make(f"{tree.top}/late/docker-{'e' * 64}.scope")
        tree.move(client.pid, late)
        for p in (server, client):
            p.go()
        truth["client"] = client.result()
        truth["server"] = server.result()

    try:
        run = run_procnetmon("--cgroup", tree.top, "-t", "3s", "--interval", "3s", "--json",
                             during=during)
    finally:
        server.finish()
        client.finish()
    assert run.returncode == 0, run.stderr
    rows = by_pid(run.json_lines()[-1])
    assert set(rows) == {client.pid}
    assert rows[client.pid]["bytes_out"] == truth["client"]["tcp_out"] == 100_000
    assert rows[client.pid]["container"] == "docker://" + "e" * 64


def test_exited_process_keeps_its_cgroup(tree, peer):
    server, a, b, docker, ident, service = containers(tree, peer, exit=True, name="pnmgone")
    doc, truth = exchange(["--cgroup", tree.top, "-t", "3s", "--json"], server, a, b, wait_exit=(a,))
    row = by_pid(doc)[a.pid]
    assert row["alive"] is False and row["name"] == "pnmgone"
    assert (row["cgroup"], row["container"]) == (docker, f"docker://{ident}")
    assert row["bytes_out"] == truth["a"]["tcp_out"]


def test_group_by_cgroup(tree, peer):
    server, a, b, docker, ident, service = containers(tree, peer)
    doc, truth = exchange(["--cgroup", tree.top, "--group-by", "cgroup", "-t", "3s", "--json"], server, a, b)
    rows = {r["cgroup"]: r for r in doc["processes"]}
    assert set(rows) == {docker, service}
    assert rows[docker]["pids"] == [a.pid] and rows[docker]["pid"] is None
    assert rows[docker]["bytes_out"] == truth["a"]["tcp_out"]
    assert rows[service]["bytes_out"] == truth["b"]["tcp_out"]


def test_nonexistent_cgroup_is_a_usage_error(tree):
    run = subprocess.run(procnetmon_cmd("--cgroup", f"{tree.top}/nope", "-t", "1s"),
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 2
    assert f"{tree.top}/nope" in run.stderr and "Traceback" not in run.stderr
