"""Which probe backends the running kernel offers, best first.

All backends count the same thing (what each socket call of a process
returned) through the same BPF accounting (bpf/hooks.h calls
on_socket_call); they differ only in where their hooks attach:

- ``tracepoint``: the sock:sock_send_length / sock:sock_recv_length
  tracepoints (Linux 6.3+) at the end of sock_sendmsg()/sock_recvmsg(), and
  the splice(2) system call's tracepoints for TCP data spliced out of a
  socket, which does not pass through recvmsg;
- ``kprobe``: kprobes and kretprobes on the functions every inet socket
  call of IPv4 and IPv6 ends in (inet_sendmsg, inet6_sendmsg, inet_recvmsg,
  inet6_recvmsg, inet_sendpage before 6.5, tcp_splice_read) and AF_PACKET's
  (packet_sendmsg, packet_recvmsg);
- ``fentry``: BPF trampolines (fexit) on the same functions, last because a
  call in flight loses its fexit when the trampoline changes (see detect()).

Feature detection only: a backend is usable when the kernel has what it
attaches to and, for trampolines, when an attempt to attach one succeeds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

from procnetmon.kernel import cache
from procnetmon.kernel.btf import BTF, VMLINUX_BTF, BTFError

TRACEFS_ROOTS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
KPROBE_PMU = "/sys/bus/event_source/devices/kprobe/type"
KALLSYMS = "/proc/kallsyms"

# The functions the fentry and kprobe backends hook, and what each one is.
# Required ones must exist; the others are hooked where the kernel has them.
SEND = ("inet_sendmsg", "inet6_sendmsg")
# IPv6 raw and ping sockets receive through sock_common_recvmsg (inet6_sockraw_ops).
RECV = ("inet_recvmsg", "inet6_recvmsg", "sock_common_recvmsg")
SENDPAGE = ("inet_sendpage",)  # sendfile/splice into a socket before Linux 6.5
SPLICE_READ = ("tcp_splice_read",)  # splice out of a TCP socket
PACKET = ("packet_sendmsg", "packet_recvmsg")  # AF_PACKET (static in af_packet.c)
UDP_CONSUME = "skb_consume_udp"  # runs inside a UDP recvmsg with its datagram
REQUIRED = ("inet_sendmsg", "inet_recvmsg", "tcp_splice_read")
FUNCTIONS = SEND + RECV + SENDPAGE + SPLICE_READ + PACKET

TRACEPOINTS = ("sock_send_length", "sock_recv_length")
# The arrival of a datagram on a socket (Linux 6.3+): where no program can run
# inside a UDP recvmsg, it tells the interface of each datagram read.
OPTIONAL_TRACEPOINTS = ("sk_data_ready",)
SPLICE_SYSCALL_EVENTS = ("syscalls/sys_enter_splice", "syscalls/sys_exit_splice")


FACTS_FILE = "btf-facts-v4.json"


@dataclass
class BtfFacts:
    """What the backends ask of BTF, small enough to cache per kernel build
    (parsing BTF takes longer than compiling the program)."""

    tracepoints: dict  # raw tracepoint name -> BTF id of its btf_trace_<name> typedef, or None
    functions: dict  # kernel function -> its BTF id, or None
    has_sendpage: bool  # struct proto_ops has ->sendpage (before Linux 6.5)
    exit_group_dead: bool = False  # sched_process_exit passes group_dead (after 6.12)

    @classmethod
    def from_cached(cls, data) -> Optional["BtfFacts"]:
        """The facts a cache file holds, or None unless each is of its kind
        (the ids choose what root attaches programs to)."""
        if not isinstance(data, dict) or set(data) != {"tracepoints", "functions", "has_sendpage",
                                                       "exit_group_dead"}:
            return None
        if not (_ids_of(data["tracepoints"], TRACEPOINTS + OPTIONAL_TRACEPOINTS)
                and _ids_of(data["functions"], FUNCTIONS + (UDP_CONSUME,))
                and type(data["has_sendpage"]) is bool and type(data["exit_group_dead"]) is bool):
            return None
        return cls(**data)

    @classmethod
    def from_btf(cls, btf: BTF) -> "BtfFacts":
        try:
            btf.member_offset("proto_ops", "sendpage")
            sendpage = True
        except BTFError:
            sendpage = False
        # A raw tracepoint's BTF prototype starts with a void *__data.
        exit_args = btf.func_proto_arity("btf_trace_sched_process_exit") or 0
        return cls({t: btf.typedef_id(f"btf_trace_{t}") for t in TRACEPOINTS + OPTIONAL_TRACEPOINTS},
                   {f: btf.func_id(f) for f in FUNCTIONS + (UDP_CONSUME,)}, sendpage, exit_args >= 3)


def _ids_of(value, names) -> bool:
    return (isinstance(value, dict) and set(value) == set(names)
            and all(v is None or (type(v) is int and v > 0) for v in value.values()))


def btf_facts(btf: Optional[BTF] = None, cache_dir: Optional[str] = None) -> Optional["BtfFacts"]:
    """This kernel's BtfFacts, from the cache or from ``btf`` (parsed if not
    given); None without BTF."""
    import json

    path = os.path.join(cache_dir or cache.kernel_cache_dir(), FACTS_FILE)
    if btf is None:
        try:
            with open(path) as f:
                facts = BtfFacts.from_cached(json.load(f))
            if facts is not None:
                return facts
        except (OSError, ValueError):
            pass  # missing or damaged: derived again below, and rewritten
        try:
            btf = BTF.from_file(VMLINUX_BTF)
        except BTFError:
            return None
    facts = BtfFacts.from_btf(btf)
    try:
        cache.write_atomically(path, json.dumps(facts.__dict__, sort_keys=True))
    except OSError:
        pass
    return facts


@dataclass
class Backend:
    name: str
    usable: bool
    detail: str  # where it attaches, or why it cannot
    functions: tuple = ()  # kernel functions hooked (fentry, kprobe)
    # tracepoint: its socket-call programs are BTF-typed (tp_btf), reading
    # kernel memory with plain loads rather than a helper call per field
    typed: bool = False
    # Where a UDP datagram's interface comes from, when a filter needs it:
    # "fentry" or "kprobe" on skb_consume_udp (inside the call), "sk_data_ready"
    # (at its arrival), or "" (unknown).
    udp_rx: str = ""
    refused: str = ""  # why the kernel would not take the typed programs after all

    @property
    def label(self) -> str:
        """How the "probes attached" line names it."""
        if self.typed:
            return f"{self.name} backend, BTF-typed"
        if self.refused:
            return f"{self.name} backend, helper reads: BTF-typed programs refused ({self.refused})"
        return f"{self.name} backend"
    gaps: list = field(default_factory=list)  # what it would not see on this kernel


def _kprobes_available() -> bool:
    events = tracefs_events()
    return os.path.exists(KPROBE_PMU) or (
        events is not None and os.path.exists(os.path.join(os.path.dirname(events), "kprobe_events")))


def kernel_symbols(path: str = KALLSYMS) -> set[str]:
    """Names of the kernel's text symbols (functions), as /proc/kallsyms lists them."""
    names = set()
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[1] in ("T", "t"):
                    names.add(parts[2])
    except OSError:
        pass
    return names


