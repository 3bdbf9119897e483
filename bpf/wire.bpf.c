/*
 * procnetmon wire mode: the bytes of the IP packets of each process's sockets.
 *
 * Two cgroup_skb programs on the root of the cgroup v2 hierarchy see every
 * IP packet that a local inet socket (TCP, UDP, UDP-Lite, ICMP, raw, SCTP,
 * MPTCP's subflows) sends (egress, before GSO segmentation, as software
 * interface counters see it) or that is delivered to one (ingress, after
 * GRO), with its length from the IP header on and its interface. AF_PACKET
 * frames bypass IP and these programs: they are counted at their socket
 * calls, link-layer header included where the socket writes it (SOCK_RAW).
 *
 * A packet cannot tell which process it belongs to, and many are sent or
 * received in softirq, where "current" is unrelated. Its socket can. The
 * socket-call hooks (hooks.h), in process context, note each socket's owner
 * under the socket's cookie, a number the kernel never gives two sockets.
 * connect() (the TCP state change into SYN_SENT) runs in the owner's
 * context too, but before the socket has a cookie: it notes the owner
 * under the socket's address, and the socket's first packet moves it under
 * the cookie. The server side of a handshake passes through the listener
 * and is given to the accepted socket (see note_handshake). A packet of a socket whose owner is not known
 * yet (a connection accepted but not read from yet, a UDP socket before its
 * first call returns) is counted per cookie in `pending`, and user space
 * gives those bytes to the owner once it is known, even after the process
 * has exited: a socket's first packets are never lost for want of an owner.
 *
 * Options (-D): those of common.h; MAX_PENDING sizes `pending`;
 *   DETAILS   also keep bytes per socket (by cookie) with its addresses
 */

#include "common.h"

/* AF_PACKET frames pass no cgroup_skb program: they are counted at their
 * socket calls (calls.h), whose interface matters to the same filters. An
 * inet socket's packets say their own interface: no note of UDP's, nor of
 * sent datagrams', is needed here (calls.h DGRAM_INET). */
#if defined(FILTER_IFACES) || defined(EXCLUDE_LOOPBACK)
#define NEED_DGRAM_IFINDEX 1
#endif
#undef UDP_RX_FENTRY
#undef UDP_RX_KPROBE
#undef UDP_RX_HEAD

#include "calls.h"

#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_LISTEN 10
#define TCP_NEW_SYN_RECV 12

#ifndef MAX_PENDING
#define MAX_PENDING 16384
#endif

struct owner {
    u32 tgid;
    u32 netns;
    u64 ino; /* the socket's inode number: user space finds live sockets by it */
    u32 cls; /* the protocol class its packets count under (an MPTCP subflow's: mptcp) */
    u32 pad;
};

struct pending_key {
    u64 cookie;
    u32 ifindex;
    u16 protocol; /* the protocol class, PC_* */
    u16 dir;
};

/* Owners by socket cookie: unique per socket, so never stale. */
BPF_TABLE("lru_hash", u64, struct owner, owners, MAX_SOCKETS);
/* Owners of sockets with no cookie yet, by socket address (see above). */
BPF_TABLE("lru_hash", u64, struct owner, early_owners, MAX_PENDING);
BPF_TABLE("lru_hash", struct pending_key, u64, pending, MAX_PENDING);

#ifdef DETAILS
/* tgid stays 0 here: user space takes it from `owners`, since the owner
 * may be learnt after the packets. */
/* By interface too, so that user space filters bytes learnt before their
 * owner (and its namespace) the way it filters `pending`. */
struct socket_key {
    u64 cookie;
    u32 ifindex;
    u32 pad;
};
BPF_TABLE("lru_hash", struct socket_key, struct sock_info, sockets, MAX_SOCKETS);

