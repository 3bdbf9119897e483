"""Where procnetmon keeps what it derives from the running kernel.

Both the BTF offsets and the synthetic header tree are functions of the
kernel build alone, so they are keyed by it and reused across runs.
"""

from __future__ import annotations

import hashlib
import os

DEFAULT_CACHE_DIR = "/var/cache/procnetmon"


def cache_root() -> str:
    return os.environ.get("PROCNETMON_CACHE_DIR") or DEFAULT_CACHE_DIR


def kernel_build_id() -> str:
    """A short name for this exact kernel build (release plus build string)."""
    u = os.uname()
    digest = hashlib.sha256(f"{u.release}\n{u.version}\n{u.machine}".encode()).hexdigest()[:12]
    return f"{u.release}-{digest}"


def kernel_cache_dir() -> str:
    return os.path.join(cache_root(), kernel_build_id())


def write_atomically(path: str, text: str) -> None:
    """Write a cache file so that a concurrent reader sees all of it or none."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
