"""TCP health (--tcp-health): what the kernel offers, the programs of bpf/health.h, and reading their maps.

``HealthFacts`` says, from BTF, which figures this kernel can give and how
(the -D flags of bpf/health.h); ``attach`` attaches its programs to an
attached BCC object (none is attached by BCC itself, and none at all
without the flag); ``read`` turns the maps into a ``HealthSnapshot`` of
plain numbers, over BCC's tables or libbpf's (probes/fdprobe.py), the
ctypes mirrors below being checked against the sizes the kernel reports for
each map (``check_sizes``). bcc is never imported here.
"""

from __future__ import annotations

import ctypes
import functools
import ipaddress
import os
import socket
from dataclasses import dataclass, field
from typing import Any, Callable

LATENCY_SLOTS = 32  # HEALTH_LATENCY_SLOTS: log2 of the connect latency in microseconds
REASON_PREFIX = "SKB_DROP_REASON_"
REASON_TCP_DROP = 0xFFFF  # HEALTH_REASON_TCP_DROP: tcp_drop() on kernels without reasons
TCP_DROP_NAME = "TCP_DROP"

# drop_key.kind (bpf/health.h HEALTH_DROP_*)
DROP_OWNED, DROP_BY_INODE, DROP_NO_SOCKET, DROP_UNKNOWN = 0, 1, 2, 3

# Raw tracepoints and the program each one runs (bpf/health.h).
RAW_TRACEPOINTS = (
    ("inet_sock_set_state", "pnm_health_state"),
    ("tcp_retransmit_skb", "pnm_health_retransmit"),
    ("tcp_receive_reset", "pnm_health_reset_in"),
    ("tcp_send_reset", "pnm_health_reset_out"),
)
DROP_TRACEPOINT = ("kfree_skb", "pnm_health_drop")
ACCEPT_TRACEPOINTS = ("syscalls:sys_exit_accept4", "syscalls:sys_exit_accept")
ACCEPT_PROGRAM = "pnm_health_accept"
TCP_DROP_KPROBE = ("tcp_drop", "pnm_health_tcp_drop")
BPF_PROG_TYPE_RAW_TRACEPOINT = 17  # BCC's BPF.RAW_TRACEPOINT

TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT",
              7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING", 12: "NEW_SYN_RECV"}

COUNT_FIELDS = ("retrans_segs", "retrans_bytes", "connect_attempts", "connect_ok", "connect_refused",
                "connect_timed_out", "connect_unreachable", "connect_other", "latency_count", "latency_sum_ns",
                "resets_in", "resets_out")


class HealthCountsC(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in COUNT_FIELDS] + [
        ("latency_log2_us", ctypes.c_uint64 * LATENCY_SLOTS)]


class DropKeyC(ctypes.Structure):
    _fields_ = [("ino", ctypes.c_uint64), ("tgid", ctypes.c_uint32), ("reason", ctypes.c_uint16),
                ("kind", ctypes.c_uint16)]


class OwnerC(ctypes.Structure):
    _fields_ = [("tgid", ctypes.c_uint32), ("pad", ctypes.c_uint32), ("ino", ctypes.c_uint64),
                ("connect_ns", ctypes.c_uint64)]


