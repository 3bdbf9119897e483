"""Prometheus metrics: counters per label set that only grow, the exposition
text, the atomic textfile, and --serve's listen address."""

import argparse
import dataclasses
import os

import pytest
from prometheus_client.parser import text_string_to_metric_families

from procnetmon.cli import parse_listen
from procnetmon.model import Bytes
from procnetmon.output.prometheus import HELP, Metrics, TextfileWriter, exposition


def samples(text):
    out = {}
    for family in text_string_to_metric_families(text):
        assert family.documentation, family.name  # HELP for every family
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def bytes_sample(name="nginx", direction="in", protocol="tcp", cgroup="", container="", **extra):
    labels = dict(name=name, cgroup=cgroup, container=container, direction=direction, protocol=protocol, **extra)
    return ("procnetmon_payload_bytes_total", tuple(sorted(labels.items())))


def test_intervals_add_up_and_exited_processes_stay_in_their_label_set(records):
    m = Metrics("payload")
    # Two nginx processes in one label set; the second one exits after the first interval.
    m.add(records.interval([records.nginx(pid=1, tcp=Bytes(100, 1)), records.nginx(pid=2, tcp=Bytes(10, 0))]))
    m.add(records.interval([records.nginx(pid=1, tcp=Bytes(5, 0))]))
    got = samples(exposition(m))
    assert got[bytes_sample()] == 115
    assert got[bytes_sample(direction="out")] == 1
    # A summary after intervals adds nothing (its bytes are theirs).
    m.add(records.summary([records.nginx(pid=1, tcp=Bytes(105, 1))]))
    assert samples(exposition(m))[bytes_sample()] == 115


def test_a_lone_summary_counts(records):
    m = Metrics("payload")
    nginx = records.nginx(cgroup="/system.slice/nginx.service", container="nginx.service")
    m.add(records.summary([nginx]))
    got = samples(exposition(m))
    key = bytes_sample(cgroup="/system.slice/nginx.service", container="nginx.service", protocol="udp")
    assert got[key] == 500
    conn = ("procnetmon_connections", tuple(sorted(dict(
        name="nginx", cgroup="/system.slice/nginx.service", container="nginx.service", protocol="tcp").items())))
    assert got[conn] == 2


def test_pid_label_only_when_asked(records):
    assert "pid=" not in exposition(_with(Metrics("payload"), records))
    text = exposition(_with(Metrics("payload", with_pid=True), records))
    assert samples(text)[bytes_sample(pid="1234")] == 1000


def test_wire_mode_has_its_own_family(records):
    text = exposition(_with(Metrics("wire"), records))
    assert "procnetmon_wire_bytes_total{" in text and "payload_bytes" not in text
    assert set(HELP) >= {"payload_bytes_total", "wire_bytes_total", "connections"}


def _with(m, records):
    m.add(records.summary([records.nginx()]))
    return m


def test_textfile_is_replaced_atomically(tmp_path, records, monkeypatch):
    path = tmp_path / "procnetmon.prom"
    writer = TextfileWriter(str(path), "payload")
    renames = []
    real_replace = os.replace  # what safeopen.replace_file renames with
    monkeypatch.setattr(os, "replace", lambda a, b: (renames.append((a, b)), real_replace(a, b)))
    assert writer.write(records.interval([records.nginx()]))
    assert writer.write(records.interval([records.nginx()]))
    assert [b for _, b in renames] == [str(path)] * 2
    assert samples(path.read_text())[bytes_sample()] == 2000
    assert os.listdir(tmp_path) == ["procnetmon.prom"]  # no temporary file left


def test_textfile_directory_must_exist(tmp_path):
    with pytest.raises(OSError):
        TextfileWriter(str(tmp_path / "nope" / "x.prom"), "payload")


