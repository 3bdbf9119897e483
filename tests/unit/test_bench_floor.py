"""The benchmark's reading of BPF run times against the floor (bench/analysis.py)."""

from __future__ import annotations

import pytest

from bench import analysis
from bench.bpfstats import ProgramStats
from bench.floor import hook_of
from bench.runner import Run


@pytest.mark.parametrize("name, hook", [
    ("raw_tracepoint__sock_send_length", "sock_send_length"),  # procnetmon, raw tracepoint
    ("sock_recv_lengt", "sock_recv_length"),  # BTF-typed, or the empty program: cut to 15
    ("sk_data_ready", "sk_data_ready"),
    ("raw_tracepoint__sched_process_exit", None),
    ("wire_egress", None),
    ("sock_", None),  # a prefix is no name
    ("kfunc__skb_consume_udp", "skb_consume_udp"),  # the per-call UDP hook where trampolines attach
    ("raw_tracepoint__net_dev_queue", "net_dev_queue"),  # a sent datagram's device
    ("skb_copy_datagr", "skb_copy_datagram_iovec"),  # the empty one, cut to 15
    ("kfunc__inet_sendmsg", None),
])
def test_programs_are_paired_with_their_hook_by_name(name, hook):
    assert hook_of(name) == hook


def run(monitor, rep, programs, workload="udp", window=1.0):
    return Run(rep=rep, workload=workload, monitor=monitor, value=1.0, window_s=window,
               programs=[ProgramStats(i, name, ns, cnt) for i, (name, ns, cnt) in enumerate(programs)])


def test_a_monitor_reads_as_a_multiple_of_the_floor_per_hook_and_per_call():
    floor = run("floor", 0, [("sock_send_lengt", 30 * 100, 100), ("sock_recv_lengt", 40 * 50, 50),
                             ("sk_data_ready", 20 * 50, 50)])
    # 1000 sends at 60 ns, 500 receives at 80 ns, 500 datagrams noted at 40 ns, an exit
    pnm = run("procnetmon", 0, [("sock_send_lengt", 60 * 1000, 1000), ("sock_recv_lengt", 80 * 500, 500),
                                ("sk_data_ready", 40 * 500, 500), ("raw_tracepoint__sched_process_exit", 900, 1)])
    [m] = analysis.floor_multiples([floor, pnm])
    assert (m.workload, m.monitor) == ("udp", "procnetmon")
    assert m.per_hook["sock_send_length"] == [(60.0, 30.0)]
    assert m.per_hook["sk_data_ready"] == [(40.0, 20.0)]
    # per socket call: (60000 + 40000 + 20000) / 1500 calls, the exit aside
    assert m.per_call_ns == [pytest.approx(80.0)]
    # the floor: one empty program per socket call, (1000 * 30 + 500 * 40) / 1500;
    # the per-packet hook costs procnetmon, it is no part of the least a call costs
    assert m.floor_per_call_ns == [pytest.approx(100.0 / 3)]
    assert m.ratio == pytest.approx(2.4)


def test_each_repetition_is_read_against_its_own_floor_and_the_median_taken():
    runs = []
    for rep, (floor_ns, pnm_ns) in enumerate([(30, 60), (40, 60), (30, 30)]):
        runs.append(run("floor", rep, [("sock_send_lengt", floor_ns * 10, 10)]))
        runs.append(run("procnetmon", rep, [("sock_send_lengt", pnm_ns * 10, 10)]))
    [m] = analysis.floor_multiples(runs)
    assert m.ratios == [pytest.approx(2.0), pytest.approx(1.5), pytest.approx(1.0)]
    assert m.ratio == pytest.approx(1.5)


def test_without_a_floor_in_the_same_repetition_nothing_is_claimed():
    runs = [run("floor", 0, [("sock_send_lengt", 300, 10)], workload="tcp"),
            run("procnetmon", 0, [("sock_send_lengt", 600, 10)], workload="udp")]
    assert analysis.floor_multiples(runs) == []


def test_a_hook_without_an_empty_program_still_counts_in_the_cost_per_call():
    floor = run("floor", 0, [("sock_send_lengt", 30 * 100, 100), ("sock_recv_lengt", 40 * 100, 100)])
    pnm = run("procnetmon", 0, [("sock_send_lengt", 60 * 100, 100), ("sock_recv_lengt", 60 * 100, 100),
                                ("kfunc__skb_consume_udp", 20 * 100, 100)])
    [m] = analysis.floor_multiples([floor, pnm])
    assert "skb_consume_udp" not in m.per_hook  # nothing to be a multiple of
    assert m.per_call_ns == [pytest.approx(70.0)]  # (6000 + 6000 + 2000) / 200 calls
    assert m.floor_per_call_ns == [pytest.approx(35.0)]