static __always_inline void add_socket(struct bpf_sock *sk, u64 cookie, u32 ifindex, int cls, u16 dir,
                                       u64 bytes)
{
    struct socket_key key = {.cookie = cookie, .ifindex = ifindex};
    struct sock_info *info = sockets.lookup(&key);
    if (!info) {
        struct sock_info fresh = {.family = sk->family, .protocol = (u16)cls};
        sockets.insert(&key, &fresh);
        info = sockets.lookup(&key);
        if (!info) {
            note_lost();
            return;
        }
    }
    /* Re-read on every packet: a UDP socket may connect after its first. */
    info->lport = sk->src_port;
    info->rport = __builtin_bswap16(sk->dst_port);
    if (sk->family == AF_INET) {
        u32 src = sk->src_ip4, dst = sk->dst_ip4;
        __builtin_memcpy(info->laddr, &src, 4);
        __builtin_memcpy(info->raddr, &dst, 4);
    } else {
        u32 src[4] = {sk->src_ip6[0], sk->src_ip6[1], sk->src_ip6[2], sk->src_ip6[3]};
        u32 dst[4] = {sk->dst_ip6[0], sk->dst_ip6[1], sk->dst_ip6[2], sk->dst_ip6[3]};
        __builtin_memcpy(info->laddr, src, 16);
        __builtin_memcpy(info->raddr, dst, 16);
    }
    if (dir == DIR_IN)
        __sync_fetch_and_add(&info->bytes_in, bytes);
    else
        __sync_fetch_and_add(&info->bytes_out, bytes);
}
#endif

static __always_inline void keep_owner(const void *sk, u64 cookie, struct owner *owner)
{
    if (cookie) {
        owners.update(&cookie, owner);
    } else {
        u64 addr = (u64)sk;
        early_owners.update(&addr, owner);
    }
}

/* An MPTCP connection's packets are its subflows', TCP sockets that no
 * process calls on: the process that owns the connection owns its first
 * subflow (the one of connect() and of accept()). Subflows that the kernel
 * adds later (MP_JOIN) are owned by no one known. */
static __always_inline int is_mptcp_subflow(const void *sk)
{
#ifdef OFF_TCP_SOCK_IS_MPTCP
    u8 flag = 0;
    bpf_probe_read_kernel(&flag, sizeof(flag), (const char *)sk + OFF_TCP_SOCK_IS_MPTCP);
    return flag != 0;
#else
    return 0;
#endif
}

static __always_inline void note_first_subflow(const void *msk, struct owner *owner)
{
#ifdef OFF_MPTCP_SOCK_FIRST
    const void *first = read_ptr(msk, OFF_MPTCP_SOCK_FIRST);
    if (first)
        keep_owner(first, read_u64(first, OFF_SK_COOKIE), owner);
#endif
}

/* Process context only: the caller's thread group owns sk from now on.
 * Runs on every socket call, so the common case (owner already known) is
 * one kernel read and one lookup; the rest is read only to note a new one. */
static __always_inline void note_owner(const void *sk, int how)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!is_target(tgid))
        return;
    u64 cookie = load_u64(how, sk, OFF_SK_COOKIE);
    if (cookie) {
        struct owner *known = owners.lookup(&cookie);
        if (known && known->tgid == tgid)
            return;
    }
    u16 family = load_u16(how, sk, OFF_SK_FAMILY);
    if (family != AF_INET && family != AF_INET6)
        return;
    int cls = proto_class(family, load_u16(how, sk, OFF_SK_TYPE), load_u16(how, sk, OFF_SK_PROTOCOL));
    if (cls == PC_NONE)
        return;
    if (cls == PC_TCP && is_mptcp_subflow(sk))
        cls = PC_MPTCP; /* connect() on an MPTCP socket: its first subflow's SYN_SENT */
    struct owner fresh = {.tgid = tgid, .netns = netns_of(how, sk), .ino = socket_ino(sk), .cls = (u32)cls};
    keep_owner(sk, cookie, &fresh);
    if (cls == PC_MPTCP)
        note_first_subflow(sk, &fresh);
}

#define MSG_PEEK 2

/* An AF_PACKET socket's frames, at the call that moved them: what it wrote
 * or read is the whole frame (SOCK_RAW) or its payload (SOCK_DGRAM). */
