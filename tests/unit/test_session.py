"""One measuring run (procnetmon/session.py) over a fake probe and a fake
sink: what is attached, written and closed in which order, where the records
go, what each failure is raised as, and, at the program's edge (__main__),
which exit status and line each kind of failure becomes."""

from __future__ import annotations

import errno
import io
import os
import signal
import subprocess
from dataclasses import dataclass

import pytest
import test_contracts
import test_engine

from procnetmon import __main__ as entry
from procnetmon import cli, procinfo, session
from procnetmon.kernel import cache, check, mounts
from procnetmon.model import RECORD_SUMMARY
from procnetmon.output.sink import Sink
from procnetmon.output.writer import OutputError
from procnetmon.probes import CounterKey, Probe, ProbeError


@dataclass(frozen=True)
class Backend:
    name: str = "fake"
    label: str = "fake backend"


class SessionProbe(test_engine.FakeProbe):
    """test_engine's scripted counters, attached and closed as a run's probe is."""

    def __init__(self, events: list, snapshots=({},), fail: str | None = None, on_attach=None, **kw):
        super().__init__(list(snapshots), **kw)
        self.events = events
        self.fail = fail
        self.on_attach = on_attach
        self._backend: Backend | None = None
        self.added: list[int] = []

    @property
    def backend(self):
        return self._backend

    def attach(self) -> None:
        self.events.append("attach")
        if self.on_attach is not None:
            self.on_attach()
        if self.fail is not None:
            raise ProbeError(self.fail)
        self._backend = Backend()

    def add_pids(self, pids) -> None:
        self.added.extend(pids)

    def close(self) -> None:
        self.events.append("probe closed")


class RecordingSink:
    """Takes every record, or fails with ``fail`` (an OSError) as a full disk does."""

    def __init__(self, events: list, fail: OSError | None = None):
        self.events = events
        self.fail = fail
        self.closed = False
        self.records: list = []
        self.on_gone = None

    def write(self, record) -> bool:
        if self.fail is not None:
            raise self.fail
        self.events.append(("write", record.type))
        self.records.append(record)
        return True

    def watch(self, on_gone) -> None:
        self.events.append("watch")
        self.on_gone = on_gone

    def close(self, quiet: bool = False) -> None:
        if not self.closed:
            self.events.append("sink closed")
        self.closed = True


def test_the_fakes_are_a_probe_and_a_sink():
    test_contracts.assert_conforms(SessionProbe([]), Probe)
    test_contracts.assert_conforms(RecordingSink([]), Sink)


@pytest.fixture(autouse=True)
def restored_handlers():
    """A run installs its stop handlers, and COMMAND's; put the test runner's back."""
    signums = (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP)
    saved = {s: signal.getsignal(s) for s in signums}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


class Run:
    """One session.run with the probe and the sink faked; what they saw."""

    def __init__(self, monkeypatch):
        self.events: list = []
        self.probe_options: dict = {}
        self.sink_fail: OSError | None = None
        self.open_fail: OSError | None = None
        self.probe: SessionProbe | None = None
        self.sink: RecordingSink | None = None
        self.specs: list = []
        self.writer_calls: list = []
        self.failures: list = []
        self.out, self.err = io.StringIO(), io.StringIO()
        monkeypatch.setattr(session, "probe_for", self._probe_for)
        monkeypatch.setattr(session, "Writer", self._writer)

    def _probe_for(self, spec):
        self.specs.append(spec)
        self.probe = SessionProbe(self.events, **self.probe_options)
        return self.probe

    def _writer(self, fmt, target, **kw):
        self.writer_calls.append((fmt, target, kw))
        if self.open_fail is not None:
            raise self.open_fail
        self.sink = RecordingSink(self.events, self.sink_fail)
        return self.sink

    def __call__(self, *argv: str, stdout_closed: bool = False, status: int = 42) -> int:
        args = cli.parse_args(list(argv))
        plan = session.Plan(args, session._probe_spec(args))

        def failed(failure):
            self.failures.append(failure)
            return status

        return session.run(plan, self.out, self.err, failed=failed, stdout_closed=stdout_closed)


@pytest.fixture
def measure(monkeypatch):
    return Run(monkeypatch)


ME = os.getpid()
MINE = {CounterKey(ME, "tcp", "in"): 1000, CounterKey(ME, "udp", "out"): 24}


# -- a run ---------------------------------------------------------------------------------


def test_a_run_attaches_samples_writes_the_summary_then_closes(measure):
    measure.probe_options = dict(snapshots=[MINE])
    assert measure("-t", "0.2", "-j") == 0
    assert measure.events == ["watch", "attach", ("write", RECORD_SUMMARY), "probe closed", "sink closed"]
    summary = measure.sink.records[-1]
    mine = [p for p in summary.processes if p.pid == ME]
    assert len(mine) == 1 and (mine[0].bytes_in, mine[0].bytes_out) == (1000, 24)
    fmt, target, kw = measure.writer_calls[0]
    assert (fmt, target, kw["streaming"]) == ("json", measure.out, False)
    assert measure.out.getvalue() == ""  # the sink writes; the session only hands over
    (line,) = measure.err.getvalue().splitlines()
    assert line.startswith("procnetmon: probes attached in ")
    assert line.endswith(" (fake backend); sampling every process, all interfaces but lo, for 0.2 s")


