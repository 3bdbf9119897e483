"""--tcp-health's pure logic (issue 24): reading the maps, windows and owners
found by inode, records in every output, and what a kernel offers."""

from __future__ import annotations

import csv
import ctypes
import io
import json
from importlib import resources

import jsonschema
import pytest
from conftest import nginx, summary
from test_engine import FakeClock, FakeProcesses, FakeStop, QuietProbe, collect, ident

from procnetmon.engine import Options, Sampler
from procnetmon.healthtally import HealthTally, folded, row_health
from procnetmon.model import Connection, ConnectionHealth, TcpHealth, UnownedDrops, record_to_dict
from procnetmon.output import csvout, prometheus, text
from procnetmon.probes import CounterKey, Snapshot, health
from procnetmon.probes.health import HealthCounts, HealthFacts, HealthSnapshot, SocketHealth

# -- the maps, as the C declares them ------------------------------------------------------


def test_the_ctypes_mirrors_have_the_sizes_of_bpf_health_h():
    # struct health_counts: 12 u64 and 32 histogram slots; the others as laid out there.
    assert ctypes.sizeof(health.HealthCountsC) == 8 * (12 + health.LATENCY_SLOTS)
    assert ctypes.sizeof(health.DropKeyC) == 16
    assert ctypes.sizeof(health.OwnerC) == 24
    assert ctypes.sizeof(health.SockKeyC) == 16
    assert ctypes.sizeof(health.SockHealthC) == 8 + 32 + 16 + 6 * 8


def test_check_sizes_refuses_a_map_of_another_layout(monkeypatch):
    from procnetmon.kernel import bpfsys
    from procnetmon.probes import ProbeError

    sizes = {name: (ctypes.sizeof(k), ctypes.sizeof(v)) for name, (k, v) in health.MAP_TYPES.items()}
    fds = {name: i for i, name in enumerate(sizes)}
    monkeypatch.setattr(bpfsys, "map_sizes", lambda fd: sizes[list(sizes)[fd]])
    health.check_sizes(fds.__getitem__)
    sizes["health_socks"] = (16, 96)
    with pytest.raises(ProbeError, match="health_socks has 16-byte keys and 96-byte values"):
        health.check_sizes(fds.__getitem__)


class Table:
    """The part of BCC's table API health.read uses, over (key, value) pairs
    (ctypes values are not hashable: keys are found by identity)."""

    def __init__(self, pairs=()):
        self.pairs = list(pairs)

    def items(self):
        return list(self.pairs)

    def __delitem__(self, key):
        self.pairs = [(k, v) for k, v in self.pairs if k is not key]

    def __iter__(self):
        return (k for k, _ in self.pairs)

    def __len__(self):
        return len(self.pairs)


def counts_value(**fields) -> health.HealthCountsC:
    v = health.HealthCountsC()
    for name, value in fields.items():
        setattr(v, name, value)
    return v


def drop_key(kind, reason, tgid=0, ino=0):
    return health.DropKeyC(ino=ino, tgid=tgid, reason=reason, kind=kind)