static __always_inline void count_packet_call(const void *sk, long ret, int flags, u16 dir, int how)
{
    if (ret <= 0 || (dir == DIR_IN && (flags & MSG_PEEK)))
        return;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!is_target(tgid) || !((COUNT_CLASSES >> PC_PACKET) & 1))
        return;
#ifdef FILTER_ENDS
    return; /* no addresses: a filter on the ends leaves AF_PACKET out */
#endif
    u32 ifindex = call_ifindex(how, sk, PC_PACKET, dir, 0, 0);
#ifdef FILTER_IFACES
    if (!iface_ok(netns_of(how, sk), ifindex))
#else
    if (!iface_ok(0, ifindex))
#endif
        return;
    add(tgid, PC_PACKET, dir, (u64)ret);
}

/* Called by the backend's hooks (hooks.h) once per socket call. */
static __always_inline int on_socket_call(const void *sk, long ret, int flags, u16 dir, int how)
{
    if (!sk)
        return 0;
    if (load_u16(how, sk, OFF_SK_FAMILY) == AF_PACKET)
        count_packet_call(sk, ret, flags, dir, how);
    else
        note_owner(sk, how);
    return 0;
}

#include "hooks.h"

/* args: const struct sock *sk, int oldstate, int newstate */
RAW_TRACEPOINT_PROBE(inet_sock_set_state)
{
    const void *sk = (const void *)ctx->args[0];
    int newstate = (int)ctx->args[2];
    if (newstate == TCP_SYN_SENT || newstate == TCP_LISTEN) {
        note_owner(sk, READ_PROBE);
    } else if (newstate == TCP_SYN_RECV) {
        /* A child socket, made in softirq at an address that an earlier
         * socket may have left an early owner under. */
        u64 addr = (u64)sk;
        early_owners.delete(&addr);
    }
    return 0;
}

/* Bytes of a socket whose owner is not known yet: kept per cookie until it is. */
static __always_inline void hold_for_owner(struct bpf_sock *sk, u64 cookie, u32 ifindex, int cls,
                                           u16 dir, u64 bytes)
{
#ifndef FILTER_IFACES
    if (!iface_ok(0, ifindex))
        return;
#endif
#ifdef DETAILS
    add_socket(sk, cookie, ifindex, cls, dir, bytes); /* shown once the owner is known */
#endif
    struct pending_key pk = {.cookie = cookie, .ifindex = ifindex, .protocol = (u16)cls, .dir = dir};
    u64 *val = pending.lookup(&pk);
    if (!val) {
        u64 zero = 0;
        pending.insert(&pk, &zero);
        val = pending.lookup(&pk);
        if (!val) {
            note_lost();
            return;
        }
    }
    __sync_fetch_and_add(val, bytes);
}

/*
 * The server side of a TCP handshake (SYN in, SYN-ACK out, the final ACK in)
 * passes through the listener (or its request socket), which belongs to no
 * connection and whose owner nobody notes: listen() changes the state
 * without the inet_sock_set_state tracepoint. Its bytes wait here under the
 * connection's addresses until the socket accepted for that connection has
 * a packet of its own, which is always before its owner is known; they then
 * join that socket's, and so its owner's: the process that accepts it.
 * The addresses do not say which network namespace: two namespaces with the
 * same addresses and ports handshaking at the same moment could swap theirs.
 */
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD

struct handshake_key {
    u8 local[16]; /* IPv4 as ::ffff:a.b.c.d, as a dual-stack socket keeps it */
    u8 remote[16];
    u16 lport; /* host order */
    u16 rport;
    u32 pad;
};

struct handshake_bytes {
    u64 bytes_in;
    u64 bytes_out;
    u32 ifindex_in;
    u32 ifindex_out;
};

BPF_TABLE("lru_hash", struct handshake_key, struct handshake_bytes, handshakes, MAX_PENDING);

