"""Where procnetmon keeps what it derives from the running kernel.

Both the BTF offsets and the synthetic header tree are functions of the
kernel build alone, so they are keyed by it and reused across runs.
"""

from __future__ import annotations

import hashlib
import os
import tempfile

from procnetmon.trust import Untrusted, check_writers

DEFAULT_CACHE_DIR = "/var/cache/procnetmon"


class UntrustedCache(Untrusted):
    """The cache directory, or one above it, can be changed by someone other than root."""


def cache_root() -> str:
    # Under sudo the invoking user chose the environment: a cache of their
    # choosing would feed root's compile.
    if "SUDO_UID" in os.environ:
        return DEFAULT_CACHE_DIR
    return os.environ.get("PROCNETMON_CACHE_DIR") or DEFAULT_CACHE_DIR


def check_trusted(path: str = "") -> None:
    """Refuse a cache that only root should be able to change but others can
    (``procnetmon.trust``: the directory, when it exists, and every one above it)."""
    path = os.path.abspath(path or cache_root())
    try:
        check_writers(path, f"the cache {path}")
    except Untrusted as e:
        raise UntrustedCache(str(e)) from None


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
