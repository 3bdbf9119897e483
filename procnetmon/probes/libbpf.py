"""Debian's libbpf (libbpf1) through ctypes: the one place it is opened.

procnetmon calls it itself for what BCC's Python does not offer: reading
maps held only as file descriptors (fdprobe.Map) and linking wire mode's
cgroup_skb programs to the cgroup v2 root (wire.WireProbe).
"""

from __future__ import annotations

import ctypes
import ctypes.util

from procnetmon.probes import ProbeError


def load(purpose: str) -> ctypes.CDLL:
    """libbpf with the prototypes of the calls procnetmon makes; else a
    ProbeError saying that ``purpose`` needs it."""
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as e:
        raise ProbeError(f"{purpose} needs libbpf (libbpf1): {e}") from e
    for fn in ("bpf_map_get_next_key", "bpf_map_lookup_elem", "bpf_map_delete_elem"):
        args = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        getattr(lib, fn).argtypes = args[:2] if fn.endswith("delete_elem") else args
        getattr(lib, fn).restype = ctypes.c_int
    lib.bpf_map_update_elem.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64]
    lib.bpf_map_update_elem.restype = ctypes.c_int
    lib.bpf_link_create.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    lib.bpf_link_create.restype = ctypes.c_int
    return lib
