/*
 * TCP health per process (--tcp-health): retransmits, drops with the
 * kernel's reason, connects (attempts, outcomes, latency), resets, RTT.
 * Included by common.h under -DTCP_HEALTH only, so both modes get it and
 * nothing of it exists (no map, no program) without the flag.
 *
 * Every hook here fires on a retransmit, a drop, a reset, a TCP state change
 * or an accept(2), never per packet moved. Most fire in softirq or timer
 * context, where the current task is unrelated: each event is credited to
 * the socket's owner, noted in process context where the kernel tells who it
 * is (the task that connect()s, at CLOSE->SYN_SENT; the task that accept()s)
 * in `health_owners`, under the socket's address. That address is reused
 * once a socket is freed, so an owner is trusted only while the socket's
 * inode is the one noted with it (a socket closed by its process has none:
 * its last events are still its owner's), and a socket made by a handshake
 * (SYN_RECV) starts without one.
 *
 * A drop on a socket whose owner is not known (a UDP socket, one accepted
 * before the run) is kept under the socket's inode, which user space finds
 * in /proc/PID/fd; a drop without a socket is kept apart (`health_drops`,
 * HEALTH_DROP_*), never guessed.
 *
 * procnetmon/probes/health.py attaches the programs (pnm_health_*; none is
 * attached by BCC itself) and mirrors the structs below in ctypes, checked
 * against the map sizes the kernel reports.
 *
 * Options (-D), set by procnetmon/probes/health.py from BTF:
 *   HEALTH_DROP_REASON    skb:kfree_skb has a reason (5.17+): pnm_health_drop
 *   HEALTH_DROP_RX_SK     ... and the receiving socket (6.11+)
 *   HEALTH_DROP_MIN       the first reason value that is a drop (below: not dropped, consumed)
 *   HEALTH_TCP_DROP       no reason: pnm_health_tcp_drop, a kprobe on tcp_drop()
 *   HEALTH_RETRANS_ERR    tcp:tcp_retransmit_skb passes the send's error (recent kernels: 6.18 does)
 *   OFF_TP_SRTT_US, OFF_TP_MDEV_US, OFF_SK_ERR, OFF_SK_STATE, OFF_SKB_CB,
 *   OFF_TCP_SKB_CB_GSO_SEGS    offsets (procnetmon/kernel/layout.py HEALTH_FIELDS)
 *   MAX_HEALTH_PROCESSES, MAX_HEALTH_SOCKETS (owners), MAX_HEALTH_SOCKET_STATS,
 *   MAX_HEALTH_DROPS   map sizes
 */

#ifndef PROCNETMON_HEALTH_H
#define PROCNETMON_HEALTH_H

#ifndef MAX_HEALTH_PROCESSES
#define MAX_HEALTH_PROCESSES 8192
#endif
#ifndef MAX_HEALTH_SOCKETS
#define MAX_HEALTH_SOCKETS 65536
#endif
/* Per-connection figures (RTT, -d): the most recently active ones are kept. */
#ifndef MAX_HEALTH_SOCKET_STATS
#define MAX_HEALTH_SOCKET_STATS 16384
#endif
#ifndef MAX_HEALTH_DROPS
#define MAX_HEALTH_DROPS 16384
#endif
#ifndef HEALTH_DROP_MIN
#define HEALTH_DROP_MIN 2
#endif

#define HEALTH_LATENCY_SLOTS 32 /* log2 of the connect latency in microseconds */

#define HEALTH_TCP_ESTABLISHED 1
#define HEALTH_TCP_SYN_SENT 2
#define HEALTH_TCP_SYN_RECV 3
#define HEALTH_TCP_TIME_WAIT 6
#define HEALTH_TCP_CLOSE 7
#define HEALTH_TCP_NEW_SYN_RECV 12

#define HEALTH_ENETUNREACH 101
#define HEALTH_ETIMEDOUT 110
#define HEALTH_ECONNREFUSED 111
#define HEALTH_EHOSTUNREACH 113

