"""bench/health.py's accounting: byte counting and health hooks told apart,
each run compared with the no-monitor runs around it."""

from __future__ import annotations

import math

from bench import health
from bench.bpfstats import ProgramStats
from bench.runner import Run


def fake_run(monitor: str, value: float = 10e9, programs=(), retransmits=None) -> Run:
    return Run(0, "tcp", monitor, value, 2.0, cpu_s=0.02, programs=list(programs),
               details={"retransmits": retransmits})


def test_health_programs_are_told_from_byte_counting_by_name():
    r = fake_run(health.HEALTH, programs=[ProgramStats(1, "sock_send_lengt", 4000, 100),
                                      ProgramStats(2, "pnm_health_retr", 600, 3),
                                      ProgramStats(3, "pnm_health_drop", 400, 2)], retransmits=40)
    s = health.split(r)
    assert (s.counting_ns_s, s.counting_runs) == (2000.0, 100)
    assert (s.health_ns_s, s.health_runs) == (500.0, 5)
    assert s.retransmits == 40


def test_a_run_is_compared_with_the_baselines_around_it():
    runs = [fake_run("none", 10e9), fake_run("procnetmon", 9e9), fake_run("none", 8e9), fake_run(health.HEALTH, 6e9)]
    assert health.ratio(runs, runs[1]) == 1.0  # 9 against (10 + 8) / 2
    assert health.ratio(runs, runs[3]) == 6 / 8  # no baseline after it: the one before
    assert math.isnan(health.ratio([fake_run("procnetmon")], fake_run("procnetmon")))


def test_the_report_has_a_row_per_configuration():
    class Args:
        loss, reps, seconds = 1, 2, 5

    runs = [fake_run("none", 10e9, retransmits=7), fake_run("procnetmon", 9e9, retransmits=8), fake_run("none", 10e9),
            fake_run(health.HEALTH, 9e9, retransmits=9)]
    text = health.report(Args(), runs, [health.split(fake_run(health.HEALTH, programs=[ProgramStats(2, "pnm_health_x",
                                                                                              2000, 4)]))], "env")
    assert "| procnetmon --tcp-health | 9.00 | 0.900 | 9 | 1.00 |" in text
    assert "| no monitor | 10.00 | 1.000 | 7 | 1.00 |" in text
    assert "| procnetmon --tcp-health | 0.0 | 0 | - | 1.0 | 2 | 500 | 0 |" in text