@pytest.mark.parametrize("text, expected", [
    ("9101", ("127.0.0.1", 9101)),
    ("0.0.0.0:9101", ("0.0.0.0", 9101)),
    (":9101", ("127.0.0.1", 9101)),
    ("127.0.0.1:9101", ("127.0.0.1", 9101)),
    ("[::1]:9101", ("::1", 9101)),
    ("localhost:9101", ("localhost", 9101)),
])
def test_parse_listen(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["", "0", "65536", "127.0.0.1", "::1", "::1:80", "1.2.3.4:port"])
def test_parse_listen_refuses(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_listen(text)


def test_unknown_connection_counts_leave_the_label_set_without_a_sample(records):
    """The daemon without CAP_SYS_PTRACE (contrib/procnetmon.service) cannot
    read other users' sockets: their counts are None. That took the daemon
    down with a TypeError; now such a label set has no connections sample
    (unknown), while its bytes and the other label sets' counts stay."""
    m = Metrics("payload")
    unreadable = records.nginx(pid=1, tcp_connections=None, udp_connections=None)
    readable = records.nginx(pid=2)
    known = [readable, records.curl()]
    m.add(dataclasses.replace(records.interval(known), processes=[unreadable] + known))
    got = samples(exposition(m))
    assert got[bytes_sample()] == 2000
    connections = {labels: v for (name, labels), v in got.items() if name == "procnetmon_connections"}
    assert {dict(labels)["name"] for labels in connections} == {"curl"}
    # Once readable again, the label set has its count back.
    m.add(records.interval([records.nginx(pid=2)]))
    assert any(dict(labels)["name"] == "nginx" for (name, labels) in samples(exposition(m))
               if name == "procnetmon_connections")


def byte_samples(text):
    return {labels: value for (name, labels), value in samples(text).items()
            if name == "procnetmon_payload_bytes_total"}


def names_of(text):
    return {dict(labels)["name"] for labels in byte_samples(text)}


def quiet(records, name, pid=1):
    return records.nginx(pid=pid, name=name, tcp=Bytes(0, 0), udp=Bytes(0, 0), tcp_connections=0, udp_connections=0)


def test_label_values_are_cut(records):
    m = Metrics("payload")
    docker = "docker://" + "f" * 64
    m.add(records.interval([records.nginx(name="n" * 4000, cgroup="/" + "c" * 4000, container=docker),
                            records.nginx(name="n" * 65, cgroup="/" + "c" * 300, container="k" * 300)]))
    sets = {(dict(labels)["name"], dict(labels)["cgroup"], dict(labels)["container"])
            for labels in byte_samples(exposition(m))}
    # Each value at its limit (names 64 characters, paths 256); a Docker
    # container label is kept whole.
    assert sets == {("n" * 64, "/" + "c" * 255, docker), ("n" * 64, "/" + "c" * 255, "k" * 256)}


def test_label_sets_past_the_cap_fold_into_other_exactly(records):
    m = Metrics("payload", max_sets=5)
    moved = 0
    for round_ in range(3):
        rows = [records.nginx(pid=n, name=f"p{round_}-{n}", tcp=Bytes(n + 1, 1), udp=Bytes(0, 0))
                for n in range(100)]
        moved += sum(n + 1 for n in range(100))
        m.add(records.interval(rows))
        text = exposition(m)
        got = byte_samples(text)
        assert len(names_of(text)) == 6 and "other" in names_of(text)
        assert sum(v for k, v in got.items() if dict(k)["direction"] == "in") == moved
    assert m.series() == 6
    # The folded sets' sockets are other's.
    conn = samples(text)[("procnetmon_connections", tuple(sorted(dict(
        name="other", cgroup="", container="", protocol="tcp").items())))]
    assert conn == 2 * 100  # the last round: all 100 folded, the five sets being round 0's


def test_other_only_grows_and_a_real_process_named_other_adds_to_it(records):
    m = Metrics("payload", max_sets=1, idle_intervals=2)
    previous = 0
    for n in range(6):
        m.add(records.interval([records.nginx(pid=1, name="a"), records.nginx(pid=2, name=f"b{n}"),
                                records.nginx(pid=3, name="other")]))
        value = samples(exposition(m))[bytes_sample(name="other")]
        assert value > previous
        previous = value
    assert previous == 6 * 2 * 1000


def test_idle_sets_are_dropped_and_start_again_from_zero(records):
    m = Metrics("payload", idle_intervals=3)
    m.add(records.interval([records.nginx(name="short", tcp=Bytes(700, 0), udp=Bytes(0, 0))]))
    m.add(records.interval([records.nginx(name="busy")]))
    for _ in range(2):
        m.add(records.interval([quiet(records, "short"), records.nginx(name="busy")]))
    # Three records without bytes or sockets: gone.
    assert "short" not in names_of(exposition(m)) and "busy" in names_of(exposition(m))
    # Back with fewer bytes than it had: Prometheus reads a counter reset and
    # counts these 30 once; its old 700 are not counted again.
    m.add(records.interval([records.nginx(name="short", tcp=Bytes(30, 0), udp=Bytes(0, 0))]))
    assert samples(exposition(m))[bytes_sample(name="short")] == 30


def test_a_set_with_sockets_is_not_idle(records):
    m = Metrics("payload", idle_intervals=2)
    m.add(records.interval([records.nginx(name="server")]))
    for _ in range(5):
        m.add(records.interval([records.nginx(name="server", tcp=Bytes(0, 0), udp=Bytes(0, 0))]))
    assert "server" in names_of(exposition(m))



def test_a_hostile_name_is_escaped_and_adds_no_sample(records):
    # A user names a process so as to forge a line of the exposition.
    forged = 'x"} 1e18\nprocnetmon_payload_bytes_total{name="fake\\'
    m = Metrics("payload")
    m.add(records.interval([records.nginx(name=forged)]))
    text = exposition(m)
    assert "\nprocnetmon_payload_bytes_total{name=\"fake" not in text
    assert names_of(text) == {forged}
    assert max(samples(text).values()) < 1e18
