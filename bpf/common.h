/*
 * What procnetmon's BPF programs share: the counter and filter maps, reads
 * of kernel memory at BTF offsets (-DOFF_<NAME>=<bytes>, from
 * procnetmon/kernel/layout.py), and the names of processes that exit.
 * Included by payload.bpf.c and wire.bpf.c.
 *
 * Options (-D):
 *   FILTER_PIDS       count only thread groups in target_pids
 *   FOLLOW_CHILDREN   with FILTER_PIDS: a process forked by a target becomes
 *                     a target itself, and leaves target_pids when it exits
 *   FILTER_IFACES     count only interfaces in target_ifaces (netns, ifindex)
 *   FILTER_CGROUPS    count only tasks of the cgroups (v2 ids) in target_cgroups;
 *                     needs OFF_CGROUP_* and OFF_KERNFS_NODE_* (cgroups created
 *                     below a target are added as they are made)
 *   EXCLUDE_CGROUPS   leave out tasks of the cgroups in excluded_cgroups (filled
 *                     like target_cgroups, and with the same offsets)
 *   EXCLUDE_TGID=N    leave out thread group N (procnetmon itself, --exclude-self)
 *   EXCLUDE_LOOPBACK  without FILTER_IFACES: leave loopback out
 *   COUNT_CLASSES     bit mask of the protocol classes counted (PC_*, --protocol);
 *                     every class when not given
 *   FILTER_REMOTE, FILTER_RPORT, FILTER_LPORT   filters on the ends of the
 *                     traffic (remote.h)
 *   MAX_COUNTERS, MAX_PIDS, MAX_SOCKETS, MAX_EXITED   map sizes
 */

#ifndef PROCNETMON_COMMON_H
#define PROCNETMON_COMMON_H

#define AF_INET 2
#define AF_INET6 10
#define AF_PACKET 17
#define SOCK_STREAM 1
#define SOCK_RAW 3
#define TCP_ESTABLISHED 1 /* also a connected UDP socket's state */
#define IPPROTO_ICMP 1
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define IPPROTO_ICMPV6 58
#define IPPROTO_SCTP 132
#define IPPROTO_UDPLITE 136
#define IPPROTO_MPTCP 262
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
#ifndef MAX_UDP_HEADS
#define MAX_UDP_HEADS 16384
#endif
#ifndef MAX_CGROUPS
#define MAX_CGROUPS 16384
#endif

/* Protocol classes: what procnetmon names the bytes of a socket by. The
 * numbers index struct counts and are the order of PROTOCOL_CLASSES in
 * procnetmon/probes/__init__.py. */
#define PC_TCP 0
#define PC_UDP 1
#define PC_UDPLITE 2
#define PC_ICMP 3    /* ping sockets and raw ICMP sockets */
#define PC_ICMPV6 4
#define PC_RAW 5     /* raw IP sockets of any other protocol */
#define PC_SCTP 6
#define PC_MPTCP 7
#define PC_PACKET 8  /* AF_PACKET, SOCK_RAW and SOCK_DGRAM */
#define PC_OTHER 9   /* anything else on an inet socket */
#define PC_COUNT 10
#define PC_NONE (-1) /* not network traffic: AF_UNIX, netlink... */

#ifndef COUNT_CLASSES
#define COUNT_CLASSES ((1 << PC_COUNT) - 1)
#endif

/* The class of a socket of this family, type and protocol (sk_protocol: for
 * a raw socket, the IP protocol it was opened for). */
static __always_inline int proto_class(u16 family, u16 type, u16 protocol)
{
    int cls;
    if (family == AF_PACKET)
        cls = PC_PACKET;
    else if (family != AF_INET && family != AF_INET6)
        return PC_NONE;
    else if (protocol == IPPROTO_ICMP)
        cls = PC_ICMP;
    else if (protocol == IPPROTO_ICMPV6)
        cls = PC_ICMPV6;
    else if (type == SOCK_RAW)
        cls = PC_RAW;
    else if (protocol == IPPROTO_TCP)
        cls = PC_TCP;
    else if (protocol == IPPROTO_UDP)
        cls = PC_UDP;
    else if (protocol == IPPROTO_UDPLITE)
        cls = PC_UDPLITE;
    else if (protocol == IPPROTO_SCTP)
        cls = PC_SCTP;
    else if (protocol == IPPROTO_MPTCP)
        cls = PC_MPTCP;
    else
        cls = PC_OTHER;
#if COUNT_CLASSES != (1 << PC_COUNT) - 1
    if (!((COUNT_CLASSES >> cls) & 1))
        return PC_NONE; /* left out by --protocol */
#endif
    return cls;
}

