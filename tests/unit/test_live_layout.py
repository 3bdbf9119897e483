"""The live view's screens as text: sizes, columns, hostile names, pages and units."""

from __future__ import annotations

import pytest
from livefixtures import conn, interval, proc

from procnetmon.live import layout, units
from procnetmon.live.model import ViewModel
from procnetmon.live.units import Units

HOSTILE = [
    "evil\x1b[2J\x1b]0;pwned\x07",  # escape sequences: clear screen, set title
    "line\nbreak\rcarriage",
    "\u202eright-to-left",  # a format character
    "e\u0301\u0301\u0301\u0301",  # combining marks
    "名前名前名前名前名前名前",  # wide characters
    "\udcff\udcfeundecodable",  # bytes that were not UTF-8
    "x" * 300,
]


def text(line: layout.Line) -> str:
    return "".join(t for t, _ in line)


def screen(m: ViewModel, width: int = 80, height: int = 24, unicode: bool = True) -> list[str]:
    return [text(line) for line in layout.frame(m, width, height, unicode)]


def fed(*records, **options) -> ViewModel:
    m = ViewModel(scope="all but lo", **options)
    for record in records:
        m.update(record)
    return m


def busy() -> ViewModel:
    rows = [proc(100 + i, f"proc{i}", 1000 * i, 10 * i, total_in=5000 * i, tcp_connections=i) for i in range(1, 40)]
    rows += [proc(99, name, 5) for name in HOSTILE]
    return fed(interval(*rows), interval(*rows))


@pytest.mark.parametrize("width, height", [(80, 24), (60, 20), (100, 30), (250, 60), (30, 6), (10, 3), (1, 1)])
@pytest.mark.parametrize("page", ["table", "enter", "d", "?"])
def test_every_line_is_exactly_as_wide_as_the_screen(width, height, page):
    m = busy()
    m.handle_key("end")  # the last row: a hostile one
    if page != "table":
        m.handle_key(page)
    lines = layout.frame(m, width, height)
    assert len(lines) == height
    for line in lines:
        assert layout.cell_width(text(line)) == width, text(line)
        assert text(line).isprintable(), text(line)


def test_hostile_names_cannot_reach_the_terminal_as_controls():
    for name in HOSTILE:
        shown = layout.screen_text(name)
        assert shown.isprintable()
        assert not any(layout.unicodedata.combining(c) for c in shown)
    assert layout.screen_text("evil\x1b[2J") == "evil\\x1b[2J"


def test_80x24_shows_every_column_but_the_container():
    lines = screen(busy())
    heading = lines[2].split()
    assert heading == ["PID", "NAME", "IN", "OUT", "LAST", "MIN", "PEAK", "TOTAL", "TCP", "UDP"]
    assert "payload mode" in lines[0] and "sort: rate v" in lines[0] and "bits SI" in lines[0]
    assert "q quit" in lines[-1] and "? help" in lines[-1]
    assert lines[3].split()[:2] == ["139", "proc39"]  # sorted by rate, the busiest first


def test_60x20_leaves_out_the_sparkline_and_the_peak_but_keeps_the_total():
    lines = screen(busy(), 60, 20)
    assert lines[2].split() == ["PID", "NAME", "IN", "OUT", "TOTAL", "TCP", "UDP"]
    assert len(lines) == 20


def test_a_wide_screen_adds_the_container_when_a_row_has_one():
    m = fed(interval(proc(1, "web", 10, container="docker://" + "a" * 64, cgroup="/docker/x")))
    assert "CONTAINER" in screen(m, 120, 10)[2]
    assert "docker://aaaaaaaaaaaa" in screen(m, 120, 10)[3]
    assert "CONTAINER" not in screen(fed(interval(proc(1, "web", 10))), 120, 10)[2]


def test_an_exited_process_says_so_and_is_dimmed():
    m = fed(interval(proc(7, "gone", 100, alive=False), proc(8, "here", 1)))
    lines = layout.frame(m, 80, 10)
    row = next(line for line in lines if "gone" in text(line))
    assert "exited" in text(row)
    assert {style for _, style in row} <= {layout.EXITED, layout.EXITED_SELECTED}
    assert "(1 exited)" in text(lines[1])


def test_the_selected_row_is_marked():
    m = fed(interval(proc(1, "a", 100), proc(2, "b", 50)))
    m.handle_key("down")
    lines = layout.frame(m, 80, 10)
    selected = [text(line) for line in lines if any(s == layout.SELECTED for _, s in line)]
    assert len(selected) == 1 and " b " in selected[0]


def test_the_table_scrolls_to_keep_the_selection_on_screen():
    m = busy()
    m.handle_key("end")
    lines = layout.frame(m, 80, 24)
    last = m.visible()[-1]
    assert any(s == layout.SELECTED for line in lines for _, s in line)
    assert any(layout.fit(layout.screen_text(last.name), 8) in text(line) for line in lines)
    assert not any(" proc39 " in text(line) for line in lines)  # the first row scrolled away


def test_wire_mode_and_pause_are_in_the_title():
    m = fed(interval(proc(1, "a", 1), mode="wire"), mode="wire")
    m.handle_key("p")
    title = screen(m)[0]
    assert "wire mode" in title and "PAUSED" in title


