"""Wire mode: bpf/wire.bpf.c, cgroup_skb programs joined to socket owners.

Attaches the two cgroup_skb programs to the root of the cgroup v2
hierarchy through BPF links, which the kernel detaches when procnetmon's
file descriptors close, even if it is killed. Each read gives the bytes of
sockets whose owner became known since (the ``pending`` map) to that owner
(``reader.MapReader``).
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
from typing import Optional

from procnetmon.cgroups import cgroup2_mount
from procnetmon.probes import ProbeError, SocketBytes, libbpf
from procnetmon.probes.loader import BccProbe, socket_bytes
from procnetmon.probes.spec import ProbeSpec

# enum bpf_attach_type
BPF_CGROUP_INET_INGRESS = 0
BPF_CGROUP_INET_EGRESS = 1


class WireProbe(BccProbe):
    """Attached wire probes for one run."""

    mode = "wire"
    source = "wire.bpf.c"
    requirement = ("wire mode needs cgroup v2, BPF_PROG_TYPE_CGROUP_SKB, the raw tracepoint "
                   "sock:inet_sock_set_state and one probe backend for the socket calls")

    def __init__(self, spec: ProbeSpec):
        super().__init__(spec)
        self._links: list[int] = []
        self._cgroup_fd: Optional[int] = None

    def _attach_more(self) -> None:
        from bcc import BPF

        root = cgroup2_mount()
        if root is None:
            raise ProbeError("wire mode needs the cgroup v2 hierarchy mounted "
                             "(mount -t cgroup2 none /sys/fs/cgroup)")
        lib = libbpf.load("wire mode")
        self._cgroup_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        for name, attach_type in (("wire_egress", BPF_CGROUP_INET_EGRESS),
                                  ("wire_ingress", BPF_CGROUP_INET_INGRESS)):
            try:
                fn = self.bpf.load_func(name, BPF.CGROUP_SKB)
            except Exception as e:  # BCC raises bare Exception when the verifier refuses
                raise ProbeError(f"loading {name} (cgroup_skb) failed: {e}") from e
            link = lib.bpf_link_create(fn.fd, self._cgroup_fd, attach_type, None)
            if link < 0:
                err = ctypes.get_errno() or -link
                raise ProbeError(f"attaching {name} to the cgroup v2 root {root} failed: {os.strerror(err)}")
            self._links.append(link)

    def sockets(self) -> list[SocketBytes]:
        """Per-socket wire bytes of sockets whose owner is known, through the interface filter."""
        if not self.spec.details:
            return []
        owners = self.bpf["owners"]
        merged: dict[int, SocketBytes] = {}
        for k, v in self.bpf["sockets"].items():
            try:
                owner = owners[owners.Key(k.cookie)]
            except KeyError:
                continue
            if not self._wanted(owner.netns, k.ifindex):
                continue
            found = socket_bytes(v, owner.tgid, inode=owner.ino, sock_id=k.cookie)
            if found is None:
                continue
            before = merged.get(k.cookie)
            if before is not None:  # the same socket on another interface
                found = dataclasses.replace(found, bytes_in=found.bytes_in + before.bytes_in,
                                            bytes_out=found.bytes_out + before.bytes_out)
            merged[k.cookie] = found
        return list(merged.values())

    def close(self) -> None:
        for fd in self._links:
            os.close(fd)
        self._links = []
        if self._cgroup_fd is not None:
            os.close(self._cgroup_fd)
            self._cgroup_fd = None
        super().close()
