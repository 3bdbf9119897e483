"""Safe addresses and plumbing for namespace peers joined by veth pairs, and free loopback ports.

Traffic may only go to loopback or to namespaces the tests themselves make,
with addresses that cannot collide with the machine's own: a /30 of the
benchmarking range 198.18.0.0/15 (RFC 2544) is only used when no address or
route of this host touches it and the kernel would route it out through the
default gateway (or, on a host without a network, not at all), i.e. nothing
on this machine answers it yet.
"""

from __future__ import annotations

import ipaddress
import json
import random
import socket
import subprocess
from typing import Optional

BENCHMARK_RANGE = ipaddress.ip_network("198.18.0.0/15")


def free_port() -> int:
    """A loopback TCP port nothing listens on now (the kernel's pick), for a server the caller starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sh(*cmd: str, check: bool = True) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()}")
    return done.stdout


def used_networks() -> list:
    """Every IPv4 network this host has an address in or a route to (the default route aside)."""
    nets = []
    for line in sh("ip", "-o", "-4", "addr", "show").splitlines():
        parts = line.split()
        nets.append(ipaddress.ip_interface(parts[parts.index("inet") + 1]).network)
    for line in sh("ip", "-4", "route", "show", "table", "all").splitlines():
        # Route lines may start with a type ("local", "broadcast"): the prefix follows it.
        for word in line.split()[:2]:
            try:
                nets.append(ipaddress.ip_network(word, strict=False))
                break
            except ValueError:
                continue
    return [n for n in nets if n.prefixlen > 0]


def routes_outward(addr) -> bool:
    """True when nothing of this host answers ``addr``: the kernel would send it to the
    default gateway, or has no route for it at all (a host without a network, such as
    the kernel matrix's VMs)."""
    done = subprocess.run(["ip", "-4", "route", "get", str(addr)], capture_output=True, text=True)
    if done.returncode != 0:
        return "network is unreachable" in done.stderr.lower()
    route = done.stdout
    return bool(route) and not route.startswith(("local", "broadcast", "unreachable")) and " via " in route


def free_subnet(pool: ipaddress.IPv4Network) -> ipaddress.IPv4Network:
    """A /30 of ``pool`` (inside 198.18.0.0/15) that nothing of this host overlaps."""
    if not pool.subnet_of(BENCHMARK_RANGE):
        raise ValueError(f"{pool} is outside the benchmarking range {BENCHMARK_RANGE}")
    used = used_networks()
    candidates = list(pool.subnets(new_prefix=30))
    start = random.randrange(len(candidates))
    for candidate in candidates[start:] + candidates[:start]:
        if any(candidate.overlaps(n) for n in used):
            continue
        if all(routes_outward(candidate[i]) for i in (1, 2)):
            return candidate
    raise RuntimeError(f"no free /30 in {pool}")


def link_stats(dev: str, netns: Optional[str] = None) -> dict:
    """The interface's own counters: {"tx_bytes", "tx_packets", "rx_bytes", "rx_packets"}."""
    where = ["-n", netns] if netns else []
    stats = json.loads(sh("ip", *where, "-j", "-s", "link", "show", "dev", dev))[0]["stats64"]
    return {"tx_bytes": stats["tx"]["bytes"], "tx_packets": stats["tx"]["packets"],
            "rx_bytes": stats["rx"]["bytes"], "rx_packets": stats["rx"]["packets"]}