def test_before_the_first_record_it_says_it_waits():
    assert any("waiting for the first interval" in line for line in screen(ViewModel()))


def test_a_filter_that_matches_nothing_says_so():
    m = busy()
    for key in "/zzz":
        m.handle_key(key)
    lines = screen(m)
    assert lines[-1].startswith("/zzz_")
    assert any("no process name contains 'zzz'" in line for line in lines)


def test_the_detail_page_has_exact_bytes():
    m = fed(interval(proc(5, "curl", 1234, 56, total_in=1_234_567, total_out=89, cmdline="curl -O http://x")))
    m.handle_key("enter")
    lines = screen(m)
    assert "PID 5  curl  (alive)" in lines[1]
    assert any("1234567 B" in line and "89 B" in line for line in lines)
    assert any("curl -O http://x" in line for line in lines)


def test_the_connections_page_lists_the_sockets():
    m = fed(interval(proc(5, "srv", 300, 20, connections=[conn("127.0.0.1:8080", "127.0.0.1:40000", 300, 20),
                                                          conn("[::]:53", "", state="NONE", protocol="udp",
                                                               family="ipv6")])))
    m.handle_key("d")
    lines = screen(m, 120, 20)
    assert "2 sockets" in lines[1]
    row = next(line for line in lines if "127.0.0.1:40000" in line)
    assert row.split()[:4] == ["tcp", "127.0.0.1:8080", "127.0.0.1:40000", "ESTABLISHED"]
    assert "300 B" in row
    assert any(line.split()[:3] == ["udp6", "[::]:53", "*"] for line in lines)
    assert any("127.0.0.1:40000" in line for line in screen(m, 80, 20))  # the addresses fit at 80 too


def test_the_help_names_every_key():
    m = ViewModel()
    m.handle_key("?")
    page = "\n".join(screen(m, 100, 30))
    for key in ("Enter", " d ", "r t k n", " i ", " / ", " p ", " u ", "Esc", " ? ", " q "):
        assert key in page, key


def test_sparkline_newest_at_the_right_scaled_to_the_highest():
    assert layout.sparkline([0, 1, 2, 4, 8], 5, True, 5) == " \u2581\u2582\u2584\u2588"
    assert layout.sparkline([0.0] * 10, 5, True, 10) == "     "
    assert layout.sparkline([8], 4, False, 60) == "   @"
    assert layout.sparkline(list(range(60)), 10, False, 60)[-1] == "@"
    assert len(layout.sparkline(list(range(60)), 7, True, 60)) == 7


def test_fit_cuts_by_cells_and_marks_the_cut():
    assert layout.fit("abcdef", 4) == "abc~"
    assert layout.fit("ab", 4, ">") == "  ab"
    assert layout.fit("名前名前", 5) == "名前~"
    assert layout.cell_width(layout.fit("名前名前", 4)) == 4
    assert layout.fit("ab    ", 3) == "ab "  # only blanks cut: no mark


@pytest.mark.parametrize("value, u, shown", [
    (0, Units("bits"), "0 bps"),
    (125, Units("bits"), "1.00 Kbps"),
    (1_250_000, Units("bits"), "10.0 Mbps"),
    (999, Units("bytes"), "999 B/s"),
    (1_000, Units("bytes"), "1.00 KB/s"),
    (1_023, Units("bytes", iec=True), "1023 B/s"),
    (1_024, Units("bytes", iec=True), "1.00 KiB/s"),
    (128 * 1024, Units("bits", iec=True), "1.00 Mib/s"),
    (123_456_789, Units("bytes"), "123 MB/s"),
])
def test_rates_in_every_unit(value, u, shown):
    assert units.rate(value, u) == shown
    assert len(shown) <= 10


def test_sizes_si_and_iec():
    assert units.size(1_234_567, Units()) == "1.23 MB"
    assert units.size(1_234_567, Units(iec=True)) == "1.18 MiB"
    assert units.size(999_999, Units()) == "1.00 MB"  # rounded up into the next prefix
    assert units.size(12, Units()) == "12 B"


def test_a_page_whose_process_has_gone_turns_back_into_the_table():
    m = fed(interval(proc(5, "brief", 10, alive=False)))
    m.handle_key("enter")
    assert "PID 5  brief  (exited)" in screen(m)[1]
    for _ in range(40):
        m.update(interval())
    lines = screen(m)
    assert lines[2].split()[:2] == ["PID", "NAME"] and m.page == "table"
    assert lines[-1].startswith(" q quit")


def test_the_detail_page_has_every_protocol_class_that_moved_bytes():
    from procnetmon.model import Bytes

    row = proc(5, "pinger", 84, 84, protocols={"icmp": Bytes(84, 84), "udp": Bytes(0, 0)})
    m = fed(interval(row), interval(proc(5, "pinger", 16, 16, total_in=100, total_out=100,
                                         protocols={"icmp": Bytes(16, 16)})))
    m.handle_key("enter")
    lines = screen(m)
    assert any(line.split()[:5] == ["ICMP", "100", "B", "100", "B"] for line in lines)
    assert any(line.split()[:5] == ["TCP", "0", "B", "0", "B"] for line in lines)
    assert not any(line.split()[:1] == ["MPTCP"] for line in lines)