def test_read_sorts_drops_by_who_they_belong_to_and_takes_out_what_is_done():
    counts = Table([(ctypes.c_uint32(7), counts_value(retrans_segs=3, connect_refused=1)),
                    (ctypes.c_uint32(8), counts_value(resets_in=2))])
    maxima = Table([(ctypes.c_uint32(7), ctypes.c_uint64(5000))])
    drops = Table([(drop_key(health.DROP_OWNED, 12, tgid=7), ctypes.c_uint64(4)),
                   (drop_key(health.DROP_BY_INODE, 6, ino=555), ctypes.c_uint64(9)),
                   (drop_key(health.DROP_NO_SOCKET, 3), ctypes.c_uint64(2)),
                   (drop_key(health.DROP_UNKNOWN, 12), ctypes.c_uint64(1))])
    socks = Table()
    tables = {"health": counts, "health_latency_max": maxima, "health_drops": drops, "health_socks": socks}
    names = {12: "NETFILTER_DROP", 6: "SOCKET_RCVBUFF", 3: "NO_SOCKET"}.get
    snap = health.read(tables.__getitem__, lambda v: names(v, str(v)), gone={8})
    assert snap.by_pid[7].retrans_segs == 3 and snap.by_pid[7].connect_refused == 1
    assert snap.by_pid[7].drops == {"NETFILTER_DROP": 4}
    assert snap.by_pid[7].latency_max_ns == 5000
    assert snap.by_inode == {555: {"SOCKET_RCVBUFF": 9}}
    assert snap.no_socket == {"NO_SOCKET": 2} and snap.unknown_owner == {"NETFILTER_DROP": 1}
    # The exited process's entry leaves with this read; the maxima are taken each read.
    assert [k.value for k in counts] == [7]
    assert not maxima


# -- windows, owners by inode, archive ----------------------------------------------------------


def snapshot(by_pid=None, by_inode=None, no_socket=None, sockets=()):
    return HealthSnapshot(by_pid or {}, by_inode or {}, no_socket or {}, {}, list(sockets))


def test_windows_are_differences_and_latency_maxima_are_per_read():
    tally = HealthTally(lambda inodes, pids: {})
    tally.take(snapshot({7: HealthCounts(retrans_segs=2, latency_count=1, latency_max_ns=900)}), 1)
    tally.take(snapshot({7: HealthCounts(retrans_segs=5, latency_count=1)}), 2)
    assert tally.windows[7].retrans_segs == 3
    assert tally.windows[7].latency_count == 0 and tally.windows[7].latency_max_ns == 0
    assert tally.totals[7].latency_max_ns == 900  # the run's longest stays


def test_a_drop_kept_by_inode_goes_to_the_process_holding_the_socket_found_once():
    looked = []

    def find(inodes, pids):
        looked.append(set(inodes))
        return {555: 42}

    tally = HealthTally(find)
    tally.take(snapshot(by_inode={555: {"SOCKET_RCVBUFF": 3}, 556: {"SOCKET_RCVBUFF": 1}}), 1)
    assert tally.totals[42].drops == {"SOCKET_RCVBUFF": 3}
    assert tally.unowned_window.unknown_owner == {"SOCKET_RCVBUFF": 1}
    tally.take(snapshot(by_inode={555: {"SOCKET_RCVBUFF": 5}, 556: {"SOCKET_RCVBUFF": 1}}), 2)
    assert tally.windows[42].drops == {"SOCKET_RCVBUFF": 2}
    assert looked == [{555, 556}]  # 555 is known; 556 waits before another look


def test_a_retired_process_keeps_its_figures_for_the_summary_and_its_sockets_are_not_counted_again():
    tally = HealthTally(lambda inodes, pids: {555: 42})
    tally.take(snapshot({42: HealthCounts(connect_refused=1)}, by_inode={555: {"SOCKET_RCVBUFF": 3}}), 1)
    tally.retire(42)
    tally.take(snapshot(by_inode={555: {"SOCKET_RCVBUFF": 3}}), 2)
    assert 42 not in tally.totals
    total = tally.counts(42, summary=True)
    assert total.connect_refused == 1 and total.drops == {"SOCKET_RCVBUFF": 3}
    assert 42 in tally.active(summary=True)


