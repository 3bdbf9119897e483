"""CSV output: the documented column order, exact rows, quoting, TOTAL row."""

import csv
import io

from procnetmon.output.csvout import CSV_COLUMNS, format_csv

HEADER = (
    "timestamp,type,pid,name,cmdline,alive,mode,duration_s,bytes_in,bytes_out,"
    "rate_in,rate_out,peak_rate_in,peak_rate_out,tcp_bytes_in,tcp_bytes_out,"
    "udp_bytes_in,udp_bytes_out,tcp_connections,udp_connections,"
    "total_bytes_in,total_bytes_out,interfaces,tcp_listening,cgroup,container,pod,pids,"
    "ppid,user,uid,exe,start_time,"
    "udplite_bytes_in,udplite_bytes_out,icmp_bytes_in,icmp_bytes_out,icmpv6_bytes_in,icmpv6_bytes_out,"
    "raw_bytes_in,raw_bytes_out,sctp_bytes_in,sctp_bytes_out,mptcp_bytes_in,mptcp_bytes_out,"
    "packet_bytes_in,packet_bytes_out,other_bytes_in,other_bytes_out\n"
)
OTHERS = ",0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0"  # the other protocol classes' bytes, none here

SUMMARY_ROWS = (
    "2026-11-22T10:01:00.000+00:00,summary,1234,nginx,nginx: worker process,true,payload,60.0,"
    "1500,200,25.0,3.333,1000000.0,125.0,1000,200,500,0,2,1,1500,200,all,1,,,,,"
    "1,www-data,33,/usr/sbin/nginx,2026-11-22T09:30:00.250+00:00" + OTHERS + "\n"
    "2026-11-22T10:01:00.000+00:00,summary,99,curl,curl -O http://x/big,false,payload,60.0,"
    "5000000,10,83333.333,0.167,2500000.0,10.0,5000000,10,0,0,0,0,5000000,10,all,0,,,,,,,,," + OTHERS + "\n"
)

SUMMARY_TOTAL = (
    "2026-11-22T10:01:00.000+00:00,summary,,TOTAL,,,payload,60.0,"
    "5001500,210,83358.333,3.5,2500000.0,125.0,5001000,210,500,0,2,1,5001500,210,all,1,,,,,,,,," + OTHERS + "\n"
)


def test_columns_added_after_the_first_release_come_after_interfaces():
    # Appended, so older column positions stay.
    assert CSV_COLUMNS[CSV_COLUMNS.index("interfaces"):CSV_COLUMNS.index("start_time") + 2] == (
        "interfaces", "tcp_listening", "cgroup", "container", "pod", "pids",
        "ppid", "user", "uid", "exe", "start_time", "udplite_bytes_in")


def test_columns_start_as_documented():
    assert CSV_COLUMNS[:4] == ("timestamp", "type", "pid", "name")
    assert ",".join(CSV_COLUMNS) + "\n" == HEADER
    assert len(set(CSV_COLUMNS)) == len(CSV_COLUMNS)


def test_summary_exact(records):
    assert format_csv(records.summary(), header=True, aggregate=False) == HEADER + SUMMARY_ROWS


def test_summary_with_total_row(records):
    assert format_csv(records.summary(), header=False, aggregate=True) == SUMMARY_ROWS + SUMMARY_TOTAL


def test_interval_rows_carry_running_totals_and_interfaces(records):
    rows = list(csv.DictReader(io.StringIO(format_csv(records.interval(), header=True, aggregate=True))))
    assert [r["pid"] for r in rows] == ["1234", "99", ""]
    assert rows[0]["type"] == "interval"
    assert (rows[0]["total_bytes_in"], rows[0]["total_bytes_out"]) == ("15000", "2000")
    assert (rows[2]["name"], rows[2]["total_bytes_in"]) == ("TOTAL", "5015000")
    assert {r["interfaces"] for r in rows} == {"eth0"}


def test_several_interfaces_are_joined_with_semicolons(records):
    text = format_csv(records.summary([records.nginx()], interfaces=["eth0", "wlan0"]), False, False)
    assert ",eth0;wlan0,1,,,,," in text


def test_quoting_of_commas_quotes_and_escaping_of_newlines(records):
    proc = records.nginx(name='we,"ird', cmdline="a,b\nc")
    text = format_csv(records.summary([proc]), header=False, aggregate=False)
    assert ',"we,""ird","a,b\\x0ac",' in text
    (row,) = list(csv.reader(io.StringIO(text)))
    assert (row[3], row[4]) == ('we,"ird', "a,b\\x0ac")
    assert len(row) == len(CSV_COLUMNS)


