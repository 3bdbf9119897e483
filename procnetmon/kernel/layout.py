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
    "SK_TYPE": ("sock", "sk_type"),  # SOCK_RAW tells a raw socket from a ping socket
    "SK_STATE": ("sock", "__sk_common.skc_state"),  # a connected UDP socket is ESTABLISHED
    "SK_DST_CACHE": ("sock", "sk_dst_cache"),
    "SK_RX_DST_IFINDEX": ("sock", "sk_rx_dst_ifindex"),
    "SK_RECEIVE_QUEUE": ("sock", "sk_receive_queue"),
    "SKB_HEAD_PREV": ("sk_buff_head", "prev"),
    "SKB_HEAD_NEXT": ("sk_buff_head", "next"),
    "SKB_IIF": ("sk_buff", "skb_iif"),
    "SKB_SK": ("sk_buff", "sk"),
    "SKB_DEV": ("sk_buff", "dev"),
    "SKB_LEN": ("sk_buff", "len"),
    # A datagram's own addresses (the remote filters of an unconnected socket):
    # its IP and transport headers, as offsets from its head.
    "SKB_HEAD": ("sk_buff", "head"),
    "SKB_NETWORK_HEADER": ("sk_buff", "network_header"),
    "SKB_TRANSPORT_HEADER": ("sk_buff", "transport_header"),
    "DST_DEV": ("dst_entry", "dev"),
    "DEV_IFINDEX": ("net_device", "ifindex"),
    "NET_NS_INUM": ("net", "ns.inum"),
    "TASK_GROUP_LEADER": ("task_struct", "group_leader"),
    "TASK_COMM": ("task_struct", "comm"),
    "TASK_TGID": ("task_struct", "tgid"),  # -p --children, -- COMMAND: the forked child's
    "SOCKET_SK": ("socket", "sk"),
    # Whether an exiting task is its group's last (kernels whose
    # sched_process_exit tracepoint does not say).
    "TASK_SIGNAL": ("task_struct", "signal"),
    "SIGNAL_LIVE": ("signal_struct", "live"),
    # A socket's inode number (socket:[N] in /proc/PID/fd): unique per socket
    # for the whole run, where the struct sock address is reused (details).
    "SK_SOCKET": ("sock", "sk_socket"),
    "SOCKET_ALLOC_SOCKET": ("socket_alloc", "socket"),
    "SOCKET_ALLOC_INODE": ("socket_alloc", "vfs_inode"),
    "INODE_INO": ("inode", "i_ino"),
    # splice(2) out of a TCP socket, seen from the syscall (tracepoint backend):
    # the socket behind a file descriptor of the calling task.
    "TASK_FILES": ("task_struct", "files"),
    "FILES_FDT": ("files_struct", "fdt"),
    "FDT_FD": ("fdtable", "fd"),
    "FDT_MAX_FDS": ("fdtable", "max_fds"),
    "FILE_INODE": ("file", "f_inode"),
    "FILE_PRIVATE_DATA": ("file", "private_data"),
    "INODE_MODE": ("inode", "i_mode"),
}

# Where an older kernel keeps the same thing elsewhere. Linux 5.16 moved the
# TCP ingress ifindex from inet_sock into sock; an inet_sock begins with its
# sock, so either offset applies to a struct sock pointer.
FALLBACKS = {
    "SK_RX_DST_IFINDEX": ("inet_sock", "rx_dst_ifindex"),
}

# Read only by some backends, and only present on some architectures: the
# registers a kprobe finds its arguments and return value in (x86-64 names).
OPTIONAL = {
    "REGS_PARM1": ("pt_regs", "di"),
    "REGS_PARM2": ("pt_regs", "si"),
    "REGS_PARM3": ("pt_regs", "dx"),
    "REGS_PARM4": ("pt_regs", "cx"),
    "REGS_RC": ("pt_regs", "ax"),
    # The interface a packet socket is bound to; BTF has no packet_sock
    # where AF_PACKET is a module.
    "PACKET_SOCK_IFINDEX": ("packet_sock", "ifindex"),
    # An MPTCP connection's first subflow, and whether a TCP socket is a
    # subflow (wire mode: whose packets they are); absent without CONFIG_MPTCP.
    "MPTCP_SOCK_FIRST": ("mptcp_sock", "first"),
    # The queue a UDP socket's reads take from before its receive queue.
    "UDP_SOCK_READER_QUEUE": ("udp_sock", "reader_queue"),
    "TCP_SOCK_IS_MPTCP": ("tcp_sock", "is_mptcp"),
}

# --tcp-health only (bpf/health.h): read where the kernel has them, and
# asked for only when the flag is on (procnetmon/probes/health.py).
HEALTH_FIELDS = {
    "TP_SRTT_US": ("tcp_sock", "srtt_us"),  # smoothed RTT << 3, in microseconds
    "TP_MDEV_US": ("tcp_sock", "mdev_us"),  # its mean deviation << 2
    "SK_ERR": ("sock", "sk_err"),  # why a connect failed (ECONNREFUSED, ETIMEDOUT...)
    "SKB_CB": ("sk_buff", "cb"),  # TCP_SKB_CB(skb)
    "TCP_SKB_CB_GSO_SEGS": ("tcp_skb_cb", "tcp_gso_segs"),  # tcp_skb_pcount()
}

CACHE_FILE = "offsets-v3.json"


def offsets_from_btf(btf: BTF, fields: dict = FIELDS, fallbacks: Optional[dict] = None,
                     optional: Optional[dict] = None) -> dict[str, int]:
    """Offsets of ``fields`` (each required, or found at its fallback) and of
    the ``optional`` fields this kernel has."""
    fallbacks = FALLBACKS if fallbacks is None else fallbacks
    optional = OPTIONAL if optional is None else optional
    out = {}
    for macro, (struct_name, path) in fields.items():
        try:
            out[macro] = btf.member_offset(struct_name, path)
        except BTFError:
            if macro not in fallbacks:
                raise
            out[macro] = btf.member_offset(*fallbacks[macro])
    for macro, (struct_name, path) in optional.items():
        try:
            out[macro] = btf.member_offset(struct_name, path)
        except BTFError:
            pass
    return out


def kernel_offsets(btf_path: str = VMLINUX_BTF, cache_dir: Optional[str] = None) -> dict[str, int]:
    """Offsets for every field in FIELDS on the running kernel, cached per build.

    Raises BTFError (naming struct and member) when the kernel lacks one.
    """
    cache_dir = cache_dir or cache.kernel_cache_dir()
    path = os.path.join(cache_dir, CACHE_FILE)
    try:
        with open(path) as f:
            cached = json.load(f)
        if cache.valid_offsets(cached, FIELDS, OPTIONAL):
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
    for name, value in offsets.items():
        if type(value) is not int or value < 0:
            raise ValueError(f"offset {name} is not a non-negative integer")
    return [f"-DOFF_{name}={value}" for name, value in sorted(offsets.items())]


__all__ = ["FIELDS", "HEALTH_FIELDS", "FALLBACKS", "OPTIONAL", "kernel_offsets", "offset_cflags", "offsets_from_btf",
           "BTFError"]
