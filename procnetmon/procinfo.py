"""Who processes are (psutil: names, command lines, liveness) and the sockets they hold.

Processes vanish at any moment; every psutil call here treats NoSuchProcess,
AccessDenied and zombies as ordinary answers, never as errors.
"""

from __future__ import annotations

import functools
import os
import pwd
from dataclasses import dataclass
from typing import NamedTuple, Optional

import psutil

from procnetmon import cgroups, sockettable


@dataclass(frozen=True)
class Identity:
    """Who a PID was when procnetmon first saw it (create_time tells reuse apart).

    ``create_time`` is seconds since the epoch, 0.0 when unknown. The rest
    (parent, owner, executable) is None when it could not be read: a kernel
    thread has no executable, and /proc/PID/exe of a process in another
    mount namespace or of another user may not be readable."""

    pid: int
    name: str
    cmdline: str
    create_time: float
    ppid: Optional[int] = None
    uid: Optional[int] = None  # the effective user ID, whose rights the process uses
    user: Optional[str] = None  # that user's name; None when the user database has none
    exe: Optional[str] = None  # the path /proc/PID/exe links to

    @property
    def who(self) -> "Who":
        return Who(self.ppid, self.uid, self.user, self.exe, self.create_time or None)


class Who(NamedTuple):
    """What the records say of who a process is, beyond its name (tally.WhoFields)."""

    ppid: Optional[int]
    uid: Optional[int]
    user: Optional[str]
    exe: Optional[str]
    create_time: Optional[float]  # seconds since the epoch


def identify(pid: int) -> Optional[Identity]:
    """The process now behind ``pid``, or None when there is none."""
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            name = p.name()
            create_time = p.create_time()
            try:
                cmdline = " ".join(p.cmdline())
            except (psutil.AccessDenied, psutil.ZombieProcess):
                cmdline = ""
            if p.status() == psutil.STATUS_ZOMBIE:
                return None
            ppid = _or_none(p.ppid)
            uids = _or_none(p.uids)
        uid = uids.effective if uids is not None else None
        return Identity(pid, name, cmdline, create_time, ppid=ppid, uid=uid,
                        user=user_name(uid) if uid is not None else None, exe=exe_of(pid))
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        return Identity(pid, "?", "", 0.0)


def _or_none(getter):
    """What a psutil getter returns, or None when the process keeps it from us."""
    try:
        return getter()
    except (psutil.AccessDenied, psutil.ZombieProcess):
        return None


@functools.lru_cache(maxsize=1024)  # a machine has few users; lookups can be slow (NSS, LDAP)
def user_name(uid: int) -> Optional[str]:
    """The name of user ``uid``, None when the user database has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return None


def exe_of(pid: int, proc: str = "/proc") -> Optional[str]:
    """The path of the program ``pid`` runs (the /proc/PID/exe link, as the
    kernel writes it, " (deleted)" included when the file was removed), or
    None: a kernel thread has none, and the link of another mount namespace's
    or another user's process may not be readable."""
    try:
        return os.readlink(f"{proc}/{pid}/exe") or None
    except (OSError, ValueError):
        return None


def pid_exists(pid: int) -> bool:
    return identify(pid) is not None


def still_alive(identity: Identity) -> bool:
    """Whether the same process (not a successor reusing its PID) still runs."""
    now = identify(identity.pid)
    return now is not None and (identity.create_time == 0.0 or now.create_time == identity.create_time)


# A socket of a process: protocol, family, addresses, ports, state.
Socket = sockettable.SocketEntry


def sockets_of(pids: list[int]) -> dict[int, list[Socket]]:
    """The TCP and UDP sockets each process holds now, seen in its own network namespace."""
    return sockettable.sockets_by_pid(pids)


def socket_owners(inodes: set, pids: Optional[list] = None) -> dict[int, int]:
    """The process holding each socket inode (as /proc/PID/fd shows socket:[N]),
    among ``pids`` (None: every process); inodes nobody holds are left out."""
    found: dict[int, int] = {}
    if not inodes:
        return found
    candidates = pids if pids is not None else [int(p) for p in os.listdir("/proc") if p.isdigit()]
    for pid in candidates:
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue  # gone, or not ours to read
        for fd in names:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inode = int(target[8:-1])
                if inode in inodes and inode not in found:
                    found[inode] = pid
        if len(found) == len(inodes):
            break
    return found


def cgroup_of(pid: int) -> Optional[str]:
    """The cgroup v2 path of a live process (None once it is gone)."""
    return cgroups.process_cgroup(pid)


def descendants(pids: list[int]) -> list[int]:
    """PIDs of every process now below ``pids`` in the process tree (children,
    their children, ...), in no particular order; never procnetmon itself
    (``-p $$ --children`` from the shell that started it)."""
    found: set[int] = set()
    for pid in pids:
        try:
            found.update(child.pid for child in psutil.Process(pid).children(recursive=True))
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
    found.discard(os.getpid())
    return sorted(found)


def processes_below(pid: int) -> list[psutil.Process]:
    """The processes now below ``pid`` in the process tree, as psutil
    handles (which refuse to signal a later process that reuses a PID)."""
    try:
        return [p for p in psutil.Process(pid).children(recursive=True) if p.pid != os.getpid()]
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return []


def terminate(processes: list[psutil.Process]) -> None:
    """SIGTERM to each of ``processes`` still running."""
    for p in processes:
        try:
            p.terminate()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue


def reap(processes: list[psutil.Process], grace: float) -> None:
    """Wait up to ``grace`` seconds for ``processes`` to end; SIGKILL the rest."""
    _gone, alive = psutil.wait_procs(processes, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
