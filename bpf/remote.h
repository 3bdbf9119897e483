/*
 * Filters on the ends of a socket's traffic: the remote address (CIDRs, v4
 * and v6), the remote port and the local port (--remote, --remote-port,
 * --local-port and their --exclude- forms). Included by common.h; the
 * programs call ends_ok() where they know the ends: payload mode from the
 * socket (connected) or the datagram's note (calls.h, unconnected), wire
 * mode from each packet's own headers.
 *
 * User space (procnetmon/endpoints.py) folds includes and excludes into one
 * answer per lookup, so a socket or packet costs one lookup per kind:
 *   remote_cidrs  an LPM trie keyed by 128-bit addresses (IPv4 as
 *                 ::ffff:a.b.c.d, its prefix length + 96); the longest match's
 *                 value says include or exclude (an include inside an
 *                 exclude is not put in: the exclude covers it). No match:
 *                 counted only if no --remote was given (REMOTE_INCLUDES).
 *   rport_bits,   bitmaps of the 65536 ports, 64 a word: bit set = counted.
 *   lport_bits
 *
 * Options (-D): FILTER_REMOTE (with REMOTE_INCLUDES when --remote was
 * given), FILTER_RPORT, FILTER_LPORT, MAX_REMOTE_CIDRS. With none, nothing
 * here is compiled and the programs are as they were.
 */

#ifndef PROCNETMON_REMOTE_H
#define PROCNETMON_REMOTE_H

#if defined(FILTER_REMOTE) || defined(FILTER_RPORT) || defined(FILTER_LPORT)
#define FILTER_ENDS 1
#endif
/* What only a datagram can tell of an unconnected socket: its peer. */
#if defined(FILTER_REMOTE) || defined(FILTER_RPORT)
#define NEED_DGRAM_REMOTE 1
#endif

#ifndef MAX_REMOTE_CIDRS
#define MAX_REMOTE_CIDRS 1024
#endif

#define REMOTE_INCLUDE 1
#define REMOTE_EXCLUDE 2

/* The far end of some traffic, as far as it is known. */
struct remote_end {
    u8 addr[16]; /* IPv4 as ::ffff:a.b.c.d */
    u16 port; /* host order; 0 where the protocol has none */
    u8 known; /* addr (and port) were read */
    u8 pad;
};

#ifdef FILTER_REMOTE
struct remote_key {
    u32 prefixlen;
    u8 addr[16];
};
BPF_LPM_TRIE(remote_cidrs, struct remote_key, u8, MAX_REMOTE_CIDRS);
#endif
#ifdef FILTER_RPORT
BPF_ARRAY(rport_bits, u64, 1024);
#endif
#ifdef FILTER_LPORT
BPF_ARRAY(lport_bits, u64, 1024);
#endif

#ifdef FILTER_ENDS
static __always_inline void mapped_v4_addr(u8 *out, u32 addr)
{
    __builtin_memset(out, 0, 10);
    out[10] = 0xff;
    out[11] = 0xff;
    __builtin_memcpy(out + 12, &addr, 4);
}

/* Whether a protocol class has ports the port filters can match. */
static __always_inline int class_has_ports(int cls)
{
    return cls == PC_TCP || cls == PC_UDP || cls == PC_UDPLITE || cls == PC_SCTP || cls == PC_MPTCP;
}

/* One lookup a port: its word of the bitmap (BCC rewrites map calls only
 * outside macros, hence one function per map). */
#ifdef FILTER_RPORT
static __always_inline int rport_counted(u16 port)
{
    u32 word = port >> 6;
    u64 *bits = rport_bits.lookup(&word);
    return bits && ((*bits >> (port & 63)) & 1);
}
#endif
#ifdef FILTER_LPORT
static __always_inline int lport_counted(u16 port)
{
    u32 word = port >> 6;
    u64 *bits = lport_bits.lookup(&word);
    return bits && ((*bits >> (port & 63)) & 1);
}
#endif

/* The one rule: whether traffic with this remote end and local port is
 * counted. A remote end not known leaves the traffic out of a remote or
 * remote-port filter; a port filter leaves out protocols without ports. */
