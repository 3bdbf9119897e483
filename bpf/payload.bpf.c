/*
 * procnetmon payload mode: the bytes each process's socket calls moved.
 *
 * Counts the return value of every socket call on a TCP or UDP socket (IPv4
 * and IPv6) that moved bytes, at the hooks of the chosen backend
 * (hooks.h), in the calling task's context: attribution to its thread
 * group is exact. Counters are aggregated here per process: `counters` is
 * keyed by the tgid alone and holds TCP and UDP bytes in and out (struct
 * counts, common.h); the interface only decides, in the filters, whether a
 * call is counted at all. With DETAILS, `sockets` also keeps bytes per
 * (socket inode, tgid). User space reads them once per interval.
 *
 * Options (-D), besides those of common.h and hooks.h:
 *   DETAILS           also keep bytes per socket with its addresses
 */

#include "common.h"

#define MSG_PEEK 2

/* The interface of a call only matters to the filters: without them (every
 * interface, loopback included) no hook learns a UDP datagram's interface. */
#if defined(FILTER_IFACES) || defined(EXCLUDE_LOOPBACK)
#define NEED_UDP_RX_IFINDEX 1
static __always_inline u32 udp_rx_hint(int how, const void *sk);
#endif

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

/* The device of the socket's cached route: where its packets leave. Unset
 * for unconnected UDP sockets, whose route is looked up per datagram. */
static __always_inline u32 dev_ifindex_of(int how, void *dst)
{
    if (!dst)
        return UNKNOWN_IFINDEX;
    void *dev = load_ptr(how, dst, OFF_DST_DEV);
    if (!dev)
        return UNKNOWN_IFINDEX;
    return load_u32(how, dev, OFF_DEV_IFINDEX);
}

/* sk_protocol and the cached route: through the helper in one kernel read
 * where BTF puts them within 16 bytes of each other (each helper call costs
 * more than the read itself). */
struct proto_dst {
    u16 protocol;
    void *dst;
};

static __always_inline struct proto_dst read_proto_dst(int how, const void *sk)
{
    struct proto_dst out = {};
#if OFF_SK_DST_CACHE >= OFF_SK_PROTOCOL && OFF_SK_DST_CACHE + 8 - OFF_SK_PROTOCOL <= 16
    if (how == READ_PROBE) {
        u8 window[16] = {};
        bpf_probe_read_kernel(window, sizeof(window), (const char *)sk + OFF_SK_PROTOCOL);
        __builtin_memcpy(&out.protocol, window, 2);
        __builtin_memcpy(&out.dst, window + (OFF_SK_DST_CACHE - OFF_SK_PROTOCOL), 8);
        return out;
    }
#endif
    out.protocol = load_u16(how, sk, OFF_SK_PROTOCOL);
    out.dst = load_ptr(how, sk, OFF_SK_DST_CACHE);
    return out;
}

/* TCP keeps the ingress device of its segments in sk_rx_dst_ifindex; UDP
 * keeps nothing, so the backend's hooks tell it (hooks.h). */
static __always_inline u32 rx_ifindex(int how, const void *sk, u16 protocol, void *dst)
{
    if (protocol == IPPROTO_TCP) {
        u32 ifindex = load_u32(how, sk, OFF_SK_RX_DST_IFINDEX);
        return ifindex ? ifindex : dev_ifindex_of(how, dst);
    }
#ifdef NEED_UDP_RX_IFINDEX
    return udp_rx_hint(how, sk);
#else
    return UNKNOWN_IFINDEX;
#endif
}

#ifdef DETAILS
static __always_inline void add_socket(const void *sk, u32 tgid, u16 family, u16 protocol,
                                       u16 dir, u64 bytes)
{
    struct socket_key key = {.ino = socket_ino(sk), .tgid = tgid};
    struct sock_info *info = sockets.lookup(&key);
    if (!info) {
        struct sock_info fresh = {.tgid = tgid, .family = family, .protocol = protocol};
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
    if (dir == DIR_IN)
        __sync_fetch_and_add(&info->bytes_in, bytes);
    else
        __sync_fetch_and_add(&info->bytes_out, bytes);
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
    if (family != AF_INET && family != AF_INET6)
        return 0;
    struct proto_dst pd = read_proto_dst(how, sk);
    u16 protocol = pd.protocol;
    if (protocol != IPPROTO_TCP && protocol != IPPROTO_UDP)
        return 0;
    u32 ifindex = dir == DIR_OUT ? dev_ifindex_of(how, pd.dst) : rx_ifindex(how, sk, protocol, pd.dst);
#ifdef FILTER_IFACES
    if (!iface_ok(netns_of(how, sk), ifindex))
#else
    if (!iface_ok(0, ifindex)) /* the namespace only matters to a filter */
#endif
        return 0;
    add(tgid, protocol, dir, (u64)ret);
#ifdef DETAILS
    add_socket(sk, tgid, family, protocol, dir, (u64)ret);
#endif
    return 0;
}

#include "hooks.h"