/* Bytes of one process, in one entry found by its tgid alone: the smallest
 * key hashes fastest, and the interface is decided by the filters before
 * counting. bytes[class * 2 + direction]: TCP in and out come first, then
 * UDP's, as the four fields this struct once had. Room for 16 classes, so
 * that a mask bounds the index (COUNT_SLOTS, a power of two): a comparison
 * does not, where the compiler indexes with a copy made before it. */
#define COUNT_SLOTS 32
struct counts {
    u64 bytes[COUNT_SLOTS];
};

struct iface_key {
    u32 netns; /* inode number of the network namespace */
    u32 ifindex;
};

/* Bytes of one socket with its addresses (-DDETAILS), as both backends
 * keep them and procnetmon/probes/loader.py reads them. */
struct sock_info {
    u32 tgid;
    u16 family;
    u16 protocol; /* the protocol class, PC_* */
    u16 lport; /* host order */
    u16 rport; /* host order */
    u32 pad;
    u8 laddr[16]; /* IPv4 in the first 4 bytes */
    u8 raddr[16];
    u64 bytes_in;
    u64 bytes_out;
};

struct exit_info {
    char comm[16];
    u64 exit_ns;
    u64 cgroup_id; /* cgroup v2 id (directory inode) the process exited in */
};

/* Allocated as processes come (one entry each), not MAX_COUNTERS up front. */
BPF_F_TABLE("hash", u32, struct counts, counters, MAX_COUNTERS, BPF_F_NO_PREALLOC);
BPF_HASH(target_pids, u32, u8, MAX_PIDS);
BPF_HASH(target_ifaces, struct iface_key, u8, 256);
#ifdef FILTER_CGROUPS
/* Every cgroup at or below a --cgroup path, by id: the task's own cgroup is
 * looked up, since bpf_get_current_ancestor_cgroup_id() is not offered to
 * tracing programs before Linux 5.14. */
BPF_HASH(target_cgroups, u64, u8, MAX_CGROUPS);
#endif
#ifdef EXCLUDE_CGROUPS
/* Every cgroup at or below an --exclude-cgroup path, by id, kept as target_cgroups is. */
BPF_HASH(excluded_cgroups, u64, u8, MAX_CGROUPS);
#endif
/* Thread groups with counters: only their exits are worth noting. */
BPF_TABLE("lru_hash", u32, u8, counted, MAX_EXITED);
/* Name of each counted process that exited, since /proc forgets it. User
 * space takes the entries out as it reads them. */
BPF_TABLE("lru_hash", u32, struct exit_info, exited, MAX_EXITED);
/* Thread groups that called exec since user space last looked: the name and
 * command line it knows for them are stale. User space takes them out. */
BPF_TABLE("lru_hash", u32, u8, execed, MAX_PIDS);
/* Counter updates lost because a map was full: never silently. */
BPF_ARRAY(lost, u64, 1);

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

static __always_inline u64 read_u64(const void *base, long off)
{
    u64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (const char *)base + off);
    return v;
}

static __always_inline u16 read_u16(const void *base, long off)
{
    u16 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (const char *)base + off);
    return v;
}

/* How a hook's program reads kernel memory, a constant at each hook:
 * READ_PROBE goes through bpf_probe_read_kernel(), a helper call per field,
 * and takes any address; READ_TYPED is a plain load, which the verifier
 * allows (and makes fault-safe) only on pointers it knows the BTF type of:
 * a BTF-typed tracepoint's arguments and the pointers loaded from them. */
#define READ_PROBE 0
#define READ_TYPED 1

static __always_inline u16 load_u16(int how, const void *base, long off)
{
    if (how == READ_TYPED)
        return *(const u16 *)((const char *)base + off);
    return read_u16(base, off);
}

static __always_inline u32 load_u32(int how, const void *base, long off)
{
    if (how == READ_TYPED)
        return *(const u32 *)((const char *)base + off);
    return read_u32(base, off);
}

static __always_inline u64 load_u64(int how, const void *base, long off)
{
    if (how == READ_TYPED)
        return *(const u64 *)((const char *)base + off);
    u64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (const char *)base + off);
    return v;
}

static __always_inline void *load_ptr(int how, const void *base, long off)
{
    if (how == READ_TYPED)
        return *(void *const *)((const char *)base + off);
    return read_ptr(base, off);
}

/* The inode number of the socket file sk belongs to (what /proc/PID/fd shows
 * as socket:[N]), or 0 once it has none (closed). The kernel hands inode
 * numbers out from a counter, so unlike the struct sock's address it names
 * one socket only, and user space finds live sockets by it. */
