"""The human table: exact layout, alignment, sorting, TOTAL row, exited
marker, units, details, and streaming interval lines."""

import re

import pytest

from procnetmon.output.text import format_text, human_bytes, human_rate, sorted_processes

SUMMARY = """\
procnetmon summary  2026-11-22 10:00:00 -> 10:01:00  60.0 s  payload  interfaces: all but lo
    PID  NAME                     IN        OUT     IN RATE    OUT RATE     PEAK IN    PEAK OUT    TCP    UDP
     99  curl (exited)        5.0 MB       10 B  666.7 Kbps       1 bps   20.0 Mbps      80 bps      0      0
   1234  nginx                1.5 KB      200 B     200 bps      27 bps    8.0 Mbps    1.0 Kbps      2      1
         TOTAL                5.0 MB      210 B  666.9 Kbps      28 bps   20.0 Mbps    1.0 Kbps      2      1
"""

INTERVAL = """\
TIME          PID  NAME                         IN        OUT     IN RATE    OUT RATE   TOTAL IN  TOTAL OUT    TCP    UDP
10:01:00       99  curl (exited)            5.0 MB       10 B  666.7 Kbps       1 bps     5.0 MB       10 B      0      0
10:01:00     1234  nginx                    1.5 KB      200 B     200 bps      27 bps    15.0 KB     2.0 KB      2      1
10:01:00           TOTAL                    5.0 MB      210 B  666.9 Kbps      28 bps     5.0 MB     2.0 KB      2      1
"""


def cell_ends(line: str) -> list[int]:
    """Where each cell of a table line ends (right-aligned columns line up)."""
    return [m.end() for m in re.finditer(r"\S+(?: \S+)*", line)]


@pytest.mark.parametrize(
    "value, text",
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1.0 KB"),
        (1500, "1.5 KB"),
        (999_949, "999.9 KB"),
        (999_999, "1.0 MB"),  # rounded before choosing the unit
        (2_500_000_000, "2.5 GB"),
        (3e15, "3.0 PB"),
    ],
)
def test_human_bytes_powers_of_1000(value, text):
    assert human_bytes(value) == text


@pytest.mark.parametrize(
    "rate, units, text",
    [
        (1_000_000, "bits", "8.0 Mbps"),
        (0, "bits", "0 bps"),
        (100, "bits", "800 bps"),
        (125, "bits", "1.0 Kbps"),
        (1_000_000, "bytes", "1.0 MB/s"),
        (1500, "bytes", "1.5 KB/s"),
        (12, "bytes", "12 B/s"),
    ],
)
def test_human_rate(rate, units, text):
    assert human_rate(rate, units) == text


def test_summary_table_exact(records):
    assert format_text(records.summary(), aggregate=True) == SUMMARY


def test_summary_rows_share_column_positions(records):
    lines = format_text(records.summary(), aggregate=True).splitlines()[1:]
    # The NAME column is left-aligned, the rest right-aligned: compare where
    # the numeric cells end, and where NAME starts.
    ends = [cell_ends(line)[-8:] for line in lines]
    assert all(e == ends[0] for e in ends)
    name_at = {line.index(word) for line, word in zip(lines, ["NAME", "curl", "nginx", "TOTAL"])}
    assert len(name_at) == 1


def test_long_names_widen_the_name_column_for_every_row(records):
    long = records.nginx(pid=7, name="a-rather-long-process-name")
    table = format_text(records.summary([long, records.nginx()]), sort="pid")
    lines = table.splitlines()[1:]
    assert "a-rather-long-process-name" in table
    assert len({len(line) for line in lines}) == 1  # every row equally wide


def test_no_aggregate_no_total_row(records):
    assert "TOTAL" not in format_text(records.summary())


def test_exited_marker_only_on_exited(records):
    table = format_text(records.summary())
    assert "curl (exited)" in table
    assert "nginx (exited)" not in table


def test_empty_record_says_no_traffic(records):
    text = format_text(records.summary([]), aggregate=True)
    assert text.splitlines() == [
        "procnetmon summary  2026-11-22 10:00:00 -> 10:01:00  60.0 s  payload  interfaces: all but lo",
        "no traffic measured",
    ]


@pytest.mark.parametrize(
    "sort, order",
    [("total", [99, 1234, 5]), ("in", [99, 1234, 5]), ("out", [1234, 99, 5]),
     ("pid", [5, 99, 1234]), ("name", [5, 99, 1234])],
)
def test_sort_orders(records, sort, order):
    procs = [records.nginx(), records.curl(), records.nginx(pid=5, name="avahi", bytes_in=0, bytes_out=0)]
    assert [p.pid for p in sorted_processes(procs, sort, None)] == order


def test_ties_are_broken_by_pid(records):
    procs = [records.nginx(pid=30), records.nginx(pid=10), records.nginx(pid=20)]
    assert [p.pid for p in sorted_processes(procs, "total", None)] == [10, 20, 30]


def test_top_limits_rows_but_total_covers_all(records):
    table = format_text(records.summary(), top=1, aggregate=True, sort="pid")
    assert "curl" in table and "nginx" not in table
    total = table.splitlines()[-1]
    assert total.split()[:3] == ["TOTAL", "5.0", "MB"]


def test_units_bytes(records):
    table = format_text(records.summary(), units="bytes")
    assert "83.3 KB/s" in table and "1.0 MB/s" in table
    assert "bps" not in table


