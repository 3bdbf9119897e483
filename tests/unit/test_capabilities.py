"""Capabilities (issue 14, item 11): --check says what each mode needs, and a
connection count that cannot be read is unknown (null, "?", empty), never 0."""

from __future__ import annotations

import csv
import io
import json
import os

import jsonschema
from test_engine import FakeProbe, FakeProcesses, by_pid, collect, counters, ident, make

from procnetmon import sockettable
from procnetmon.kernel import check
from procnetmon.model import record_to_dict
from procnetmon.output.csvout import format_csv
from procnetmon.output.text import format_text

SCHEMA = os.path.join(os.path.dirname(__file__), "..", "..", "procnetmon", "schema", "record.schema.json")


def caps(*numbers: int) -> int:
    return sum(1 << n for n in numbers)


BPF_ONLY = caps(check.CAP_BPF, check.CAP_PERFMON)
ROOT = (1 << 41) - 1


def test_what_each_mode_needs():
    assert check.has_bpf_privileges(BPF_ONLY)
    assert not check.has_wire_privileges(BPF_ONLY)
    assert check.has_wire_privileges(BPF_ONLY | caps(check.CAP_NET_ADMIN))
    assert check.has_wire_privileges(caps(check.CAP_SYS_ADMIN))
    assert not check.can_read_other_processes(BPF_ONLY)
    assert not check.can_read_other_processes(caps(check.CAP_SYS_PTRACE))  # the fd directory stays closed
    assert check.can_read_other_processes(caps(check.CAP_SYS_PTRACE, check.CAP_DAC_READ_SEARCH))
    assert check.can_read_other_processes(ROOT)


def test_check_findings_with_only_bpf_and_perfmon():
    wire, sockets = check.check_capabilities(BPF_ONLY)
    assert not wire.ok and "CAP_NET_ADMIN" in wire.detail and not wire.required
    assert not sockets.ok and "CAP_SYS_PTRACE" in sockets.detail and "unknown" in sockets.detail
    assert all(f.ok for f in check.check_capabilities(ROOT))


def test_check_output_says_wire_mode_is_unavailable_without_net_admin(monkeypatch):
    from procnetmon import session

    monkeypatch.setattr(check, "effective_caps", lambda *a: BPF_ONLY)
    # As on a machine whose tracefs is mounted: without it (a fresh boot),
    # wire mode's first missing piece would be the mount, not the capability.
    monkeypatch.setattr(check, "check_tracefs",
                        lambda: check.Finding("tracefs", True, f"mounted at {check.TRACEFS}", required=False))
    out = io.StringIO()
    session.run_check(out)
    text = out.getvalue()
    wire_line = [line for line in text.splitlines() if line.startswith("wire mode:")][0]
    assert "UNAVAILABLE" in wire_line and "CAP_NET_ADMIN" in wire_line
    assert "connection counts" in text


def test_unreadable_descriptors_are_unknown_not_none(tmp_path, monkeypatch):
    real_listdir = os.listdir

    def listdir(path):
        if str(path).endswith("/200/fd"):
            raise PermissionError(13, "Permission denied")
        return real_listdir(path)

    for pid in (100, 200):
        (tmp_path / str(pid) / "fd").mkdir(parents=True)
        (tmp_path / str(pid) / "ns").mkdir()
        os.symlink(tmp_path / "netns", tmp_path / str(pid) / "ns" / "net")
    (tmp_path / "netns").write_text("")
    monkeypatch.setattr(sockettable.os, "listdir", listdir)
    found = sockettable.sockets_by_pid([100, 200, 300], proc=str(tmp_path))
    assert found == {100: [], 200: None, 300: []}  # 300 is gone: no sockets


def test_unknown_counts_in_every_format(records):
    processes = FakeProcesses({10: ident(10, "nginx"), 20: ident(20, "curl")})
    processes.sockets_of = lambda pids: {10: [], 20: None}
    probe = FakeProbe([counters(p10=dict(tcp_in=1), p20=dict(tcp_in=2))])
    summary, _ = collect(make(probe, processes=processes, interval=1.0, count=1))
    rows = by_pid(summary)
    assert (rows[10].tcp_connections, rows[10].udp_connections) == (0, 0)
    assert (rows[20].tcp_connections, rows[20].udp_connections) == (None, None)
    assert summary.aggregated.tcp_connections is None

    doc = record_to_dict(summary)
    with open(SCHEMA) as f:
        jsonschema.Draft202012Validator(json.load(f)).validate(doc)
    assert json.loads(json.dumps(doc))["processes"][1]["tcp_connections"] is None

    table = list(csv.DictReader(io.StringIO(format_csv(summary, header=True, aggregate=True))))
    assert [r["tcp_connections"] for r in table] == ["0", "", ""]

    text = format_text(summary, aggregate=True)
    curl = [line for line in text.splitlines() if "curl" in line][0]
    assert curl.split()[-2:] == ["?", "?"]
    total = [line for line in text.splitlines() if "TOTAL" in line][0]
    assert total.split()[-2:] == ["?", "?"]