static __always_inline u64 socket_ino(const void *sk)
{
    const char *sock = read_ptr(sk, OFF_SK_SOCKET);
    if (!sock)
        return 0;
    u64 ino = 0;
    bpf_probe_read_kernel(&ino, sizeof(ino),
                          sock - OFF_SOCKET_ALLOC_SOCKET + OFF_SOCKET_ALLOC_INODE + OFF_INODE_INO);
    return ino;
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
#ifdef EXCLUDE_TGID
    if (tgid == EXCLUDE_TGID)
        return 0;
#endif
#ifdef FILTER_PIDS
    if (!target_pids.lookup(&tgid))
        return 0;
#endif
#if defined(FILTER_CGROUPS) || defined(EXCLUDE_CGROUPS)
    u64 cgroup_id = bpf_get_current_cgroup_id();
#endif
#ifdef FILTER_CGROUPS
    if (!target_cgroups.lookup(&cgroup_id))
        return 0;
#endif
#ifdef EXCLUDE_CGROUPS
    if (excluded_cgroups.lookup(&cgroup_id))
        return 0;
#endif
    return 1;
}

/* The inode number of a socket's network namespace (tracing programs only). */
static __always_inline u32 netns_of(int how, const void *sk)
{
    void *net = load_ptr(how, sk, OFF_SK_NET);
    return net ? load_u32(how, net, OFF_NET_NS_INUM) : 0;
}

/* Whether traffic on ifindex of namespace netns is counted. The unknown
 * interface (0) is counted unless an interface filter is set. */
static __always_inline int iface_ok(u32 netns, u32 ifindex)
{
#ifdef FILTER_IFACES
    if (ifindex == UNKNOWN_IFINDEX)
        return 0;
    struct iface_key k = {.netns = netns, .ifindex = ifindex};
    return target_ifaces.lookup(&k) != 0;
#elif defined(EXCLUDE_LOOPBACK)
    return ifindex != LOOPBACK_IFINDEX;
#else
    return 1;
#endif
}

static __always_inline void add(u32 tgid, int cls, u16 dir, u64 bytes)
{
    if (cls < 0)
        return; /* PC_NONE: the callers leave it out first */
    u32 slot = (((u32)cls & 15) << 1) | (dir == DIR_OUT);
    struct counts *c = counters.lookup(&tgid);
    if (!c) {
        struct counts zero = {};
        u8 one = 1;
        counters.insert(&tgid, &zero);
        counted.update(&tgid, &one); /* once per process, not per call */
        c = counters.lookup(&tgid);
        if (!c) {
            note_lost();
            return;
        }
    }
    __sync_fetch_and_add(&c->bytes[slot & (COUNT_SLOTS - 1)], bytes);
}

/* Whether user space names tgid in its records: each given PID, or (without
 * -p) each process with counters. */
static __always_inline int is_reported(u32 tgid)
{
#ifdef FILTER_PIDS
    return is_target(tgid);
#else
    return counted.lookup(&tgid) != 0;
#endif
}

/* args: struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm.
 * Runs in the task that exec'd, which is its thread group's leader by now. */
RAW_TRACEPOINT_PROBE(sched_process_exec)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!is_reported(tgid))
        return 0;
    u8 one = 1;
    execed.update(&tgid, &one);
    return 0;
}

/* Whether the exiting task is the last of its thread group. Recent kernels
 * passes it to the tracepoint (-DHAVE_EXIT_GROUP_DEAD); before, do_exit()
 * has already counted the task out of signal->live when the tracepoint fires. */
static __always_inline int group_dead(struct bpf_raw_tracepoint_args *ctx)
{
#ifdef HAVE_EXIT_GROUP_DEAD
    return ctx->args[1] & 1;
#else
    void *signal = read_ptr((void *)bpf_get_current_task(), OFF_TASK_SIGNAL);
    return signal && read_u32(signal, OFF_SIGNAL_LIVE) == 0;
#endif
}

/* args: struct task_struct *p (, bool group_dead). Keeps the name of a process
 * whose last thread exits (after an exec, the new program's), so its totals
 * are still named in the summary. */