/* What a drop was noted under (drop_key.kind). */
#define HEALTH_DROP_OWNED 0      /* tgid: the socket's owner */
#define HEALTH_DROP_BY_INODE 1   /* ino: a socket whose owner user space looks up */
#define HEALTH_DROP_NO_SOCKET 2  /* no socket at all */
#define HEALTH_DROP_UNKNOWN 3    /* a socket with neither owner nor inode */

/* The reason procnetmon gives tcp_drop()'s drops, where the kernel gives none. */
#define HEALTH_REASON_TCP_DROP 0xffff

/* One process's figures, cumulative. */
struct health_counts {
    u64 retrans_segs;
    u64 retrans_bytes;
    u64 connect_attempts;
    u64 connect_ok;
    u64 connect_refused;
    u64 connect_timed_out;
    u64 connect_unreachable;
    u64 connect_other; /* closed in SYN_SENT for another reason (the process gave up) */
    u64 latency_count;
    u64 latency_sum_ns;
    u64 resets_in;
    u64 resets_out;
    u64 latency_log2_us[HEALTH_LATENCY_SLOTS];
};

struct health_owner {
    u32 tgid;
    u32 pad;
    u64 ino;        /* the socket's inode when noted */
    u64 connect_ns; /* when it entered SYN_SENT; 0 once the connect ended */
};

struct health_drop_key {
    u64 ino; /* kind HEALTH_DROP_BY_INODE */
    u32 tgid; /* kind HEALTH_DROP_OWNED */
    u16 reason;
    u16 kind;
};

/* One owned socket's figures, for --details and the RTT. */
struct health_sock_key {
    u64 ino;
    u32 tgid;
    u32 pad;
};

struct health_sock {
    u16 family;
    u16 state;
    u16 lport; /* host order */
    u16 rport; /* host order */
    u8 laddr[16];
    u8 raddr[16];
    u32 srtt_us; /* smoothed RTT, as tcp_info's tcpi_rtt */
    u32 rttvar_us; /* its mean deviation, as tcpi_rttvar */
    u64 rtt_ns; /* when they were read (bpf_ktime_get_ns) */
    u64 retrans_segs;
    u64 retrans_bytes;
    u64 drops;
    u64 resets_in;
    u64 resets_out;
    u64 connect_latency_ns;
};

BPF_HASH(health, u32, struct health_counts, MAX_HEALTH_PROCESSES);
/* The longest connect per process since user space last looked: it takes
 * the entries out as it reads them, so each interval has its own maximum. */
BPF_HASH(health_latency_max, u32, u64, MAX_HEALTH_PROCESSES);
BPF_TABLE("lru_hash", u64, struct health_owner, health_owners, MAX_HEALTH_SOCKETS);
BPF_TABLE("lru_hash", struct health_drop_key, u64, health_drops, MAX_HEALTH_DROPS);
BPF_TABLE("lru_hash", struct health_sock_key, struct health_sock, health_socks, MAX_HEALTH_SOCKET_STATS);

static __always_inline struct health_counts *health_of(u32 tgid)
{
    struct health_counts *c = health.lookup(&tgid);
    if (c)
        return c;
    struct health_counts zero = {};
    health.insert(&tgid, &zero);
    u8 one = 1;
    counted.update(&tgid, &one); /* its exit is noted, with its name */
    c = health.lookup(&tgid);
    if (!c)
        note_lost();
    return c;
}

static __always_inline int health_full_socket(const void *sk)
{
    u8 state = 0;
    bpf_probe_read_kernel(&state, 1, (const char *)sk + OFF_SK_STATE);
    return state != HEALTH_TCP_TIME_WAIT && state != HEALTH_TCP_NEW_SYN_RECV;
}

/* The owner of sk, or 0: unknown, or noted for an earlier socket at the
 * same address (whose entry is then dropped). */
static __always_inline struct health_owner *health_owner_of(const void *sk)
{
    if (!sk || !health_full_socket(sk))
        return 0;
    u64 addr = (u64)sk;
    struct health_owner *owner = health_owners.lookup(&addr);
    if (!owner)
        return 0;
    u64 ino = socket_ino(sk);
    if (ino && owner->ino && ino != owner->ino) {
        health_owners.delete(&addr);
        return 0;
    }
    return owner;
}

