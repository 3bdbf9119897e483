"""More about who: each row carries the process's parent, user, executable and
start, read when the process is first identified and kept after it exits
(also once it has left the engine's state for the archive)."""

from __future__ import annotations

import os
import sys
from datetime import datetime, timezone

from test_engine import FakeProbe, FakeProcesses, by_pid, collect, counters, make

from procnetmon import procinfo
from procnetmon.procinfo import Identity
from procnetmon.tally import Archive, Peaks, Usage


def who_of(row):
    return (row.ppid, row.user, row.uid, row.exe, row.start_time)


def test_identify_reads_parent_user_executable_and_start_of_a_real_process():
    me = procinfo.identify(os.getpid())
    assert me is not None
    assert me.ppid == os.getppid()
    assert me.uid == os.geteuid()
    assert me.user == procinfo.user_name(os.geteuid())
    assert os.path.realpath(me.exe) == os.path.realpath(sys.executable)
    assert me.who.create_time == me.create_time > 0


def test_exe_is_none_where_the_link_cannot_be_read(tmp_path):
    (tmp_path / "7").mkdir()
    os.symlink("/usr/bin/hostile\nname", tmp_path / "7" / "exe")
    assert procinfo.exe_of(7, proc=str(tmp_path)) == "/usr/bin/hostile\nname"  # cleaned when written
    assert procinfo.exe_of(8, proc=str(tmp_path)) is None  # gone, or a kernel thread (ENOENT)
    assert procinfo.exe_of(2) is None or os.geteuid() != 0  # kthreadd has no executable


def test_a_uid_without_a_name_has_no_user():
    assert procinfo.user_name(4_000_000_000) is None
    assert procinfo.user_name(0) == "root"


def test_rows_carry_who_and_keep_it_after_exit_and_retirement():
    started = 1_700_000_000.5
    nginx = Identity(10, "nginx", "nginx", started, ppid=1, uid=33, user="www-data", exe="/usr/sbin/nginx")
    curl = Identity(20, "curl", "curl x", started + 60, ppid=10, uid=1000, user="ann", exe="/usr/bin/curl")
    processes = FakeProcesses({10: nginx, 20: curl}, alive={10})
    # curl moves bytes and exits in the second read; the third retires it to the archive.
    probe = FakeProbe([counters(p10=dict(tcp_in=1), p20=dict(tcp_out=5)),
                       counters(p10=dict(tcp_in=2), p20=dict(tcp_out=9)),
                       counters(p10=dict(tcp_in=3))], exited={20: "curl"})
    sampler = make(probe, processes=processes, interval=1.0, duration=3.0, emit_intervals=True)
    summary, intervals = collect(sampler)
    assert 20 not in sampler.tracked and len(sampler.archive) == 1  # it did go through the archive
    rows = by_pid(summary)
    assert who_of(rows[10]) == (1, "www-data", 33, "/usr/sbin/nginx",
                                datetime.fromtimestamp(started, timezone.utc))
    assert who_of(rows[20]) == (10, "ann", 1000, "/usr/bin/curl",
                                datetime.fromtimestamp(started + 60, timezone.utc))
    assert rows[20].alive is False and rows[20].bytes_out == 9
    assert who_of(by_pid(intervals[0])[20])[:4] == (10, "ann", 1000, "/usr/bin/curl")


def test_a_process_gone_before_it_was_identified_has_no_who():
    probe = FakeProbe([counters(p30=dict(udp_out=4))], exited={30: "ghost"})
    summary, _ = collect(make(probe, processes=FakeProcesses({}), interval=1.0, duration=1.0))
    row = by_pid(summary)[30]
    assert row.name == "ghost" and who_of(row) == (None, None, None, None, None)


def test_the_archive_keeps_unknown_fields_unknown():
    archive = Archive()
    archive.add(5, Usage(1, 2, 3, 4), Peaks(), "a", "", None, "", (None, 0, None, "/x", None))
    archive.add(6, Usage(), Peaks(), "b", "", "/c", "g", (1, None, "root", None, 2.5))
    (_, _, _, _, _, _, _, who5), (_, _, _, name, _, cgroup, group, who6) = archive.rows()
    assert who5 == (None, 0, None, "/x", None)
    assert (name, cgroup, group, who6) == ("b", "/c", "g", (1, None, "root", None, 2.5))


def test_hostile_user_and_executable_stay_valid_json(records):
    import json

    from procnetmon.model import record_to_dict
    from procnetmon.output.jsonout import format_json_line

    row = records.nginx(exe="/tmp/\udcff\n\x1b[2J(deleted)", user="r\udc80oot")
    line = format_json_line(records.summary([row]))
    line.encode("utf-8")  # valid UTF-8: no lone surrogate left
    process = json.loads(line)["processes"][0]
    assert process["exe"] == "/tmp/\\xff\n\x1b[2J(deleted)" and process["user"] == "r\\x80oot"
    assert line.count("\n") == 1
    assert record_to_dict(records.summary([row]))["processes"][0]["uid"] == 33
