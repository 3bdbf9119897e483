"""The live view's model: rows from interval records, and what the keys do to it."""

from __future__ import annotations

import pytest
from livefixtures import conn, interval, proc

from procnetmon.live import model as live
from procnetmon.live.model import ViewModel
from procnetmon.live.units import Units


def names(m: ViewModel) -> list[str]:
    return [r.name for r in m.visible()]


def fed(*records, **options) -> ViewModel:
    m = ViewModel(**options)
    for record in records:
        m.update(record)
    return m


def test_a_row_takes_the_records_rates_totals_and_peaks():
    m = fed(interval(proc(10, "curl", 1000, 200, total_in=5000, total_out=700, peak_in=3000.0)))
    row = m.rows[("pid", 10)]
    assert (row.rate_in, row.rate_out, row.total_in, row.total_out) == (1000.0, 200.0, 5000, 700)
    assert row.peak_in == 3000.0 and row.peak == 3000.0
    assert (row.tcp_in, row.tcp_out) == (1000, 200)
    assert m.totals.total_in == 1000 and m.totals.rate_in == 1000.0


def test_a_process_missing_from_a_record_moved_nothing_and_keeps_its_total():
    m = fed(interval(proc(10, "curl", 1000, 0)), interval(proc(11, "ssh", 5, 5)))
    row = m.rows[("pid", 10)]
    assert row.rate_in == 0.0 and row.total_in == 1000
    assert list(row.history_in) == [1000.0, 0.0]
    assert m.totals.total_in == 1005  # the sum of the windows: the whole run's


def test_per_protocol_totals_add_up_over_the_windows():
    m = fed(interval(proc(10, "dns", 100, 50, udp=True)), interval(proc(10, "dns", 10, 5, total_in=110, udp=True)))
    row = m.rows[("pid", 10)]
    assert (row.udp_in, row.udp_out, row.tcp_in) == (110, 55, 0)


def test_history_holds_the_last_minute_whatever_the_interval():
    m = ViewModel(interval=0.5)
    for i in range(200):
        m.update(interval(proc(10, "x", i, seconds=0.5), seconds=0.5))
    assert m.history_len == 120
    assert list(m.rows[("pid", 10)].history_in)[-1] == 199 / 0.5
    assert len(m.rows[("pid", 10)].history_in) == 120


def test_an_exited_process_stays_dimmed_for_a_while_then_goes():
    m = fed(interval(proc(10, "gone", 100, alive=False)))
    row = m.rows[("pid", 10)]
    assert not row.alive and row.exited_at == 1.0
    for _ in range(int(live.EXITED_KEEP_S)):
        m.update(interval())
    assert ("pid", 10) in m.rows
    m.update(interval())
    assert ("pid", 10) not in m.rows


def test_a_quiet_process_that_ended_is_marked_exited_by_the_liveness_check():
    m = fed(interval(proc(10, "quiet", 100), proc(11, "alive", 100)))
    asked = []

    def running(pid):
        asked.append(pid)
        return pid != 10

    m.update(interval(proc(12, "busy", 1)), running)
    assert not m.rows[("pid", 10)].alive and m.rows[("pid", 11)].alive
    assert sorted(asked) == [10, 11]  # only idle rows are asked about, not 12


def test_liveness_checks_per_record_are_bounded():
    m = fed(interval(*[proc(pid, "p", 1) for pid in range(1, 1001)]))
    asked = []
    m.update(interval(), lambda pid: asked.append(pid) or True)
    assert len(asked) == live.LIVENESS_CHECKS
    m.update(interval(), lambda pid: asked.append(pid) or True)
    assert len(set(asked)) == 2 * live.LIVENESS_CHECKS  # round robin: the next ones


def test_a_pid_used_again_by_a_new_process_is_a_new_row():
    m = fed(interval(proc(10, "old", 100, alive=False)), interval(proc(10, "new", 5)))
    row = m.rows[("pid", 10)]
    assert row.name == "new" and row.alive and row.total_in == 5 and list(row.history_in) == [5.0]


def test_group_rows_are_keyed_by_name_or_cgroup():
    m = fed(interval(proc(None, "nginx", 10, pids=[1, 2])), group_by="name")
    assert m.rows[("name", "nginx")].members == 2
    m = fed(interval(proc(None, "a,b", 10, pids=[1, 2], cgroup="/system.slice/x.service")), group_by="cgroup")
    assert ("cgroup", "/system.slice/x.service") in m.rows


@pytest.mark.parametrize("key, expected", [
    ("r", ["fast", "big", "peaky", "Alpha"]),
    ("t", ["big", "fast", "peaky", "Alpha"]),
    ("k", ["peaky", "big", "fast", "Alpha"]),
    ("n", ["Alpha", "big", "fast", "peaky"]),
])
def test_sort_keys_order_the_rows_and_i_reverses(key, expected):
    m = fed(interval(proc(1, "fast", 500, total_in=600), proc(2, "big", 100, total_in=10_000, peak_in=1000.0),
                     proc(3, "peaky", 10, total_in=20, peak_in=5000.0), proc(4, "Alpha", 0, total_in=0)))
    m.handle_key(key)
    assert m.sort == live.SORT_KEYS[key]
    assert names(m) == expected
    m.handle_key("i")
    assert names(m) == list(reversed(expected))