static __always_inline void mapped_v4(u8 *out, u32 addr)
{
    __builtin_memset(out, 0, 10);
    out[10] = 0xff;
    out[11] = 0xff;
    __builtin_memcpy(out + 12, &addr, 4);
}

/* The connection of a TCP packet, seen from this host; 0 if not TCP over IP. */
static __always_inline int packet_key(struct __sk_buff *skb, u16 dir, struct handshake_key *key)
{
    u8 ip[40] = {};
    u8 ports[4] = {};
    u8 *src, *dst;
    u8 src4[16], dst4[16];
    if (skb->protocol == bpf_htons(ETH_P_IP)) {
        if (bpf_skb_load_bytes(skb, 0, ip, 20) || ip[9] != IPPROTO_TCP)
            return 0;
        if (bpf_skb_load_bytes(skb, (ip[0] & 0xf) * 4, ports, 4))
            return 0;
        u32 saddr, daddr;
        __builtin_memcpy(&saddr, ip + 12, 4);
        __builtin_memcpy(&daddr, ip + 16, 4);
        mapped_v4(src4, saddr);
        mapped_v4(dst4, daddr);
        src = src4;
        dst = dst4;
    } else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
        /* A handshake carries no extension headers: TCP follows at once. */
        if (bpf_skb_load_bytes(skb, 0, ip, 40) || ip[6] != IPPROTO_TCP)
            return 0;
        if (bpf_skb_load_bytes(skb, 40, ports, 4))
            return 0;
        src = ip + 8;
        dst = ip + 24;
    } else {
        return 0;
    }
    u16 sport = ((u16)ports[0] << 8) | ports[1], dport = ((u16)ports[2] << 8) | ports[3];
    if (dir == DIR_IN) {
        __builtin_memcpy(key->local, dst, 16);
        __builtin_memcpy(key->remote, src, 16);
        key->lport = dport;
        key->rport = sport;
    } else {
        __builtin_memcpy(key->local, src, 16);
        __builtin_memcpy(key->remote, dst, 16);
        key->lport = sport;
        key->rport = dport;
    }
    return 1;
}

static __always_inline void note_handshake(struct __sk_buff *skb, u16 dir)
{
    struct handshake_key key = {};
    if (!packet_key(skb, dir, &key))
        return;
    struct handshake_bytes *hs = handshakes.lookup(&key);
    if (!hs) {
        struct handshake_bytes zero = {};
        handshakes.insert(&key, &zero);
        hs = handshakes.lookup(&key);
        if (!hs) {
            note_lost();
            return;
        }
    }
    if (dir == DIR_IN) {
        hs->ifindex_in = skb->ifindex;
        __sync_fetch_and_add(&hs->bytes_in, (u64)skb->len);
    } else {
        hs->ifindex_out = skb->ifindex;
        __sync_fetch_and_add(&hs->bytes_out, (u64)skb->len);
    }
}

/* The handshake of an accepted TCP socket joins its bytes, if one was seen. */
static __always_inline void claim_handshake(struct bpf_sock *sk, u64 cookie)
{
    struct handshake_key key = {.lport = (u16)sk->src_port, .rport = __builtin_bswap16(sk->dst_port)};
    if (sk->family == AF_INET) {
        mapped_v4(key.local, sk->src_ip4);
        mapped_v4(key.remote, sk->dst_ip4);
    } else {
        u32 src[4] = {sk->src_ip6[0], sk->src_ip6[1], sk->src_ip6[2], sk->src_ip6[3]};
        u32 dst[4] = {sk->dst_ip6[0], sk->dst_ip6[1], sk->dst_ip6[2], sk->dst_ip6[3]};
        __builtin_memcpy(key.local, src, 16);
        __builtin_memcpy(key.remote, dst, 16);
    }
    struct handshake_bytes *hs = handshakes.lookup(&key);
    if (!hs)
        return;
    struct handshake_bytes seen = *hs;
    handshakes.delete(&key);
    if (seen.bytes_in)
        hold_for_owner(sk, cookie, seen.ifindex_in, PC_TCP, DIR_IN, seen.bytes_in);
    if (seen.bytes_out)
        hold_for_owner(sk, cookie, seen.ifindex_out, PC_TCP, DIR_OUT, seen.bytes_out);
}