RAW_TRACEPOINT_PROBE(sched_process_exit)
{
    if (!group_dead(ctx))
        return 0;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    int reported = is_reported(tgid);
#if defined(FILTER_PIDS) && defined(FOLLOW_CHILDREN)
    /* Room for new children, and a later process reusing the PID is no target. */
    target_pids.delete(&tgid);
#endif
    if (!reported)
        return 0;
    counted.delete(&tgid);
    struct exit_info info = {};
    void *task = (void *)bpf_get_current_task();
    void *leader = read_ptr(task, OFF_TASK_GROUP_LEADER);
    bpf_probe_read_kernel(info.comm, sizeof(info.comm), (const char *)(leader ? leader : task) + OFF_TASK_COMM);
    info.exit_ns = bpf_ktime_get_ns();
    info.cgroup_id = bpf_get_current_cgroup_id();
    exited.update(&tgid, &info);
    return 0;
}

#if defined(FILTER_PIDS) && defined(FOLLOW_CHILDREN)
/* args: struct task_struct *parent (the forking task, current), struct
 * task_struct *child. Fires in kernel_clone() before the child is first
 * woken up, so a child of a target is one before it runs an instruction.
 * A new thread (CLONE_THREAD) shares its parent's tgid: nothing to add. */
RAW_TRACEPOINT_PROBE(sched_process_fork)
{
    u32 parent = bpf_get_current_pid_tgid() >> 32;
    if (!target_pids.lookup(&parent))
        return 0;
    u32 child = read_u32((const void *)ctx->args[1], OFF_TASK_TGID);
    if (child == parent || child == 0)
        return 0;
    u8 one = 1;
    if (target_pids.update(&child, &one) != 0)
        note_lost(); /* target_pids full: this child goes uncounted */
    return 0;
}
#endif

#if defined(FILTER_CGROUPS) || defined(EXCLUDE_CGROUPS)
/* args: struct cgroup *cgrp, const char *path. A cgroup made below a target
 * (or an excluded one) is one from its first moment, before any task can be
 * moved into it (user space also rescans both every interval). */
RAW_TRACEPOINT_PROBE(cgroup_mkdir)
{
    const void *cgrp = (const void *)ctx->args[0];
    void *root = read_ptr(cgrp, OFF_CGROUP_ROOT);
    if (read_u32(root, OFF_CGROUP_ROOT_HIERARCHY_ID) != 0)
        return 0; /* a cgroup v1 hierarchy: its ids are another numbering */
    void *kn = read_ptr(cgrp, OFF_CGROUP_KN);
    void *parent = read_ptr(kn, OFF_KERNFS_NODE_PARENT);
    if (!parent)
        return 0;
    u64 parent_id = 0, id = 0;
    bpf_probe_read_kernel(&parent_id, sizeof(parent_id), (const char *)parent + OFF_KERNFS_NODE_ID);
    bpf_probe_read_kernel(&id, sizeof(id), (const char *)kn + OFF_KERNFS_NODE_ID);
    u8 one = 1;
#ifdef FILTER_CGROUPS
    if (target_cgroups.lookup(&parent_id))
        target_cgroups.update(&id, &one);
#endif
#ifdef EXCLUDE_CGROUPS
    if (excluded_cgroups.lookup(&parent_id))
        excluded_cgroups.update(&id, &one);
#endif
    return 0;
}
#endif

#define S_IFMT 00170000
#define S_IFSOCK 0140000

/* The TCP socket behind file descriptor fd of the current task, or 0: what
 * splice(2) reads from (hooks.h) and what accept(2) returned (health.h). */
static __always_inline const void *tcp_socket_of_fd(long fd)
{
    if (fd < 0)
        return 0;
    void *task = (void *)bpf_get_current_task();
    void *files = read_ptr(task, OFF_TASK_FILES);
    void *fdt = files ? read_ptr(files, OFF_FILES_FDT) : 0;
    if (!fdt || (u32)fd >= read_u32(fdt, OFF_FDT_MAX_FDS))
        return 0;
    void **fds = read_ptr(fdt, OFF_FDT_FD);
    void *file = fds ? read_ptr(fds, fd * (long)sizeof(void *)) : 0;
    void *inode = file ? read_ptr(file, OFF_FILE_INODE) : 0;
    if (!inode || (read_u16(inode, OFF_INODE_MODE) & S_IFMT) != S_IFSOCK)
        return 0; /* not a socket */
    void *sock = read_ptr(file, OFF_FILE_PRIVATE_DATA);
    const void *sk = sock ? read_ptr(sock, OFF_SOCKET_SK) : 0;
    if (!sk || read_u16(sk, OFF_SK_PROTOCOL) != IPPROTO_TCP)
        return 0;
    return sk;
}

#include "remote.h"

/* TCP health (--tcp-health): its own maps and programs, none without the flag. */
#ifdef TCP_HEALTH
#include "health.h"
#endif

#endif /* PROCNETMON_COMMON_H */
