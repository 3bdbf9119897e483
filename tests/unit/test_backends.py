"""The backend plumbing that needs no kernel: C flags, kprobe attach plan, the hooks' C."""

from __future__ import annotations

import re

from procnetmon.kernel import backends
from procnetmon.probes import bpf_source, loader


def facts(**tracepoints):
    return backends.BtfFacts(tracepoints=tracepoints, functions={}, has_sendpage=False)


def test_backend_cflags_name_the_hooks_and_the_optional_functions():
    fentry = backends.Backend("fentry", True, "", functions=("inet_sendmsg", "inet6_sendmsg", "inet_recvmsg",
                                                               "tcp_splice_read", "skb_consume_udp"))
    assert loader.backend_cflags(fentry, facts()) == [
        "-DHOOKS_FENTRY", "-DHAVE_INET6_SENDMSG", "-DHAVE_SKB_CONSUME_UDP"]
    tracepoint = backends.Backend("tracepoint", True, "")
    assert loader.backend_cflags(tracepoint, facts(sk_data_ready=True)) == [
        "-DHOOKS_TRACEPOINT", "-DHAVE_SK_DATA_READY"]
    assert loader.backend_cflags(tracepoint, facts(sk_data_ready=False)) == ["-DHOOKS_TRACEPOINT"]


def test_typed_tracepoints_and_the_per_call_udp_hook_are_compiled_in_only_when_detected():
    typed = backends.Backend("tracepoint", True, "", typed=True)
    assert loader.backend_cflags(typed, facts(sk_data_ready=7)) == [
        "-DHOOKS_TRACEPOINT", "-DHAVE_SK_DATA_READY", "-DTYPED_TRACEPOINTS"]
    consume = backends.Backend("tracepoint", True, "", typed=True, udp_consume=True)
    assert loader.backend_cflags(consume, facts(sk_data_ready=7))[-2:] == [
        "-DTYPED_TRACEPOINTS", "-DUDP_RX_FENTRY"]


def test_the_typed_tracepoint_programs_are_named_as_the_loader_looks_them_up():
    with open(bpf_source("hooks.h")) as f:
        c = f.read()
    assert "int pnm_typed_##name(u64 *ctx)" in c
    for tracepoint in backends.TRACEPOINTS + backends.OPTIONAL_TRACEPOINTS:
        assert f"SOCKET_TRACEPOINT({tracepoint})" in c, tracepoint


def test_the_per_call_udp_hook_needs_what_detection_asks_of_the_tracepoint_backend(monkeypatch):
    """UDP_RX_FENTRY only with typed programs and trampolines that take skb_consume_udp."""
    tp = backends.Backend("tracepoint", True, "typed", typed=True)
    fe = backends.Backend("fentry", True, "", functions=("inet_sendmsg", "skb_consume_udp"))
    monkeypatch.setattr(backends, "kernel_symbols", lambda: set())
    monkeypatch.setattr(backends, "tracepoint_backend", lambda facts: tp)
    monkeypatch.setattr(backends, "fentry_backend", lambda facts, symbols: fe)
    monkeypatch.setattr(backends, "kprobe_backend", lambda symbols: backends.Backend("kprobe", False, "none"))
    assert backends.detect(None)[0].udp_consume
    tp.udp_consume, fe.usable = False, False
    assert not backends.detect(None)[0].udp_consume


def test_every_hooked_function_has_a_kprobe_plan():
    planned = set(loader.KPROBE_ENTRIES) | {loader.KPROBE_UDP_DATAGRAM[0]}
    assert planned == set(backends.FUNCTIONS)


def test_the_hooks_define_what_the_loader_attaches():
    with open(bpf_source("hooks.h")) as f:
        c = f.read()
    for name in set(loader.KPROBE_ENTRIES.values()) | {loader.KPROBE_RETURN, loader.KPROBE_UDP_DATAGRAM[1]}:
        assert re.search(rf"^int {name}\(struct pt_regs \*ctx\)", c, re.M), name
    for function in backends.FUNCTIONS:
        probe = "KFUNC_PROBE" if function == "skb_consume_udp" else "KRETFUNC_PROBE"
        assert f"{probe}({function}," in c, function
        if function not in backends.REQUIRED:
            assert f"HAVE_{function.upper()}" in c, function


def test_udp_receive_interface_is_needed_only_by_filters():
    assert loader.needs_udp_rx_ifindex(None, include_loopback=False)
    assert loader.needs_udp_rx_ifindex([object()], include_loopback=True)
    assert not loader.needs_udp_rx_ifindex(None, include_loopback=True)


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
    assert backends.Backend("tracepoint", True, "", typed=True, udp_consume=True).label == \
        "tracepoint backend, BTF-typed, UDP interfaces per call"
    refused = backends.Backend("tracepoint", True, "", refused="Invalid argument")
    assert refused.label == "tracepoint backend, helper reads: BTF-typed programs refused (Invalid argument)"
