"""Payload mode: bpf/payload.bpf.c on the socket-call hooks of the chosen backend.

Counts what the socket calls of each process returned; with details, also
per socket with its addresses.
"""

from __future__ import annotations

from procnetmon.probes import SocketBytes
from procnetmon.probes.loader import BccProbe, socket_bytes


class PayloadProbe(BccProbe):
    """Attached payload probes for one run."""

    mode = "payload"
    source = "payload.bpf.c"
    requirement = "payload mode needs one probe backend: tracepoints (6.3+), BPF trampolines or kprobes"

    def sockets(self) -> list[SocketBytes]:
        if not self.spec.details:
            return []
        found = (socket_bytes(v, k.tgid, inode=k.ino, sock_id=k.ino) for k, v in self.bpf["sockets"].items())
        return [s for s in found if s]