def test_rtt_of_the_window_is_over_the_sockets_read_in_it():
    def sock(pid, srtt, at):
        return SocketHealth(pid, 1, "ipv4", "10.0.0.1", 1, "10.0.0.2", 2, "ESTABLISHED", srtt, 1, at,
                            0, 0, 0, 0, 0, 0)

    tally = HealthTally(lambda inodes, pids: {})
    tally.take(snapshot(), 100)
    tally.take(snapshot(sockets=[sock(7, 1000, 50), sock(7, 3000, 150), sock(7, 0, 150), sock(8, 9, 150)]), 200)
    assert [s.srtt_us for s in tally.rtt_sockets(7, summary=False)] == [3000]
    assert [s.srtt_us for s in tally.rtt_sockets(7, summary=True)] == [1000, 3000]
    h = row_health(HealthCounts(), tally.rtt_sockets(7, summary=True))
    assert (h.rtt_connections, h.srtt_min_us, h.srtt_mean_us, h.srtt_max_us) == (2, 1000, 2000.0, 3000)


def test_row_health_means_and_trims_the_histogram():
    hist = [0] * health.LATENCY_SLOTS
    hist[4] = 2
    h = row_health(HealthCounts(connect_ok=2, latency_count=2, latency_sum_ns=40_000, latency_max_ns=30_000,
                                latency_log2_us=tuple(hist)), [])
    assert h.latency_mean_us == 20.0 and h.latency_max_us == 30.0
    assert h.latency_log2_us == [0, 0, 0, 0, 2]
    assert h.srtt_mean_us is None


def test_folded_rows_sum_and_weigh_their_means():
    a = TcpHealth(retrans_segs=1, latency_count=1, latency_mean_us=10.0, latency_max_us=10.0, rtt_connections=1,
                  srtt_min_us=5, srtt_mean_us=5.0, srtt_max_us=5, drops={"X": 1})
    b = TcpHealth(retrans_segs=2, latency_count=3, latency_mean_us=30.0, latency_max_us=50.0, rtt_connections=3,
                  srtt_min_us=7, srtt_mean_us=9.0, srtt_max_us=11, drops={"X": 2, "Y": 1})
    f = folded([a, b])
    assert f.retrans_segs == 3 and f.drops == {"X": 3, "Y": 1}
    assert f.latency_mean_us == 25.0 and f.latency_max_us == 50.0
    assert (f.srtt_min_us, f.srtt_mean_us, f.srtt_max_us) == (5, 8.0, 11)


# -- the engine -------------------------------------------------------------------------------------


class HealthProbe(QuietProbe):
    """Bytes for pid 10, and health only for pid 20 (its connects all failed)."""

    def __init__(self):
        self.reads = 0

    def read(self) -> Snapshot:
        self.reads += 1
        failed = HealthCounts(connect_attempts=self.reads, connect_refused=self.reads)
        return Snapshot(counters={CounterKey(10, "tcp", "out"): 100 * self.reads},
                        health=snapshot({20: failed}))

    def exited(self) -> dict:
        return {}


def test_a_process_whose_connects_fail_is_a_row_though_it_moved_no_byte():
    clock = FakeClock()
    processes = FakeProcesses({10: ident(10, "nginx"), 20: ident(20, "curl")})
    sampler = Sampler(HealthProbe(), Options(count=2, emit_intervals=True, tcp_health=True),
                      stop=FakeStop(clock), monotonic=clock, processes=processes,
                      socket_owners=lambda inodes, pids: {})
    final, intervals = collect(sampler)
    rows = {p.pid: p for p in intervals[1].processes}
    assert rows[20].bytes_out == 0 and rows[20].tcp_health.connect_refused == 1  # this interval's
    assert {p.pid: p for p in final.processes}[20].tcp_health.connect_refused == 2
    assert final.tcp_health == UnownedDrops()


# -- outputs --------------------------------------------------------------------------------------


