"""Network interface names resolved to what the kernel side filters on.

Interface indexes are per network namespace, so the in-kernel filter keys on
(namespace inode, ifindex). A plain name is resolved in procnetmon's own
namespace; NETNS/IFACE in the namespace ``ip netns`` calls NETNS
(/run/netns/NETNS), pid:PID/IFACE in the namespace of process PID. Another
namespace's names are read by a short-lived thread that enters it, since
setns(2) moves only the calling thread.

Under sudo, pid:PID names only the invoking user's own processes
(``owner``): a sudo rule for procnetmon does not list the interfaces of
namespaces the user could not look into.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import socket
import threading
from typing import Iterator, NamedTuple, Optional

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


def _namespace(namespace: Optional[str], name: str, owner: Optional[int] = None) -> tuple[int, dict[int, str], str]:
    """(netns inode, its interfaces, how to call it) of the namespace of ``name``."""
    if namespace is None:
        return own_netns_inode(), interface_names(), "this host"
    path = netns_path(namespace)
    what = f"process {namespace[4:]}" if namespace.startswith("pid:") else f"network namespace {namespace!r}"
    try:
        with _owned_namespace(namespace, path, owner, name) as checked:
            inode = netns_inode(checked)
            known = names_in_netns(checked)
    except FileNotFoundError:
        hint = "" if namespace.startswith("pid:") else f" (ip netns lists those in {NETNS_RUN_DIR})"
        raise UnknownInterface(name, [], reason=f"no {what}{hint}") from None
    except ProcessLookupError:
        raise UnknownInterface(name, [], reason=f"no {what}") from None
    except OSError as e:
        raise UnknownInterface(name, [], reason=f"cannot enter the {what}: {e.strerror}") from None
    return inode, known, what


@contextlib.contextmanager
def _owned_namespace(namespace: str, path: str, owner: Optional[int], name: str) -> Iterator[str]:
    """``path``, or with an ``owner`` and pid:PID, a path to the namespace of
    process PID once it is known to be the owner's. The process is held by
    a descriptor of its /proc directory while it is looked at, so a PID
    reused meanwhile cannot pass another process's check."""
    if owner is None or not namespace.startswith("pid:"):
        yield path
        return
    pid = namespace[4:]
    if not pid.isdigit():
        raise FileNotFoundError(path)
    directory = os.open(f"/proc/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        ns = os.open("ns/net", os.O_RDONLY | os.O_CLOEXEC, dir_fd=directory)
        try:
            if _process_uids(directory) != {owner}:
                raise UnknownInterface(name, [], reason=f"process {pid} is not yours: under sudo, "
                                                        "pid:PID names only your own processes")
            yield f"/proc/self/fd/{ns}"
        finally:
            os.close(ns)
    finally:
        os.close(directory)


def _process_uids(proc_dir: int) -> set[int]:
    """The real and effective uid of the process of a /proc/PID descriptor."""
    fd = os.open("status", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc_dir)
    with open(fd) as f:
        for line in f:
            if line.startswith("Uid:"):
                real, effective = line.split()[1:3]
                return {int(real), int(effective)}
    raise ProcessLookupError(errno.ESRCH, os.strerror(errno.ESRCH))


def resolve(names: list[str], owner: Optional[int] = None) -> list[InterfaceKey]:
    """Keys for the kernel's interface filter, or UnknownInterface naming the
    culprit. With ``owner`` (under sudo) pid:PID must be that user's process."""
    keys = []
    namespaces: dict = {}
    for name in names:
        namespace, ifname = split_name(name)
        if namespace not in namespaces:
            namespaces[namespace] = _namespace(namespace, name, owner)
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
