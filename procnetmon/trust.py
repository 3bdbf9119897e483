"""Whether only root can change a path that root's run reads and obeys.

One rule, as ssh's StrictModes has it, for everything procnetmon trusts
from the file system (the kernel cache, ``--web-config`` and the TLS files
it names): the path and every directory above it belong to root (or to
whoever runs procnetmon) and are writable by neither group nor others; a
root-owned sticky directory such as /tmp is allowed above it.
"""

from __future__ import annotations

import os
import stat


class Untrusted(Exception):
    """The path, or a directory above it, can be changed by someone other than root."""


def check_writers(path: str, what: str) -> None:
    """Raise ``Untrusted`` (its message starts with ``what``) unless only root
    can change ``path``. A missing final name is allowed: its directory still
    decides who could create it.

    A symbolic link above the path (/var/cache pointing to a larger disk) is
    as safe as the directory holding it, which the walk checks, and as the
    directories it leads to, which the walk then checks too; the path itself
    must not be one.
    """
    path = os.path.abspath(path)
    try:
        if stat.S_ISLNK(os.lstat(path).st_mode):
            raise Untrusted(f"{what} is a symbolic link")
    except FileNotFoundError:
        pass
    for chain in dict.fromkeys((path, os.path.realpath(path))):
        _check_chain(chain, what)


def _check_chain(path: str, what: str) -> None:
    trusted_owners = {0, os.geteuid()}
    current = path
    while True:
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISLNK(st.st_mode):
            sticky_above = current != path and st.st_mode & stat.S_ISVTX and st.st_uid == 0
            if st.st_uid not in trusted_owners:
                raise Untrusted(f"{what} is not safe: {current} belongs to uid {st.st_uid}")
            if st.st_mode & 0o022 and not sticky_above:
                raise Untrusted(f"{what} is not safe: {current} is writable by group or others "
                                f"(mode {stat.S_IMODE(st.st_mode):04o})")
        parent = os.path.dirname(current)
        if parent == current:
            return
        current = parent