def test_streaming_writes_every_interval_before_the_summary(measure):
    assert measure("-n", "2", "--interval", "0.1", "-q") == 0
    writes = [e for e in measure.events if isinstance(e, tuple)]
    assert writes == [("write", "interval"), ("write", "interval"), ("write", RECORD_SUMMARY)]
    assert measure.err.getvalue() == ""  # -q: no "probes attached" line


def test_the_probes_are_built_from_the_plans_spec(measure):
    measure("-t", "0.1", "-q", "--include-loopback", "-d")
    (spec,) = measure.specs
    assert spec.include_loopback and spec.details and spec.pids is None


@pytest.mark.parametrize("output", [None, "-"])
def test_records_go_to_standard_output(measure, output):
    measure("-t", "0.1", "-q", *(["-o", output] if output else []))
    assert measure.writer_calls[0][1] is measure.out


def test_records_go_to_the_output_file(measure):
    measure("-t", "0.1", "-q", "-o", "/somewhere/out.json")
    assert measure.writer_calls[0][1] == "/somewhere/out.json"


def test_nothing_is_attached_when_nobody_reads_standard_output(measure):
    assert measure("-t", "0.1", stdout_closed=True) == 0
    assert measure.events == [] and measure.writer_calls == []


def test_a_reader_that_leaves_ends_a_run_that_has_no_end(measure):
    # -c: until Ctrl-C. The sink's reader goes away as the probes attach.
    measure.probe_options = dict(on_attach=lambda: measure.sink.on_gone())
    assert measure("-c", "-q") == 0
    assert measure.events[-2:] == ["probe closed", "sink closed"]


def test_lost_updates_are_warned_of(measure):
    measure.probe_options = dict(lost=5)
    measure("-t", "0.1", "-q")
    assert measure.err.getvalue() == "procnetmon: warning: 5 counter updates were lost (kernel map full)\n"


def test_children_running_at_the_start_and_forked_before_the_attach_are_measured(measure):
    child = subprocess.Popen(["sleep", "30"])
    try:
        measure("-p", str(ME), "--children", "-t", "0.1", "-q")
        (spec,) = measure.specs
        assert spec.pids[0] == ME and child.pid in spec.pids and spec.follow_children
        assert child.pid in measure.probe.added  # asked again once attached
    finally:
        child.kill()
        child.wait()


# -- failures, by kind ---------------------------------------------------------------------


def test_an_attach_that_fails_is_unavailable(measure):
    measure.probe_options = dict(fail="no probe backend can run on this kernel: too old")
    with pytest.raises(session.Unavailable, match="^no probe backend can run on this kernel: too old$"):
        measure("-t", "0.1")
    assert measure.events[-1] == "sink closed"
    assert measure.err.getvalue() == ""


def test_an_output_that_cannot_be_opened_is_a_bad_request(measure):
    measure.open_fail = FileNotFoundError(errno.ENOENT, "No such file or directory", "/nowhere/out")
    with pytest.raises(session.BadRequest, match="^cannot append to /nowhere/out: No such file or directory$"):
        measure("-t", "0.1", "-o", "/nowhere/out")
    assert "attach" not in measure.events


def test_an_output_that_fails_while_running_is_an_output_failure(measure):
    measure.sink_fail = OutputError(errno.ENOSPC, "No space left on device")
    with pytest.raises(session.OutputFailed, match="^cannot write to standard output: No space left on device$"):
        measure("-t", "0.1", "-q")
    assert measure.events[-2:] == ["probe closed", "sink closed"]


def test_a_busy_port_is_a_bad_request(measure, monkeypatch):
    from procnetmon.output import prometheus

    def serve(*_a):
        raise OSError(errno.EADDRINUSE, "Address already in use")

    monkeypatch.setattr(prometheus, "serve", serve)
    with pytest.raises(session.BadRequest, match="^cannot serve metrics on 127.0.0.1:9999: Address already in use$"):
        measure("--serve", "127.0.0.1:9999")
    assert measure.events == []


# -- with COMMAND --------------------------------------------------------------------------


def test_command_runs_only_once_the_probes_are_attached_and_its_status_is_returned(measure):
    comms = []
    measure.probe_options = dict(on_attach=lambda: comms.append(_comm(measure.specs[0].pids[0])))
    assert measure("-q", "--", "sh", "-c", "exit 7") == 7
    assert comms and comms[0] != "sh"  # still procnetmon's fork, held at the gate
    assert measure.writer_calls[0][1] is measure.err  # COMMAND keeps standard output
    assert measure.failures == []