def with_health(record):
    for p in record.processes:
        p.tcp_health = TcpHealth(retrans_segs=3, retrans_bytes=50, drops={"NETFILTER_DROP": 2},
                                 connect_attempts=2, connect_ok=1, connect_refused=1, latency_count=1,
                                 latency_mean_us=120.5, latency_max_us=120.5, latency_log2_us=[0] * 6 + [1],
                                 rtt_connections=1, srtt_min_us=90, srtt_mean_us=90.0, srtt_max_us=90)
        p.connections = [Connection("tcp", "ipv4", "10.0.0.1:443", "10.0.0.2:5", "ESTABLISHED", 1, 2,
                                    ConnectionHealth(retrans_segs=3, srtt_us=90, rttvar_us=20)),
                         Connection("udp", "ipv4", "0.0.0.0:53", "", "NONE")]
    record.tcp_health = UnownedDrops(no_socket={"NO_SOCKET": 4})
    return record


@pytest.fixture(scope="module")
def validator():
    schema = json.loads(resources.files("procnetmon").joinpath("schema/record.schema.json").read_text())
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def test_records_with_health_validate_and_bad_figures_do_not(validator):
    document = json.loads(json.dumps(record_to_dict(with_health(summary()))))
    validator.validate(document)
    assert document["processes"][0]["tcp_health"]["drop_reasons"] == {"NETFILTER_DROP": 2}
    assert document["tcp_health"]["drops_no_socket"] == {"NO_SOCKET": 4}
    document["processes"][0]["tcp_health"]["retrans_segs"] = -1
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(document)


def test_without_the_flag_no_record_says_anything_of_health():
    document = record_to_dict(summary())
    assert "tcp_health" not in document and "tcp_health" not in document["processes"][0]
    assert csvout.format_csv(summary(), header=True, aggregate=False).splitlines()[0] == ",".join(csvout.CSV_COLUMNS)
    assert "RETRANS%" not in text.format_text(summary())


def test_csv_appends_the_health_columns_at_the_end():
    rows = list(csv.reader(io.StringIO(csvout.format_csv(with_health(summary([nginx()])), header=True,
                                                         aggregate=True))))
    assert tuple(rows[0]) == csvout.CSV_COLUMNS + csvout.HEALTH_COLUMNS
    row = dict(zip(rows[0], rows[1]))
    assert row["tcp_retrans_segs"] == "3" and row["tcp_drop_reasons"] == "NETFILTER_DROP=2"
    assert row["tcp_connect_latency_mean_us"] == "120.5" and row["tcp_srtt_max_us"] == "90"
    assert len(rows[2]) == len(rows[0])  # the TOTAL row keeps the shape


def test_the_table_shows_retransmitted_bytes_as_a_share_of_tcp_bytes_sent():
    out = text.format_text(with_health(summary([nginx()])), aggregate=True, details=True)
    header = out.splitlines()[1]
    assert header.rstrip().endswith("RETRANS%")
    assert "25.00" in out.splitlines()[2]  # 50 of nginx's 200 TCP bytes out
    assert "retrans  3  srtt  0.09ms" in out


def test_prometheus_gets_health_counters_with_reason_labels_only_with_the_flag():
    metrics = prometheus.Metrics("payload")
    metrics.add(summary())
    assert "procnetmon_tcp_" not in prometheus.exposition(metrics)
    metrics = prometheus.Metrics("payload")
    metrics.add(with_health(summary([nginx()])))
    out = prometheus.exposition(metrics)
    labels = 'cgroup="",container="",name="nginx"'
    assert f'procnetmon_tcp_drops_total{{{labels},reason="NETFILTER_DROP"}} 2.0' in out
    assert f'procnetmon_tcp_connects_total{{{labels},result="refused"}} 1.0' in out
    assert f'procnetmon_tcp_retransmitted_segments_total{{{labels}}} 3.0' in out
    assert f'procnetmon_tcp_connect_latency_seconds_count{{{labels}}} 1.0' in out
    assert 'procnetmon_tcp_unowned_drops_total{owner="no_socket",reason="NO_SOCKET"} 4.0' in out


# -- what a kernel offers -----------------------------------------------------------------------


