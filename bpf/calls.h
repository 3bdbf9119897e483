/*
 * What one socket call tells, in the calling task's context: the protocol
 * class of its socket, and the interface its bytes went through. Included
 * by payload.bpf.c and wire.bpf.c (for AF_PACKET sockets, whose frames no
 * cgroup_skb program sees), before hooks.h.
 *
 * A connected socket knows its interface: TCP keeps the ingress device of
 * its segments, and a connected socket's cached route names where its
 * packets leave. A datagram socket that is not connected (sendto, recvfrom)
 * or is fed by several interfaces does not: each datagram has its own. For
 * those, tracepoints inside the call (hooks.h: skb_copy_datagram_iovec as a
 * received datagram is copied out, net_dev_queue as a sent one reaches its
 * device) note the datagram's device per task, with the direction (and for
 * a sent one, its socket), and the call's own hook takes that note when it
 * returns: the interface of this call's datagram, never of another
 * socket's, nor of an earlier call's.
 *
 * Options (-D): NEED_DGRAM_IFINDEX, set by the including program when a
 * filter needs the interface (-i, or loopback left out); DGRAM_INET, also
 * set by it when inet datagrams are counted by their calls (payload mode:
 * sent datagrams noted at net_dev_queue); UDP_RX_FENTRY, UDP_RX_KPROBE or
 * UDP_RX_HEAD (from the loader): how a UDP datagram's device is noted.
 */

#ifndef PROCNETMON_CALLS_H
#define PROCNETMON_CALLS_H

#ifdef NEED_DGRAM_IFINDEX
struct dgram_hint {
    u64 sk;
    u32 ifindex;
    u32 dir;
#ifdef NEED_DGRAM_REMOTE
    struct remote_end end; /* the datagram's peer, for the remote filters */
#endif
};

/* A sent datagram's note is kept under its socket's address, a received
 * one's under the reading task (pid_tgid, never a kernel address): the
 * answer that a peer's kernel sends back at once (an ICMP echo reply, over
 * a veth, in a softirq run inside the very same send) is noted under its own
 * kernel socket and cannot replace the sender's note. LRU: a socket or task
 * may leave one behind when it goes. */
BPF_TABLE("lru_hash", u64, struct dgram_hint, dgram_hints, MAX_PIDS);

static __always_inline u64 dgram_key(const void *sk, u16 dir)
{
    return dir == DIR_OUT ? (u64)sk : bpf_get_current_pid_tgid();
}

/* sk 0: any socket (a received datagram no longer says which). */
static __always_inline void note_dgram(const void *sk, u32 ifindex, u16 dir, const void *skb)
{
    u64 task = bpf_get_current_pid_tgid();
    if (!ifindex || !is_target(task >> 32))
        return;
    struct dgram_hint hint = {.sk = (u64)sk, .ifindex = ifindex, .dir = dir};
#ifdef NEED_DGRAM_REMOTE
    skb_remote(skb, dir, &hint.end);
#endif
    u64 key = dgram_key(sk, dir);
    dgram_hints.update(&key, &hint);
}

/* A datagram being copied out to the reading task: the device it arrived
 * on, or, for the copy of an outgoing frame that a packet socket sees, the
 * device it leaves by. */
static __always_inline void note_dgram_in(const void *skb)
{
    u32 ifindex = read_u32(skb, OFF_SKB_IIF);
    if (!ifindex) {
        void *dev = read_ptr(skb, OFF_SKB_DEV);
        ifindex = dev ? read_u32(dev, OFF_DEV_IFINDEX) : UNKNOWN_IFINDEX;
    }
    note_dgram(0, ifindex, DIR_IN, skb);
}

/* A packet queued to its device. Only a socket with no cached route
 * (unconnected) needs the note: the others, TCP's, say where they send. */
static __always_inline void note_dgram_out(const void *skb)
{
    const void *sk = read_ptr(skb, OFF_SKB_SK);
    if (!sk || read_ptr(sk, OFF_SK_DST_CACHE))
        return;
    void *dev = read_ptr(skb, OFF_SKB_DEV);
    if (dev)
        note_dgram(sk, read_u32(dev, OFF_DEV_IFINDEX), DIR_OUT, skb);
}

/* The interface of the datagram this task's call on sk moved, if noted
 * (and its peer, into *end if given). The note is taken: a later call that
 * noted nothing (a datagram whose copy bypassed the tracepoint) finds none
 * rather than this one. */
static __always_inline u32 dgram_ifindex(const void *sk, u16 dir, struct remote_end *end)
{
    u64 key = dgram_key(sk, dir);
    struct dgram_hint *hint = dgram_hints.lookup(&key);
    if (!hint || hint->dir != dir || (hint->sk && hint->sk != (u64)sk))
        return UNKNOWN_IFINDEX;
    u32 ifindex = hint->ifindex;
#ifdef NEED_DGRAM_REMOTE
    if (end)
        *end = hint->end;
#endif
    dgram_hints.delete(&key);
    return ifindex;
}
#endif