def test_a_command_line_cannot_add_a_line_to_the_file(records):
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBadKeyBadKeyBadKeyBadKeyBadKeyBadKeyBad evil"
    proc = records.nginx(name="x\ry", cmdline=f"sleep\n{key}\n")
    text = format_csv(records.summary([proc]), header=False, aggregate=False)
    assert text.count("\n") == 1 and "\r" not in text
    assert not any(line.startswith("ssh-") for line in text.splitlines())


def test_empty_record_still_leaves_a_total_row_of_zeros(records):
    # A cron job's idle minute must leave a row, or it looks like a run that never happened.
    for aggregate in (False, True):
        text = format_csv(records.summary([]), header=False, aggregate=aggregate)
        (row,) = list(csv.DictReader(io.StringIO(HEADER + text)))
        assert (row["pid"], row["name"], row["type"]) == ("", "TOTAL", "summary")
        assert (row["bytes_in"], row["bytes_out"], row["tcp_connections"], row["tcp_listening"]) == \
            ("0", "0", "0", "0")
    assert format_csv(records.summary([]), header=True, aggregate=False).startswith(HEADER)
    interval = format_csv(records.interval([]), header=False, aggregate=False)
    assert interval.split(",")[1:4] == ["interval", "", "TOTAL"]


def test_timestamp_has_milliseconds(records):
    from datetime import datetime, timezone

    end = datetime(2026, 11, 30, 1, 23, 10, 437512, tzinfo=timezone.utc)
    text = format_csv(records.summary([records.nginx()], end=end), header=False, aggregate=False)
    assert text.startswith("2026-11-30T01:23:10.437+00:00,summary,")


def test_every_row_has_every_column(records):
    text = format_csv(records.interval(), header=True, aggregate=True)
    assert {len(row) for row in csv.reader(io.StringIO(text))} == {len(CSV_COLUMNS)}


def test_cgroup_columns_come_after_the_earlier_ones(records):
    # Appended: cron files written before keep their column layout.
    i = CSV_COLUMNS.index("cgroup")
    assert CSV_COLUMNS[i - 1:i + 4] == ("tcp_listening", "cgroup", "container", "pod", "pids")
    record = records.summary([records.nginx()])
    record.processes[0].cgroup = "/system.slice/nginx.service"
    record.processes[0].container = "nginx.service"
    row = next(csv.DictReader(io.StringIO(format_csv(record, True, False))))
    assert (row["cgroup"], row["container"], row["pod"], row["pids"]) == \
        ("/system.slice/nginx.service", "nginx.service", "", "")


def test_other_protocol_classes_have_their_columns_at_the_end(records):
    proc = records.nginx(protocols={"tcp": records.Bytes(1000, 200), "icmp": records.Bytes(84, 84),
                                    "packet": records.Bytes(0, 60)})
    row = next(csv.DictReader(io.StringIO(format_csv(records.summary([proc]), True, False))))
    assert CSV_COLUMNS[-16:] == tuple(f"{p}_bytes_{d}" for p in ("udplite", "icmp", "icmpv6", "raw", "sctp", "mptcp",
                                                                 "packet", "other") for d in ("in", "out"))
    assert (row["icmp_bytes_in"], row["icmp_bytes_out"], row["packet_bytes_out"], row["raw_bytes_in"]) == (
        "84", "84", "60", "0")


def test_who_columns_come_after_pids(records):
    """ppid, user, uid, exe, start_time were appended after pids: each row has them,
    empty when unknown and in the TOTAL row; hostile executables stay on one line."""
    i = CSV_COLUMNS.index("ppid")
    assert CSV_COLUMNS[i - 1:i + 5] == ("pids", "ppid", "user", "uid", "exe", "start_time")
    proc = records.nginx(exe="/tmp/x\ny,z", user="ev\x1bil")
    rows = list(csv.DictReader(io.StringIO(format_csv(records.summary([proc, records.curl()]), True, True))))
    assert (rows[0]["ppid"], rows[0]["user"], rows[0]["uid"], rows[0]["exe"], rows[0]["start_time"]) == \
        ("1", "ev\\x1bil", "33", "/tmp/x\\x0ay,z", "2026-11-22T09:30:00.250+00:00")
    for row in rows[1:]:  # curl exited unknown, and TOTAL
        assert [row[k] for k in ("ppid", "user", "uid", "exe", "start_time")] == [""] * 5
