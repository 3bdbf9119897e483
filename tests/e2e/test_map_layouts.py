"""The daemon's reader and the kernel's maps agree on every key and value
size (issue 21, item 1): FdProbe read wire mode's 16-byte owners into an
8-byte struct, harmless only because ctypes rounds small objects up."""

from __future__ import annotations

import ctypes
import os
import struct

import pytest

from procnetmon.kernel import bpfsys
from procnetmon.probes import ProbeError, libbpf
from procnetmon.probes.fdprobe import FdProbe, Map, OwnerC
from procnetmon.probes.spec import ProbeSpec

pytestmark = pytest.mark.root

BPF_MAP_CREATE = 0
BPF_MAP_TYPE_HASH = 1


@pytest.fixture(autouse=True)
def kernel_interfaces():
    """As a run prepares them (tests/e2e run in a fresh boot's state)."""
    from procnetmon.kernel import mounts

    mounts.prepare()


@pytest.mark.parametrize("mode", ["payload", "wire"])
def test_every_map_the_daemon_reads_has_the_sizes_of_its_reader(mode):
    probe = FdProbe(ProbeSpec(mode=mode, handoff=True))
    with probe:  # attach() checks each map it opens
        for name, m in probe._maps.items():
            assert bpfsys.map_sizes(m.fd) == (ctypes.sizeof(m.Key), ctypes.sizeof(m.Value)), name
        assert ("owners" in probe._maps) == (mode == "wire")


def test_the_tcp_health_maps_reach_the_daemon_with_the_sizes_of_its_reader():
    from procnetmon.probes import health

    probe = FdProbe(ProbeSpec(mode="payload", handoff=True, tcp_health=True))
    with probe:
        for name in health.MAP_TYPES:
            m = probe._maps[name]
            assert bpfsys.map_sizes(m.fd) == (ctypes.sizeof(m.Key), ctypes.sizeof(m.Value)), name
        assert probe.read().health is not None


def test_a_map_of_other_sizes_is_refused():
    class OldOwnerC(ctypes.Structure):  # an old main's: tgid and netns, without ino and class
        _fields_ = [("tgid", ctypes.c_uint32), ("netns", ctypes.c_uint32)]

    size = ctypes.sizeof(OwnerC)
    attr = struct.pack("<IIIII", BPF_MAP_TYPE_HASH, 8, size, 4, 0) + bytes(108)
    fd = bpfsys.bpf(BPF_MAP_CREATE, attr)
    try:
        assert bpfsys.map_sizes(fd) == (8, size)
        Map(libbpf.load("reading the maps"), fd, ctypes.c_uint64, OwnerC, name="owners")  # the right sizes
        refused = f"owners has 8-byte keys and {size}-byte values, procnetmon reads 8 and 8"
        with pytest.raises(ProbeError, match=refused):
            Map(libbpf.load("reading the maps"), fd, ctypes.c_uint64, OldOwnerC, name="owners")
    finally:
        os.close(fd)
