"""Who asked for this run: the user behind ``sudo procnetmon``.

procnetmon runs as root, but under sudo everything it does on the invoking
user's behalf (opening ``-o``, running ``-- COMMAND``, entering a process's
network namespace) is bounded by what that user could do alone: a sudo rule
for procnetmon must not become a grant of root's files. sudo sets SUDO_UID
and SUDO_GID itself, so a user allowed only ``sudo procnetmon`` cannot
choose them. Standard library only.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from typing import Callable, Mapping, Optional


@dataclass(frozen=True)
class Credentials:
    """A user to act as: uid, primary gid and supplementary groups."""

    uid: int
    gid: int
    groups: tuple[int, ...]


def invoking_user(environ: Mapping[str, str] = os.environ, euid: Optional[int] = None, *,
                  getpwuid: Callable = pwd.getpwuid,
                  getgrouplist: Callable = os.getgrouplist) -> Optional[Credentials]:
    """The user who ran ``sudo procnetmon``, with their groups; None when
    procnetmon does not run as root through sudo (it then acts as itself)."""
    if (os.geteuid() if euid is None else euid) != 0:
        return None
    try:
        uid = int(environ["SUDO_UID"])
        gid = int(environ["SUDO_GID"])
    except (KeyError, ValueError):
        return None
    if uid == 0:
        return None
    try:
        name = getpwuid(uid).pw_name
        groups = tuple(getgrouplist(name, gid))
    except (KeyError, OSError):
        groups = (gid,)  # a user without a passwd entry: the primary group only
    return Credentials(uid, gid, groups)


def trusted_owners(credentials: Optional[Credentials] = None) -> frozenset[int]:
    """Who may own what procnetmon writes to or acts on: root, and the
    invoking user (under sudo) or whoever runs procnetmon (without it)."""
    return frozenset({0, credentials.uid if credentials is not None else os.geteuid()})


def become(credentials: Credentials) -> None:
    """Drop to ``credentials`` for good (groups first: afterwards setgroups is
    no longer allowed). For a forked child only: this changes the whole process."""
    os.setgroups(list(credentials.groups))
    os.setgid(credentials.gid)
    os.setuid(credentials.uid)
