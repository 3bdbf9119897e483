/*
 * Where the socket-call hooks attach: one section per probe backend, chosen
 * with -DHOOKS_TRACEPOINT, -DHOOKS_FENTRY or -DHOOKS_KPROBE. A backend only
 * says where it attaches and how it reads its arguments; every hook ends in
 * the including program's
 *
 *   static int on_socket_call(const void *sk, long ret, int flags, u16 dir, int how);
 *
 * called once per socket call, in the calling task's context, after the call
 * returned `ret` (bytes moved, or -errno) with recv `flags` (MSG_PEEK);
 * `how` says how the hook's program may read kernel memory (common.h).
 *
 * Every way a process moves bytes through a network socket ends in one of
 * these hook points, and in exactly one of them:
 * - read/write, send/recv and their msg/mmsg forms, io_uring's send, recv,
 *   read and write: sock_sendmsg()/sock_recvmsg(), whose protocol calls are
 *   inet_sendmsg/inet6_sendmsg and inet_recvmsg/inet6_recvmsg for every
 *   inet socket (TCP, UDP, UDP-Lite, ping, raw, SCTP, MPTCP) and
 *   packet_sendmsg/packet_recvmsg for AF_PACKET (the
 *   sock_send_length/sock_recv_length tracepoints fire right after them,
 *   for every family: the including program leaves local IPC out);
 * - sendfile and splice into a socket: since Linux 6.5 through sendmsg as
 *   well; before, through ->sendpage (inet_sendpage, -DHAVE_INET_SENDPAGE);
 *   a UDPv6 socket has none and falls back to sendmsg;
 * - splice out of a UDP socket reads through recvmsg; out of a TCP socket
 *   it does not: tcp_splice_read() takes the data straight from the receive
 *   queue, so it gets its own hook.
 *
 * With NEED_DGRAM_IFINDEX, two tracepoints inside the calls note each
 * datagram's device for calls.h (skb:skb_copy_datagram_iovec: received;
 * net:net_dev_queue: sent).
 *
 * Options (-D): HOOKS_*; TYPED_TRACEPOINTS (tracepoint
 * backend: the socket-call programs are BTF-typed, tp_btf, and read with
 * plain loads; procnetmon/probes/loader.py loads and attaches their
 * pnm_typed_<name>); HAVE_<FUNCTION> for each optional kernel function the
 * kernel has (INET6_SENDMSG, INET6_RECVMSG, INET_SENDPAGE, PACKET_SENDMSG,
 * PACKET_RECVMSG); OFF_REGS_* (kprobes: where pt_regs keeps the arguments
 * and the return value).
 */

#ifndef PROCNETMON_HOOKS_H
#define PROCNETMON_HOOKS_H

static __always_inline const void *socket_sk(const void *sock)
{
    return sock ? read_ptr(sock, OFF_SOCKET_SK) : 0;
}

/* ------------------------------------------------------------------------ */
/* Each datagram's device, noted inside the call (calls.h), on every backend:
 * these tracepoints are as old as the oldest kernel procnetmon runs on. */
#ifdef NEED_DGRAM_IFINDEX

/* args: const struct sk_buff *skb, int len. Fires in the reading task as a
 * recvmsg copies a datagram out (UDP, ping, raw, packet; TCP too, which
 * does not need it). A datagram whose checksum is verified as it is copied
 * does not pass here: its interface stays unknown. */
RAW_TRACEPOINT_PROBE(skb_copy_datagram_iovec)
{
    const void *skb = (const void *)ctx->args[0];
    /* A stream socket's segments (TCP's, many per read) say nothing it needs:
     * one read of the owner spares them the note. */
    const void *sk = read_ptr(skb, OFF_SKB_SK);
    if (sk && read_u16(sk, OFF_SK_TYPE) == SOCK_STREAM)
        return 0;
    note_dgram_in(skb);
    return 0;
}

/* A UDP datagram's device, which no tracepoint sees in the call (a linear
 * datagram is copied out without skb_copy_datagram_iovec): from an entry
 * program on skb_consume_udp, which runs inside the recvmsg with the
 * datagram it returns, by trampoline (-DUDP_RX_FENTRY) or by kprobe
 * (-DUDP_RX_KPROBE); where the kernel offers neither, from the datagram's
 * arrival and each read (-DUDP_RX_HEAD, calls.h). */
