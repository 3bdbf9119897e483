/*
 * procnetmon payload backend: the bytes each process's socket calls moved.
 *
 * Counts the return value of every sendmsg/recvmsg on a TCP or UDP socket
 * (IPv4 and IPv6) at the sock:sock_send_length / sock:sock_recv_length
 * tracepoints (Linux 6.3+). They fire at the end of sock_sendmsg() and
 * sock_recvmsg(), which read(), write(), the send and recv calls, sendfile(), splice() and io_uring
 * all end in, in the calling task's context: attribution to its thread
 * group is exact. Counters are aggregated here per (process, interface,
 * protocol, direction); user space reads them once per interval.
 *
 * Compiled by BCC with no kernel headers: struct fields are read at offsets
 * taken from BTF and passed as -DOFF_<NAME>=<bytes> (procnetmon/kernel/layout.py).
 *
 * Options (-D):
 *   FILTER_PIDS       count only thread groups in target_pids
 *   FILTER_IFACES     count only interfaces in target_ifaces (netns, ifindex)
 *   EXCLUDE_LOOPBACK  without FILTER_IFACES: leave loopback out
 *   DETAILS           also keep bytes per socket with its addresses
 *   MAX_COUNTERS, MAX_PIDS, MAX_SOCKETS, MAX_EXITED   map sizes
 */

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define MSG_PEEK 2
#define LOOPBACK_IFINDEX 1 /* loopback has ifindex 1 in every network namespace */
#define UNKNOWN_IFINDEX 0

#define DIR_IN 0
#define DIR_OUT 1

#ifndef MAX_COUNTERS
#define MAX_COUNTERS 65536
#endif
#ifndef MAX_PIDS
#define MAX_PIDS 4096
#endif
#ifndef MAX_SOCKETS
#define MAX_SOCKETS 65536
#endif
#ifndef MAX_EXITED
#define MAX_EXITED 16384
#endif

struct counter_key {
    u32 tgid;
    u32 ifindex; /* 0: the kernel could not tell (see rx_ifindex/tx_ifindex) */
    u16 protocol;
    u16 dir;
    u32 pad;
};

struct iface_key {
    u32 netns; /* inode number of the network namespace */
    u32 ifindex;
};

struct exit_info {
    char comm[16];
    u64 exit_ns;
};

BPF_HASH(counters, struct counter_key, u64, MAX_COUNTERS);
BPF_HASH(target_pids, u32, u8, MAX_PIDS);
BPF_HASH(target_ifaces, struct iface_key, u8, 256);
/* Interface of the datagram last queued on each UDP socket, noted in softirq. */
BPF_TABLE("lru_hash", u64, u32, udp_rx_ifindex, MAX_SOCKETS);
/* Name of each counted process that exited, since /proc forgets it. */
BPF_TABLE("lru_hash", u32, struct exit_info, exited, MAX_EXITED);
/* Counter updates lost because a map was full: never silently. */
BPF_ARRAY(lost, u64, 1);

#ifdef DETAILS
struct sock_info {
    u32 tgid;
    u16 family;
    u16 protocol;
    u16 lport; /* host order */
    u16 rport; /* host order */
    u32 pad;
    u8 laddr[16]; /* IPv4 in the first 4 bytes */
    u8 raddr[16];
    u64 bytes_in;
    u64 bytes_out;
};
BPF_TABLE("lru_hash", u64, struct sock_info, sockets, MAX_SOCKETS);
#endif

static __always_inline void *read_ptr(const void *base, long off)
{
    void *v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (const char *)base + off);
    return v;
}

static __always_inline u32 read_u32(const void *base, long off)
{
    u32 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (const char *)base + off);
    return v;
}

static __always_inline u16 read_u16(const void *base, long off)
{
    u16 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (const char *)base + off);
    return v;
}

static __always_inline void note_lost(void)
{
    int zero = 0;
    u64 *n = lost.lookup(&zero);
    if (n)
        __sync_fetch_and_add(n, 1);
}

static __always_inline int is_target(u32 tgid)
{
#ifdef FILTER_PIDS
    return target_pids.lookup(&tgid) != 0;
#else
    return 1;
#endif
}

/* The device of the socket's cached route: where its packets leave. Unset
 * for unconnected UDP sockets, whose route is looked up per datagram. */
static __always_inline u32 tx_ifindex(const void *sk)
{
    void *dst = read_ptr(sk, OFF_SK_DST_CACHE);
    if (!dst)
        return UNKNOWN_IFINDEX;
    void *dev = read_ptr(dst, OFF_DST_DEV);
    if (!dev)
        return UNKNOWN_IFINDEX;
    return read_u32(dev, OFF_DEV_IFINDEX);
}

/* TCP keeps the ingress device of its segments in sk_rx_dst_ifindex; UDP
 * keeps nothing, so the softirq hook below remembers it per socket. */
static __always_inline u32 rx_ifindex(const void *sk, u16 protocol)
{
    if (protocol == IPPROTO_TCP) {
        u32 ifindex = read_u32(sk, OFF_SK_RX_DST_IFINDEX);
        return ifindex ? ifindex : tx_ifindex(sk);
    }
    u64 key = (u64)sk;
    u32 *ifindex = udp_rx_ifindex.lookup(&key);
    return ifindex ? *ifindex : UNKNOWN_IFINDEX;
}

