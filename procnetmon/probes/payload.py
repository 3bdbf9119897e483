"""The payload backend: bpf/payload.bpf.c on the sock_send_length/sock_recv_length tracepoints.

Counts what the socket calls of each process returned; with details, also
per socket with its addresses.
"""

from __future__ import annotations

import ipaddress
import socket

from procnetmon.probes import PROTOCOLS, SocketBytes
from procnetmon.probes.loader import BccProbe, build_cflags  # noqa: F401  (build_cflags re-exported)


def _format_addr(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return str(ipaddress.IPv4Address(bytes(raw[:4])))
    return str(ipaddress.IPv6Address(bytes(raw[:16])))


class PayloadProbe(BccProbe):
    """Attached payload probes for one run."""

    mode = "payload"
    source = "payload.bpf.c"
    requirement = ("the kernel needs raw tracepoints sock:sock_send_length and "
                   "sock:sock_recv_length, Linux 6.3 or later")

    def sockets(self) -> list[SocketBytes]:
        if not self.details:
            return []
        out = []
        for _k, v in self._bpf["sockets"].items():
            protocol = PROTOCOLS.get(v.protocol)
            if protocol is None or v.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            out.append(SocketBytes(
                pid=v.tgid, protocol=protocol,
                family="ipv4" if v.family == socket.AF_INET else "ipv6",
                local_addr=_format_addr(v.family, bytes(v.laddr)), local_port=v.lport,
                remote_addr=_format_addr(v.family, bytes(v.raddr)), remote_port=v.rport,
                bytes_in=v.bytes_in, bytes_out=v.bytes_out))
        return out