def tracefs_events() -> Optional[str]:
    for root in TRACEFS_ROOTS:
        if os.path.isdir(os.path.join(root, "events")):
            return os.path.join(root, "events")
    return None


def _has_raw_tracepoint(facts: Optional[BtfFacts], name: str) -> bool:
    if facts is not None:
        return bool(facts.tracepoints.get(name))
    events = tracefs_events()
    return bool(events) and os.path.isdir(os.path.join(events, "sock", name))


def _splice_syscall_events() -> bool:
    events = tracefs_events()
    return bool(events) and all(os.path.isdir(os.path.join(events, e)) for e in SPLICE_SYSCALL_EVENTS)


def tracepoint_backend(facts: Optional[BtfFacts]) -> Backend:
    missing = [t for t in TRACEPOINTS if not _has_raw_tracepoint(facts, t)]
    if missing:
        return Backend("tracepoint", False, f"no tracepoint sock:{', sock:'.join(missing)} (added in Linux 6.3)")
    gaps = []
    if not _splice_syscall_events():
        gaps.append("splice(2) out of TCP sockets: no syscalls:sys_enter_splice/sys_exit_splice "
                    "tracepoints (CONFIG_FTRACE_SYSCALLS, or tracefs not mounted)")
    if facts is not None and facts.has_sendpage:
        # sendfile and splice into a socket then bypass sendmsg and its tracepoint.
        gaps.append("sendfile(2) and splice(2) into sockets: this kernel sends them through "
                    "->sendpage, which bypasses sock:sock_send_length (before Linux 6.5)")
    typed, why = _typed_tracepoints(facts)
    kind = "BTF-typed raw tracepoints" if typed else f"raw tracepoints ({why})"
    return Backend("tracepoint", True, f"{kind} sock:sock_send_length + sock:sock_recv_length, "
                                       "syscalls:sys_{enter,exit}_splice", gaps=gaps, typed=typed)


def _typed_tracepoints(facts: Optional[BtfFacts]) -> tuple[bool, str]:
    """Whether the kernel takes BTF-typed tracepoint programs (tp_btf, Linux
    5.5+), tried on sock_send_length; else why not."""
    btf_id = facts.tracepoints.get("sock_send_length") if facts is not None else None
    if not btf_id:
        return False, "no BTF id for sock_send_length"
    from procnetmon.kernel import bpfsys

    # Only an attempt tells: the kernel may have the BTF and still refuse (see fentry_backend).
    ok, why = bpfsys.try_attach(bpfsys.BPF_TRACE_RAW_TP, btf_id)
    return ok, "" if ok else f"field reads through bpf_probe_read_kernel: a BTF-typed tracepoint program: {why}"