#ifdef FILTER_ENDS
/* Whether the remote filters (remote.h) count this packet, by its own
 * headers: exact per packet, for unconnected sockets too. */
static __always_inline int packet_ends_ok(struct __sk_buff *skb, u16 dir)
{
    u8 ip[40] = {};
    u8 proto;
    u32 l4;
    struct remote_end end = {.known = 1};
    if (skb->protocol == bpf_htons(ETH_P_IP)) {
        if (bpf_skb_load_bytes(skb, 0, ip, 20))
            return 0;
        u32 a;
        __builtin_memcpy(&a, ip + (dir == DIR_IN ? 12 : 16), 4);
        mapped_v4_addr(end.addr, a);
        proto = ip[9];
        l4 = (ip[0] & 0xf) * 4; /* cgroup_skb sees packets whole: before fragmenting, after reassembly */
    } else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
        if (bpf_skb_load_bytes(skb, 0, ip, 40))
            return 0;
        __builtin_memcpy(end.addr, ip + (dir == DIR_IN ? 8 : 24), 16);
        proto = ip[6]; /* ports only where the transport header follows at once */
        l4 = 40;
    } else {
        return 0;
    }
    u16 lport = 0;
    int has_ports = proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_UDPLITE ||
                    proto == IPPROTO_SCTP;
    if (has_ports) {
        u8 ports[4] = {};
        if (bpf_skb_load_bytes(skb, l4, ports, 4))
            return 0;
        u16 sport = ((u16)ports[0] << 8) | ports[1], dport = ((u16)ports[2] << 8) | ports[3];
        end.port = dir == DIR_IN ? sport : dport;
        lport = dir == DIR_IN ? dport : sport;
    }
    return ends_ok(&end, lport, has_ports);
}
#endif

static __always_inline void count_packet(struct __sk_buff *skb, u16 dir)
{
    struct bpf_sock *sk = skb->sk;
    if (!sk)
        return;
#ifdef FILTER_ENDS
    if (!packet_ends_ok(skb, dir))
        return;
#endif
    if (sk->state == TCP_LISTEN || sk->state == TCP_NEW_SYN_RECV) {
        note_handshake(skb, dir);
        return;
    }
    sk = bpf_sk_fullsock(sk);
    if (!sk)
        return;
    if (sk->family != AF_INET && sk->family != AF_INET6)
        return;
    int cls = proto_class(sk->family, sk->type, sk->protocol);
    if (cls == PC_NONE)
        return;
    u32 ifindex = skb->ifindex;
    u64 bytes = skb->len;
    u64 cookie = bpf_get_socket_cookie(skb); /* made on first use */
    struct owner *owner = owners.lookup(&cookie);
    if (!owner) {
        /* The address as a number: the key connect() used. */
        u64 addr = (u64)sk;
        struct owner *early = early_owners.lookup(&addr);
        if (early) {
            struct owner moved = *early;
            owners.update(&cookie, &moved);
            early_owners.delete(&addr);
            owner = owners.lookup(&cookie);
        }
    }
    if (owner) {
        if (iface_ok(owner->netns, ifindex)) {
            add(owner->tgid, (int)owner->cls, dir, bytes);
#ifdef DETAILS
            add_socket(sk, cookie, ifindex, cls, dir, bytes);
#endif
        }
        return;
    }
    if (cls == PC_TCP)
        claim_handshake(sk, cookie);
    hold_for_owner(sk, cookie, ifindex, cls, dir, bytes);
}

/* Both return 1: procnetmon only counts, it never drops a packet. */
int wire_egress(struct __sk_buff *skb)
{
    count_packet(skb, DIR_OUT);
    return 1;
}

int wire_ingress(struct __sk_buff *skb)
{
    count_packet(skb, DIR_IN);
    return 1;
}
