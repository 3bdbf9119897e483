"""bench/live.py: its records are what the view is said to get, and a short run reports its cost."""

from __future__ import annotations

from bench import live


def test_records_have_idle_processes_and_two_sockets_each():
    records = live.make_records(100, 3, 1.0)
    assert len(records) == 3
    for record in records:
        assert len(record.processes) == 70  # 30% idle in each
        assert all(len(p.connections) == 2 for p in record.processes)
    first = {p.pid: p for p in records[0].processes}
    later = {p.pid: p for p in records[2].processes}
    both = set(first) & set(later)
    assert both and all(later[pid].total_bytes_in > first[pid].total_bytes_in for pid in both)


def test_a_short_run_on_a_pty_reports_its_cost():
    result = live.measure(processes=50, seconds=1.0, interval=0.5, size="80x24")
    assert result["refreshes"] == 2 and result["cpu_s"] > 0 and result["terminal_bytes"] > 1000
    assert 0 < result["core_share"] < 1
    table = live.markdown([result])
    assert "| 50 | 80x24 | 0.5 s | 2 |" in table