static __always_inline int iface_wanted(const void *sk, u32 ifindex)
{
#ifdef FILTER_IFACES
    if (ifindex == UNKNOWN_IFINDEX)
        return 0;
    void *net = read_ptr(sk, OFF_SK_NET);
    struct iface_key k = {.netns = read_u32(net, OFF_NET_NS_INUM), .ifindex = ifindex};
    return target_ifaces.lookup(&k) != 0;
#elif defined(EXCLUDE_LOOPBACK)
    return ifindex != LOOPBACK_IFINDEX;
#else
    return 1;
#endif
}

static __always_inline void add(u32 tgid, u32 ifindex, u16 protocol, u16 dir, u64 bytes)
{
    struct counter_key key = {.tgid = tgid, .ifindex = ifindex, .protocol = protocol, .dir = dir};
    u64 *val = counters.lookup(&key);
    if (!val) {
        u64 zero = 0;
        counters.insert(&key, &zero);
        val = counters.lookup(&key);
        if (!val) {
            note_lost();
            return;
        }
    }
    __sync_fetch_and_add(val, bytes);
}

#ifdef DETAILS
static __always_inline void add_socket(const void *sk, u32 tgid, u16 family, u16 protocol,
                                       u16 dir, u64 bytes)
{
    u64 key = (u64)sk;
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
    /* Addresses are re-read on every call: a UDP socket may connect later,
     * and a recycled struct sock may belong to a new connection. */
    info->tgid = tgid;
    info->family = family;
    info->protocol = protocol;
    info->lport = read_u16(sk, OFF_SK_NUM);
    info->rport = __builtin_bswap16(read_u16(sk, OFF_SK_DPORT));
    if (family == AF_INET) {
        bpf_probe_read_kernel(info->laddr, 4, (const char *)sk + OFF_SK_RCV_SADDR);
        bpf_probe_read_kernel(info->raddr, 4, (const char *)sk + OFF_SK_DADDR);
    } else {
        bpf_probe_read_kernel(info->laddr, 16, (const char *)sk + OFF_SK_V6_RCV_SADDR);
        bpf_probe_read_kernel(info->raddr, 16, (const char *)sk + OFF_SK_V6_DADDR);
    }
    if (dir == DIR_IN)
        __sync_fetch_and_add(&info->bytes_in, bytes);
    else
        __sync_fetch_and_add(&info->bytes_out, bytes);
}
#endif

/* args: struct sock *sk, int ret (bytes or -errno), int flags (recv only) */
static __always_inline int on_socket_call(struct bpf_raw_tracepoint_args *ctx, u16 dir)
{
    int ret = (int)ctx->args[1];
    if (ret <= 0)
        return 0;
    if (dir == DIR_IN && ((int)ctx->args[2] & MSG_PEEK))
        return 0; /* peeked bytes are counted when they are really read */
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!is_target(tgid))
        return 0;
    const void *sk = (const void *)ctx->args[0];
    u16 family = read_u16(sk, OFF_SK_FAMILY);
    if (family != AF_INET && family != AF_INET6)
        return 0;
    u16 protocol = read_u16(sk, OFF_SK_PROTOCOL);
    if (protocol != IPPROTO_TCP && protocol != IPPROTO_UDP)
        return 0;
    u32 ifindex = dir == DIR_OUT ? tx_ifindex(sk) : rx_ifindex(sk, protocol);
    if (!iface_wanted(sk, ifindex))
        return 0;
    add(tgid, ifindex, protocol, dir, (u64)ret);
#ifdef DETAILS
    add_socket(sk, tgid, family, protocol, dir, (u64)ret);
#endif
    return 0;
}

RAW_TRACEPOINT_PROBE(sock_send_length)
{
    return on_socket_call(ctx, DIR_OUT);
}

RAW_TRACEPOINT_PROBE(sock_recv_length)
{
    return on_socket_call(ctx, DIR_IN);
}

/* args: struct sock *sk. Runs in softirq right after a datagram is queued,
 * so the tail of the receive queue is that datagram. A reader on another
 * CPU may have taken it already: then the queue is empty and nothing is noted. */
RAW_TRACEPOINT_PROBE(sk_data_ready)
{
    const void *sk = (const void *)ctx->args[0];
    if (read_u16(sk, OFF_SK_PROTOCOL) != IPPROTO_UDP)
        return 0;
    const void *queue = (const char *)sk + OFF_SK_RECEIVE_QUEUE;
    void *skb = read_ptr(queue, OFF_SKB_HEAD_PREV);
    if (!skb || skb == queue)
        return 0;
    u32 ifindex = read_u32(skb, OFF_SKB_IIF);
    if (!ifindex)
        return 0;
    u64 key = (u64)sk;
    u32 *known = udp_rx_ifindex.lookup(&key);
    if (known && *known == ifindex)
        return 0;
    udp_rx_ifindex.update(&key, &ifindex);
    return 0;
}

/* args: struct task_struct *p, bool group_dead. Keeps the name of a process
 * whose last thread exits, so its totals are still named in the summary. */
RAW_TRACEPOINT_PROBE(sched_process_exit)
{
    if (!(ctx->args[1] & 1))
        return 0;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!is_target(tgid))
        return 0;
    struct exit_info info = {};
    void *task = (void *)bpf_get_current_task();
    void *leader = read_ptr(task, OFF_TASK_GROUP_LEADER);
    bpf_probe_read_kernel(info.comm, sizeof(info.comm), (const char *)(leader ? leader : task) + OFF_TASK_COMM);
    info.exit_ns = bpf_ktime_get_ns();
    exited.update(&tgid, &info);
    return 0;
}