static __always_inline int ends_ok(const struct remote_end *remote, u16 lport, int has_ports)
{
#ifdef FILTER_REMOTE
    if (!remote->known)
        return 0;
    struct remote_key k = {.prefixlen = 128};
    __builtin_memcpy(k.addr, remote->addr, 16);
    u8 *v = remote_cidrs.lookup(&k);
#ifdef REMOTE_INCLUDES
    if (!v || *v != REMOTE_INCLUDE)
        return 0;
#else
    if (v && *v != REMOTE_INCLUDE)
        return 0;
#endif
#endif
#ifdef FILTER_RPORT
    if (!remote->known || !has_ports || !rport_counted(remote->port))
        return 0;
#endif
#ifdef FILTER_LPORT
    if (!has_ports || !lport_counted(lport))
        return 0;
#endif
    return 1;
}
#endif

#ifdef NEED_DGRAM_REMOTE
#define SKB_HEADER_UNSET 0xffff

/* sk_buff's head and its two header offsets, in one kernel read where BTF
 * puts them close together (each helper call costs more than the read). */
#define SKB_MIN2(a, b) ((a) < (b) ? (a) : (b))
#define SKB_MAX2(a, b) ((a) > (b) ? (a) : (b))
#define SKB_HDR_FIRST SKB_MIN2(OFF_SKB_HEAD, SKB_MIN2(OFF_SKB_NETWORK_HEADER, OFF_SKB_TRANSPORT_HEADER))
#define SKB_HDR_END SKB_MAX2(OFF_SKB_HEAD + 8, SKB_MAX2(OFF_SKB_NETWORK_HEADER + 2, OFF_SKB_TRANSPORT_HEADER + 2))

struct skb_headers {
    const u8 *head;
    u16 network;
    u16 transport;
};

static __always_inline struct skb_headers read_skb_headers(const void *skb)
{
    struct skb_headers out = {};
#if SKB_HDR_END - SKB_HDR_FIRST <= 32
    u8 window[SKB_HDR_END - SKB_HDR_FIRST] = {};
    bpf_probe_read_kernel(window, sizeof(window), (const char *)skb + SKB_HDR_FIRST);
    __builtin_memcpy(&out.head, window + (OFF_SKB_HEAD - SKB_HDR_FIRST), 8);
    __builtin_memcpy(&out.network, window + (OFF_SKB_NETWORK_HEADER - SKB_HDR_FIRST), 2);
    __builtin_memcpy(&out.transport, window + (OFF_SKB_TRANSPORT_HEADER - SKB_HDR_FIRST), 2);
#else
    out.head = read_ptr(skb, OFF_SKB_HEAD);
    out.network = read_u16(skb, OFF_SKB_NETWORK_HEADER);
    out.transport = read_u16(skb, OFF_SKB_TRANSPORT_HEADER);
#endif
    return out;
}

/* The peer of a datagram skb (tracing programs): its source when received,
 * its destination when sent, from the IP and transport headers, read at
 * once where the transport header follows the IP header directly (IPv4
 * without options, IPv6 without extension headers), else in a second read. */
static __always_inline void skb_remote(const void *skb, u16 dir, struct remote_end *out)
{
    struct skb_headers h = read_skb_headers(skb);
    if (!h.head || h.network == SKB_HEADER_UNSET)
        return;
    u8 ip[44] = {};
    if (bpf_probe_read_kernel(ip, sizeof(ip), h.head + h.network))
        return;
    u8 proto;
    u16 gap = h.transport - h.network; /* where the ports are, past the IP header */
    if ((ip[0] >> 4) == 4) {
        u32 a;
        __builtin_memcpy(&a, ip + (dir == DIR_IN ? 12 : 16), 4);
        mapped_v4_addr(out->addr, a);
        proto = ip[9];
    } else if ((ip[0] >> 4) == 6) {
        __builtin_memcpy(out->addr, ip + (dir == DIR_IN ? 8 : 24), 16);
        proto = ip[6]; /* extension headers: the transport header still says where */
    } else {
        return;
    }
    out->known = 1;
    out->port = 0;
    if ((proto != IPPROTO_UDP && proto != IPPROTO_UDPLITE && proto != IPPROTO_TCP) ||
        h.transport == SKB_HEADER_UNSET)
        return;
    u8 ports[4] = {};
    if (gap == 20)
        __builtin_memcpy(ports, ip + 20, 4);
    else if (gap == 40)
        __builtin_memcpy(ports, ip + 40, 4);
    else if (bpf_probe_read_kernel(ports, 4, h.head + h.transport))
        return;
    const u8 *p = ports + (dir == DIR_IN ? 0 : 2);
    out->port = ((u16)p[0] << 8) | p[1];
}
#endif

#endif /* PROCNETMON_REMOTE_H */
