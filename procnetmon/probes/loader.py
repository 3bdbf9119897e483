"""What the probes of every mode do the same way with BCC: compile, fill the filter maps, read counters.

A mode's probe class names its BPF source and its mode, and may add
programs to attach (``_attach_more``); the backend (tracepoint, kprobe,
fentry) says where the socket-call hooks attach; reading the maps is
``reader.MapReader``'s.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
from typing import Any, Optional

from procnetmon import endpoints
from procnetmon.kernel import backends, bpfsys, cgroup_layout, headers, layout
from procnetmon.kernel.btf import BTFError
from procnetmon.probes import PROTOCOLS, ProbeError, SocketBytes, bpf_source, compilelog, expand_includes, health
from procnetmon.probes.reader import MapReader
from procnetmon.probes.spec import ProbeSpec

# What the kprobe backend attaches to each kernel function: the entry probe
# that keeps the call's arguments, and the return probe (bpf/hooks.h).
KPROBE_ENTRIES = {
    "inet_sendmsg": "pnm_enter_send", "inet6_sendmsg": "pnm_enter_send", "inet_sendpage": "pnm_enter_send",
    "inet_recvmsg": "pnm_enter_recv", "inet6_recvmsg": "pnm_enter_recv", "sock_common_recvmsg": "pnm_enter_recv",
    "tcp_splice_read": "pnm_enter_splice_read",
    "packet_sendmsg": "pnm_enter_send", "packet_recvmsg": "pnm_enter_recv",
}
KPROBE_RETURN = "pnm_return"
KPROBE_UDP_DATAGRAM = (backends.UDP_CONSUME, "pnm_udp_datagram")

# Return probes armed at once per function: a call blocked in recv holds one,
# and a return with none left is missed. The kernel allows at most 4096.
KRETPROBE_MAXACTIVE = 4096


def backend_cflags(backend: backends.Backend, facts: Optional[backends.BtfFacts]) -> list[str]:
    """-DHOOKS_<BACKEND> and a -DHAVE_<FUNCTION> for each optional hook the kernel has."""
    flags = [f"-DHOOKS_{backend.name.upper()}"]
    for function in backend.functions:
        if function not in backends.REQUIRED:
            flags.append(f"-DHAVE_{function.upper()}")
    if backend.udp_rx:
        flags.append({"fentry": "-DUDP_RX_FENTRY", "kprobe": "-DUDP_RX_KPROBE",
                      "sk_data_ready": "-DUDP_RX_HEAD"}[backend.udp_rx])
    if backend.typed:
        flags.append("-DTYPED_TRACEPOINTS")
    if facts is not None and facts.exit_group_dead:
        flags.append("-DHAVE_EXIT_GROUP_DEAD")
    return flags


def build_cflags(offsets: dict, spec: ProbeSpec) -> list[str]:
    """The -D flags for one run. Only switches and integers reach the C: no pasted text."""
    flags = layout.offset_cflags(offsets)
    if spec.pids is not None:
        flags.append("-DFILTER_PIDS")
        if spec.follow_children:
            flags.append("-DFOLLOW_CHILDREN")
    if spec.interfaces is not None:
        flags.append("-DFILTER_IFACES")
    elif not spec.include_loopback:
        flags.append("-DEXCLUDE_LOOPBACK")
    if spec.details:
        flags.append("-DDETAILS")
    if spec.cgroups is not None:
        flags.append("-DFILTER_CGROUPS")
    mask = spec.class_mask()
    if mask is not None:
        flags.append(f"-DCOUNT_CLASSES={mask}")
    if spec.exclude_cgroups is not None:
        flags.append("-DEXCLUDE_CGROUPS")
    if spec.exclude_pid is not None:
        flags.append(f"-DEXCLUDE_TGID={int(spec.exclude_pid)}")
    if spec.remotes is not None or spec.exclude_remotes is not None:
        flags.append("-DFILTER_REMOTE")
        flags.append(f"-DMAX_REMOTE_CIDRS={endpoints.MAX_REMOTE_CIDRS}")
        if spec.remotes is not None:
            flags.append("-DREMOTE_INCLUDES")
    if spec.remote_ports is not None or spec.exclude_remote_ports is not None:
        flags.append("-DFILTER_RPORT")
    if spec.local_ports is not None or spec.exclude_local_ports is not None:
        flags.append("-DFILTER_LPORT")
    return flags


def _format_addr(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return str(ipaddress.IPv4Address(raw[:4]))
    return str(ipaddress.IPv6Address(raw[:16]))


def socket_bytes(info, pid: int, inode: int = 0, sock_id: int = 0) -> Optional[SocketBytes]:
    """A ``struct sock_info`` of the BPF programs as plain data (None if of no known class)."""
    protocol = PROTOCOLS.get(info.protocol)
    if protocol is None:
        return None
    if info.family == socket.AF_PACKET:
        # No addresses: the interface index stands in the local port's place.
        return SocketBytes(pid=pid, protocol=protocol, family="packet", local_addr="", local_port=info.lport,
                           remote_addr="", remote_port=0, bytes_in=info.bytes_in, bytes_out=info.bytes_out,
                           inode=inode, sock_id=sock_id)
    if info.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    return SocketBytes(
        pid=pid, protocol=protocol, family="ipv4" if info.family == socket.AF_INET else "ipv6",
        local_addr=_format_addr(info.family, bytes(info.laddr)), local_port=info.lport,
        remote_addr=_format_addr(info.family, bytes(info.raddr)), remote_port=info.rport,
        bytes_in=info.bytes_in, bytes_out=info.bytes_out, inode=inode, sock_id=sock_id)


class BccProbe(MapReader):
    """Probes of one backend, attached for one run, read through BCC's tables. Use as a context manager."""

    mode = ""
    source = ""
    requirement = ""  # what the kernel must offer, for the error message

    def __init__(self, spec: ProbeSpec):
        if self.mode and spec.mode != self.mode:
            raise ValueError(f"a {spec.mode} spec for the {self.mode} probes")
        super().__init__(spec)
        self.backend: Optional[backends.Backend] = None  # the one chosen, once planned
        self._bpf: Optional[Any] = None  # BCC's BPF (untyped), between attach() and close()
        self._facts: Optional[backends.BtfFacts] = None
        self._typed_fds: list[int] = []  # BTF-typed tracepoint programs and their links
        self._typed_refused: Optional[str] = None  # why the kernel would not take them

    def compile_plan(self) -> tuple[str, list[str], str]:
        """Source path, compiler flags and header directory, without loading anything."""
        try:
            offsets = layout.kernel_offsets()
        except BTFError as e:
            raise ProbeError(f"kernel struct layout unavailable: {e}") from e
        try:
            header_dir, _synthetic = headers.ensure_headers()
        except headers.HeadersError as e:
            raise ProbeError(str(e)) from e
        facts = self._facts = backends.btf_facts()
        try:
            self.backend = backends.choose(backends.detect(facts), self.spec.backend)
        except LookupError as e:
            raise ProbeError(f"no probe backend can run on this kernel: {e}") from e
        if self._typed_refused and self.backend.typed:
            self.backend = dataclasses.replace(self.backend, typed=False,
                                               refused=self._typed_refused)
        flags = build_cflags(offsets, self.spec)
        if self.spec.cgroups is not None or self.spec.exclude_cgroups is not None:
            try:
                flags += layout.offset_cflags(cgroup_layout.cgroup_offsets())
            except BTFError as e:
                raise ProbeError(f"kernel struct layout for the cgroup filter unavailable: {e}") from e
        flags += backend_cflags(self.backend, facts)
        if self.spec.tcp_health:
            flags += self.health_facts().cflags()
        return bpf_source(self.source), flags, header_dir

    def attach(self) -> None:
        source, flags, header_dir = self.compile_plan()
        os.environ["BCC_KERNEL_SOURCE"] = header_dir
        try:
            from bcc import BPF
        except ImportError as e:
            raise ProbeError("BCC's Python module is missing: install python3-bpfcc "
                             "(Debian/Ubuntu) or python3-bcc (Fedora/RHEL)") from e
        try:
            with compilelog.captured(self.spec.verbose) as log:
                # The raw tracepoints attach before the filter maps are filled,
                # but with FILTER_* every lookup misses until then: nothing is
                # counted that should not be.
                self._bpf = BPF(text=expand_includes(source).encode(), cflags=flags)
        except Exception as e:  # BCC raises bare Exception for compile/load/attach failures
            what = f"loading the {self.mode} probes ({self.planned.name} backend) failed"
            if "compile" not in str(e):
                raise ProbeError(f"{what}: {e} ({self.requirement}; run procnetmon --check to see what this "
                                 "kernel offers)") from e
            why = compilelog.cause(log.text()) or headers.compile_failure_cause(header_dir)
            where = (f"; the compiler's output is in {log.path} (--verbose prints it)" if log.path
                     else "; the compiler's output is above")
            raise ProbeError(f"{what}: {why}{where}") from e
        self._fill_filters()
        try:
            if self.planned.typed:
                try:
                    self._attach_typed_tracepoints()
                except bpfsys.BpfError as e:
                    # A verifier that will not take the plain loads still
                    # takes the same programs reading through the helper.
                    self.close()
                    self._typed_refused = str(e)
                    return self.attach()
            if self.planned.name == "kprobe":
                self._attach_kprobes()
            if self.planned.udp_rx == "kprobe" and self.mode == "payload" and (
                    self.spec.interfaces is not None or not self.spec.include_loopback
                    or self.spec.filters_remote()):
                self._attach_udp_kprobe()
            self._attach_more()
            if self.spec.tcp_health:
                health.check_sizes(lambda name: self.bpf[name].map_fd)
                self._typed_fds += health.attach(self.bpf, self.health_facts())
        except ProbeError:
            self.close()
            raise

    def _attach_kprobes(self) -> None:
        """The kprobe backend's probes, which BCC does not attach by itself."""
        for function in self.planned.functions:
            entry = KPROBE_ENTRIES.get(function)
            try:
                if entry:
                    self.bpf.attach_kprobe(event=function, fn_name=entry)
                    self.bpf.attach_kretprobe(event=function, fn_name=KPROBE_RETURN,
                                               maxactive=KRETPROBE_MAXACTIVE)
            except Exception as e:  # BCC raises bare Exception when an attach fails
                raise ProbeError(f"attaching a kprobe to {function} failed: {e}") from e

    def _attach_udp_kprobe(self) -> None:
        """What tells a UDP datagram's interface inside the call, where no trampoline can (bpf/hooks.h)."""
        function, program = KPROBE_UDP_DATAGRAM
        try:
            self.bpf.attach_kprobe(event=function, fn_name=program)
        except Exception as e:  # BCC raises bare Exception when an attach fails
            raise ProbeError(f"attaching a kprobe to {function} failed: {e}") from e

    def _attach_typed_tracepoints(self) -> None:
        """The tracepoint backend's BTF-typed programs (pnm_typed_<tracepoint>
        in bpf/hooks.h), which BCC compiles but cannot load: loaded from its
        bytes, maps resolved, through bpf(2)."""
        if self._facts is None:
            raise ProbeError("BTF-typed tracepoints without this kernel's BTF facts")
        for tracepoint, btf_id in sorted(self._facts.tracepoints.items()):
            try:
                insns = self.bpf.dump_func(f"pnm_typed_{tracepoint}".encode())
            except Exception:  # BCC: not in this build
                continue
            prog = bpfsys.load_tracing(insns, bpfsys.BPF_TRACE_RAW_TP, btf_id, tracepoint)
            self._typed_fds.append(prog)
            self._typed_fds.append(bpfsys.attach_tracing(prog))

    def _fill_filters(self) -> None:
        if self.spec.pids is not None:
            self.add_pids(self.spec.pids)
        if self.spec.interfaces is not None:
            table = self.bpf["target_ifaces"]
            for key in self.spec.interfaces:
                k = table.Key()
                k.netns, k.ifindex = int(key.netns), int(key.ifindex)
                table[k] = table.Leaf(1)
        self._fill_end_filters()
        self._refresh_cgroups()

    def _fill_end_filters(self) -> None:
        """The remote CIDR trie and the port bitmaps (bpf/remote.h), folded by procnetmon/endpoints.py."""
        spec = self.spec
        if spec.remotes is not None or spec.exclude_remotes is not None:
            trie = self.bpf["remote_cidrs"]
            for prefixlen, addr, value in endpoints.trie_entries(spec.remotes, spec.exclude_remotes):
                k = trie.Key()
                k.prefixlen = prefixlen
                k.addr = (type(k.addr))(*addr)
                trie[k] = trie.Leaf(value)
        for name, includes, excludes in (("rport_bits", spec.remote_ports, spec.exclude_remote_ports),
                                         ("lport_bits", spec.local_ports, spec.exclude_local_ports)):
            if includes is None and excludes is None:
                continue
            table = self.bpf[name]
            for i, word in enumerate(endpoints.port_words(includes, excludes)):
                table[table.Key(i)] = table.Leaf(word)

    def _attach_more(self) -> None:
        """Programs BCC does not attach by itself (none for tracepoint-only backends)."""

    @property
    def bpf(self) -> Any:
        """BCC's loaded object; ProbeError before attach() or after close()."""
        if self._bpf is None:
            raise ProbeError(f"the {self.mode} probes are not attached")
        return self._bpf

    @property
    def planned(self) -> backends.Backend:
        """The backend compile_plan() chose."""
        if self.backend is None:
            raise ProbeError(f"no backend chosen yet for the {self.mode} probes")
        return self.backend

    def _table(self, name: str):
        return self.bpf[name]

    def sockets(self) -> list[SocketBytes]:
        return []

    def close(self) -> None:
        for fd in reversed(self._typed_fds):
            os.close(fd)
        self._typed_fds = []
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None
        # Those cgroups were in the map just freed: a later attach (the
        # fallback from typed programs) must put them in its own again.
        self._cgroup_ids = set()
        self._excluded_cgroup_ids = set()

    def __enter__(self) -> "BccProbe":
        self.attach()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
