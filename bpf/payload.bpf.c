/*
 * procnetmon payload mode: the bytes each process's socket calls moved.
 *
 * Counts the return value of every socket call that moved bytes on a
 * network socket: any inet socket (TCP, UDP, UDP-Lite, ICMP, raw IP, SCTP,
 * MPTCP, IPv4 and IPv6) and AF_PACKET, at the hooks of the chosen backend
 * (hooks.h), in the calling task's context: attribution to its thread
 * group is exact. Counters are aggregated here per process: `counters` is
 * keyed by the tgid alone and holds bytes in and out per protocol class
 * (struct counts, common.h); the interface only decides, in the filters, whether a
 * call is counted at all. With DETAILS, `sockets` also keeps bytes per
 * (socket inode, tgid). User space reads them once per interval.
 *
 * Options (-D), besides those of common.h and hooks.h:
 *   DETAILS           also keep bytes per socket with its addresses
 * With a filter on the ends (remote.h), a call is counted only if its
 * socket's (or, unconnected, its datagram's) remote address and ports pass.
 */

#include "common.h"

#define MSG_PEEK 2

/* The interface of a call only matters to the filters: without them (every
 * interface, loopback included) no hook learns a datagram's interface. */
#if defined(FILTER_IFACES) || defined(EXCLUDE_LOOPBACK) || defined(NEED_DGRAM_REMOTE)
#define NEED_DGRAM_IFINDEX 1
#define DGRAM_INET 1 /* inet datagrams too, not only AF_PACKET's */
#endif

#include "calls.h"

#ifdef DETAILS
/* Per socket and process: the kernel reuses a closed socket's memory for the
 * next one, never its inode number; and a socket shared by two processes
 * gives each its own bytes, so each process's rows add up to its totals. */
struct socket_key {
    u64 ino;
    u32 tgid;
    u32 pad;
};
BPF_TABLE("lru_hash", struct socket_key, struct sock_info, sockets, MAX_SOCKETS);
#endif

#ifdef DETAILS
static __always_inline void add_socket(const void *sk, u32 tgid, u16 family, int cls,
                                       u16 dir, u64 bytes, u32 ifindex)
{
    struct socket_key key = {.ino = socket_ino(sk), .tgid = tgid};
    struct sock_info *info = sockets.lookup(&key);
    if (!info) {
        struct sock_info fresh = {.tgid = tgid, .family = family, .protocol = (u16)cls};
        sockets.insert(&key, &fresh);
        info = sockets.lookup(&key);
        if (!info) {
            note_lost();
            return;
        }
    }
    /* Addresses are re-read on every call: a UDP socket may connect later.
     * Not once the socket has let go of its port (a TCP socket closed by
     * the peer's FIN while its last bytes wait to be read): then they are
     * what they were. */
    if (family == AF_PACKET) {
        info->lport = (u16)ifindex; /* no addresses: the interface, as far as known */
        goto count;
    }
    u16 lport = read_u16(sk, OFF_SK_NUM);
    if (lport) {
        info->lport = lport;
        info->rport = __builtin_bswap16(read_u16(sk, OFF_SK_DPORT));
        if (family == AF_INET) {
            bpf_probe_read_kernel(info->laddr, 4, (const char *)sk + OFF_SK_RCV_SADDR);
            bpf_probe_read_kernel(info->raddr, 4, (const char *)sk + OFF_SK_DADDR);
        } else {
            bpf_probe_read_kernel(info->laddr, 16, (const char *)sk + OFF_SK_V6_RCV_SADDR);
            bpf_probe_read_kernel(info->raddr, 16, (const char *)sk + OFF_SK_V6_DADDR);
        }
    }
count:
    if (dir == DIR_IN)
        __sync_fetch_and_add(&info->bytes_in, bytes);
    else
        __sync_fetch_and_add(&info->bytes_out, bytes);
}
#endif

#ifdef FILTER_ENDS
/* Whether the remote filters (remote.h) count this call: the ends from the
 * socket once it is connected, else from the datagram's note (`noted`).
 * AF_PACKET has no addresses: a filter on the ends leaves it out. */
static __always_inline int call_ends_ok(int how, const void *sk, u16 family, int cls,
                                        const struct remote_end *noted)
{
    if (family == AF_PACKET)
        return 0;
    struct remote_end end = {};
    u16 lport = load_u16(how, sk, OFF_SK_NUM);
    u16 rport = __builtin_bswap16(load_u16(how, sk, OFF_SK_DPORT));
    int connected;
    if (family == AF_INET) {
        u32 daddr = load_u32(how, sk, OFF_SK_DADDR);
        mapped_v4_addr(end.addr, daddr);
        connected = daddr != 0;
    } else {
        bpf_probe_read_kernel(end.addr, 16, (const char *)sk + OFF_SK_V6_DADDR);
        u64 hi, lo;
        __builtin_memcpy(&hi, end.addr, 8);
        __builtin_memcpy(&lo, end.addr + 8, 8);
        connected = (hi | lo) != 0;
    }
    if (connected) {
        end.port = rport;
        end.known = 1;
        return ends_ok(&end, lport, class_has_ports(cls));
    }
    return ends_ok(noted, lport, class_has_ports(cls));
}
#endif

/* Called by the backend's hooks (hooks.h) once per socket call that
 * returned, reading sk the hook's way (`how`, common.h). */
static __always_inline int on_socket_call(const void *sk, long ret, int flags, u16 dir, int how)
{
    if (ret <= 0 || !sk)
        return 0;
    if (dir == DIR_IN && (flags & MSG_PEEK))
        return 0; /* peeked bytes are counted when they are really read */
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!is_target(tgid))
        return 0;
    u16 family = load_u16(how, sk, OFF_SK_FAMILY);
    if (family != AF_INET && family != AF_INET6 && family != AF_PACKET)
        return 0; /* local IPC (AF_UNIX, netlink...) is not network traffic */
    struct call_sock cs = read_call_sock(how, sk);
    int cls = proto_class(family, cs.type, cs.protocol);
    if (cls == PC_NONE)
        return 0;
#ifdef FILTER_ENDS
    struct remote_end noted = {};
    u32 ifindex = call_ifindex(how, sk, cls, dir, cs.dst, &noted);
    if (!call_ends_ok(how, sk, family, cls, &noted))
        return 0;
#else
    u32 ifindex = call_ifindex(how, sk, cls, dir, cs.dst, 0);
#endif
#ifdef FILTER_IFACES
    if (!iface_ok(netns_of(how, sk), ifindex))
#else
    if (!iface_ok(0, ifindex)) /* the namespace only matters to a filter */
#endif
        return 0;
    add(tgid, cls, dir, (u64)ret);
#ifdef DETAILS
    add_socket(sk, tgid, family, cls, dir, (u64)ret, ifindex);
#endif
    return 0;
}

#include "hooks.h"