static __always_inline void health_note_owner(const void *sk, u32 tgid, u64 connect_ns)
{
    u64 addr = (u64)sk;
    struct health_owner owner = {.tgid = tgid, .ino = socket_ino(sk), .connect_ns = connect_ns};
    health_owners.update(&addr, &owner);
}

/* The socket's entry in health_socks, made with its addresses when first needed. */
static __always_inline struct health_sock *health_sock_of(const void *sk, struct health_owner *owner)
{
    struct health_sock_key key = {.ino = owner->ino, .tgid = owner->tgid};
    struct health_sock *hs = health_socks.lookup(&key);
    if (hs)
        return hs;
    struct health_sock fresh = {};
    fresh.family = read_u16(sk, OFF_SK_FAMILY);
    fresh.lport = read_u16(sk, OFF_SK_NUM);
    fresh.rport = __builtin_bswap16(read_u16(sk, OFF_SK_DPORT));
    if (fresh.family == AF_INET) {
        bpf_probe_read_kernel(fresh.laddr, 4, (const char *)sk + OFF_SK_RCV_SADDR);
        bpf_probe_read_kernel(fresh.raddr, 4, (const char *)sk + OFF_SK_DADDR);
    } else {
        bpf_probe_read_kernel(fresh.laddr, 16, (const char *)sk + OFF_SK_V6_RCV_SADDR);
        bpf_probe_read_kernel(fresh.raddr, 16, (const char *)sk + OFF_SK_V6_DADDR);
    }
    health_socks.insert(&key, &fresh);
    hs = health_socks.lookup(&key);
    if (!hs)
        note_lost();
    return hs;
}

/* The socket's RTT as tcp_info reports it (srtt_us is kept <<3, mdev_us <<2). */
static __always_inline void health_read_rtt(const void *sk, struct health_sock *hs)
{
    u32 srtt = read_u32(sk, OFF_TP_SRTT_US);
    if (!srtt)
        return; /* no RTT sample yet */
    hs->srtt_us = srtt >> 3;
    hs->rttvar_us = read_u32(sk, OFF_TP_MDEV_US) >> 2;
    hs->rtt_ns = bpf_ktime_get_ns();
}

static __always_inline u32 health_log2(u64 v)
{
    u32 r = 0;
#pragma unroll
    for (int shift = 32; shift > 0; shift >>= 1) {
        if (v >> shift) {
            v >>= shift;
            r += shift;
        }
    }
    return r;
}

static __always_inline void health_connected(const void *sk, struct health_owner *owner, struct health_counts *c)
{
    __sync_fetch_and_add(&c->connect_ok, 1);
    if (!owner->connect_ns)
        return;
    u64 took = bpf_ktime_get_ns() - owner->connect_ns;
    owner->connect_ns = 0;
    __sync_fetch_and_add(&c->latency_count, 1);
    __sync_fetch_and_add(&c->latency_sum_ns, took);
    u32 slot = health_log2(took / 1000);
    if (slot >= HEALTH_LATENCY_SLOTS)
        slot = HEALTH_LATENCY_SLOTS - 1;
    /* The mask, though redundant, bounds the index for older verifiers
     * (5.10), which refuse an offset into a map value they cannot bound. */
    __sync_fetch_and_add(&c->latency_log2_us[slot & (HEALTH_LATENCY_SLOTS - 1)], 1);
    u32 tgid = owner->tgid;
    u64 *max = health_latency_max.lookup(&tgid);
    if (!max) {
        health_latency_max.update(&tgid, &took);
    } else if (*max < took) {
        *max = took; /* two connects ending at once may keep the shorter: a maximum, not a count */
    }
    struct health_sock *hs = health_sock_of(sk, owner);
    if (hs)
        hs->connect_latency_ns = took;
}

