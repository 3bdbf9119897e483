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
