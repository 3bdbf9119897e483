"""Process trees without root: ``-- COMMAND`` and ``--children`` on the
command line, the engine's rows for PIDs learnt from the kernel, and the
gated launch of COMMAND (real forks of harmless commands)."""

from __future__ import annotations

import os
import signal
import sys
import time
from types import SimpleNamespace

import pytest
from test_engine import QuietProbe

from procnetmon import cli, launch
from procnetmon.engine import Options, Sampler
from procnetmon.model import RECORD_SUMMARY
from procnetmon.probes import CounterKey, Snapshot
from procnetmon.procinfo import Identity

# -- the command line ------------------------------------------------------------


def refused(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(list(argv))
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_command_after_dashes_needs_no_duration():
    args = cli.parse_args(["--json", "--", "sh", "-c", "curl -s x -o y", "--", "-t"])
    assert args.command == ["sh", "-c", "curl -s x -o y", "--", "-t"]
    assert (args.time, args.continuous, args.count) == (None, False, None)
    assert args.format == "json"
    assert not cli.is_streaming(args)


def test_options_that_look_like_ours_after_dashes_belong_to_command():
    args = cli.parse_args(["-t", "5s", "--", "ls", "-p", "--check"])
    assert args.command == ["ls", "-p", "--check"]
    assert (args.pids, args.check, args.time) == (None, False, 5.0)


def test_no_dashes_no_command():
    assert cli.parse_args(["-t", "1s"]).command is None


def test_dashes_with_nothing_after_them(capsys):
    err = refused(capsys, "-t", "1s", "--")
    assert "nothing to run after --" in err


def test_command_without_dashes_is_refused_with_a_hint(capsys):
    err = refused(capsys, "-t", "1s", "make")
    assert "unexpected argument 'make'" in err and "procnetmon -- make" in err


def test_pids_with_a_command_is_a_usage_error(capsys):
    err = refused(capsys, "-p", "1", "--", "true")
    assert "-p measures running processes and -- COMMAND the one it starts" in err


def test_continuous_with_a_command_streams_until_it_ends():
    args = cli.parse_args(["-c", "--", "true"])
    assert args.continuous and cli.is_streaming(args)


def test_interval_with_a_command_streams():
    args = cli.parse_args(["--interval", "2s", "--", "true"])
    assert cli.is_streaming(args) and args.interval == 2.0


@pytest.mark.parametrize("argv", [["-t", "2s"], ["-n", "3"]])
def test_time_and_count_bound_a_command(argv):
    args = cli.parse_args(argv + ["--", "true"])
    assert args.command == ["true"]


def test_stdout_output_with_a_command_is_refused(capsys):
    err = refused(capsys, "-o", "-", "--", "true")
    assert "standard error by default" in err


def test_serve_with_a_command_is_a_usage_error(capsys):
    err = refused(capsys, "--serve", "9101", "--", "true")
    assert "--serve runs until stopped and -- COMMAND until COMMAND ends" in err


def test_output_file_with_a_command():
    assert cli.parse_args(["-o", "x.json", "--json", "--", "true"]).output == "x.json"


def test_children_need_pids(capsys):
    err = refused(capsys, "--children", "-t", "1s")
    assert "--children follows the descendants of the -p PIDS" in err


def test_children_with_pids():
    args = cli.parse_args(["-p", "12", "--children", "-c"])
    assert args.children and args.pids == [12] and args.command is None


def test_children_with_a_command_are_followed_anyway():
    assert cli.parse_args(["--children", "--", "true"]).command == ["true"]


def test_split_command():
    assert cli.split_command(["-c"]) == (["-c"], None)
    assert cli.split_command(["-c", "--"]) == (["-c"], [])
    assert cli.split_command(["--", "a", "--", "b"]) == ([], ["a", "--", "b"])


def test_help_says_command_outlives_time():
    text = cli.build_parser().format_help()
    assert "COMMAND keeps running when DURATION ends first" in " ".join(text.split())


# -- the engine: rows for processes learnt from the kernel ---------------------


class Probe(QuietProbe):
    def __init__(self, counters, exited=None):
        self.counters = counters
        self.exited_names = exited or {}

    def read(self):
        return Snapshot(counters=dict(self.counters))

    def exited(self):
        return dict(self.exited_names)


class Processes:
    def __init__(self, identities):
        self.identities = identities
        self.calls = []

    def identify(self, pid):
        self.calls.append(pid)
        return self.identities.get(pid)

    def still_alive(self, identity):
        return identity.pid in self.identities

    def sockets_of(self, pids):
        return {}

    def cgroup_of(self, pid):
        return None


class Clock:
    t = 100.0

    def __call__(self):
        return self.t


class Stop:
    def __init__(self, clock):
        self.clock = clock

    def wait(self, timeout):
        self.clock.t += timeout
        return False

    def is_set(self):
        return False


def run_sampler(counters, processes, exited=None, **options):
    clock = Clock()
    sampler = Sampler(Probe(counters, exited), Options(interval=1.0, count=1, **options), stop=Stop(clock),
                      monotonic=clock, processes=processes)
    return sampler.run(lambda record: True)


def out(pid, nbytes):
    return {CounterKey(pid, "tcp", "out"): nbytes}


def test_followed_children_are_rows_after_the_given_pids():
    processes = Processes({10: Identity(10, "sh", "sh -c x", 1.0), 31: Identity(31, "curl", "curl x", 2.0)})
    counters = {**out(31, 500), **out(30, 70), **out(99, 0)}
    summary = run_sampler(counters, processes, exited={30: "wget"}, pids=[10], follow_children=True)
    assert summary.type == RECORD_SUMMARY
    assert [(p.pid, p.name, p.bytes_out) for p in summary.processes] == [
        (10, "sh", 0), (30, "wget", 70), (31, "curl", 500)]
    assert summary.aggregated.bytes_out == 570


class ScriptedProbe(Probe):
    """One (counters, exits) pair per read, as the real probe reports each exit once."""

    def __init__(self, reads):
        super().__init__({})
        self.reads = list(reads)

    def read(self):
        self.counters, self.exited_names = self.reads.pop(0) if self.reads else ({}, {})
        return super().read()


def test_followed_child_that_exited_stays_in_the_summary_after_the_given_pids():
    processes = Processes({10: Identity(10, "sh", "sh -c x", 1.0)})
    probe = ScriptedProbe([({**out(31, 500), **out(12, 1)}, {31: "curl"}),
                           ({**out(12, 2)}, {}), ({**out(12, 3)}, {})])
    clock = Clock()
    sampler = Sampler(probe, Options(pids=[10], follow_children=True, interval=1.0, count=3),
                      stop=Stop(clock), monotonic=clock, processes=processes)
    summary = sampler.run(lambda record: True)
    assert [(p.pid, p.name, p.bytes_out) for p in summary.processes] == [
        (10, "sh", 0), (12, "?", 3), (31, "curl", 500)]
    assert summary.aggregated.bytes_out == 503


def test_without_follow_only_the_given_pids_are_rows():
    processes = Processes({10: Identity(10, "sh", "sh", 1.0)})
    summary = run_sampler({**out(31, 500)}, processes, pids=[10])
    assert [p.pid for p in summary.processes] == [10]


def test_command_is_looked_up_at_the_first_sample_not_before():
    processes = Processes({40: Identity(40, "make", "make -j4", 1.0)})
    clock = Clock()
    sampler = Sampler(Probe({}), Options(pids=[40], command=["make", "-j4"], follow_children=True,
                                         interval=1.0, count=1),
                      stop=Stop(clock), monotonic=clock, processes=processes)
    assert processes.calls == []  # /proc still shows procnetmon until the exec
    summary = sampler.run(lambda record: True)
    assert processes.calls == [40]
    assert (summary.processes[0].name, summary.processes[0].cmdline) == ("make", "make -j4")


def test_command_gone_before_the_first_sample_is_named_from_its_arguments():
    summary = run_sampler({}, Processes({}), pids=[40], command=["/usr/bin/env", "X=1", "true"],
                          follow_children=True)
    row = summary.processes[0]
    assert (row.pid, row.name, row.cmdline, row.alive) == (40, "env", "/usr/bin/env X=1 true", False)


def test_command_named_by_the_kernel_at_exit_keeps_its_arguments():
    summary = run_sampler(out(40, 5), Processes({}), exited={40: "python3"}, pids=[40],
                          command=["sh", "-c", "exec python3 x.py"], follow_children=True)
    row = summary.processes[0]
    assert (row.name, row.cmdline, row.bytes_out) == ("python3", "sh -c exec python3 x.py", 5)


# -- who COMMAND runs as -------------------------------------------------------------


def test_invoking_user_under_sudo():
    creds = launch.invoking_user({"SUDO_UID": "1000", "SUDO_GID": "1001"}, 0,
                                 getpwuid=lambda uid: SimpleNamespace(pw_name="alice"),
                                 getgrouplist=lambda name, gid: [gid, 27, 100] if name == "alice" else [])
    assert creds == launch.Credentials(1000, 1001, (1001, 27, 100))


@pytest.mark.parametrize("environ,euid", [
    ({}, 0),  # root, not through sudo
    ({"SUDO_UID": "1000", "SUDO_GID": "1000"}, 1000),  # not root: nothing to drop
    ({"SUDO_UID": "0", "SUDO_GID": "0"}, 0),  # root ran sudo
    ({"SUDO_UID": "x", "SUDO_GID": "1"}, 0),
    ({"SUDO_UID": "1000"}, 0),
])
def test_no_user_change(environ, euid):
    assert launch.invoking_user(environ, euid) is None


def test_invoking_user_without_passwd_entry_keeps_the_primary_group():
    def missing(uid):
        raise KeyError(uid)

    creds = launch.invoking_user({"SUDO_UID": "4242", "SUDO_GID": "4243"}, 0, getpwuid=missing)
    assert creds == launch.Credentials(4242, 4243, (4243,))


def test_exit_status_of_exit_codes_and_signals():
    assert launch.exit_status(0) == 0
    assert launch.exit_status(3 << 8) == 3
    assert launch.exit_status(signal.SIGTERM) == 143
    assert launch.exit_status(signal.SIGKILL) == 137


# -- the gated launch --------------------------------------------------------------


def cmdline(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read()


def test_command_waits_at_the_gate_until_released(tmp_path):
    marker = tmp_path / "ran"
    command = launch.Command(["sh", "-c", f"echo $$ > {marker}; exit 3"])
    pid = command.start()
    try:
        time.sleep(0.2)
        assert not marker.exists()
        assert b"sh\0-c" not in cmdline(pid)  # still procnetmon's (this) program
        command.release()
        command.on_end(lambda: None)
        assert command.wait() == 3
    finally:
        command.abort()
    assert marker.read_text().strip() == str(pid)  # COMMAND kept the PID


def test_aborted_command_never_runs(tmp_path):
    marker = tmp_path / "ran"
    command = launch.Command(["sh", "-c", f"touch {marker}"])
    command.start()
    command.abort()
    time.sleep(0.1)
    assert not marker.exists()


def test_exec_failure_is_reported_with_the_shell_status():
    command = launch.Command(["/nonexistent/procnetmon-test"])
    command.start()
    with pytest.raises(launch.CommandError) as failure:
        command.release()
    assert failure.value.status == 127
    assert "No such file or directory" in str(failure.value)


def test_not_executable_is_126(tmp_path):
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\n")
    command = launch.Command([str(script)])
    command.start()
    with pytest.raises(launch.CommandError) as failure:
        command.release()
    if os.geteuid() != 0:
        assert failure.value.status == 126


def test_check_runnable():
    launch.check_runnable(["sh"])
    launch.check_runnable(["./relative/path/is/exec's/business"])
    with pytest.raises(launch.CommandError) as failure:
        launch.check_runnable(["no-such-command-procnetmon"])
    assert failure.value.status == 127


def test_forwarded_signal_ends_command_with_128_plus_n():
    command = launch.Command([sys.executable, "-c", "import time; time.sleep(30)"])
    command.start()
    command.release()
    ended = []
    command.on_end(lambda: ended.append(True))
    time.sleep(0.2)
    command.forward(signal.SIGTERM)
    assert command.wait() == 143
    assert ended == [True]
    command.forward(signal.SIGTERM)  # ended and reaped: nothing is signalled


def test_command_inherits_no_ignored_signal():
    # Python ignores SIGPIPE (and procnetmon SIGINT): exec would keep that.
    command = launch.Command(["grep", "-qE", r"^SigIgn:\s+0+$", "/proc/self/status"])
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        command.start()
    finally:
        signal.signal(signal.SIGINT, previous)
    command.release()
    command.on_end(lambda: None)
    assert command.wait() == 0


def test_descendants_are_found_and_exclude_procnetmon_itself():
    import subprocess

    from procnetmon import procinfo

    shell = subprocess.Popen(["sh", "-c", "sleep 30 & sleep 30 & wait"])
    try:
        deadline = time.monotonic() + 5
        while len(procinfo.descendants([shell.pid])) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(procinfo.descendants([shell.pid])) == 2
        assert procinfo.descendants([os.getppid()]).count(os.getpid()) == 0
    finally:
        for pid in procinfo.descendants([shell.pid]):
            os.kill(pid, signal.SIGTERM)
        shell.wait(5)
