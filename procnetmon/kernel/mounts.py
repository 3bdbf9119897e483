"""The kernel's pseudo-filesystems procnetmon needs, mounted before anything compiles.

BCC builds each ``TRACEPOINT_PROBE``'s argument struct from the tracepoint's
``format`` file in tracefs, and the kprobe backend and the detection of the
syscalls:* events read tracefs too. A freshly booted machine often has no
tracefs mounted (systemd mounts it on first access through an automount that
not every system has), so a run mounts it itself, through mount(2) rather
than a ``mount`` program found on PATH. ``--check`` only reports.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from dataclasses import dataclass
from typing import Callable, Optional

TRACEFS = "/sys/kernel/tracing"
# Where older tools (and BCC's Python, at import time) look first.
DEBUGFS_TRACEFS = "/sys/kernel/debug/tracing"

MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x2, 0x4, 0x8


class MountError(Exception):
    """A needed interface is missing and cannot be mounted here; the message says how to mend it."""


@dataclass(frozen=True)
class Interface:
    name: str
    fstype: str
    target: str
    probe: str  # a path that exists only when it is mounted and readable

    @property
    def fix(self) -> str:
        return f"mount -t {self.fstype} {self.fstype} {self.target}"


TRACEFS_INTERFACE = Interface("tracefs", "tracefs", TRACEFS, TRACEFS + "/events")
# Every backend compiles tracepoint programs (sched_process_exit, the splice
# syscalls), so every run needs tracefs; nothing procnetmon loads needs debugfs.
NEEDED = (TRACEFS_INTERFACE,)


def is_mounted(interface: Interface) -> bool:
    if os.path.isdir(interface.probe):
        return True
    # Mounted under debugfs only (an older layout): BCC finds it there too.
    return interface is TRACEFS_INTERFACE and os.path.isdir(DEBUGFS_TRACEFS + "/events")


def mounted_but_unreadable(interface: Interface, mounts_path: str = "/proc/self/mounts") -> bool:
    """Mounted at its place, yet its probe path cannot be seen: tracefs is
    mode 0700 root, so a user with CAP_BPF but no CAP_DAC_READ_SEARCH."""
    try:
        with open(mounts_path) as f:
            return any(len(parts) > 2 and parts[1] == interface.target and parts[2] == interface.fstype
                       for parts in (line.split() for line in f))
    except OSError:
        return False


def missing() -> list[Interface]:
    return [i for i in NEEDED if not is_mounted(i)]


def _mount(interface: Interface) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p)
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    if libc.mount(interface.fstype.encode(), interface.target.encode(), interface.fstype.encode(), flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def why_not(err: int) -> str:
    if err in (errno.EPERM, errno.EACCES):
        return "procnetmon may not mount it here (no CAP_SYS_ADMIN in this mount namespace, or a container)"
    if err == errno.EROFS:
        return "/sys is read-only here"
    if err == errno.ENODEV:
        return "the kernel has no tracefs (CONFIG_TRACING)"
    if err == errno.ENOENT:
        return "its mount point does not exist"
    return os.strerror(err)


def prepare(say: Optional[Callable[[str], None]] = None) -> list[Interface]:
    """Mount every needed interface that is missing; return those mounted.
    Raises MountError, naming the interface and the fix, when one cannot be."""
    mounted = []
    for interface in missing():
        if mounted_but_unreadable(interface):
            # Mounting it again would not help, and "not mounted" would mislead.
            raise MountError(f"{interface.name} is mounted at {interface.target} but only root may read it: "
                             "run as root, or with CAP_DAC_READ_SEARCH")
        try:
            _mount(interface)
        except OSError as e:
            raise MountError(f"{interface.name} is not mounted at {interface.target} and {why_not(e.errno)}; "
                             f"as root: {interface.fix}") from None
        if not is_mounted(interface):
            raise MountError(f"{interface.name} was mounted at {interface.target} but {interface.probe} is "
                             f"missing; as root: {interface.fix}")
        mounted.append(interface)
        if say is not None:
            say(f"mounted {interface.name} at {interface.target} (it was not mounted; BCC reads tracepoint "
                "formats there)")
    return mounted
