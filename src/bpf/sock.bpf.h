/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * Reading a socket and the current task into an event: one reader of the
 * family, the ports, the addresses and the namespace, in two flavours of
 * load. A tp_btf argument is a BTF pointer the verifier lets the program
 * dereference directly (relocated by CO-RE), with no helper call per field;
 * the tracepoint's and the kprobes' plain pointers need bpf_probe_read
 * (BPF_CORE_READ). The inet_sock fields lie beyond struct sock as the
 * verifier types it, so every field is reached from inet_sock.
 */
#ifndef SOCK_BPF_H
#define SOCK_BPF_H

#include "maps.bpf.h"

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6

/* A field of `p` (a path of members, no pointer between them). */
#define LOAD_BTF(p, path) ((p)->path)
#define LOAD_CORE(p, path) BPF_CORE_READ(p, path)
/* 16 bytes of `p` into `dst`. */
#define LOAD_16_BTF(dst, p, path) __builtin_memcpy(dst, (p)->path, 16)
#define LOAD_16_CORE(dst, p, path) BPF_CORE_READ_INTO(&(dst), p, path)
/* The inode of the socket's network namespace (through a pointer). */
#define NETNS_BTF(p) ((p)->sk.__sk_common.skc_net.net->ns.inum)
#define NETNS_CORE(p) BPF_CORE_READ(p, sk.__sk_common.skc_net.net, ns.inum)

/*
 * Family, ports, addresses and netns of the socket `inet` into `e`, as the
 * tracepoint reports them; with lean_reads (summary mode sends nothing)
 * only what a filter or the port label looks at. skc_num is already 0 when
 * a socket reaches CLOSE (the port is released first): inet_sport still
 * holds it, in network order.
 */
#define READ_SOCK(e, inet, ALL, LOAD, LOAD_16, NETNS)                        \
	do {                                                                  \
		bool all = (ALL);                                             \
		(e)->skaddr = (__u64)(inet);                                  \
		(e)->family = LOAD(inet, sk.__sk_common.skc_family);          \
		if (all || settings.filter_sport || settings.label_ports)     \
			(e)->sport = bpf_ntohs(LOAD(inet, inet_sport));       \
		if (all || settings.filter_dport)                             \
			(e)->dport = bpf_ntohs(                               \
				LOAD(inet, sk.__sk_common.skc_dport));        \
		if (all && (e)->family == AF_INET) {                          \
			*(__u32 *)(e)->saddr = LOAD(inet, inet_saddr);        \
			*(__u32 *)(e)->daddr =                                \
				LOAD(inet, sk.__sk_common.skc_daddr);         \
		} else if (all) {                                             \
			LOAD_16((e)->saddr, inet,                             \
				sk.__sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8); \
			LOAD_16((e)->daddr, inet,                             \
				sk.__sk_common.skc_v6_daddr.in6_u.u6_addr8);  \
		}                                                             \
		if (all || settings.target_netns)                             \
			(e)->netns = NETNS(inet);                             \
	} while (0)

/* The socket behind a tp_btf argument, read with plain loads. */
static __always_inline void read_sock_btf(struct event *e,
					  const struct inet_sock *inet)
{
	READ_SOCK(e, inet, !settings.lean_reads, LOAD_BTF, LOAD_16_BTF,
		  NETNS_BTF);
}

/* Everything of the socket behind a tp_btf or iterator argument, whatever
 * the mode. */
static __always_inline void read_sock_whole(struct event *e,
					    const struct inet_sock *inet)
{
	READ_SOCK(e, inet, true, LOAD_BTF, LOAD_16_BTF, NETNS_BTF);
}

/* The socket behind a plain pointer, read through CO-RE helpers. */
static __always_inline void read_sock(struct event *e, const struct sock *sk)
{
	const struct inet_sock *inet = (const struct inet_sock *)sk;

	READ_SOCK(e, inet, !settings.lean_reads, LOAD_CORE, LOAD_16_CORE,
		  NETNS_CORE);
}

/*
 * The current task into `e`: its thread group id and name, plain loads
 * through the typed task pointer where the kernel has
 * bpf_get_current_task_btf, else two helpers (the name one copies and pads
 * byte by byte, at several times the cost); with collect_owner, its uid and
 * cgroup. Bytes after the name's NUL are not cleared; user space stops at
 * the NUL.
 */
static __always_inline void read_task(struct event *e)
{
	if (settings.has_task_btf) {
		const struct task_struct *task = bpf_get_current_task_btf();
		const __u64 *name = (const __u64 *)task->comm;

		e->pid = task->tgid;
		((__u64 *)e->comm)[0] = name[0];
		((__u64 *)e->comm)[1] = name[1];
	} else {
		e->pid = bpf_get_current_pid_tgid() >> 32;
		bpf_get_current_comm(e->comm, TASK_COMM_LEN);
	}
	if (settings.collect_owner) {
		e->uid = (__u32)bpf_get_current_uid_gid();
		e->cgroup_id = bpf_get_current_cgroup_id();
	}
}

#endif /* SOCK_BPF_H */
