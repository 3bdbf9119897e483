"""Struct member offsets for the in-kernel cgroup filter (--cgroup), as -D flags.

Kept apart from ``layout.FIELDS`` because only a run with --cgroup reads
them (the cgroup_mkdir hook in bpf/common.h); cached per kernel build too.
"""

from __future__ import annotations

import json
import os
from typing import Optional

from procnetmon.kernel import cache
from procnetmon.kernel.btf import BTF, VMLINUX_BTF
from procnetmon.kernel.layout import offsets_from_btf

FIELDS = {
    "CGROUP_KN": ("cgroup", "kn"),
    "CGROUP_ROOT": ("cgroup", "root"),
    "CGROUP_ROOT_HIERARCHY_ID": ("cgroup_root", "hierarchy_id"),
    "KERNFS_NODE_ID": ("kernfs_node", "id"),
    "KERNFS_NODE_PARENT": ("kernfs_node", "parent"),
}
# Linux 6.15 renamed kernfs_node.parent to __parent (now RCU-protected).
FALLBACKS = {"KERNFS_NODE_PARENT": ("kernfs_node", "__parent")}

CACHE_FILE = "cgroup-offsets-v1.json"


def cgroup_offsets(btf_path: str = VMLINUX_BTF, cache_dir: Optional[str] = None) -> dict[str, int]:
    """Raises BTFError (naming struct and member) when the kernel lacks one."""
    cache_dir = cache_dir or cache.kernel_cache_dir()
    path = os.path.join(cache_dir, CACHE_FILE)
    try:
        with open(path) as f:
            cached = json.load(f)
        if cache.valid_offsets(cached, FIELDS):
            return cached
    except (OSError, ValueError):
        pass
    offsets = offsets_from_btf(BTF.from_file(btf_path), FIELDS, FALLBACKS, {})
    try:
        cache.write_atomically(path, json.dumps(offsets, indent=1, sort_keys=True))
    except OSError:
        pass
    return offsets
