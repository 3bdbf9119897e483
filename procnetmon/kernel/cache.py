"""Where procnetmon keeps what it derives from the running kernel.

Both the BTF offsets and the synthetic header tree are functions of the
kernel build alone, so they are keyed by it and reused across runs.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile

DEFAULT_CACHE_DIR = "/var/cache/procnetmon"


class UntrustedCache(Exception):
    """The cache directory, or one above it, can be changed by someone other than root."""


def cache_root() -> str:
    # Under sudo the invoking user chose the environment: a cache of their
    # choosing would feed root's compile.
    if "SUDO_UID" in os.environ:
        return DEFAULT_CACHE_DIR
    return os.environ.get("PROCNETMON_CACHE_DIR") or DEFAULT_CACHE_DIR


def check_trusted(path: str = "") -> None:
    """Refuse a cache that only root should be able to change but others can,
    as ssh's StrictModes does: the directory (when it exists) and every one
    above it must belong to root (or to whoever runs procnetmon) and be
    unwritable by group and others, a root-owned sticky directory (/tmp)
    excepted for the ones above.

    A symbolic link above the cache (/var/cache pointing to a larger disk)
    is as safe as the directory holding it, which the walk checks, and as
    the directories it leads to, which the walk then checks too; the cache
    itself must not be one.
    """
    path = os.path.abspath(path or cache_root())
    try:
        if stat.S_ISLNK(os.lstat(path).st_mode):
            raise UntrustedCache(f"the cache {path} is a symbolic link")
    except FileNotFoundError:
        pass
    for chain in dict.fromkeys((path, os.path.realpath(path))):
        _check_chain(path, chain)


def _check_chain(cache: str, path: str) -> None:
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
                raise UntrustedCache(f"the cache {cache} is not safe: {current} belongs to uid {st.st_uid}")
            if st.st_mode & 0o022 and not sticky_above:
                raise UntrustedCache(f"the cache {cache} is not safe: {current} is writable by group or others "
                                     f"(mode {stat.S_IMODE(st.st_mode):04o})")
        parent = os.path.dirname(current)
        if parent == current:
            return
        current = parent


def valid_offsets(cached, required, optional=()) -> bool:
    """Whether offsets read back from the cache may be used: exactly the
    names expected, each a plain non-negative int. Each becomes
    -DOFF_<name>=<value> in the BPF program root compiles, so anything else
    (a string of C, above all) is re-derived instead."""
    return (isinstance(cached, dict) and set(required) <= set(cached) <= set(required) | set(optional)
            and all(type(v) is int and 0 <= v < 1 << 20 for v in cached.values()))


def kernel_build_id() -> str:
    """A short name for this exact kernel build (release plus build string)."""
    u = os.uname()
    digest = hashlib.sha256(f"{u.release}\n{u.version}\n{u.machine}".encode()).hexdigest()[:12]
    return f"{u.release}-{digest}"


def kernel_cache_dir() -> str:
    return os.path.join(cache_root(), kernel_build_id())


def write_atomically(path: str, text: str) -> None:
    """Write a cache file so that a concurrent reader sees all of it or none;
    the temporary has a random name (O_EXCL) and every mode is explicit."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            os.fchmod(f.fileno(), 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