class SockKeyC(ctypes.Structure):
    _fields_ = [("ino", ctypes.c_uint64), ("tgid", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


class SockHealthC(ctypes.Structure):
    _fields_ = [("family", ctypes.c_uint16), ("state", ctypes.c_uint16), ("lport", ctypes.c_uint16),
                ("rport", ctypes.c_uint16), ("laddr", ctypes.c_uint8 * 16), ("raddr", ctypes.c_uint8 * 16),
                ("srtt_us", ctypes.c_uint32), ("rttvar_us", ctypes.c_uint32), ("rtt_ns", ctypes.c_uint64),
                ("retrans_segs", ctypes.c_uint64), ("retrans_bytes", ctypes.c_uint64), ("drops", ctypes.c_uint64),
                ("resets_in", ctypes.c_uint64), ("resets_out", ctypes.c_uint64),
                ("connect_latency_ns", ctypes.c_uint64)]


# Map name -> (key type, value type), as bpf/health.h declares them.
MAP_TYPES: dict[str, tuple[Any, Any]] = {
    "health": (ctypes.c_uint32, HealthCountsC),
    "health_latency_max": (ctypes.c_uint32, ctypes.c_uint64),
    "health_owners": (ctypes.c_uint64, OwnerC),
    "health_drops": (DropKeyC, ctypes.c_uint64),
    "health_socks": (SockKeyC, SockHealthC),
}


# -- what the kernel offers ----------------------------------------------------------------


@dataclass(frozen=True)
class HealthFacts:
    """What this kernel offers for --tcp-health, from its BTF."""

    offsets: dict  # HEALTH_FIELDS macro -> offset (kernel/layout.py)
    missing_fields: tuple  # "struct.member" of those it lacks
    tracepoints: dict  # raw tracepoint -> its parameter count (0: absent)
    reasons: dict  # drop reason value -> name, as the kernel spells it without SKB_DROP_REASON_
    drop_min: int  # the first reason value that is a drop
    tcp_drop_kprobe: bool  # no reasons, but kprobes and tcp_drop() to attach to
    accept_events: bool  # the syscalls:sys_exit_accept* tracepoints (CONFIG_FTRACE_SYSCALLS)

    def arity(self, tracepoint: str) -> int:
        return self.tracepoints.get(tracepoint, 0)

    @property
    def drops(self) -> str:
        """How drops are seen: "reason", "tcp_drop" or "" (not at all)."""
        if self.arity("kfree_skb") >= 3:
            return "reason"
        return "tcp_drop" if self.tcp_drop_kprobe else ""

    def problems(self) -> list[str]:
        """What keeps --tcp-health from running at all (empty: it can)."""
        out = [f"no {f} in this kernel's BTF" for f in self.missing_fields]
        for tracepoint, _program in RAW_TRACEPOINTS:
            if not self.arity(tracepoint):
                out.append(f"no tracepoint {tracepoint}")
        return out

    def cflags(self) -> list[str]:
        from procnetmon.kernel import layout

        flags = ["-DTCP_HEALTH"] + layout.offset_cflags(self.offsets)
        if self.drops == "reason":
            flags += ["-DHEALTH_DROP_REASON", f"-DHEALTH_DROP_MIN={int(self.drop_min)}"]
            if self.arity("kfree_skb") >= 4:
                flags.append("-DHEALTH_DROP_RX_SK")
        elif self.drops == "tcp_drop":
            flags.append("-DHEALTH_TCP_DROP")
        if self.arity("tcp_retransmit_skb") >= 3:
            flags.append("-DHEALTH_RETRANS_ERR")
        return flags

    def reason_name(self, value: int) -> str:
        if value == REASON_TCP_DROP:
            return TCP_DROP_NAME
        return self.reasons.get(value, str(value))


def health_facts(btf=None) -> HealthFacts:
    """This kernel's HealthFacts from BTF (parsed here if not given; BTFError without it).

    Not cached: the reason names are text, and a cache is trusted for
    integers only."""
    from procnetmon.kernel import backends, layout
    from procnetmon.kernel.btf import BTF, BTFError

    if btf is None:
        btf = BTF.from_file()
    offsets, missing = {}, []
    for macro, (struct_name, path) in layout.HEALTH_FIELDS.items():
        try:
            offsets[macro] = btf.member_offset(struct_name, path)
        except BTFError:
            missing.append(f"{struct_name}.{path}")
    tracepoints = {}
    for name in [tp for tp, _ in RAW_TRACEPOINTS] + [DROP_TRACEPOINT[0]]:
        arity = btf.func_proto_arity(f"btf_trace_{name}")
        tracepoints[name] = max(0, arity - 1) if arity else 0  # without the void *__data
    values = btf.enum_values("skb_drop_reason")
    reasons = {v: n[len(REASON_PREFIX):] for n, v in values.items() if n.startswith(REASON_PREFIX)}
    drop_min = values.get(REASON_PREFIX + "NOT_SPECIFIED", 2)
    tcp_drop = (tracepoints[DROP_TRACEPOINT[0]] < 3 and os.path.exists(backends.KPROBE_PMU)
                and TCP_DROP_KPROBE[0] in backends.kernel_symbols())
    events = backends.tracefs_events()
    accept = events is not None and all(os.path.isdir(os.path.join(events, *tp.split(":")))
                                        for tp in ACCEPT_TRACEPOINTS)
    return HealthFacts(offsets, tuple(missing), tracepoints, reasons, drop_min, tcp_drop, accept)


def describe(facts: HealthFacts) -> list[tuple[str, bool, str]]:
    """(figure, offered, how or why not) for --check."""
    def has(tp: str) -> bool:
        return bool(facts.arity(tp))

    rows = [
        ("retransmits", has("tcp_retransmit_skb"), "tracepoint tcp:tcp_retransmit_skb (4.15+)"
         if has("tcp_retransmit_skb") else "no tracepoint tcp:tcp_retransmit_skb"),
        ("connects", has("inet_sock_set_state") and not any(f.startswith("sock.sk_err") for f in facts.missing_fields),
         "tracepoint sock:inet_sock_set_state (4.16+): attempts, outcomes by error, latency"
         if has("inet_sock_set_state") else "no tracepoint sock:inet_sock_set_state"),
        ("resets", has("tcp_receive_reset") and has("tcp_send_reset"),
         "tracepoints tcp:tcp_receive_reset, tcp:tcp_send_reset"),
        ("rtt", not any(f.startswith("tcp_sock.") for f in facts.missing_fields),
         "tcp_sock.srtt_us and mdev_us by BTF offset, at each of a connection's events"),
    ]
    if facts.drops == "reason":
        owner = ("the receiving socket from the tracepoint (6.11+)" if facts.arity("kfree_skb") >= 4
                 else "skb->sk only: receive drops before the socket is found have no owner (before 6.11)")
        rows.append(("drops", True, f"tracepoint skb:kfree_skb with {len(facts.reasons)} reasons (5.17+); {owner}"))
    elif facts.drops == "tcp_drop":
        rows.append(("drops", True, "kprobe on tcp_drop(): TCP drops without a reason (named TCP_DROP; before 5.17)"))
    else:
        rows.append(("drops", False, "skb:kfree_skb has no reason (before 5.17) and no kprobe on tcp_drop()"))
    rows.append(("accepted sockets", facts.accept_events,
                 "owner from syscalls:sys_exit_accept4/accept" if facts.accept_events else
                 "no syscalls:sys_exit_accept* tracepoints (CONFIG_FTRACE_SYSCALLS, or tracefs not mounted): "
                 "only connecting sockets have owners"))
    return rows


# -- attaching -----------------------------------------------------------------------------


def attach(bpf: Any, facts: HealthFacts) -> list[int]:
    """Attach bpf/health.h's programs to BCC's object ``bpf``; the raw
    tracepoints' link descriptors, which the caller closes (BCC frees the
    rest). Raises ProbeError naming the hook that failed."""
    from procnetmon.kernel import bpfsys
    from procnetmon.probes import ProbeError

    def each(what: str, call: Callable[[], Any]) -> None:
        try:
            call()
        except Exception as e:  # BCC raises bare Exception when an attach fails
            raise ProbeError(f"--tcp-health: attaching {what} failed: {e}") from e

    hooks = list(RAW_TRACEPOINTS)
    if facts.drops == "reason":
        hooks.append(DROP_TRACEPOINT)
    links: list[int] = []

    def raw(tracepoint: str, program: str) -> None:
        # Through bpf(2): wire mode's own program is on inet_sock_set_state,
        # and BCC takes one per tracepoint.
        fn = bpf.load_func(program.encode(), BPF_PROG_TYPE_RAW_TRACEPOINT)
        links.append(bpfsys.attach_raw_tracepoint(tracepoint, fn.fd))

    try:
        for tracepoint, program in hooks:
            each(f"the raw tracepoint {tracepoint}", functools.partial(raw, tracepoint, program))
        if facts.drops == "tcp_drop":
            each("a kprobe on tcp_drop", functools.partial(
                bpf.attach_kprobe, event=TCP_DROP_KPROBE[0], fn_name=TCP_DROP_KPROBE[1]))
        if facts.accept_events:
            for tracepoint in ACCEPT_TRACEPOINTS:
                each(f"the tracepoint {tracepoint}", functools.partial(
                    bpf.attach_tracepoint, tp=tracepoint, fn_name=ACCEPT_PROGRAM))
    except ProbeError:
        for fd in links:
            os.close(fd)
        raise
    return links


def check_sizes(map_fd_of: Callable[[str], int]) -> None:
    """Refuse maps whose key or value size is not what the ctypes mirrors
    read (the kernel copies its size into a buffer of ours)."""
    from procnetmon.kernel import bpfsys
    from procnetmon.probes import ProbeError

    for name, (key_type, value_type) in MAP_TYPES.items():
        sizes = bpfsys.map_sizes(map_fd_of(name))
        if sizes != (ctypes.sizeof(key_type), ctypes.sizeof(value_type)):
            raise ProbeError(f"the BPF map {name} has {sizes[0]}-byte keys and {sizes[1]}-byte values, "
                             f"procnetmon reads {ctypes.sizeof(key_type)} and {ctypes.sizeof(value_type)}: "
                             "bpf/health.h and procnetmon/probes/health.py disagree (a bug: please report it)")


# -- reading -------------------------------------------------------------------------------


@dataclass
class HealthCounts:
    """One process's TCP health figures (cumulative in a snapshot, a window in a record)."""

    retrans_segs: int = 0
    retrans_bytes: int = 0
    connect_attempts: int = 0
    connect_ok: int = 0
    connect_refused: int = 0
    connect_timed_out: int = 0
    connect_unreachable: int = 0
    connect_other: int = 0
    latency_count: int = 0
    latency_sum_ns: int = 0
    resets_in: int = 0
    resets_out: int = 0
    latency_log2_us: tuple = (0,) * LATENCY_SLOTS
    drops: dict = field(default_factory=dict)  # reason name -> count
    latency_max_ns: int = 0  # the longest connect (of the window, in a record)

    def minus(self, before: "HealthCounts") -> "HealthCounts":
        """What happened since ``before``; a counter that went back (its
        entry was evicted) counts from zero."""
        out = HealthCounts()
        for name in COUNT_FIELDS:
            setattr(out, name, max(0, getattr(self, name) - getattr(before, name)))
        out.latency_log2_us = tuple(max(0, a - b) for a, b in zip(self.latency_log2_us, before.latency_log2_us))
        out.drops = {r: n - before.drops.get(r, 0) for r, n in self.drops.items() if n > before.drops.get(r, 0)}
        return out

    def plus(self, other: "HealthCounts") -> "HealthCounts":
        out = HealthCounts()
        for name in COUNT_FIELDS:
            setattr(out, name, getattr(self, name) + getattr(other, name))
        out.latency_log2_us = tuple(a + b for a, b in zip(self.latency_log2_us, other.latency_log2_us))
        out.drops = dict(self.drops)
        for reason, n in other.drops.items():
            out.drops[reason] = out.drops.get(reason, 0) + n
        out.latency_max_ns = max(self.latency_max_ns, other.latency_max_ns)
        return out

    def any(self) -> bool:
        return any(getattr(self, f) for f in COUNT_FIELDS) or any(self.drops.values())


@dataclass(frozen=True)
class SocketHealth:
    """One owned TCP socket's figures since it was first seen, and its RTT at its last event."""

    pid: int
    inode: int
    family: str
    local_addr: str
    local_port: int
    remote_addr: str
    remote_port: int
    state: str
    srtt_us: int  # 0: no RTT sample yet
    rttvar_us: int
    rtt_ns: int  # CLOCK_MONOTONIC of the RTT reading
    retrans_segs: int
    retrans_bytes: int
    drops: int
    resets_in: int
    resets_out: int
    connect_latency_ns: int


@dataclass
class HealthSnapshot:
    """What the health maps held at one read."""

    by_pid: dict  # pid -> HealthCounts, cumulative (latency_max_ns: since the last read)
    by_inode: dict  # socket inode -> {reason: count}: drops on sockets whose owner user space finds
    no_socket: dict  # reason -> count: drops of packets of no socket
    unknown_owner: dict  # reason -> count: drops on sockets with neither owner nor inode
    sockets: list  # SocketHealth


def _addr(family: int, raw) -> str:
    data = bytes(raw)
    return str(ipaddress.IPv4Address(data[:4]) if family == socket.AF_INET else ipaddress.IPv6Address(data[:16]))


def read(table: Callable[[str], Any], reason_name: Callable[[int], str], gone: set,
         socket_details: bool = True) -> HealthSnapshot:
    """The health maps through ``table(name)`` (BCC's or libbpf's); the
    entries of the processes in ``gone`` (exits this read collected) leave
    the per-process maps after it, as their byte counters do."""
    by_pid: dict[int, HealthCounts] = {}
    counts = table("health")
    for k, v in list(counts.items()):
        pid = int(getattr(k, "value", k))
        found = HealthCounts(latency_log2_us=tuple(int(x) for x in v.latency_log2_us))
        for name in COUNT_FIELDS:
            setattr(found, name, int(getattr(v, name)))
        by_pid[pid] = found
        if pid in gone:
            _delete(counts, k)
    maxima = table("health_latency_max")
    for k, v in list(maxima.items()):
        pid = int(getattr(k, "value", k))
        if pid in by_pid:
            by_pid[pid].latency_max_ns = int(getattr(v, "value", v))
        _delete(maxima, k)
    by_inode: dict[int, dict[str, int]] = {}
    no_socket: dict[str, int] = {}
    unknown: dict[str, int] = {}
    for k, v in list(table("health_drops").items()):
        n, reason = int(getattr(v, "value", v)), reason_name(int(k.reason))
        if k.kind == DROP_OWNED:
            drops = by_pid.setdefault(int(k.tgid), HealthCounts()).drops
        elif k.kind == DROP_BY_INODE:
            drops = by_inode.setdefault(int(k.ino), {})
        elif k.kind == DROP_NO_SOCKET:
            drops = no_socket
        else:
            drops = unknown
        drops[reason] = drops.get(reason, 0) + n
    sockets = []
    if socket_details:
        for k, v in table("health_socks").items():
            if v.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            sockets.append(SocketHealth(
                pid=int(k.tgid), inode=int(k.ino), family="ipv4" if v.family == socket.AF_INET else "ipv6",
                local_addr=_addr(v.family, v.laddr), local_port=int(v.lport),
                remote_addr=_addr(v.family, v.raddr), remote_port=int(v.rport),
                state=TCP_STATES.get(int(v.state), "UNKNOWN"), srtt_us=int(v.srtt_us), rttvar_us=int(v.rttvar_us),
                rtt_ns=int(v.rtt_ns), retrans_segs=int(v.retrans_segs), retrans_bytes=int(v.retrans_bytes),
                drops=int(v.drops), resets_in=int(v.resets_in), resets_out=int(v.resets_out),
                connect_latency_ns=int(v.connect_latency_ns)))
    return HealthSnapshot(by_pid, by_inode, no_socket, unknown, sockets)


def _delete(table, key) -> None:
    try:
        del table[key]
    except KeyError:
        pass
