"""The contracts between the parts (issue 21, item 3): what the engine needs
of a probe and of the process table, what a run needs of a probe and of a
sink. The real implementations and the tests' fakes satisfy the same
Protocols, method by method and argument by argument, so that the engine
and __main__ need no getattr fallback for a fake that lacks something."""

from __future__ import annotations

import inspect
import io
from typing import Protocol

import pytest
import test_engine
import test_follow_args
import test_long_runs

from procnetmon import procinfo
from procnetmon.engine import ProcessTable
from procnetmon.output import prometheus
from procnetmon.output.sink import Sink
from procnetmon.output.writer import Writer
from procnetmon.probes import Probe, SampledProbe
from procnetmon.probes.spec import ProbeSpec, probe_for


def members(proto: type) -> dict[str, object]:
    """The protocol's own members (its bases' too), by name."""
    out: dict[str, object] = {}
    for klass in reversed(proto.__mro__):
        if klass is object or klass is Protocol or not getattr(klass, "_is_protocol", False):
            continue
        for name, value in vars(klass).items():
            if not name.startswith("_"):
                out[name] = value
        for name in getattr(klass, "__annotations__", {}):
            out.setdefault(name, None)
    return out


def assert_conforms(obj, proto: type) -> None:
    """``obj`` has every member of ``proto``, and each method takes the
    arguments the protocol names (by position, as the callers pass them)."""
    assert isinstance(obj, proto), f"{obj!r} lacks a member of {proto.__name__}"
    for name, declared in members(proto).items():
        assert hasattr(obj, name), f"{type(obj).__name__} has no {name}"
        if not inspect.isfunction(declared):
            continue
        wanted = [p for p in inspect.signature(declared).parameters.values() if p.name != "self"]
        implementation = getattr(obj, name)
        assert callable(implementation), f"{type(obj).__name__}.{name} is not callable"
        required = [object()] * sum(p.default is inspect.Parameter.empty for p in wanted)
        everything = [object()] * len(wanted)
        signature = inspect.signature(implementation)
        for arguments in (required, everything):
            try:
                signature.bind(*arguments)
            except TypeError as e:
                pytest.fail(f"{type(obj).__name__}.{name}{signature} does not take {proto.__name__}'s "
                            f"{name}{inspect.signature(declared)}: {e}")


# -- probes -----------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [ProbeSpec(), ProbeSpec(mode="wire"), ProbeSpec(handoff=True),
                                  ProbeSpec(mode="wire", handoff=True)], ids=repr)
def test_every_probe_is_a_probe(spec):
    assert_conforms(probe_for(spec), Probe)


FAKE_PROBES = [
    lambda: test_engine.FakeProbe([{}]),
    lambda: test_follow_args.Probe({}),
    lambda: test_follow_args.ScriptedProbe([]),
    lambda: test_long_runs.ChurnProbe(),
    lambda: test_long_runs.probe_over(test_long_runs.FakeBpf()),  # the real reader over fake maps
]


@pytest.mark.parametrize("make", FAKE_PROBES)
def test_the_fakes_give_the_engine_what_a_probe_gives(make):
    assert_conforms(make(), SampledProbe)


def test_a_fake_that_lacks_a_method_is_caught():
    class Incomplete:
        mode = "payload"

        def read(self):
            pass

    assert not isinstance(Incomplete(), SampledProbe)

    class WrongArguments(test_engine.FakeProbe):
        def forget(self):  # the engine passes the PIDs
            pass

    with pytest.raises(pytest.fail.Exception, match="forget"):
        assert_conforms(WrongArguments([{}]), SampledProbe)


# -- the process table ---------------------------------------------------------------------


@pytest.mark.parametrize("table", [
    procinfo,
    test_engine.FakeProcesses(),
    test_follow_args.Processes({}),
    test_long_runs.Processes(),
], ids=lambda t: getattr(t, "__name__", type(t).__name__))
def test_the_process_tables_answer_what_the_engine_asks(table):
    assert_conforms(table, ProcessTable)


# -- sinks ----------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda: Writer("json", io.StringIO()),
    lambda: Writer("csv", io.StringIO()),
    lambda: Writer("text", io.StringIO()),
    lambda: prometheus.TextfileWriter(io.StringIO(), "payload"),
    lambda: prometheus.MetricsSink(prometheus.Metrics("wire")),
])
def test_every_sink_is_a_sink(make):
    sink = make()
    assert_conforms(sink, Sink)
    assert sink.closed is False
    sink.watch(lambda: None)
    sink.close()
    assert sink.closed is True