def _comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()


def test_command_not_on_path_fails_before_anything_is_built(measure):
    with pytest.raises(session.CommandFailed, match="^cannot run 'no-such-command-here': command not found$") as e:
        measure("-q", "--", "no-such-command-here")
    assert e.value.status == 127
    assert measure.specs == [] and measure.events == []


def test_command_that_cannot_be_executed_fails_once_released(measure):
    with pytest.raises(session.CommandFailed, match="^cannot run '/nonexistent/x': No such file") as e:
        measure("-q", "--", "/nonexistent/x")
    assert e.value.status == 127
    assert measure.events[-2:] == ["probe closed", "sink closed"]
    assert measure.failures == []


def test_a_failure_before_the_release_never_runs_command(measure):
    measure.probe_options = dict(fail="attaching failed")
    with pytest.raises(session.Unavailable):
        measure("-q", "--", "sh", "-c", "exit 7")
    pid = measure.specs[0].pids[0]
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reaped: aborted at the gate
    assert measure.failures == []


def test_a_failure_once_command_runs_is_reported_and_command_waited_for(measure):
    measure.sink_fail = OutputError(errno.ENOSPC, "No space left on device")
    assert measure("-q", "--", "sh", "-c", "exit 7", status=42) == 42  # the status failed() named
    (failure,) = measure.failures
    assert isinstance(failure, session.OutputFailed)
    assert str(failure) == "cannot write to standard error: No space left on device"
    with pytest.raises(ChildProcessError):
        os.waitpid(measure.specs[0].pids[0], os.WNOHANG)  # ended and reaped


# -- the plan ------------------------------------------------------------------------------


@pytest.fixture
def machine(monkeypatch):
    """A machine where the probes could be loaded: nothing is checked or mounted for real."""
    monkeypatch.setattr(check, "has_bpf_privileges", lambda: True)
    monkeypatch.setattr(check, "has_wire_privileges", lambda: True)
    monkeypatch.setattr(cache, "check_trusted", lambda: None)
    monkeypatch.setattr(mounts, "prepare", lambda say: None)
    return monkeypatch


def plan(*argv: str) -> session.Plan:
    return session.plan(cli.parse_args(["-t", "1", *argv]), io.StringIO())


def test_the_plan_holds_the_arguments_and_the_spec(machine):
    p = plan("-p", str(ME))
    assert p.spec == session._probe_spec(p.args) and p.spec.pids == (ME,)
    assert p.web is None


def test_a_missing_pid_is_reported_before_missing_privileges(machine):
    machine.setattr(check, "has_bpf_privileges", lambda: False)
    machine.setattr(procinfo, "pid_exists", lambda pid: False)
    with pytest.raises(session.BadRequest, match="^no processes with PID 7, 8$"):
        plan("-p", "7,8")


def test_without_bpf_privileges_nothing_can_be_measured(machine):
    machine.setattr(check, "has_bpf_privileges", lambda: False)
    with pytest.raises(session.Unavailable, match="^loading BPF programs needs root "):
        plan()


def test_wire_mode_without_net_admin_is_unavailable(machine):
    machine.setattr(check, "has_wire_privileges", lambda: False)
    assert plan().spec.mode == "payload"
    with pytest.raises(session.Unavailable, match="^wire mode attaches cgroup_skb programs"):
        plan("--mode", "wire")


def test_kernel_interfaces_that_cannot_be_mounted_are_unavailable(machine):
    def prepare(say):
        raise mounts.MountError("tracefs is not mounted at /sys/kernel/tracing and cannot be")

    machine.setattr(mounts, "prepare", prepare)
    with pytest.raises(session.Unavailable, match="^tracefs is not mounted"):
        plan()


# -- the edge: each kind of failure is one line and one status -----------------------------


@pytest.mark.parametrize("failure, status", [
    (session.BadRequest("no process with PID 7"), 2),
    (session.Unavailable("loading BPF programs needs root"), 3),
    (session.OutputFailed("cannot write to /dev/full: No space left on device"), 1),
    (session.CommandFailed(127, "cannot run 'x': command not found"), 127),
    (session.CommandFailed(126, "cannot run 'x': Permission denied"), 126),
], ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v))
def test_each_kind_of_failure_has_its_status(failure, status):
    entry._load_modules()
    err = io.StringIO()
    assert entry._failed(err, failure) == status
    assert err.getvalue() == f"procnetmon: error: {failure}\n"


def test_main_reports_a_failure_raised_by_the_session(monkeypatch):
    entry._load_modules()

    def refuse(args, err, out=None):
        raise session.Unavailable("loading BPF programs needs root")

    monkeypatch.setattr(session, "plan", refuse)
    out, err = io.StringIO(), io.StringIO()
    assert entry.main(["-t", "1"], stdout=out, stderr=err) == 3
    assert err.getvalue() == "procnetmon: error: loading BPF programs needs root\n"
    assert out.getvalue() == ""
