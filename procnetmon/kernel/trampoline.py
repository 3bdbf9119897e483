"""Whether this kernel attaches BPF trampolines (fentry/fexit), found by trying.

A kernel can have BTF and the trampoline code and still refuse: without
ftrace direct calls, or under a security policy, loading or attaching a
tracing program fails. Only an attempt tells, so this loads the smallest
fexit program there is (``return 0``) on one kernel function and attaches
it for an instant, through the bpf(2) system call itself: no compiler, no
BCC, a millisecond.
"""

from __future__ import annotations

import ctypes
import os
import struct

SYS_BPF = {"x86_64": 321, "aarch64": 280}
BPF_PROG_LOAD = 5
BPF_RAW_TRACEPOINT_OPEN = 17
BPF_PROG_TYPE_TRACING = 26
BPF_TRACE_FEXIT = 25

# r0 = 0; exit
_INSNS = struct.pack("<BBhi", 0xB7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0)


def _bpf(libc, cmd: int, attr: bytes) -> tuple[int, int]:
    nr = SYS_BPF.get(os.uname().machine)
    if nr is None:
        return -1, 95  # EOPNOTSUPP: no trampolines off x86-64 and arm64
    buf = ctypes.create_string_buffer(attr, len(attr))
    ret = libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), buf, ctypes.c_uint(len(attr)))
    return ret, (ctypes.get_errno() if ret < 0 else 0)


def probe_fexit(btf_func_id: int) -> tuple[bool, str]:
    """Load and attach an empty fexit program on the function with BTF id
    ``btf_func_id``; (True, "") if the kernel allows it, else (False, why)."""
    libc = ctypes.CDLL(None, use_errno=True)
    insns = ctypes.create_string_buffer(_INSNS, len(_INSNS))
    license_ = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(4096)
    attr = bytearray(128)
    struct.pack_into("<IIQQIIQ", attr, 0, BPF_PROG_TYPE_TRACING, len(_INSNS) // 8,
                     ctypes.addressof(insns), ctypes.addressof(license_), 1, len(log), ctypes.addressof(log))
    struct.pack_into("<16s", attr, 48, b"pnm_probe")
    struct.pack_into("<I", attr, 68, BPF_TRACE_FEXIT)  # expected_attach_type
    struct.pack_into("<I", attr, 108, btf_func_id)  # attach_btf_id
    prog_fd, err = _bpf(libc, BPF_PROG_LOAD, bytes(attr))
    if prog_fd < 0:
        detail = log.value.decode("utf-8", "replace").strip().splitlines()
        why = f"loading an fexit program failed: {os.strerror(err)}"
        return False, why + (f" ({detail[-1]})" if detail else "")
    try:
        link_attr = struct.pack("<QI", 0, prog_fd) + bytes(4)
        link_fd, err = _bpf(libc, BPF_RAW_TRACEPOINT_OPEN, link_attr)
        if link_fd < 0:
            return False, f"attaching an fexit program failed: {os.strerror(err)}"
        os.close(link_fd)
        return True, ""
    finally:
        os.close(prog_fd)
