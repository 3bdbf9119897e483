"""The benchmark's options (bench/__main__.py) and the report text they change."""

from __future__ import annotations

import pytest

from bench import report
from bench.__main__ import parse_args, pick_workloads
from bench.facts import Facts
from bench.monitors import Context


def test_both_workloads_by_default():
    args = parse_args(["--procnetmon", "/bin/true"])
    assert [w.name for w in args.workloads] == ["tcp", "udp"]
    assert args.timeout_scale == 1.0 and args.note is None


def test_workloads_keep_the_benchmarks_order():
    assert [w.name for w in pick_workloads("udp,tcp")] == ["tcp", "udp"]
    assert [w.name for w in pick_workloads(" tcp ")] == ["tcp"]


@pytest.mark.parametrize("spec", ["sctp", "", ",", "tcp,quic"])
def test_unknown_workloads_are_refused(spec):
    with pytest.raises(ValueError):
        pick_workloads(spec)


def test_options_for_a_slow_guest():
    args = parse_args(["--procnetmon", "/bin/true", "--workloads", "tcp", "--timeout-scale", "5",
                       "--pin", "none", "--note", "in a guest"])
    assert [w.name for w in args.workloads] == ["tcp"]
    assert args.timeout_scale == 5.0 and args.pin is None and args.note == "in a guest"
    with pytest.raises(SystemExit):
        parse_args(["--procnetmon", "/bin/true", "--workloads", "icmp"])
    with pytest.raises(SystemExit):
        parse_args(["--procnetmon", "/bin/true", "--timeout-scale", "0"])


def test_a_context_scales_nothing_unless_told():
    assert Context("/p", "veth0", 1).timeout_scale == 1.0


def test_method_names_only_the_workloads_run():
    both = report.method(3, 5, 1, 3, 3)
    assert "Two workloads of 5 s each: one TCP stream" in " ".join(both.split())
    assert "-u -b 0 -l 64" in " ".join(both.split())
    tcp = " ".join(report.method(1, 3, None, 3, 1, workloads=["tcp"]).split())
    assert "One workload of 3 s: one TCP stream (`iperf3 -c ADDR -t 3`, receiver's bits per second)." in tcp
    assert "-u -b 0" not in tcp


def test_the_note_comes_right_under_the_title():
    facts = Facts("d", "6.12", "cpu", 2, "2 GiB", "p", "i", "n", "b")
    text = report.markdown(facts, "m", "r", None, "s", "v", None, None, "e", 1.0, note="**In a guest.**")
    assert text.splitlines()[:3] == ["# procnetmon benchmarks", "", "**In a guest.**"]
    plain = report.markdown(facts, "m", "r", None, "s", "v", None, None, "e", 1.0)
    assert plain.splitlines()[2].startswith("Written by")


def test_a_tool_that_cannot_compile_is_named_by_its_compiler_error():
    from types import SimpleNamespace

    from bench.monitors import _why

    tail = ["In file included from /virtual/main.c:14:\n",
            "arch/x86/include/asm/ibt.h:77:8: warning: 'nocf_check' attribute ignored\n",
            "include/linux/foo.h:3:1: error: unknown type name 'bar'\n",
            "1 error generated.\n", "Traceback (most recent call last):\n",
            "Exception: Failed to compile BPF module <text>\n"]
    assert _why(SimpleNamespace(tail=tail), "exit 1") == "include/linux/foo.h:3:1: error: unknown type name 'bar'"
    assert _why(SimpleNamespace(tail=tail[-1:]), "exit 1") == "Exception: Failed to compile BPF module <text>"


def test_tcptop_is_debians_unless_told():
    assert parse_args(["--procnetmon", "/bin/true"]).tcptop == "tcptop-bpfcc"
    args = parse_args(["--procnetmon", "/bin/true", "--tcptop", "/o/tcptop-bpfcc"])
    assert args.tcptop == "/o/tcptop-bpfcc"
    from bench.monitors import Tcptop

    assert Tcptop().command(Context("/p", "v", 1, tcptop=args.tcptop)) == ["/o/tcptop-bpfcc", "-C", "1"]
    assert Tcptop().command(Context("/p", "v", 1)) == ["tcptop-bpfcc", "-C", "1"]
