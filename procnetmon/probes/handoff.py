"""Compile and attach in a short-lived child; keep only the file descriptors.

BCC's embedded LLVM stays resident in a process once it has compiled a
program (about 100 MiB). A daemon does not need it after start-up: the
kernel keeps programs attached and maps alive as long as some process holds
their file descriptors. So ``attach_in_child`` runs this module as a child
process, which compiles and attaches the probes of the ``ProbeSpec`` it
reads on its standard input as any run does, then sends every BPF program,
map, link and perf-event descriptor it holds back over a Unix socket
(SCM_RIGHTS), with the names of the maps, and exits. The parent reads the maps through libbpf
(``procnetmon.probes.fdprobe``) and never imports bcc. Filters that never
change after start-up (the remote and port filters of bpf/remote.h) are
filled by the child, and kept alive by the descriptors of their maps.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from procnetmon.probes.spec import ProbeSpec

# Descriptors the kernel's BPF objects live behind (readlink of /proc/self/fd/N).
KEPT_KINDS = ("anon_inode:bpf-map", "anon_inode:bpf-prog", "anon_inode:bpf_link",
              "anon_inode:[perf_event]", "anon_inode:bpf-link")
MAP_NAMES = ("counters", "counted", "exited", "execed", "lost", "target_pids", "target_ifaces", "target_cgroups",
             "owners", "early_owners", "pending", "sockets", "excluded_cgroups",
             "health", "health_latency_max", "health_owners", "health_drops", "health_socks")
MAX_FDS_PER_MESSAGE = 250  # the kernel takes at most SCM_MAX_FD (253) per message


def _bpf_fds() -> list[int]:
    fds = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith(KEPT_KINDS):
            fds.append(int(name))
    return sorted(fds)


def _send(sock: socket.socket, header: dict, fds: list[int]) -> None:
    """The header (JSON) with the first batch of descriptors, then the rest in batches."""
    batches = [fds[i:i + MAX_FDS_PER_MESSAGE] for i in range(0, len(fds), MAX_FDS_PER_MESSAGE)] or [[]]
    header["batches"] = len(batches)
    socket.send_fds(sock, [json.dumps(header).encode()], batches[0])
    for batch in batches[1:]:
        socket.send_fds(sock, [b"."], batch)


def child_main(sock_fd: int) -> None:
    """In the child: attach the ProbeSpec read from stdin, hand the descriptors over, exit."""
    from procnetmon.probes import ProbeError
    from procnetmon.probes.spec import ProbeSpec, bcc_probe_for

    sock = socket.socket(fileno=sock_fd)
    probe = bcc_probe_for(ProbeSpec.from_json(sys.stdin.read()))
    try:
        probe.attach()
    except ProbeError as e:
        _send(sock, {"error": str(e)}, [])
        os._exit(0)
    fds = _bpf_fds()
    maps = {}
    for name in MAP_NAMES:
        try:
            maps[name] = fds.index(probe.bpf.get_table(name).map_fd)
        except (KeyError, ValueError):
            pass
    _send(sock, {"backend": probe.planned.name, "label": probe.planned.label, "maps": maps,
                 "cgroup_ids": sorted(probe._cgroup_ids),
                 "excluded_cgroup_ids": sorted(probe._excluded_cgroup_ids)}, fds)
    sock.close()
    # Not probe.close() nor BCC's exit handlers: they would detach what the
    # parent now holds. The kernel drops this process's references only.
    sys.stdout.flush()
    os._exit(0)


def attach_in_child(spec: ProbeSpec) -> tuple[dict, list[int]]:
    """Run the child to attach the probes of ``spec``; return its header and
    the descriptors it sent (the caller owns them). Raises ProbeError with
    the child's message."""
    from procnetmon.probes import ProbeError

    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    # The compiler's messages go to a file: a full pipe would stall the child.
    errors = tempfile.TemporaryFile()
    try:
        # Isolated (-I) and in /: with plain -m, a module planted in root's
        # working directory would be imported before the standard library.
        proc = subprocess.Popen([sys.executable, "-I", "-m", "procnetmon.probes.handoff", str(child.fileno())],
                                stdin=subprocess.PIPE, stderr=errors, pass_fds=[child.fileno()], cwd="/")
        child.close()
        assert proc.stdin is not None  # stdin=PIPE
        proc.stdin.write(spec.to_json().encode())
        proc.stdin.close()
        fds: list[int] = []
        try:
            data, received, _flags, _addr = socket.recv_fds(parent, 1 << 16, MAX_FDS_PER_MESSAGE)
        except OSError:
            data, received = b"", []
        if not data:
            proc.wait()
            errors.seek(0)
            message = errors.read().decode("utf-8", "replace").strip().splitlines()
            raise ProbeError("the loader process failed: " + (message[-1] if message else f"status {proc.returncode}"))
        header = json.loads(data)
        fds.extend(received)
        for _ in range(header.get("batches", 1) - 1):
            _data, more, _flags, _addr = socket.recv_fds(parent, 16, MAX_FDS_PER_MESSAGE)
            fds.extend(more)
        proc.wait()
        if "error" in header:
            for fd in fds:
                os.close(fd)
            raise ProbeError(header["error"])  # names the compiler's log (probes/compilelog.py)
        return header, fds
    finally:
        parent.close()
        errors.close()


if __name__ == "__main__":
    child_main(int(sys.argv[1]))
