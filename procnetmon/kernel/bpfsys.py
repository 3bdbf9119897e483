"""BTF-attached BPF programs loaded and attached through bpf(2) itself.

BCC loads and attaches raw tracepoints, kprobes and fentry programs, but not
BTF-typed raw tracepoints (tp_btf), whose loads from the tracepoint's
arguments the verifier turns into plain memory reads instead of
bpf_probe_read_kernel() calls. For those, BCC compiles and this module
loads: the bytes BCC made (maps already resolved to descriptors) as a
BPF_PROG_TYPE_TRACING program with the BTF id of what it attaches to, then
attaches it with BPF_RAW_TRACEPOINT_OPEN. Also how --check tries whether
the kernel takes such programs at all (``EMPTY``: ``r0 = 0; exit``).
"""

from __future__ import annotations

import ctypes
import os
import struct

SYS_BPF = {"x86_64": 321, "aarch64": 280}
BPF_PROG_LOAD = 5
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_RAW_TRACEPOINT_OPEN = 17
BPF_PROG_TYPE_TRACING = 26
BPF_TRACE_RAW_TP = 23
BPF_TRACE_FEXIT = 25

EMPTY = struct.pack("<BBhi", 0xB7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0)


class BpfError(OSError):
    """A load or attach the kernel refused; ``str()`` carries the verifier's last line."""


def bpf(cmd: int, attr: bytes) -> int:
    """The bpf(2) system call; its result, or BpfError."""
    nr = SYS_BPF.get(os.uname().machine)
    if nr is None:
        raise BpfError(95, f"no BTF-attached programs on {os.uname().machine} here")
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(attr, len(attr))
    ret = libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), buf, ctypes.c_uint(len(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise BpfError(err, os.strerror(err))
    return ret


def load_tracing(insns: bytes, attach_type: int, btf_id: int, name: str = "") -> int:
    """Load ``insns`` as a tracing program attached (once attached) to BTF
    type ``btf_id``; the program's descriptor. Raises BpfError."""
    code = ctypes.create_string_buffer(insns, len(insns))
    license_ = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(1 << 16)
    attr = bytearray(128)
    struct.pack_into("<IIQQIIQ", attr, 0, BPF_PROG_TYPE_TRACING, len(insns) // 8, ctypes.addressof(code),
                     ctypes.addressof(license_), 1, len(log), ctypes.addressof(log))
    struct.pack_into("<16s", attr, 48, name.encode()[:15])
    struct.pack_into("<I", attr, 68, attach_type)  # expected_attach_type
    struct.pack_into("<I", attr, 108, btf_id)  # attach_btf_id
    try:
        return bpf(BPF_PROG_LOAD, bytes(attr))
    except BpfError as e:
        lines = log.value.decode("utf-8", "replace").strip().splitlines()
        raise BpfError(e.errno, e.strerror + (f" ({lines[-1]})" if lines else "")) from None


def attach_tracing(prog_fd: int) -> int:
    """Attach a loaded tracing program where it was loaded for; the link's
    descriptor (closing it detaches)."""
    return bpf(BPF_RAW_TRACEPOINT_OPEN, struct.pack("<QI", 0, prog_fd) + bytes(4))


def attach_raw_tracepoint(name: str, prog_fd: int) -> int:
    """Attach a loaded raw tracepoint program to tracepoint ``name``; the
    link's descriptor (closing it detaches). BCC attaches one program per
    tracepoint of a BPF object; this attaches any number."""
    tp = ctypes.create_string_buffer(name.encode())
    return bpf(BPF_RAW_TRACEPOINT_OPEN, struct.pack("<QI", ctypes.addressof(tp), prog_fd) + bytes(4))


def try_attach(attach_type: int, btf_id: int) -> tuple[bool, str]:
    """Load and attach the empty program for an instant: (True, "") if the
    kernel allows it, else (False, why)."""
    try:
        prog = load_tracing(EMPTY, attach_type, btf_id, "pnm_probe")
    except BpfError as e:
        return False, f"loading failed: {e.strerror}"
    try:
        os.close(attach_tracing(prog))
        return True, ""
    except BpfError as e:
        return False, f"attaching failed: {e.strerror}"
    finally:
        os.close(prog)


def map_sizes(map_fd: int) -> tuple[int, int]:
    """(key size, value size) of the BPF map behind ``map_fd``, as the kernel has them."""
    info = ctypes.create_string_buffer(96)  # struct bpf_map_info's start: type, id, key_size, value_size
    attr = struct.pack("<IIQ", map_fd, len(info), ctypes.addressof(info))
    bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    _type, _id, key_size, value_size = struct.unpack_from("<IIII", info.raw, 0)
    return key_size, value_size
