"""--exit-over in the sampler: the run stops at the first sample over a
threshold, the record of that sample is written, then the summary."""

from __future__ import annotations

from test_engine import FakeProbe, FakeProcesses, by_pid, collect, counters, ident, make

from procnetmon.model import ExitOver, record_to_dict
from procnetmon.output.text import format_text
from procnetmon.thresholds import parse


def over(*specs):
    return tuple(parse(s) for s in specs)


def test_stops_at_the_interval_that_crossed_and_writes_it():
    probe = FakeProbe([counters(p10=dict(tcp_out=400 * n)) for n in range(1, 20)])
    sampler = make(probe, interval=1.0, count=10, emit_intervals=True, exit_over=over("out>1000"))
    summary, intervals = collect(sampler)
    assert probe.reads == 3  # 400, 800, 1200: over at the third
    assert len(intervals) == 3 and intervals[-1].aggregated.total_bytes_out == 1200
    assert sampler.crossing is not None and sampler.crossing.value == 1200
    assert sampler.crossing.pid is None
    assert by_pid(summary)[10].bytes_out == 1200
    # The record that crossed and the summary say so; those before do not.
    assert [r.exit_over for r in intervals[:-1]] == [None, None]
    assert intervals[-1].exit_over == summary.exit_over == ExitOver("out>1000", 1200, None)


def test_with_t_alone_the_summary_is_the_record_that_crossed():
    probe = FakeProbe([counters(p10=dict(tcp_in=10)), counters(p10=dict(tcp_in=10), p20=dict(udp_out=1))])
    sampler = make(probe, interval=1.0, duration=60.0, exit_over=over("out>0"))
    summary, intervals = collect(sampler)
    assert intervals == [] and probe.reads == 2
    assert summary.duration_s == 2.0
    assert sampler.crossing.threshold.text == "out>0"


def test_nothing_crossed_runs_to_the_end():
    probe = FakeProbe([counters(p10=dict(tcp_out=100 * n)) for n in range(1, 6)])
    sampler = make(probe, interval=1.0, duration=5.0, exit_over=over("out>500", "in>0"))
    collect(sampler)
    assert probe.reads == 5 and sampler.crossing is None


def test_bytes_of_exited_processes_still_count_all_together():
    # 20 exits after moving 600 bytes; 10 moves 500 more later: 1100 in all.
    probe = FakeProbe([counters(p20=dict(tcp_out=600)), counters(p10=dict(tcp_out=200)),
                       counters(p10=dict(tcp_out=500))], exited={20: "curl"})
    processes = FakeProcesses({10: ident(10, "nginx"), 20: ident(20, "curl")}, alive={10})
    sampler = make(probe, processes=processes, interval=1.0, duration=10.0, exit_over=over("out>1000"))
    collect(sampler)
    assert probe.reads == 3 and sampler.crossing.value == 1100


def test_per_process_and_rates():
    snaps = [counters(p10=dict(tcp_out=300), p20=dict(tcp_out=300)),
             counters(p10=dict(tcp_out=600), p20=dict(tcp_out=600)),
             counters(p10=dict(tcp_out=900), p20=dict(tcp_out=1600))]
    sampler = make(FakeProbe(snaps), interval=1.0, duration=10.0, exit_over=over("proc:out>1000"))
    collect(sampler)
    assert (sampler.crossing.pid, sampler.crossing.value) == (20, 1600)
    sampler = make(FakeProbe(snaps), interval=1.0, duration=10.0, exit_over=over("proc:out>999/s"))
    collect(sampler)
    assert (sampler.crossing.pid, sampler.crossing.value) == (20, 1000)
    sampler = make(FakeProbe(snaps), interval=1.0, duration=10.0, exit_over=over("out>1200/s"))
    collect(sampler)
    assert sampler.crossing.value == 1300


def test_a_short_final_stretch_sets_off_no_rate():
    # 2.1 s: the last 0.1 s moves 500 bytes, 5000 B/s, but is too short to be a rate.
    probe = FakeProbe([counters(p10=dict(tcp_out=100)), counters(p10=dict(tcp_out=200)),
                       counters(p10=dict(tcp_out=700))])
    sampler = make(probe, interval=1.0, duration=2.1, exit_over=over("out>1000/s"))
    collect(sampler)
    assert probe.reads == 3 and sampler.crossing is None


def test_the_crossing_in_json_and_text(records):
    record = records.summary([records.nginx()])
    record.exit_over = ExitOver("proc:out>1KiB/s", 2048.4, 1234)
    assert record_to_dict(record)["exit_over"] == {"threshold": "proc:out>1KiB/s", "value": 2048.4, "pid": 1234}
    assert format_text(record).splitlines()[-1] == "exit-over proc:out>1KiB/s crossed: 16.4 Kbps (PID 1234)"
    record.exit_over = ExitOver("total>5GB", 5e9 + 1)
    assert format_text(record).splitlines()[-1] == "exit-over total>5GB crossed: 5.0 GB (all processes)"
    assert "exit_over" not in record_to_dict(records.summary())