def test_selection_follows_the_process_when_the_order_changes():
    m = fed(interval(proc(1, "a", 300), proc(2, "b", 200), proc(3, "c", 100)))
    m.handle_key("down")
    assert m.selection(m.visible()).name == "b"
    m.update(interval(proc(1, "a", 1), proc(2, "b", 500), proc(3, "c", 100)))
    rows = m.visible()
    assert rows[0].name == "b" and m.selection(rows).name == "b"
    for key, name in (("end", "a"), ("home", "b"), ("pgdn", "a"), ("up", "c"), ("up", "b"), ("up", "b")):
        m.handle_key(key, page_rows=5)
        assert m.selection(m.visible()).name == name, key


def test_the_filter_is_typed_after_slash_and_kept_or_dropped():
    m = fed(interval(proc(1, "nginx", 3), proc(2, "NGINX-worker", 2), proc(3, "curl", 1)))
    for key in "/ngi":
        m.handle_key(key)
    assert m.editing == "ngi" and names(m) == ["nginx", "NGINX-worker"]
    m.handle_key("q")  # typed into the filter, not a quit
    assert names(m) == []
    m.handle_key("backspace")
    m.handle_key("enter")
    assert m.editing is None and m.filter == "ngi"
    m.handle_key("/")
    m.handle_key("x")
    m.handle_key("esc")  # back to the filter before
    assert m.filter == "ngi"
    m.handle_key("esc")  # in the table: clears it
    assert m.filter == "" and len(names(m)) == 3


def test_pause_freezes_the_rows_while_records_go_on():
    m = fed(interval(proc(1, "a", 100)))
    m.handle_key("p")
    m.update(interval(proc(1, "a", 900, total_in=1000), proc(2, "new", 1)))
    assert names(m) == ["a"] and m.visible()[0].total_in == 100
    assert m.shown_totals().total_in == 100
    m.handle_key("p")
    assert names(m) == ["a", "new"] and m.visible()[0].total_in == 1000


def test_u_steps_through_the_units():
    m = ViewModel(rate_units="bytes")
    assert m.units == Units("bytes", False)
    seen = []
    for _ in range(4):
        m.handle_key("u")
        seen.append(m.units)
    assert seen == [Units("bits", True), Units("bytes", True), Units("bits", False), Units("bytes", False)]


def test_pages_open_for_the_selection_and_close_again():
    m = fed(interval(proc(1, "a", 100, connections=[conn("127.0.0.1:80", "127.0.0.1:5000", 100)])))
    m.handle_key("enter")
    assert m.page == live.PAGE_DETAIL and m.selected_row().name == "a"
    m.handle_key("d")
    assert m.page == live.PAGE_CONNECTIONS
    m.handle_key("r")  # no sorting behind a page
    assert m.sort == "rate" and m.page == live.PAGE_CONNECTIONS
    m.handle_key("esc")
    assert m.page == live.PAGE_TABLE
    m.handle_key("?")
    assert m.help
    m.handle_key("x")
    assert not m.help
    assert m.handle_key("q") == "quit"


def test_no_page_opens_without_a_row():
    m = ViewModel()
    m.handle_key("enter")
    m.handle_key("d")
    assert m.page == live.PAGE_TABLE


def test_q_quits_from_the_help_and_from_a_page():
    m = fed(interval(proc(1, "a", 100)))
    m.handle_key("?")
    assert m.handle_key("q") == "quit"
    m = fed(interval(proc(1, "a", 100)))
    m.handle_key("enter")
    assert m.handle_key("q") == "quit"


def test_connections_add_their_windows_and_closed_ones_linger():
    a = conn("127.0.0.1:80", "127.0.0.1:5000", 100, 10)
    b = conn("[::1]:53", "", 7, 0, state="NONE", protocol="udp", family="ipv6")
    m = fed(interval(proc(1, "srv", 107, 10, connections=[a, b])),
            interval(proc(1, "srv", 100, 10, connections=[a])))
    conns = m.rows[("pid", 1)].connections
    tcp = conns[("tcp", "127.0.0.1:80", "127.0.0.1:5000")]
    udp = conns[("udp6", "[::1]:53", "")]
    assert (tcp.total_in, tcp.total_out, tcp.rate_in, tcp.gone) == (200, 20, 100.0, False)
    assert udp.gone and udp.total_in == 7 and udp.rate_in == 0.0
    for _ in range(int(live.CLOSED_KEEP_S) + 1):
        m.update(interval(proc(1, "srv", 1, connections=[a])))
    assert ("udp6", "[::1]:53", "") not in m.rows[("pid", 1)].connections


def test_connections_per_row_are_bounded():
    many = [conn("127.0.0.1:80", f"127.0.0.1:{port}", 1) for port in range(1000, 1000 + live.MAX_CONNECTIONS + 50)]
    m = fed(interval(proc(1, "srv", 1, connections=many)))
    assert len(m.rows[("pid", 1)].connections) == live.MAX_CONNECTIONS
