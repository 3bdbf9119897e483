"""The filters on the ends of the traffic (--remote, --remote-port,
--local-port and their --exclude- forms) as the kernel's maps hold them
(bpf/remote.h): one LPM trie of CIDRs and a bitmap of ports per kind.

Semantics, the same for each kind: the includes are OR-ed (none given:
everything), then the excludes subtract; the kinds are AND-ed. Both are
folded here into one answer per lookup, so the kernel does one lookup per
kind, whatever the number of CIDRs or ranges. Standard library only.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable, Optional, Union

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

# The size of the kernel's trie (MAX_REMOTE_CIDRS in bpf/remote.h).
MAX_REMOTE_CIDRS = 1024
PORT_MAX = 65535
PORT_WORDS = (PORT_MAX + 1) // 64  # the bitmaps' u64 words
REMOTE_INCLUDE = 1  # the trie's values (bpf/remote.h)
REMOTE_EXCLUDE = 2
V4_MAPPED = b"\0" * 10 + b"\xff\xff"  # ::ffff:0:0/96, where IPv4 lives in the trie


def parse_network(text: str) -> Network:
    """A CIDR or a plain address (one host), v4 or v6; host bits past the
    prefix are dropped (198.18.1.7/24 is 198.18.1.0/24). ValueError says why not."""
    item = text.strip()
    if not item or "%" in item or any(c.isspace() for c in item) or not item.isascii():
        raise ValueError("not an address or CIDR")
    try:
        return ipaddress.ip_network(item, strict=False)
    except ValueError:
        raise ValueError("not an address or CIDR") from None


def parse_port_range(text: str) -> tuple[int, int]:
    """P or P-Q (0 to 65535, P <= Q). ValueError says why not."""
    item = text.strip()
    low, sep, high = item.partition("-")
    parts = (low, high) if sep else (low,)
    # Checked before int(): digits only, and few of them.
    if not all(p.isascii() and p.isdigit() and len(p) <= 6 for p in parts):
        raise ValueError("not a port or a range P-Q")
    numbers = [int(p) for p in parts]
    if any(n > PORT_MAX for n in numbers):
        raise ValueError(f"ports are at most {PORT_MAX}")
    if len(numbers) == 2 and numbers[0] > numbers[1]:
        raise ValueError("a range goes from the lower port to the higher")
    return numbers[0], numbers[-1]


def trie_key(network: Network) -> tuple[int, bytes]:
    """The trie's key of a network: (prefix length, 16 bytes), IPv4 as
    ::ffff:a.b.c.d with its prefix length + 96."""
    if network.version == 4:
        return network.prefixlen + 96, V4_MAPPED + network.network_address.packed
    return network.prefixlen, network.network_address.packed


def trie_entries(includes: Optional[Iterable[str]], excludes: Optional[Iterable[str]]) -> list[tuple[int, bytes, int]]:
    """(prefix length, address, value) of each trie entry. An include inside
    an exclude (or equal to one) is left out: the longest match is then the
    exclude, as "excludes subtract" wants."""
    inc = {parse_network(t) for t in includes or ()}
    exc = {parse_network(t) for t in excludes or ()}
    kept_inc = {n for n in inc if not any(_within(n, e) for e in exc)}
    entries = [(*trie_key(n), REMOTE_EXCLUDE) for n in exc]
    entries += [(*trie_key(n), REMOTE_INCLUDE) for n in kept_inc]
    return sorted(entries)


def _within(inner: Network, outer: Network) -> bool:
    return inner.version == outer.version and inner.subnet_of(outer)  # type: ignore[arg-type]


def port_words(includes: Optional[Iterable[tuple[int, int]]],
               excludes: Optional[Iterable[tuple[int, int]]]) -> list[int]:
    """The bitmap of counted ports, PORT_WORDS words of 64 bits (bit p % 64
    of word p // 64): the included ranges (every port when none), less the excluded."""
    include_list = list(includes) if includes is not None else [(0, PORT_MAX)]
    bits = _range_bits(include_list) & ~_range_bits(list(excludes or ()))
    mask = (1 << 64) - 1
    return [(bits >> (64 * i)) & mask for i in range(PORT_WORDS)]


def _range_bits(ranges: list[tuple[int, int]]) -> int:
    bits = 0
    for low, high in ranges:
        bits |= ((1 << (high - low + 1)) - 1) << low
    return bits


def port_counted(words: list[int], port: int) -> bool:
    """Whether the bitmap counts ``port`` (as the kernel's PORT_BIT_SET)."""
    return bool((words[port >> 6] >> (port & 63)) & 1)


def remote_counted(entries: list[tuple[int, bytes, int]], address: str, includes_given: bool) -> bool:
    """Whether traffic with remote ``address`` is counted, as the kernel's
    longest-prefix lookup decides it (for tests and for explaining)."""
    addr = ipaddress.ip_address(address)
    key = (V4_MAPPED + addr.packed) if addr.version == 4 else addr.packed
    value = 0
    best = -1
    whole = int.from_bytes(key, "big")
    for prefixlen, net, v in entries:
        shift = 128 - prefixlen
        if prefixlen > best and (whole >> shift) == (int.from_bytes(net, "big") >> shift):
            best, value = prefixlen, v
    if best < 0:
        return not includes_given
    return value == REMOTE_INCLUDE