#if defined(NEED_DGRAM_IFINDEX) && defined(UDP_RX_HEAD)
/* Where no program runs inside a UDP recvmsg with its datagram (no
 * trampolines, no kprobes): a UDP socket's queue is first in, first out, so
 * the datagram a read returns is the one that was at the head of the queue
 * when it began. The head's device is noted whenever the head changes: as
 * a datagram arrives at an empty queue (sock:sk_data_ready, in softirq), and
 * by each read as it returns, for the next read. A datagram that arrives
 * while a read is taking the head notes the new head and keeps the old
 * note as `prev`, which that read then takes: exact, but for two reads of
 * one socket at once, or a freed datagram's memory reused by the next at
 * the head in between. */
struct udp_rx_head {
    u64 skb; /* the head the note is of */
    u32 ifindex;
    u32 pad;
    u64 prev_skb; /* the head before, while a read may still be taking it */
    u32 prev_ifindex;
    u32 pad2;
#ifdef NEED_DGRAM_REMOTE
    struct remote_end end; /* the peers of skb and of prev_skb */
    struct remote_end prev_end;
#endif
};
BPF_TABLE("lru_hash", u64, struct udp_rx_head, udp_rx_heads, MAX_UDP_HEADS);

/* The oldest datagram queued on a UDP socket: its reader queue's first, else
 * its receive queue's (the reader queue is refilled from it in one splice). */
static __always_inline const void *udp_queue_head(const void *sk)
{
#ifdef OFF_UDP_SOCK_READER_QUEUE
    const char *readers = (const char *)sk + OFF_UDP_SOCK_READER_QUEUE;
    const void *first = read_ptr(readers, OFF_SKB_HEAD_NEXT);
    if (first && first != readers)
        return first;
#endif
    const char *queue = (const char *)sk + OFF_SK_RECEIVE_QUEUE;
    const void *next = read_ptr(queue, OFF_SKB_HEAD_NEXT);
    return next && next != queue ? next : 0;
}

/* A datagram arrived: note the head if it is not noted yet. */
static __always_inline void udp_rx_arrived(const void *sk)
{
    const void *head = udp_queue_head(sk);
    if (!head)
        return; /* taken already by a reader on another CPU */
    u64 key = (u64)sk;
    struct udp_rx_head *note = udp_rx_heads.lookup(&key);
    if (!note) {
        struct udp_rx_head fresh = {};
        udp_rx_heads.update(&key, &fresh);
        note = udp_rx_heads.lookup(&key);
        if (!note)
            return;
    }
    if (note->skb == (u64)head)
        return;
    note->prev_skb = note->skb;
    note->prev_ifindex = note->ifindex;
    note->ifindex = read_u32(head, OFF_SKB_IIF);
    note->skb = (u64)head;
#ifdef NEED_DGRAM_REMOTE
    note->prev_end = note->end;
    struct remote_end end = {};
    skb_remote(head, DIR_IN, &end);
    note->end = end;
#endif
}

/* A read returned a datagram: the device of the head it took (and its peer,
 * into *end), and the next noted. */
static __always_inline u32 udp_rx_taken(const void *sk, struct remote_end *end)
{
    u64 key = (u64)sk;
    struct udp_rx_head *note = udp_rx_heads.lookup(&key);
    if (!note)
        return UNKNOWN_IFINDEX;
    const void *head = udp_queue_head(sk);
    u32 ifindex = UNKNOWN_IFINDEX;
    if (note->skb && note->skb != (u64)head) {
        ifindex = note->ifindex;
#ifdef NEED_DGRAM_REMOTE
        *end = note->end;
#endif
    } else if (note->prev_skb && note->prev_skb != (u64)head) {
        ifindex = note->prev_ifindex;
#ifdef NEED_DGRAM_REMOTE
        *end = note->prev_end;
#endif
    }
    note->prev_skb = 0;
    note->prev_ifindex = 0;
    note->skb = (u64)head;
    note->ifindex = head ? read_u32(head, OFF_SKB_IIF) : UNKNOWN_IFINDEX;
#ifdef NEED_DGRAM_REMOTE
    struct remote_end next = {};
    if (head)
        skb_remote(head, DIR_IN, &next);
    note->end = next;
#endif
    return ifindex;
}
#endif

/* The device of a cached route: where a connected socket's packets leave. */
static __always_inline u32 dev_ifindex_of(int how, void *dst)
{
    if (!dst)
        return UNKNOWN_IFINDEX;
    void *dev = load_ptr(how, dst, OFF_DST_DEV);
    if (!dev)
        return UNKNOWN_IFINDEX;
    return load_u32(how, dev, OFF_DEV_IFINDEX);
}