/* A connect that ended in CLOSE, by the error the kernel left on the socket. */
static __always_inline void health_connect_failed(const void *sk, struct health_counts *c)
{
    int err = (int)read_u32(sk, OFF_SK_ERR);
    if (err == HEALTH_ECONNREFUSED)
        __sync_fetch_and_add(&c->connect_refused, 1);
    else if (err == HEALTH_ETIMEDOUT)
        __sync_fetch_and_add(&c->connect_timed_out, 1);
    else if (err == HEALTH_EHOSTUNREACH || err == HEALTH_ENETUNREACH)
        __sync_fetch_and_add(&c->connect_unreachable, 1);
    else
        __sync_fetch_and_add(&c->connect_other, 1);
}

/* args: const struct sock *sk, int oldstate, int newstate */
int pnm_health_state(struct bpf_raw_tracepoint_args *ctx)
{
    const void *sk = (const void *)ctx->args[0];
    int oldstate = (int)ctx->args[1], newstate = (int)ctx->args[2];
    if (read_u16(sk, OFF_SK_PROTOCOL) != IPPROTO_TCP)
        return 0;
    u64 addr = (u64)sk;
    if (newstate == HEALTH_TCP_SYN_SENT) {
        /* Inside connect(): the caller's thread group owns the socket. */
        u32 tgid = bpf_get_current_pid_tgid() >> 32;
        if (!is_target(tgid)) {
            health_owners.delete(&addr);
            return 0;
        }
        health_note_owner(sk, tgid, bpf_ktime_get_ns());
        struct health_counts *c = health_of(tgid);
        if (c)
            __sync_fetch_and_add(&c->connect_attempts, 1);
        return 0;
    }
    if (newstate == HEALTH_TCP_SYN_RECV) {
        /* A new socket, made in softirq by a handshake: its owner is
         * whoever accepts it, not whoever had this address before. */
        health_owners.delete(&addr);
        return 0;
    }
    struct health_owner *owner = health_owner_of(sk);
    if (!owner)
        return 0;
    struct health_counts *c = health_of(owner->tgid);
    if (!c)
        return 0;
    if (oldstate == HEALTH_TCP_SYN_SENT) {
        if (newstate == HEALTH_TCP_ESTABLISHED)
            health_connected(sk, owner, c);
        else if (newstate == HEALTH_TCP_CLOSE)
            health_connect_failed(sk, c);
    }
    struct health_sock *hs = health_sock_of(sk, owner);
    if (hs) {
        hs->state = newstate;
        health_read_rtt(sk, hs);
    }
    return 0;
}

/* args: const struct sock *sk, const struct sk_buff *skb (, int err) */
int pnm_health_retransmit(struct bpf_raw_tracepoint_args *ctx)
{
#ifdef HEALTH_RETRANS_ERR
    if ((int)ctx->args[2] != 0)
        return 0; /* not sent (TcpRetransSegs does not count it either) */
#endif
    const void *sk = (const void *)ctx->args[0];
    const void *skb = (const void *)ctx->args[1];
    struct health_owner *owner = health_owner_of(sk);
    if (!owner)
        return 0;
    struct health_counts *c = health_of(owner->tgid);
    if (!c)
        return 0;
    /* A TSO packet is several segments: tcp_skb_pcount(), as TcpRetransSegs counts. */
    u64 segs = read_u16(skb, OFF_SKB_CB + OFF_TCP_SKB_CB_GSO_SEGS);
    if (!segs)
        segs = 1;
    u64 bytes = read_u32(skb, OFF_SKB_LEN);
    __sync_fetch_and_add(&c->retrans_segs, segs);
    __sync_fetch_and_add(&c->retrans_bytes, bytes);
    struct health_sock *hs = health_sock_of(sk, owner);
    if (hs) {
        __sync_fetch_and_add(&hs->retrans_segs, segs);
        __sync_fetch_and_add(&hs->retrans_bytes, bytes);
        health_read_rtt(sk, hs);
    }
    return 0;
}

