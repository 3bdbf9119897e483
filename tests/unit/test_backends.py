"""The backend plumbing that needs no kernel: C flags, kprobe attach plan, the hooks' C."""

from __future__ import annotations

import re

from procnetmon.kernel import backends
from procnetmon.probes import bpf_source, loader


def facts(**tracepoints):
    return backends.BtfFacts(tracepoints=tracepoints, functions={}, has_sendpage=False)


def test_backend_cflags_name_the_hooks_and_the_optional_functions():
    fentry = backends.Backend("fentry", True, "", functions=("inet_sendmsg", "inet6_sendmsg", "inet_recvmsg",
                                                               "tcp_splice_read", "packet_sendmsg"))
    assert loader.backend_cflags(fentry, facts()) == [
        "-DHOOKS_FENTRY", "-DHAVE_INET6_SENDMSG", "-DHAVE_PACKET_SENDMSG"]
    tracepoint = backends.Backend("tracepoint", True, "")
    assert loader.backend_cflags(tracepoint, facts(sk_data_ready=True)) == ["-DHOOKS_TRACEPOINT"]


def test_typed_tracepoints_and_the_udp_interface_source_are_compiled_in_only_when_detected():
    typed = backends.Backend("tracepoint", True, "", typed=True)
    assert loader.backend_cflags(typed, facts(sk_data_ready=7)) == ["-DHOOKS_TRACEPOINT", "-DTYPED_TRACEPOINTS"]
    for udp_rx, flag in (("fentry", "-DUDP_RX_FENTRY"), ("kprobe", "-DUDP_RX_KPROBE"),
                         ("sk_data_ready", "-DUDP_RX_HEAD")):
        b = backends.Backend("tracepoint", True, "", typed=True, udp_rx=udp_rx)
        assert loader.backend_cflags(b, facts())[1:] == [flag, "-DTYPED_TRACEPOINTS"]


def test_the_typed_tracepoint_programs_are_named_as_the_loader_looks_them_up():
    with open(bpf_source("hooks.h")) as f:
        c = f.read()
    assert "int pnm_typed_##name(u64 *ctx)" in c
    for tracepoint in backends.TRACEPOINTS:
        assert f"SOCKET_TRACEPOINT({tracepoint})" in c, tracepoint


def _detect(monkeypatch, tp, fe, kp, symbols, facts_=None):
    monkeypatch.setattr(backends, "kernel_symbols", lambda: set(symbols))
    monkeypatch.setattr(backends, "tracepoint_backend", lambda facts: tp)
    monkeypatch.setattr(backends, "fentry_backend", lambda facts, symbols: fe)
    monkeypatch.setattr(backends, "kprobe_backend", lambda symbols: kp)
    return backends.detect(facts_)


def test_a_udp_datagrams_interface_comes_from_inside_the_call_where_the_kernel_allows(monkeypatch):
    """Trampolines first, then kprobes (both in the call), then the arrival ring."""
    def fresh():
        return (backends.Backend("tracepoint", True, "typed", typed=True),
                backends.Backend("fentry", True, ""), backends.Backend("kprobe", True, ""))
    f = backends.BtfFacts(tracepoints={"sk_data_ready": 5}, functions={"skb_consume_udp": 9}, has_sendpage=False)
    tp, fe, kp = fresh()
    assert _detect(monkeypatch, tp, fe, kp, {"skb_consume_udp"}, f)[0].udp_rx == "fentry"
    tp, fe, kp = fresh()
    fe.usable = False
    assert _detect(monkeypatch, tp, fe, kp, {"skb_consume_udp"}, f)[0].udp_rx == "kprobe"
    tp, fe, kp = fresh()
    fe.usable = kp.usable = False
    found = _detect(monkeypatch, tp, fe, kp, {"skb_consume_udp"}, f)
    assert found[0].udp_rx == "sk_data_ready" and "sk_data_ready" in found[0].detail
    tp, fe, kp = fresh()
    fe.usable = kp.usable = False
    none = backends.BtfFacts(tracepoints={}, functions={}, has_sendpage=False)
    found = _detect(monkeypatch, tp, fe, kp, set(), none)
    assert found[0].udp_rx == "" and any("UDP datagrams" in g for g in found[0].gaps)


def test_every_hooked_function_has_a_kprobe_plan():
    assert set(loader.KPROBE_ENTRIES) == set(backends.FUNCTIONS)
    assert loader.KPROBE_UDP_DATAGRAM[0] == backends.UDP_CONSUME


def test_the_hooks_define_what_the_loader_attaches():
    with open(bpf_source("hooks.h")) as f:
        c = f.read()
    for name in set(loader.KPROBE_ENTRIES.values()) | {loader.KPROBE_RETURN, loader.KPROBE_UDP_DATAGRAM[1]}:
        assert re.search(rf"^int {name}\(struct pt_regs \*ctx\)", c, re.M), name
    assert f"KFUNC_PROBE({backends.UDP_CONSUME}," in c
    for function in backends.FUNCTIONS:
        assert f"KRETFUNC_PROBE({function}," in c, function
        if function not in backends.REQUIRED:
            assert f"HAVE_{function.upper()}" in c, function


def test_choose_prefers_a_complete_backend_and_names_every_reason():
    tp = backends.Backend("tracepoint", True, "", gaps=["sendfile"])
    fe = backends.Backend("fentry", False, "refused")
    kp = backends.Backend("kprobe", True, "")
    assert backends.choose([tp, fe, kp]).name == "kprobe"
    assert backends.choose([tp, fe]).name == "tracepoint"
    try:
        backends.choose([backends.Backend("tracepoint", False, "old"), fe])
    except LookupError as e:
        assert str(e) == "tracepoint: old; fentry: refused"
    else:
        raise AssertionError("no LookupError")


def test_exit_hook_reads_group_dead_only_where_the_tracepoint_passes_it():
    tracepoint = backends.Backend("tracepoint", True, "")
    with_arg = backends.BtfFacts(tracepoints={}, functions={}, has_sendpage=False, exit_group_dead=True)
    assert "-DHAVE_EXIT_GROUP_DEAD" in loader.backend_cflags(tracepoint, with_arg)
    assert "-DHAVE_EXIT_GROUP_DEAD" not in loader.backend_cflags(tracepoint, facts())


def test_the_attach_line_names_how_the_backend_reads():
    assert backends.Backend("kprobe", True, "").label == "kprobe backend"
    assert backends.Backend("tracepoint", True, "", typed=True).label == "tracepoint backend, BTF-typed"
    refused = backends.Backend("tracepoint", True, "", refused="Invalid argument")
    assert refused.label == "tracepoint backend, helper reads: BTF-typed programs refused (Invalid argument)"