def _hooked_functions(present: set[str]) -> tuple[list[str], list[str]]:
    """The functions to hook, and the required ones that are missing."""
    missing = [f for f in REQUIRED if f not in present]
    return [f for f in FUNCTIONS if f in present], missing


def fentry_backend(facts: Optional[BtfFacts], symbols: set[str]) -> Backend:
    if facts is None:
        return Backend("fentry", False, "needs kernel BTF (/sys/kernel/btf/vmlinux)")
    present = {f for f in FUNCTIONS if facts.functions.get(f) is not None and f in symbols}
    functions, missing = _hooked_functions(present)
    if missing:
        return Backend("fentry", False, f"kernel functions missing from BTF or kallsyms: {', '.join(missing)}")
    from procnetmon.kernel import bpfsys

    # A kernel can have BTF and the trampoline code and still refuse (no ftrace
    # direct calls, a security policy): only an attempt tells, so the empty
    # fexit program is attached to inet_sendmsg for an instant, no compiler, a millisecond.
    ok, why = bpfsys.try_attach(bpfsys.BPF_TRACE_FEXIT, facts.functions["inet_sendmsg"])
    if not ok:
        return Backend("fentry", False, f"BPF trampolines refused: an fexit program: {why} "
                                        "(needs CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS, Linux 5.5+)")
    return Backend("fentry", True, "fexit on " + ", ".join(functions), tuple(functions))


def kprobe_backend(symbols: set[str]) -> Backend:
    if not _kprobes_available():
        return Backend("kprobe", False, "no kprobes (kernel built without CONFIG_KPROBES)")
    if os.uname().machine != "x86_64":
        return Backend("kprobe", False, f"the kprobe backend reads x86-64 registers; this is {os.uname().machine}")
    functions, missing = _hooked_functions(set(FUNCTIONS) & symbols)
    if missing:
        return Backend("kprobe", False, f"kernel functions missing from kallsyms: {', '.join(missing)}")
    return Backend("kprobe", True, "kprobe+kretprobe on " + ", ".join(functions), tuple(functions))


def detect(facts: Optional[BtfFacts]) -> list[Backend]:
    """Every backend, in order of preference, with whether this kernel offers it."""
    symbols = kernel_symbols()
    # kprobes before trampolines: when any program is attached to or detached
    # from a function's trampoline (another procnetmon, another tool), the
    # kernel retires the old trampoline so that calls still inside the
    # function (a recv blocked waiting for data) return without running
    # their fexit programs, and those bytes would be lost. A kretprobe is
    # armed per call and survives that.
    tracepoint, fentry = tracepoint_backend(facts), fentry_backend(facts, symbols)
    kprobe = kprobe_backend(symbols)
    # An entry program, unlike fexit, loses nothing when a trampoline changes.
    if fentry.usable and facts is not None and facts.functions.get(UDP_CONSUME) and UDP_CONSUME in symbols:
        udp_rx = "fentry"
    elif kprobe.usable and UDP_CONSUME in symbols:
        udp_rx = "kprobe"
    elif facts is not None and facts.tracepoints.get("sk_data_ready"):
        udp_rx = "sk_data_ready"
    else:
        udp_rx = ""
    for backend in (tracepoint, kprobe, fentry):
        if not backend.usable:
            continue
        backend.udp_rx = udp_rx
        if udp_rx in ("fentry", "kprobe"):
            backend.detail += f"; UDP datagram interfaces from {udp_rx} on {UDP_CONSUME} (in the call)"
        elif udp_rx:
            backend.detail += ("; UDP datagram interfaces from the queue's head, noted by sock:sk_data_ready "
                               "and each read (no trampolines or kprobes)")
        else:
            backend.gaps.append("the interface of UDP datagrams received on unconnected sockets: no trampolines, "
                                "kprobes or sock:sk_data_ready")
    return [tracepoint, kprobe, fentry]


def choose(backends: list[Backend], wanted: str = "auto") -> Backend:
    """The backend to use: ``wanted`` if given, else the best usable one,
    preferring one that sees every way of moving bytes on this kernel.
    Raises LookupError naming why none (or not the wanted one) is usable."""
    if wanted != "auto":
        for b in backends:
            if b.name == wanted:
                if not b.usable:
                    raise LookupError(f"the {wanted} backend is not available here: {b.detail}")
                return b
        raise LookupError(f"unknown backend {wanted!r}")
    usable = [b for b in backends if b.usable]
    if not usable:
        raise LookupError("; ".join(f"{b.name}: {b.detail}" for b in backends))
    complete = [b for b in usable if not b.gaps]
    return (complete or usable)[0]