def test_no_header_drops_column_headings_only(records):
    lines = format_text(records.summary(), header=False).splitlines()
    assert lines[0].startswith("procnetmon summary")
    assert not any("PID" in line for line in lines)
    assert len(lines) == 3


def test_title_names_interfaces_and_loopback(records):
    assert format_text(records.summary(interfaces=["eth0", "lo"])).startswith(
        "procnetmon summary  2026-11-22 10:00:00 -> 10:01:00  60.0 s  payload  interfaces: eth0,lo\n"
    )
    assert "interfaces: all\n" in format_text(records.summary(include_loopback=True))
    assert "  wire  " in format_text(records.summary(mode="wire"))


def test_details_lists_connections_under_their_process(records):
    nginx = records.nginx(connections=records.connections())
    lines = format_text(records.summary([nginx]), details=True).splitlines()
    assert lines[2].split()[:2] == ["1234", "nginx"]
    assert lines[3] == " " * 9 + "ppid 1  user www-data (33)  started 2026-11-22 09:30:00  exe /usr/sbin/nginx"
    assert lines[4].split() == [
        "tcp", "10.0.0.1:443", "->", "10.0.0.2:55555", "ESTABLISHED", "in", "1.0", "KB", "out", "200", "B",
    ]
    assert lines[5].split() == ["udp6", "[::1]:53", "->", "*", "NONE", "in", "500", "B", "out", "0", "B"]
    assert lines[4].index("->") == lines[5].index("->")
    assert lines[4].startswith(" " * 9)


def test_details_who_line_is_left_out_when_nothing_is_known_and_escapes_hostile_text(records):
    curl = records.curl()  # exited before procnetmon could look
    lines = format_text(records.summary([curl]), details=True).splitlines()
    assert len(lines) == 3
    hostile = records.nginx(exe="/tmp/\x1b[2Jx\nrm", user=None, uid=1001, ppid=None, start_time=None)
    (who,) = format_text(records.summary([hostile]), details=True).splitlines()[3:]
    assert who.split() == ["user", "?", "(1001)", "exe", "/tmp/\\x1b[2Jx\\x0arm"]
    interval = format_text(records.interval([records.nginx()]), details=True).splitlines()
    assert interval[2].strip().startswith("ppid 1  user www-data (33)")


def test_other_protocols_get_a_column_and_their_own_line_with_details(records):
    pinger = records.nginx(pid=7, name="ping", protocols={"icmp": records.Bytes(840, 840)},
                           tcp=records.Bytes(0, 0), udp=records.Bytes(0, 0), bytes_in=840, bytes_out=840)
    plain = format_text(records.summary([records.nginx()]))
    assert "OTHER" not in plain  # as before, while only TCP and UDP moved bytes
    lines = format_text(records.summary([records.nginx(), pinger]), aggregate=True).splitlines()
    assert lines[1].split()[-1] == "OTHER"
    (ping_line,) = [line for line in lines if line.split()[:2] == ["7", "ping"]]
    assert ping_line.split()[-2:] == ["1.7", "KB"]
    assert lines[-1].split()[0] == "TOTAL" and lines[-1].split()[-2:] == ["1.7", "KB"]
    detailed = format_text(records.summary([pinger]), details=True).splitlines()
    assert detailed[3].split() == ["protocols:", "icmp", "in", "840", "B", "out", "840", "B"]


def test_details_off_hides_connections(records):
    nginx = records.nginx(connections=records.connections())
    assert "ESTABLISHED" not in format_text(records.summary([nginx]))
    assert "ppid" not in format_text(records.summary([nginx]))


def test_lost_updates_warn(records):
    text = format_text(records.summary(lost_updates=7))
    assert text.splitlines()[-1].startswith("warning: 7 counter updates were lost")


def test_interval_lines_exact(records):
    assert format_text(records.interval(), aggregate=True) == INTERVAL


def test_interval_without_header_is_one_line_per_process(records):
    lines = format_text(records.interval(), header=False).splitlines()
    assert len(lines) == 2
    assert all(line.startswith("10:01:00") for line in lines)
    assert len({len(line) for line in lines}) == 1


def test_interval_lines_keep_columns_across_records(records):
    """Streaming lines of different intervals line up under one heading."""
    first = format_text(records.interval(), header=True).splitlines()
    small = records.nginx(bytes_in=1, bytes_out=0, rate_in=1, rate_out=0, total_bytes_in=1)
    later = format_text(records.interval([small]), header=False).splitlines()
    assert len({len(line) for line in first + later}) == 1


def test_interval_long_name_is_cut_keeping_the_exited_marker(records):
    proc = records.curl(name="x" * 40)
    line = format_text(records.interval([proc]), header=False).splitlines()[0]
    assert ("x" * 10 + "~ (exited)") in line
    assert "x" * 12 not in line


def test_empty_interval(records):
    assert format_text(records.interval([]), header=False) == "10:01:00  no traffic measured\n"


def test_workload_column_only_when_a_row_is_in_a_cgroup(records):
    plain = format_text(records.summary())
    assert "CONTAINER/CGROUP" not in plain
    record = records.summary()
    record.processes[0].cgroup = "/system.slice/docker-" + "ab" * 32 + ".scope"
    record.processes[0].container = "docker://" + "ab" * 32
    record.processes[1].cgroup = "/pnm/x"
    text = format_text(record)
    assert "CONTAINER/CGROUP" in text.splitlines()[1]
    assert "docker://abababababab\n" in text and "docker://" + "ab" * 7 not in text
    assert "/pnm/x" in text
