"""Network interface names resolved to what the kernel side filters on.

Interface indexes are per network namespace, so the in-kernel filter keys on
(namespace inode, ifindex); names are resolved in procnetmon's own namespace.
"""

from __future__ import annotations

import os
import socket
from typing import NamedTuple

LOOPBACK_IFINDEX = 1


class UnknownInterface(ValueError):
    """An interface name that does not exist in this network namespace."""

    def __init__(self, name: str, known: list[str]):
        self.name = name
        self.known = known
        super().__init__(f"no interface named {name!r}; this host has: {', '.join(known)}")


class InterfaceKey(NamedTuple):
    netns: int
    ifindex: int


def own_netns_inode() -> int:
    return os.stat("/proc/self/ns/net").st_ino


def interface_names() -> dict[int, str]:
    return {index: name for index, name in socket.if_nameindex()}


def resolve(names: list[str]) -> list[InterfaceKey]:
    """Keys for the kernel's interface filter, or UnknownInterface naming the culprit."""
    known = interface_names()
    by_name = {name: index for index, name in known.items()}
    netns = own_netns_inode()
    keys = []
    for name in names:
        if name not in by_name:
            raise UnknownInterface(name, sorted(known.values()))
        keys.append(InterfaceKey(netns, by_name[name]))
    return keys


def names_include_loopback(names: list[str]) -> bool:
    known = interface_names()
    return known.get(LOOPBACK_IFINDEX) in names