static __always_inline void health_reset(const void *sk, int received)
{
    struct health_owner *owner = health_owner_of(sk);
    if (!owner)
        return;
    struct health_counts *c = health_of(owner->tgid);
    if (!c)
        return;
    struct health_sock *hs = health_sock_of(sk, owner);
    if (received) {
        __sync_fetch_and_add(&c->resets_in, 1);
        if (hs)
            __sync_fetch_and_add(&hs->resets_in, 1);
    } else {
        __sync_fetch_and_add(&c->resets_out, 1);
        if (hs)
            __sync_fetch_and_add(&hs->resets_out, 1);
    }
}

/* args: struct sock *sk */
int pnm_health_reset_in(struct bpf_raw_tracepoint_args *ctx)
{
    health_reset((const void *)ctx->args[0], 1);
    return 0;
}

/* args: const struct sock *sk (0: a reset for a packet of no socket), const struct sk_buff *skb, ... */
int pnm_health_reset_out(struct bpf_raw_tracepoint_args *ctx)
{
    health_reset((const void *)ctx->args[0], 0);
    return 0;
}

static __always_inline void health_drop(const void *sk, u16 reason)
{
    struct health_drop_key key = {.reason = reason, .kind = HEALTH_DROP_NO_SOCKET};
    if (sk) {
        u16 family = read_u16(sk, OFF_SK_FAMILY);
        if (family != AF_INET && family != AF_INET6)
            return; /* local IPC (AF_UNIX, netlink) is not network traffic */
        struct health_owner *owner = health_owner_of(sk);
        if (owner) {
            key.kind = HEALTH_DROP_OWNED;
            key.tgid = owner->tgid;
            struct health_sock *hs = health_sock_of(sk, owner);
            if (hs)
                __sync_fetch_and_add(&hs->drops, 1);
        } else if (health_full_socket(sk) && (key.ino = socket_ino(sk))) {
            key.kind = HEALTH_DROP_BY_INODE;
        } else {
            key.kind = HEALTH_DROP_UNKNOWN;
        }
    }
    u64 *n = health_drops.lookup(&key);
    if (!n) {
        u64 zero = 0;
        health_drops.insert(&key, &zero);
        n = health_drops.lookup(&key);
        if (!n) {
            note_lost();
            return;
        }
    }
    __sync_fetch_and_add(n, 1);
}

#ifdef HEALTH_DROP_REASON
/* args: struct sk_buff *skb, void *location, enum skb_drop_reason reason (, struct sock *rx_sk) */
int pnm_health_drop(struct bpf_raw_tracepoint_args *ctx)
{
    u32 reason = (u32)ctx->args[2];
    if (reason < HEALTH_DROP_MIN)
        return 0; /* not a drop: consumed */
    const void *sk = 0;
#ifdef HEALTH_DROP_RX_SK
    sk = (const void *)ctx->args[3]; /* the receiving socket, which skb->sk is not yet */
#endif
    if (!sk)
        sk = read_ptr((const void *)ctx->args[0], OFF_SKB_SK);
    health_drop(sk, (u16)reason);
    return 0;
}
#endif

#ifdef HEALTH_TCP_DROP
struct pt_regs;
/* tcp_drop(struct sock *sk, struct sk_buff *skb), before the kernel gave reasons. */
int pnm_health_tcp_drop(struct pt_regs *ctx)
{
    const void *sk = 0;
    bpf_probe_read_kernel(&sk, sizeof(sk), (const char *)ctx + OFF_REGS_PARM1);
    health_drop(sk, HEALTH_REASON_TCP_DROP);
    return 0;
}
#endif

/* syscalls:sys_exit_accept4 and sys_exit_accept: the common fields (8
 * bytes), the syscall number, then the result (the new descriptor). */
struct health_sys_exit {
    u64 common;
    long nr;
    long ret;
};

int pnm_health_accept(struct health_sys_exit *args)
{
    long fd = 0;
    bpf_probe_read_kernel(&fd, sizeof(fd), &args->ret);
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (fd < 0 || !is_target(tgid))
        return 0;
    const void *sk = tcp_socket_of_fd(fd);
    if (sk)
        health_note_owner(sk, tgid, 0);
    return 0;
}

#endif /* PROCNETMON_HEALTH_H */
