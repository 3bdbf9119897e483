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
 * Every way a process moves bytes through a TCP or UDP socket ends in one of
 * these hook points, and in exactly one of them:
 * - read/write, send/recv and their msg/mmsg forms, io_uring's send, recv,
 *   read and write: sock_sendmsg()/sock_recvmsg(), whose protocol calls are
 *   inet_sendmsg/inet6_sendmsg and inet_recvmsg/inet6_recvmsg (the
 *   sock_send_length/sock_recv_length tracepoints fire right after them);
 * - sendfile and splice into a socket: since Linux 6.5 through sendmsg as
 *   well; before, through ->sendpage (inet_sendpage, -DHAVE_INET_SENDPAGE);
 *   a UDPv6 socket has none and falls back to sendmsg;
 * - splice out of a UDP socket reads through recvmsg; out of a TCP socket
 *   it does not: tcp_splice_read() takes the data straight from the receive
 *   queue, so it gets its own hook.
 *
 * A backend may also tell the interface a UDP datagram arrived on (the
 * socket does not remember it): udp_rx_hint(how, sk), used when a filter needs
 * it (NEED_UDP_RX_IFINDEX).
 *
 * Options (-D): HOOKS_*; TYPED_TRACEPOINTS (tracepoint backend: the
 * socket-call programs are BTF-typed, tp_btf, and read with plain loads;
 * procnetmon/probes/loader.py loads and attaches their pnm_typed_<name>);
 * UDP_RX_FENTRY (tracepoint backend, typed, where trampolines attach: a
 * UDP datagram's interface from fentry on skb_consume_udp, not sk_data_ready);
 * HAVE_<FUNCTION> for each optional kernel function
 * the kernel has (INET6_SENDMSG, INET6_RECVMSG, INET_SENDPAGE,
 * SKB_CONSUME_UDP); OFF_REGS_* (kprobe backend: where pt_regs keeps the
 * arguments and the return value).
 */

#ifndef PROCNETMON_HOOKS_H
#define PROCNETMON_HOOKS_H

static __always_inline const void *socket_sk(const void *sock)
{
    return sock ? read_ptr(sock, OFF_SOCKET_SK) : 0;
}

#if defined(HOOKS_FENTRY) || defined(HOOKS_KPROBE)
#ifdef NEED_UDP_RX_IFINDEX
/* skb_consume_udp() runs inside the UDP recvmsg, in the same task, with the
 * datagram the call returns: its ingress device is the call's interface. */
BPF_TABLE("lru_hash", u64, u32, udp_rx_by_task, MAX_PIDS);

static __always_inline void note_udp_datagram(const void *skb)
{
    u64 task = bpf_get_current_pid_tgid();
    if (!is_target(task >> 32))
        return;
    u32 ifindex = read_u32(skb, OFF_SKB_IIF);
    udp_rx_by_task.update(&task, &ifindex);
}

static __always_inline u32 udp_rx_hint(int how, const void *sk)
{
    u64 task = bpf_get_current_pid_tgid();
    u32 *ifindex = udp_rx_by_task.lookup(&task);
    if (!ifindex)
        return UNKNOWN_IFINDEX;
    u32 found = *ifindex;
    udp_rx_by_task.delete(&task);
    return found;
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
#define S_IFMT 00170000
#define S_IFSOCK 0140000

/* Per task; LRU, since a task killed inside splice never reaches the exit. */
BPF_TABLE("lru_hash", u64, u64, splicing, MAX_PIDS);

static __always_inline const void *tcp_socket_of_fd(int fd)
{
    if (fd < 0)
        return 0;
    void *task = (void *)bpf_get_current_task();
    void *files = read_ptr(task, OFF_TASK_FILES);
    void *fdt = files ? read_ptr(files, OFF_FILES_FDT) : 0;
    if (!fdt || (u32)fd >= read_u32(fdt, OFF_FDT_MAX_FDS))
        return 0;
    void **fds = read_ptr(fdt, OFF_FDT_FD);
    void *file = fds ? read_ptr(fds, (long)fd * sizeof(void *)) : 0;
    void *inode = file ? read_ptr(file, OFF_FILE_INODE) : 0;
    if (!inode || (read_u16(inode, OFF_INODE_MODE) & S_IFMT) != S_IFSOCK)
        return 0;
    const void *sk = socket_sk(read_ptr(file, OFF_FILE_PRIVATE_DATA));
    if (!sk || read_u16(sk, OFF_SK_PROTOCOL) != IPPROTO_TCP)
        return 0; /* UDP data spliced out is read through recvmsg: counted there */
    return sk;
}

TRACEPOINT_PROBE(syscalls, sys_enter_splice)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!is_target(tgid))
        return 0;
    const void *sk = tcp_socket_of_fd((int)args->fd_in);
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

#if defined(NEED_UDP_RX_IFINDEX) && (defined(UDP_RX_FENTRY) || defined(HAVE_SK_DATA_READY))
/* The interface of the datagram a UDP socket last took in, noted per socket
 * by fentry on skb_consume_udp() inside the reading call (-DUDP_RX_FENTRY,
 * where the kernel has trampolines: per call), else by the sock:sk_data_ready
 * tracepoint in softirq (per packet, TCP's included). */
#ifdef TYPED_TRACEPOINTS
/* In the socket's own BPF storage: found through the socket without hashing,
 * and freed with it. Only a BTF-typed program may reach it, so the splice
 * hook (TCP only) passes READ_PROBE and is told nothing. */
BPF_SK_STORAGE(udp_rx_ifindex, u32);

static __always_inline u32 *udp_rx_slot(const void *sk, u64 flags)
{
    return udp_rx_ifindex.sk_storage_get((void *)sk, 0, flags);
}

static __always_inline u32 udp_rx_hint(int how, const void *sk)
{
    if (how != READ_TYPED)
        return UNKNOWN_IFINDEX;
    u32 *ifindex = udp_rx_slot(sk, 0);
    /* volatile: else the compiler merges this load with the socket's own
     * (sk_rx_dst_ifindex, read for TCP) into one instruction that the
     * verifier refuses, since it would serve two kinds of pointer. */
    return ifindex ? *(volatile u32 *)ifindex : UNKNOWN_IFINDEX;
}
#else
BPF_TABLE("lru_hash", u64, u32, udp_rx_ifindex, MAX_SOCKETS);

static __always_inline u32 *udp_rx_slot(const void *sk, u64 flags)
{
    u64 key = (u64)sk;
    u32 *slot = udp_rx_ifindex.lookup(&key);
    if (slot || !flags)
        return slot;
    u32 none = UNKNOWN_IFINDEX;
    udp_rx_ifindex.update(&key, &none);
    return udp_rx_ifindex.lookup(&key);
}

static __always_inline u32 udp_rx_hint(int how, const void *sk)
{
    u32 *ifindex = udp_rx_slot(sk, 0);
    return ifindex ? *ifindex : UNKNOWN_IFINDEX;
}
#endif

static __always_inline void note_udp_rx(const void *sk, u32 ifindex)
{
    u32 *known = udp_rx_slot(sk, BPF_SK_STORAGE_GET_F_CREATE);
    if (known && *known != ifindex)
        *known = ifindex;
}

#ifdef UDP_RX_FENTRY
/* Runs in the UDP recvmsg, in the reading task, with the datagram the call
 * returns, before sock:sock_recv_length fires for it. */
KFUNC_PROBE(skb_consume_udp, void *sk, void *skb, int len)
{
    note_udp_rx(sk, load_u32(READ_TYPED, skb, OFF_SKB_IIF));
    return 0;
}
#else
/* args: struct sock *sk. Runs in softirq right after a datagram is queued,
 * so the tail of the receive queue is that datagram. A reader on another
 * CPU may have taken it already: then the queue is empty and nothing is noted. */
SOCKET_TRACEPOINT(sk_data_ready)
{
    const void *sk = (const void *)TP_ARG(0);
    if (load_u16(TP_READ, sk, OFF_SK_PROTOCOL) != IPPROTO_UDP)
        return 0;
    void *skb = load_ptr(TP_READ, sk, OFF_SK_RECEIVE_QUEUE + OFF_SKB_HEAD_PREV);
    if (!skb || (u64)skb == (u64)sk + OFF_SK_RECEIVE_QUEUE)
        return 0; /* the queue's head itself: empty */
    u32 ifindex = load_u32(TP_READ, skb, OFF_SKB_IIF);
    if (ifindex)
        note_udp_rx(sk, ifindex);
    return 0;
}
#endif
#elif defined(NEED_UDP_RX_IFINDEX)
/* Without sk_data_ready (it came with sock_send_length in 6.3, but a kernel
 * may leave it out) a received datagram's interface is unknown. */
static __always_inline u32 udp_rx_hint(int how, const void *sk)
{
    return UNKNOWN_IFINDEX;
}
#endif

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

KRETFUNC_PROBE(tcp_splice_read, void *sock, void *ppos, void *pipe, size_t len, unsigned int flags, long ret)
{
    return on_socket_call(socket_sk(sock), ret, 0, DIR_IN, READ_PROBE);
}

#ifdef NEED_UDP_RX_IFINDEX
#ifdef HAVE_SKB_CONSUME_UDP
KFUNC_PROBE(skb_consume_udp, void *sk, void *skb, int len)
{
    note_udp_datagram(skb);
    return 0;
}
#else
#error "the fentry backend needs skb_consume_udp to tell a UDP datagram's interface"
#endif
#endif

/* ------------------------------------------------------------------------ */
#elif defined(HOOKS_KPROBE)

/* A kretprobe sees only the return value: the entry probe keeps the socket,
 * the flags and the direction per task until the call returns. User space
 * attaches these to the functions (procnetmon/probes/loader.py). */
struct pt_regs;

struct call_args {
    u64 sk;
    u32 flags;
    u16 dir;
    u16 pad;
};

/* Per task; LRU, since a kretprobe that the kernel could not arm (all its
 * instances busy) leaves its entry behind. */
BPF_TABLE("lru_hash", u64, struct call_args, calls, MAX_SOCKETS);

static __always_inline u64 reg(struct pt_regs *ctx, long off)
{
    u64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (const char *)ctx + off);
    return v;
}

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

/* inet_sendmsg, inet6_sendmsg (sock, msg, size); inet_sendpage (sock, page, ...) */
int pnm_enter_send(struct pt_regs *ctx)
{
    return enter(ctx, 0, DIR_OUT);
}

/* inet_recvmsg, inet6_recvmsg (sock, msg, size, flags) */
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

#ifdef NEED_UDP_RX_IFINDEX
/* skb_consume_udp (sk, skb, len) */
int pnm_udp_datagram(struct pt_regs *ctx)
{
    note_udp_datagram((const void *)reg(ctx, OFF_REGS_PARM2));
    return 0;
}
#endif

#else
#error "choose the probe backend: -DHOOKS_TRACEPOINT, -DHOOKS_FENTRY or -DHOOKS_KPROBE"
#endif

#endif /* PROCNETMON_HOOKS_H */