#if defined(UDP_RX_FENTRY)
KFUNC_PROBE(skb_consume_udp, void *sk, void *skb, int len)
{
    note_dgram_in(skb);
    return 0;
}
#elif defined(UDP_RX_KPROBE)
struct pt_regs;

/* skb_consume_udp (sk, skb, len); attached by procnetmon/probes/loader.py */
int pnm_udp_datagram(struct pt_regs *ctx)
{
    const void *skb = 0;
    bpf_probe_read_kernel(&skb, sizeof(skb), (const char *)ctx + OFF_REGS_PARM2);
    note_dgram_in(skb);
    return 0;
}
#elif defined(UDP_RX_HEAD)
/* args: struct sock *sk. Runs in softirq right after a datagram is queued. */
RAW_TRACEPOINT_PROBE(sk_data_ready)
{
    const void *sk = (const void *)ctx->args[0];
    u16 protocol = read_u16(sk, OFF_SK_PROTOCOL);
    if (protocol == IPPROTO_UDP || protocol == IPPROTO_UDPLITE)
        udp_rx_arrived(sk);
    return 0;
}
#endif

/* args: struct sk_buff *skb. Fires as a packet is queued to its device,
 * which for a datagram sent by a socket call is inside that call, in the
 * sending task (unless the neighbour was not resolved yet: then the packet
 * waits, and leaves later from softirq). */
#ifdef DGRAM_INET
RAW_TRACEPOINT_PROBE(net_dev_queue)
{
    note_dgram_out((const void *)ctx->args[0]);
    return 0;
}
#endif
#endif

/* ------------------------------------------------------------------------ */
#if defined(HOOKS_TRACEPOINT)

#ifdef TYPED_TRACEPOINTS
#define SOCKET_TRACEPOINT(name) int pnm_typed_##name(u64 *ctx)
#define TP_ARG(i) (ctx[i])
#define TP_READ READ_TYPED
#else
#define SOCKET_TRACEPOINT(name) RAW_TRACEPOINT_PROBE(name)
#define TP_ARG(i) (ctx->args[i])
#define TP_READ READ_PROBE
#endif

/* args: struct sock *sk, int ret, int flags */
SOCKET_TRACEPOINT(sock_send_length)
{
    return on_socket_call((const void *)TP_ARG(0), (int)TP_ARG(1), 0, DIR_OUT, TP_READ);
}

SOCKET_TRACEPOINT(sock_recv_length)
{
    return on_socket_call((const void *)TP_ARG(0), (int)TP_ARG(1), (int)TP_ARG(2), DIR_IN, TP_READ);
}

/* splice(2) out of a TCP socket: the TCP socket behind fd_in, noted at
 * entry, counted with the syscall's result. Kernel threads and io_uring's
 * splice do not pass here. */
/* Per task; LRU, since a task killed inside splice never reaches the exit. */
BPF_TABLE("lru_hash", u64, u64, splicing, MAX_PIDS);

TRACEPOINT_PROBE(syscalls, sys_enter_splice)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!is_target(tgid))
        return 0;
    const void *sk = tcp_socket_of_fd(args->fd_in); /* UDP data spliced out is read through recvmsg */
    if (!sk)
        return 0;
    u64 task = bpf_get_current_pid_tgid();
    u64 where = (u64)sk;
    splicing.update(&task, &where);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_splice)
{
    u64 task = bpf_get_current_pid_tgid();
    u64 *sk = splicing.lookup(&task);
    if (!sk)
        return 0;
    const void *where = (const void *)*sk;
    splicing.delete(&task);
    return on_socket_call(where, args->ret, 0, DIR_IN, READ_PROBE);
}


/* ------------------------------------------------------------------------ */
#elif defined(HOOKS_FENTRY)

/* fexit sees the arguments and the return value together. */
KRETFUNC_PROBE(inet_sendmsg, void *sock, void *msg, size_t size, int ret)
{
    return on_socket_call(socket_sk(sock), ret, 0, DIR_OUT, READ_PROBE);
}

KRETFUNC_PROBE(inet_recvmsg, void *sock, void *msg, size_t size, int flags, int ret)
{
    return on_socket_call(socket_sk(sock), ret, flags, DIR_IN, READ_PROBE);
}

#ifdef HAVE_INET6_SENDMSG
KRETFUNC_PROBE(inet6_sendmsg, void *sock, void *msg, size_t size, int ret)
{
    return on_socket_call(socket_sk(sock), ret, 0, DIR_OUT, READ_PROBE);
}
#endif