/* What a call needs of its socket, besides the family. */
struct call_sock {
    u16 type;
    u16 protocol;
    void *dst;
};

/* sk_type, sk_protocol and the cached route: through the helper in one
 * kernel read where BTF puts them within 16 bytes of each other (each
 * helper call costs more than the read itself). */
#define CALL_SOCK_FIRST (OFF_SK_TYPE < OFF_SK_PROTOCOL ? OFF_SK_TYPE : OFF_SK_PROTOCOL)
#define CALL_SOCK_LAST (OFF_SK_TYPE > OFF_SK_PROTOCOL ? OFF_SK_TYPE : OFF_SK_PROTOCOL)

static __always_inline struct call_sock read_call_sock(int how, const void *sk)
{
    struct call_sock out = {};
#if OFF_SK_DST_CACHE >= CALL_SOCK_FIRST && OFF_SK_DST_CACHE + 8 - CALL_SOCK_FIRST <= 16 && \
    CALL_SOCK_LAST + 2 - CALL_SOCK_FIRST <= 16
    if (how == READ_PROBE) {
        u8 window[16] = {};
        bpf_probe_read_kernel(window, sizeof(window), (const char *)sk + CALL_SOCK_FIRST);
        __builtin_memcpy(&out.type, window + (OFF_SK_TYPE - CALL_SOCK_FIRST), 2);
        __builtin_memcpy(&out.protocol, window + (OFF_SK_PROTOCOL - CALL_SOCK_FIRST), 2);
        __builtin_memcpy(&out.dst, window + (OFF_SK_DST_CACHE - CALL_SOCK_FIRST), 8);
        return out;
    }
#endif
    out.type = load_u16(how, sk, OFF_SK_TYPE);
    out.protocol = load_u16(how, sk, OFF_SK_PROTOCOL);
    out.dst = load_ptr(how, sk, OFF_SK_DST_CACHE);
    return out;
}

/* The interface a packet socket is bound to (0: every interface). */
static __always_inline u32 packet_bound_ifindex(const void *sk)
{
#ifdef OFF_PACKET_SOCK_IFINDEX
    return read_u32(sk, OFF_PACKET_SOCK_IFINDEX); /* a packet_sock begins with its sock */
#else
    return UNKNOWN_IFINDEX; /* AF_PACKET is a module whose types BTF does not hold */
#endif
}

/* The interface of a call's bytes on sk of class cls, so far as it is
 * known; and, where a datagram's note tells it, the datagram's peer into
 * *end (when given: the remote filters of an unconnected socket). */
static __always_inline u32 call_ifindex(int how, const void *sk, int cls, u16 dir, void *dst,
                                        struct remote_end *end)
{
    u32 ifindex = UNKNOWN_IFINDEX;
    if (cls == PC_PACKET) {
#ifdef NEED_DGRAM_IFINDEX
        if (dir == DIR_IN)
            ifindex = dgram_ifindex(sk, DIR_IN, 0);
#endif
        return ifindex ? ifindex : packet_bound_ifindex(sk);
    }
    if (cls == PC_MPTCP) {
        /* The connection moves its bytes over its subflows: the first's
         * interface (a connection over several interfaces has several). */
#ifdef OFF_MPTCP_SOCK_FIRST
        const void *first = read_ptr(sk, OFF_MPTCP_SOCK_FIRST);
        if (!first)
            return UNKNOWN_IFINDEX;
        if (dir == DIR_OUT)
            return dev_ifindex_of(READ_PROBE, read_ptr(first, OFF_SK_DST_CACHE));
        ifindex = read_u32(first, OFF_SK_RX_DST_IFINDEX);
        return ifindex ? ifindex : dev_ifindex_of(READ_PROBE, read_ptr(first, OFF_SK_DST_CACHE));
#else
        return UNKNOWN_IFINDEX;
#endif
    }
    if (dir == DIR_IN && cls == PC_TCP) {
        ifindex = load_u32(how, sk, OFF_SK_RX_DST_IFINDEX);
        return ifindex ? ifindex : dev_ifindex_of(how, dst);
    }
    /* Sending on a connected socket: its route; else the datagram's. */
    if (dir == DIR_OUT && dst)
        return dev_ifindex_of(how, dst);
#ifdef NEED_DGRAM_IFINDEX
#ifdef UDP_RX_HEAD
    u32 arrived = UNKNOWN_IFINDEX;
    struct remote_end arrived_end = {};
    if (dir == DIR_IN && (cls == PC_UDP || cls == PC_UDPLITE))
        arrived = udp_rx_taken(sk, &arrived_end); /* always: it notes the next head */
#endif
    ifindex = dgram_ifindex(sk, dir, end);
#ifdef UDP_RX_HEAD
    if (!ifindex) {
        ifindex = arrived;
        if (end)
            *end = arrived_end;
    }
#endif
#endif
    return ifindex;
}

#endif /* PROCNETMON_CALLS_H */
