"""--exclude-name and --exclude-self in the sampler: processes left out in
user space, by name or executable, with all their bytes, for good."""

from __future__ import annotations

from test_engine import FakeProbe, FakeProcesses, by_pid, collect, counters, make

from procnetmon.procinfo import Identity


def who(pid, name, exe=None, ppid=1):
    return Identity(pid, name, name, 1.0, ppid=ppid, exe=exe)


def test_a_name_or_an_executable_matching_a_glob_is_left_out():
    processes = FakeProcesses({10: who(10, "nginx", "/usr/sbin/nginx"),
                               20: who(20, "python3", "/opt/backup-agent/bin/backupd"),
                               30: who(30, "rsync", "/usr/bin/rsync")})
    probe = FakeProbe([counters(p10=dict(tcp_in=5), p20=dict(tcp_out=7), p30=dict(udp_out=9))])
    summary, _ = collect(make(probe, processes=processes, interval=1.0, duration=1.0,
                              exclude_names=("backup*", "rsync")))
    assert set(by_pid(summary)) == {10}
    assert (summary.aggregated.bytes_in, summary.aggregated.bytes_out) == (5, 0)


def test_globs_match_the_whole_name_and_case_matters():
    processes = FakeProcesses({10: who(10, "Nginx"), 20: who(20, "nginx-helper"), 30: who(30, "nginx")})
    probe = FakeProbe([counters(p10=dict(tcp_in=1), p20=dict(tcp_in=1), p30=dict(tcp_in=1))])
    summary, _ = collect(make(probe, processes=processes, interval=1.0, duration=1.0, exclude_names=("nginx",)))
    assert set(by_pid(summary)) == {10, 20}


def test_a_process_gone_before_a_look_is_matched_by_its_kernel_name_and_not_kept():
    probe = FakeProbe([counters(p40=dict(tcp_out=100), p10=dict(tcp_in=1)), counters(p10=dict(tcp_in=2))],
                      exited={40: "backupd"})
    processes = FakeProcesses({10: who(10, "nginx")})
    sampler = make(probe, processes=processes, interval=1.0, duration=2.0, emit_intervals=True,
                   exclude_names=("backup?",))
    summary, intervals = collect(sampler)
    assert [set(by_pid(r)) for r in intervals] == [{10}, {10}]
    assert set(by_pid(summary)) == {10} and 40 not in sampler.tracked and len(sampler.archive) == 0


def test_a_process_that_execs_into_an_excluded_program_is_left_out_for_good():
    class Execing(FakeProcesses):
        def identify(self, pid):
            self.identify_calls.append(pid)
            runs_rsync = self.identify_calls.count(pid) > 1
            return who(pid, "rsync" if runs_rsync else "sh", "/usr/bin/rsync" if runs_rsync else "/bin/sh")

    probe = FakeProbe([counters(p50=dict(tcp_out=10)), counters(p50=dict(tcp_out=30)),
                       counters(p50=dict(tcp_out=60))], execs=[[], [50], []])
    sampler = make(probe, processes=Execing({50: who(50, "sh")}), interval=1.0, duration=3.0,
                   emit_intervals=True, exclude_names=("rsync",))
    summary, intervals = collect(sampler)
    assert [set(by_pid(r)) for r in intervals] == [{50}, set(), set()]
    assert by_pid(summary) == {}


def test_given_pids_that_match_are_left_out_too():
    processes = FakeProcesses({10: who(10, "nginx"), 20: who(20, "backupd")})
    probe = FakeProbe([counters(p10=dict(tcp_in=5), p20=dict(tcp_out=7))])
    summary, _ = collect(make(probe, processes=processes, pids=[10, 20], interval=1.0, duration=1.0,
                              exclude_names=("backupd",)))
    assert [p.pid for p in summary.processes] == [10]


def test_exclude_self_leaves_out_procnetmons_children_but_not_command():
    me = 777
    processes = FakeProcesses({10: who(10, "loader", ppid=me), 20: who(20, "make", ppid=me),
                               30: who(30, "cc", ppid=20)})
    probe = FakeProbe([counters(p10=dict(tcp_out=1), p20=dict(tcp_out=2), p30=dict(tcp_out=3))])
    summary, _ = collect(make(probe, processes=processes, pids=[20], command=["make"], follow_children=True,
                              interval=1.0, duration=1.0, exclude_children_of=me))
    assert [p.pid for p in summary.processes] == [20, 30]


def test_without_exclusions_nothing_is_screened():
    processes = FakeProcesses({10: who(10, "backupd")})
    probe = FakeProbe([counters(p10=dict(tcp_in=5))])
    summary, _ = collect(make(probe, processes=processes, interval=1.0, duration=1.0))
    assert set(by_pid(summary)) == {10}


def test_nothing_is_kept_of_an_excluded_process_whose_counters_went_without_an_exit_note():
    processes = FakeProcesses({10: who(10, "nginx"), 20: who(20, "backupd")})
    probe = FakeProbe([counters(p10=dict(tcp_in=1), p20=dict(tcp_out=7)), counters(p10=dict(tcp_in=2))])
    sampler = make(probe, processes=processes, interval=1.0, duration=2.0, exclude_names=("backupd",))
    summary, _ = collect(sampler)
    assert set(by_pid(summary)) == {10} and set(sampler.tracked) == {10}