#ifdef HAVE_INET6_RECVMSG
KRETFUNC_PROBE(inet6_recvmsg, void *sock, void *msg, size_t size, int flags, int ret)
{
    return on_socket_call(socket_sk(sock), ret, flags, DIR_IN, READ_PROBE);
}
#endif

#ifdef HAVE_INET_SENDPAGE
KRETFUNC_PROBE(inet_sendpage, void *sock, void *page, int offset, size_t size, int flags, long ret)
{
    return on_socket_call(socket_sk(sock), ret, 0, DIR_OUT, READ_PROBE);
}
#endif

/* IPv6 raw and ping sockets (inet6_sockraw_ops) receive through it. */
#ifdef HAVE_SOCK_COMMON_RECVMSG
KRETFUNC_PROBE(sock_common_recvmsg, void *sock, void *msg, size_t size, int flags, int ret)
{
    return on_socket_call(socket_sk(sock), ret, flags, DIR_IN, READ_PROBE);
}
#endif

#ifdef HAVE_PACKET_SENDMSG
KRETFUNC_PROBE(packet_sendmsg, void *sock, void *msg, size_t len, int ret)
{
    return on_socket_call(socket_sk(sock), ret, 0, DIR_OUT, READ_PROBE);
}
#endif

#ifdef HAVE_PACKET_RECVMSG
KRETFUNC_PROBE(packet_recvmsg, void *sock, void *msg, size_t len, int flags, int ret)
{
    return on_socket_call(socket_sk(sock), ret, flags, DIR_IN, READ_PROBE);
}
#endif

KRETFUNC_PROBE(tcp_splice_read, void *sock, void *ppos, void *pipe, size_t len, unsigned int flags, long ret)
{
    return on_socket_call(socket_sk(sock), ret, 0, DIR_IN, READ_PROBE);
}


/* ------------------------------------------------------------------------ */
#elif defined(HOOKS_KPROBE)

struct pt_regs;

static __always_inline u64 reg(struct pt_regs *ctx, long off)
{
    u64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (const char *)ctx + off);
    return v;
}

/* A kretprobe sees only the return value: the entry probe keeps the socket,
 * the flags and the direction per task until the call returns. User space
 * attaches these to the functions (procnetmon/probes/loader.py). */
struct call_args {
    u64 sk;
    u32 flags;
    u16 dir;
    u16 pad;
};

/* Per task; LRU, since a kretprobe that the kernel could not arm (all its
 * instances busy) leaves its entry behind. */
BPF_TABLE("lru_hash", u64, struct call_args, calls, MAX_SOCKETS);

static __always_inline int enter(struct pt_regs *ctx, u32 flags, u16 dir)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!is_target(tgid))
        return 0; /* the return probe then finds nothing: one lookup */
    u64 task = bpf_get_current_pid_tgid();
    struct call_args a = {.sk = (u64)socket_sk((const void *)reg(ctx, OFF_REGS_PARM1)), .flags = flags, .dir = dir};
    calls.update(&task, &a);
    return 0;
}

/* inet_sendmsg, inet6_sendmsg, packet_sendmsg (sock, msg, size); inet_sendpage (sock, page, ...) */
int pnm_enter_send(struct pt_regs *ctx)
{
    return enter(ctx, 0, DIR_OUT);
}

/* inet_recvmsg, inet6_recvmsg, sock_common_recvmsg, packet_recvmsg (sock, msg, size, flags) */
int pnm_enter_recv(struct pt_regs *ctx)
{
    return enter(ctx, (u32)reg(ctx, OFF_REGS_PARM4), DIR_IN);
}

/* tcp_splice_read (sock, ppos, pipe, len, flags) */
int pnm_enter_splice_read(struct pt_regs *ctx)
{
    return enter(ctx, 0, DIR_IN);
}

int pnm_return(struct pt_regs *ctx)
{
    u64 task = bpf_get_current_pid_tgid();
    struct call_args *a = calls.lookup(&task);
    if (!a)
        return 0;
    struct call_args call = *a;
    calls.delete(&task);
    /* Every hooked function returns an int, or a ssize_t within int range:
     * an int leaves the upper half of rax undefined, so only eax is read. */
    return on_socket_call((const void *)call.sk, (int)reg(ctx, OFF_REGS_RC), (int)call.flags, call.dir, READ_PROBE);
}

#else
#error "choose the probe backend: -DHOOKS_TRACEPOINT, -DHOOKS_FENTRY or -DHOOKS_KPROBE"
#endif

#endif /* PROCNETMON_HOOKS_H */