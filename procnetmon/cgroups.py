"""cgroup v2 paths of processes, and the container or systemd unit a path names.

A process's cgroup v2 path ("/system.slice/nginx.service") is read from
``/proc/PID/cgroup``; once a process has exited, its cgroup is known only by
the id the kernel noted at its exit, which is the inode number of the
cgroup's directory under the cgroup2 mount: ``CgroupNames`` maps ids back to
paths, remembering each path when first seen, since the directory of a
finished container is usually removed soon after.

``container_of`` is pure: it reads the naming conventions of container
runtimes and systemd out of a path.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from typing import Iterator, Optional

_HEX64 = r"[0-9a-f]{64}"
# Scopes and directories of container runtimes, innermost match wins. The
# runtime prefix follows Kubernetes' containerID convention ("docker://<id>").
_RUNTIME_SCOPES = (
    (re.compile(rf"^docker-({_HEX64})\.scope$"), "docker"),
    (re.compile(rf"^cri-containerd-({_HEX64})\.scope$"), "containerd"),
    (re.compile(rf"^crio-({_HEX64})\.scope$"), "cri-o"),
    (re.compile(rf"^libpod-({_HEX64})\.scope$"), "podman"),
)
# LXC 4+ and LXD/Incus: /lxc.payload.NAME; older LXC: /lxc/NAME.
_LXC_PAYLOAD = re.compile(r"^lxc\.payload\.(.+)$")
# Kubernetes pods: kubepods-burstable-pod<uid with _>.slice (systemd driver)
# or pod<uid> (cgroupfs driver).
_POD_SLICE = re.compile(r"^kubepods(?:-[a-z]+)*-pod([0-9a-f_]{36})\.slice$")
_POD_DIR = re.compile(r"^pod([0-9a-f-]{36})$")
# systemd units that hold processes (slices never do).
_UNIT = re.compile(r"^[^/]+\.(service|scope)$")


@dataclass(frozen=True)
class Workload:
    """What a cgroup path says a process belongs to."""

    container: Optional[str] = None  # "docker://<id>", "lxc://web", or a unit "nginx.service"
    pod: Optional[str] = None  # Kubernetes pod UID


@functools.lru_cache(maxsize=4096)  # a daemon asks about the same few paths every second
def parse_path(path: Optional[str]) -> Workload:
    """The container (or systemd unit) and Kubernetes pod named by a cgroup v2 path."""
    if not path:
        return Workload()
    parts = [p for p in path.split("/") if p]
    container = pod = None
    kubepods = False
    for i, part in enumerate(parts):
        if part.startswith("kubepods"):
            kubepods = True
        m = _POD_SLICE.match(part)
        if m:
            pod = m.group(1).replace("_", "-")
            continue
        m = _POD_DIR.match(part) if kubepods else None
        if m:
            pod = m.group(1)
            continue
        found = _runtime_container(part)
        if found:
            container = found
            continue
        if re.fullmatch(_HEX64, part) and i > 0 and (parts[i - 1] == "docker" or pod):
            # cgroupfs drivers: /docker/<id>, /kubepods/<qos>/pod<uid>/<id>
            container = f"docker://{part}" if parts[i - 1] == "docker" else part
            continue
        m = _LXC_PAYLOAD.match(part)
        if m:
            container = f"lxc://{m.group(1)}"
            continue
        if i > 0 and parts[i - 1] == "lxc" and i == 1:
            container = f"lxc://{part}"
    if container is None and pod is None:
        units = [p for p in parts if _UNIT.match(p)]
        if units:
            container = units[-1]
    return Workload(container, pod)


def _runtime_container(part: str) -> Optional[str]:
    for pattern, runtime in _RUNTIME_SCOPES:
        m = pattern.match(part)
        if m:
            return f"{runtime}://{m.group(1)}"
    return None


def container_of(path: Optional[str]) -> Optional[str]:
    return parse_path(path).container


def parse_proc_cgroup(text: str) -> Optional[str]:
    """The cgroup v2 path in the text of /proc/PID/cgroup (the "0::" line)."""
    for line in text.splitlines():
        if line.startswith("0::"):
            path = line[3:].strip()
            # A cgroup removed while the process was in it reads "/... (deleted)".
            return path[: -len(" (deleted)")] if path.endswith(" (deleted)") else path
    return None


def process_cgroup(pid: int, proc: str = "/proc") -> Optional[str]:
    """The cgroup v2 path of a live process, or None when it is gone or unknown."""
    try:
        with open(f"{proc}/{pid}/cgroup") as f:
            return parse_proc_cgroup(f.read())
    except OSError:
        return None


def relative_path(path: str, mount: str) -> Optional[str]:
    """A --cgroup argument as a path below ``mount`` ("/a/b"), absolute paths
    outside the mount excepted (None). Relative paths are taken below the mount."""
    mount = os.path.normpath(mount)
    if os.path.isabs(path):
        full = os.path.normpath(path)
        if full == mount:
            return "/"
        if full.startswith(mount + "/"):
            return full[len(mount):]
        # An absolute path under the hierarchy, as /proc/PID/cgroup writes it.
        full = os.path.normpath(mount + "/" + path)
    else:
        full = os.path.normpath(os.path.join(mount, path))
    if full != mount and not full.startswith(mount + "/"):
        return None
    return full[len(mount):] or "/"


def walk_ids(mount: str, top: str = "/") -> Iterator[tuple[int, str]]:
    """(cgroup id, path) of ``top`` and every cgroup below it."""
    base = os.path.normpath(mount + "/" + top) if top != "/" else os.path.normpath(mount)
    try:
        yield os.stat(base).st_ino, top
    except OSError:
        return
    for dirpath, dirnames, _files in os.walk(base):
        for name in dirnames:
            full = os.path.join(dirpath, name)
            try:
                ino = os.stat(full).st_ino
            except OSError:
                continue  # removed meanwhile
            yield ino, "/" + os.path.relpath(full, mount)


def container_matches(given: str, container: Optional[str]) -> bool:
    """Whether ``given`` (an --exclude-cgroup argument) names ``container``
    (as parse_path names it): the same, or for RUNTIME://ID at least the
    first 12 digits of the ID, as the table and docker ps show it."""
    if container is None or not given:
        return False
    if given == container:
        return True
    runtime, sep, ident = given.partition("://")
    full_runtime, full_sep, full_ident = container.partition("://")
    return bool(sep and full_sep and runtime == full_runtime and len(ident) >= 12
                and re.fullmatch(r"[0-9a-f]+", ident) and full_ident.startswith(ident))


def find_container(mount: str, given: str) -> list[str]:
    """Paths of the outermost cgroups whose path names the container (or
    systemd unit) ``given``: a container's processes may sit in cgroups
    below its own, which the kernel filter covers through the top one."""
    found: list[str] = []
    for _ino, path in walk_ids(mount):
        if container_matches(given, parse_path(path).container) and \
                not any(path.startswith(top.rstrip("/") + "/") for top in found):
            found.append(path)
    return found


class CgroupNames:
    """cgroup id -> path, remembered when first seen (a removed directory cannot be asked)."""

    def __init__(self, mount: Optional[str]):
        self.mount = mount
        self._paths: dict[int, str] = {}
        self._missed: set[int] = set()  # ids not found once: not walked for again

    def remember(self, path: Optional[str]) -> None:
        if not self.mount or not path:
            return
        try:
            ino = os.stat(os.path.normpath(self.mount + "/" + path)).st_ino
        except OSError:
            return
        self._paths[ino] = path

    def refresh(self) -> None:
        """Learn every cgroup that exists now."""
        if self.mount:
            for ino, path in walk_ids(self.mount):
                self._paths[ino] = path

    def path_of(self, cgroup_id: int) -> Optional[str]:
        if cgroup_id not in self._paths and cgroup_id not in self._missed:
            self.refresh()
            if cgroup_id not in self._paths:
                self._missed.add(cgroup_id)
        return self._paths.get(cgroup_id)


def cgroup2_mount(mounts_path: str = "/proc/mounts") -> Optional[str]:
    """Where the cgroup v2 hierarchy is mounted (None: nowhere)."""
    try:
        with open(mounts_path) as f:
            for line in f:
                parts = line.split()
                if len(parts) > 2 and parts[2] == "cgroup2":
                    # /proc/mounts writes spaces and the like as octal escapes.
                    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), parts[1])
    except OSError:
        pass
    return None