def facts(**overrides) -> HealthFacts:
    values = dict(offsets={"TP_SRTT_US": 1, "TP_MDEV_US": 2, "SK_ERR": 3, "SK_STATE": 4, "SKB_CB": 5,
                           "TCP_SKB_CB_GSO_SEGS": 6},
                  missing_fields=(), tracepoints={"inet_sock_set_state": 3, "tcp_retransmit_skb": 3,
                                                  "tcp_receive_reset": 1, "tcp_send_reset": 3, "kfree_skb": 4},
                  reasons={2: "NOT_SPECIFIED", 12: "NETFILTER_DROP"}, drop_min=2, tcp_drop_kprobe=False,
                  accept_events=True)
    values.update(overrides)
    return HealthFacts(**values)


def test_flags_follow_what_the_tracepoints_pass():
    assert {"-DTCP_HEALTH", "-DHEALTH_DROP_REASON", "-DHEALTH_DROP_MIN=2", "-DHEALTH_DROP_RX_SK",
            "-DHEALTH_RETRANS_ERR", "-DOFF_SK_ERR=3"} <= set(facts().cflags())
    older = facts(tracepoints={"inet_sock_set_state": 3, "tcp_retransmit_skb": 2, "tcp_receive_reset": 1,
                               "tcp_send_reset": 2, "kfree_skb": 2}, tcp_drop_kprobe=True)
    flags = older.cflags()
    assert "-DHEALTH_TCP_DROP" in flags and "-DHEALTH_DROP_REASON" not in flags
    assert "-DHEALTH_RETRANS_ERR" not in flags and "-DHEALTH_DROP_RX_SK" not in flags
    assert older.reason_name(health.REASON_TCP_DROP) == "TCP_DROP"
    assert facts().reason_name(12) == "NETFILTER_DROP"


def test_check_says_which_figures_are_missing_and_why():
    none = dict(facts(tracepoints={"inet_sock_set_state": 3, "tcp_retransmit_skb": 2, "tcp_receive_reset": 1,
                                   "tcp_send_reset": 2, "kfree_skb": 2}).__dict__)
    rows = {name: (ok, why) for name, ok, why in health.describe(HealthFacts(**none))}
    assert rows["drops"] == (False, "skb:kfree_skb has no reason (before 5.17) and no kprobe on tcp_drop()")
    assert rows["retransmits"][0] and rows["connects"][0]
    missing = facts(missing_fields=("tcp_sock.srtt_us",), tracepoints={"tcp_retransmit_skb": 2})
    assert "no tcp_sock.srtt_us in this kernel's BTF" in missing.problems()
    assert "no tracepoint inet_sock_set_state" in missing.problems()


class ExitingProbe(QuietProbe):
    """Pid 10 moves bytes and retransmits, then exits after the second read."""

    def __init__(self):
        self.reads = 0

    def read(self) -> Snapshot:
        self.reads += 1
        if self.reads > 2:
            return Snapshot(counters={}, health=snapshot())
        return Snapshot(counters={CounterKey(10, "tcp", "out"): 100 * self.reads},
                        health=snapshot({10: HealthCounts(retrans_segs=3 * self.reads)}))

    def exited(self) -> dict:
        return {10: "nginx"} if self.reads == 2 else {}


def test_a_process_that_exits_keeps_its_health_in_the_summary():
    clock = FakeClock()
    sampler = Sampler(ExitingProbe(), Options(count=4, emit_intervals=True, tcp_health=True),
                      stop=FakeStop(clock), monotonic=clock,
                      processes=FakeProcesses({10: ident(10, "nginx")}, alive=()),
                      socket_owners=lambda inodes, pids: {})
    final, intervals = collect(sampler)
    assert [p.tcp_health.retrans_segs for r in intervals[:2] for p in r.processes] == [3, 3]
    assert not intervals[3].processes  # gone, and nothing new
    row = {p.pid: p for p in final.processes}[10]
    assert not row.alive and row.tcp_health.retrans_segs == 6 and row.bytes_out == 200
