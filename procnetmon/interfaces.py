"""Network interface names resolved to what the kernel side filters on.

Interface indexes are per network namespace, so the in-kernel filter keys on
(namespace inode, ifindex). A plain name is resolved in procnetmon's own
namespace; NETNS/IFACE in the namespace ``ip netns`` calls NETNS
(/run/netns/NETNS), pid:PID/IFACE in the namespace of process PID. Another
namespace's names are read by a short-lived thread that enters it, since
setns(2) moves only the calling thread.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
from typing import NamedTuple, Optional

LOOPBACK_IFINDEX = 1
NETNS_RUN_DIR = "/run/netns"  # where ip netns keeps its names
CLONE_NEWNET = 0x40000000


class UnknownInterface(ValueError):
    """An interface name that does not exist in its network namespace (or a
    namespace that does not exist)."""

    def __init__(self, name: str, known: list[str], where: str = "this host", reason: str = ""):
        self.name = name
        self.known = known
        if reason:
            message = f"no interface named {name!r}: {reason}"
        else:
            message = f"no interface named {name!r}; {where} has: {', '.join(known)}"
        super().__init__(message)


class InterfaceKey(NamedTuple):
    netns: int
    ifindex: int


def own_netns_inode() -> int:
    return os.stat("/proc/self/ns/net").st_ino


def interface_names() -> dict[int, str]:
    return {index: name for index, name in socket.if_nameindex()}


def split_name(name: str) -> tuple[Optional[str], str]:
    """("NETNS" or "pid:PID", IFACE) of NETNS/IFACE; (None, IFACE) of a plain name."""
    if "/" in name:
        namespace, ifname = name.split("/", 1)
        return namespace, ifname
    return None, name


def netns_path(namespace: str) -> str:
    if namespace.startswith("pid:"):
        return f"/proc/{namespace[4:]}/ns/net"
    return os.path.join(NETNS_RUN_DIR, namespace)


def netns_inode(path: str) -> int:
    return os.stat(path).st_ino


def names_in_netns(path: str) -> dict[int, str]:
    """The interfaces of the network namespace at ``path`` (needs CAP_SYS_ADMIN).
    Raises OSError when it cannot be entered."""
    result: dict = {}

    def look() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(path, os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, os.strerror(err), path)
            finally:
                os.close(fd)
            result["names"] = interface_names()
        except OSError as e:
            result["error"] = e

    # This thread ends in the other namespace; no other thread is moved.
    worker = threading.Thread(target=look, name="procnetmon-netns")
    worker.start()
    worker.join()
    if "error" in result:
        raise result["error"]
    return result["names"]


def _namespace(namespace: Optional[str], name: str) -> tuple[int, dict[int, str], str]:
    """(netns inode, its interfaces, how to call it) of the namespace of ``name``."""
    if namespace is None:
        return own_netns_inode(), interface_names(), "this host"
    path = netns_path(namespace)
    what = f"process {namespace[4:]}" if namespace.startswith("pid:") else f"network namespace {namespace!r}"
    try:
        inode = netns_inode(path)
        known = names_in_netns(path)
    except FileNotFoundError:
        hint = "" if namespace.startswith("pid:") else f" (ip netns lists those in {NETNS_RUN_DIR})"
        raise UnknownInterface(name, [], reason=f"no {what}{hint}") from None
    except OSError as e:
        raise UnknownInterface(name, [], reason=f"cannot enter the {what}: {e.strerror}") from None
    return inode, known, what


def resolve(names: list[str]) -> list[InterfaceKey]:
    """Keys for the kernel's interface filter, or UnknownInterface naming the culprit."""
    keys = []
    namespaces: dict = {}
    for name in names:
        namespace, ifname = split_name(name)
        if namespace not in namespaces:
            namespaces[namespace] = _namespace(namespace, name)
        netns, known, where = namespaces[namespace]
        by_name = {n: index for index, n in known.items()}
        if ifname not in by_name:
            raise UnknownInterface(name, sorted(known.values()), where)
        keys.append(InterfaceKey(netns, by_name[ifname]))
    return keys


def names_include_loopback(names: list[str]) -> bool:
    """Whether ``names`` name a loopback: this namespace's (found by its
    index), or another namespace's lo."""
    own = interface_names().get(LOOPBACK_IFINDEX)
    for name in names:
        namespace, ifname = split_name(name)
        if ifname == (own if namespace is None else "lo"):
            return True
    return False
