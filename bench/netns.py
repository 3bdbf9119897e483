"""The benchmark's "remote host": a network namespace joined to this one by a veth pair.

Addresses come from the benchmarking range 198.18.0.0/15 (RFC 2544), and a
/30 is only used after checking that no address or route of this machine
touches it. Everything created here is removed by ``Peer.destroy``, which the
caller runs in a ``finally`` (so also on Ctrl-C and on errors).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from testbed.netns import free_subnet, sh

# The upper half of 198.18.0.0/15: the e2e tests draw from the lower half, so
# a benchmark running beside them never even probes the same /30.
POOL = ipaddress.ip_network("198.19.0.0/16")


@dataclass
class Peer:
    """A namespace host at ``peer_addr``, reached through ``host_if``."""

    netns: str
    host_if: str
    peer_if: str
    host_addr: str
    peer_addr: str

    @classmethod
    def create(cls) -> "Peer":
        tag = os.getpid() % 1000000
        net = free_subnet(POOL)
        # Interface names are limited to 15 characters.
        peer = cls(f"pnmbench{tag}", f"pnbh{tag}", f"pnbp{tag}", str(net[1]), str(net[2]))
        try:
            sh("ip", "netns", "add", peer.netns)
            sh("ip", "link", "add", peer.host_if, "type", "veth", "peer", "name", peer.peer_if)
            sh("ip", "link", "set", peer.peer_if, "netns", peer.netns)
            sh("ip", "addr", "add", f"{peer.host_addr}/30", "dev", peer.host_if)
            sh("ip", "link", "set", peer.host_if, "up")
            sh(*peer.exec_prefix(), "ip", "addr", "add", f"{peer.peer_addr}/30", "dev", peer.peer_if)
            sh(*peer.exec_prefix(), "ip", "link", "set", peer.peer_if, "up")
            sh(*peer.exec_prefix(), "ip", "link", "set", "lo", "up")
            route = sh("ip", "-4", "route", "get", peer.peer_addr)
            if f" dev {peer.host_if} " not in route:
                raise RuntimeError(f"{peer.peer_addr} does not route through {peer.host_if}: {route.strip()}")
        except BaseException:
            peer.destroy()
            raise
        return peer

    def exec_prefix(self) -> tuple[str, ...]:
        """Prefix that runs a command inside the namespace. ``ip netns exec``
        execs the command, so a Popen's PID is the command's own."""
        return ("ip", "netns", "exec", self.netns)

    def destroy(self) -> None:
        # Deleting one end of a veth pair deletes both; the namespace goes last.
        sh("ip", "link", "del", self.host_if, check=False)
        sh("ip", "netns", "del", self.netns, check=False)
