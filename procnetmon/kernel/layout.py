"""The struct member offsets the BPF programs use, as ``-D`` compiler flags.

Offsets come from BTF (``procnetmon.kernel.btf``) and are cached per kernel
build, because parsing vmlinux BTF takes longer than compiling the program.
"""

from __future__ import annotations

import json
import os
from typing import Optional

from procnetmon.kernel import cache
from procnetmon.kernel.btf import BTF, VMLINUX_BTF, BTFError

# Macro name -> (struct, member path). The BPF C names these OFF_<macro>.
FIELDS = {
    "SK_FAMILY": ("sock", "__sk_common.skc_family"),
    "SK_NET": ("sock", "__sk_common.skc_net"),
    "SK_DADDR": ("sock", "__sk_common.skc_daddr"),
    "SK_RCV_SADDR": ("sock", "__sk_common.skc_rcv_saddr"),
    "SK_DPORT": ("sock", "__sk_common.skc_dport"),
    "SK_NUM": ("sock", "__sk_common.skc_num"),
    "SK_COOKIE": ("sock", "__sk_common.skc_cookie"),
    "SK_V6_DADDR": ("sock", "__sk_common.skc_v6_daddr"),
    "SK_V6_RCV_SADDR": ("sock", "__sk_common.skc_v6_rcv_saddr"),
    "SK_PROTOCOL": ("sock", "sk_protocol"),
    "SK_DST_CACHE": ("sock", "sk_dst_cache"),
    "SK_RX_DST_IFINDEX": ("sock", "sk_rx_dst_ifindex"),
    "SK_RECEIVE_QUEUE": ("sock", "sk_receive_queue"),
    "SKB_HEAD_PREV": ("sk_buff_head", "prev"),
    "SKB_IIF": ("sk_buff", "skb_iif"),
    "SKB_SK": ("sk_buff", "sk"),
    "SKB_DEV": ("sk_buff", "dev"),
    "SKB_LEN": ("sk_buff", "len"),
    "DST_DEV": ("dst_entry", "dev"),
    "DEV_IFINDEX": ("net_device", "ifindex"),
    "NET_NS_INUM": ("net", "ns.inum"),
    "TASK_GROUP_LEADER": ("task_struct", "group_leader"),
    "TASK_COMM": ("task_struct", "comm"),
}

CACHE_FILE = "offsets.json"


def offsets_from_btf(btf: BTF, fields: dict = FIELDS) -> dict[str, int]:
    return {macro: btf.member_offset(s, path) for macro, (s, path) in fields.items()}


def kernel_offsets(btf_path: str = VMLINUX_BTF, cache_dir: Optional[str] = None) -> dict[str, int]:
    """Offsets for every field in FIELDS on the running kernel, cached per build.

    Raises BTFError (naming struct and member) when the kernel lacks one.
    """
    cache_dir = cache_dir or cache.kernel_cache_dir()
    path = os.path.join(cache_dir, CACHE_FILE)
    try:
        with open(path) as f:
            cached = json.load(f)
        if isinstance(cached, dict) and set(cached) == set(FIELDS):
            return cached
    except (OSError, ValueError):
        pass
    offsets = offsets_from_btf(BTF.from_file(btf_path))
    try:
        cache.write_atomically(path, json.dumps(offsets, indent=1, sort_keys=True))
    except OSError:
        pass  # a read-only cache only costs the parse next time
    return offsets


def offset_cflags(offsets: dict[str, int]) -> list[str]:
    return [f"-DOFF_{name}={value}" for name, value in sorted(offsets.items())]


__all__ = ["FIELDS", "kernel_offsets", "offset_cflags", "offsets_from_btf", "BTFError"]
