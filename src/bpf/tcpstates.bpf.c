// SPDX-License-Identifier: BSD-2-Clause
/*
 * TCP state transitions, from one of three front ends (user space enables the
 * programs of exactly one before load):
 *   - tp_btf/inet_sock_set_state: BTF tracepoint, attached through the bpf
 *     syscall, needs no tracefs (a main program and its backup);
 *   - tracepoint/sock/inet_sock_set_state: the classic tracepoint;
 *   - kprobes on tcp_set_state and on the two functions that change a
 *     state without it: for kernels without the tracepoint.
 * Each front end reads the transition into a `struct event`; handle() applies
 * the filters, keeps the per-socket time of the last transition when the
 * settings say so (user space keeps it otherwise), and sends the event
 * through the ring buffer or adds it to the summary. The helpers are in the
 * headers beside this file: maps.bpf.h (settings and maps), sock.bpf.h
 * (reading a socket and the task), track.bpf.h (times and owners),
 * summary.bpf.h, backup.bpf.h (tp_btf's backup), snapshot.bpf.h (the
 * sockets that exist at start).
 */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "tcpstates.h"
#include "maps.bpf.h"
#include "sock.bpf.h"
#include "track.bpf.h"
#include "close.bpf.h"
#include "summary.bpf.h"
#include "backup.bpf.h"
#include "snapshot.bpf.h"

/* Makes the types both sides share part of the object's BTF, so that the
 * skeleton generates them for Rust. */
struct event unused_event = {};
enum counter unused_counter = COUNTER_EVENTS;
enum event_flags unused_flags = EVENT_F_DURATION_UNKNOWN;
enum summary_dims unused_dims = SUMMARY_STATES;
struct close_record unused_close_record = {};
enum close_cause unused_cause = CAUSE_UNKNOWN;
enum close_detail unused_detail = DETAIL_NONE;
enum close_role unused_role = ROLE_UNKNOWN;
enum close_counters unused_counters = HAS_BYTES_ACKED;
enum timeline_dims unused_timeline_dims = TIMELINE_STEPS;
struct snap_sock unused_snap_sock = {};
enum snap_flags unused_snap_flags = SNAP_F_HOLDER;
struct census unused_census = {};
enum diag_kinds unused_diag_kinds = DIAG_SEED;

/*
 * Sends `e` through the ring buffer, as long as the fields it carries need:
 * the owner only when it is known, the current task's uid and cgroup only
 * with collect_owner. `sent` is this CPU's event count, which says when to
 * look whether to wake the reader (wakeup_flag).
 */
static __always_inline void send(struct event *e, __u64 sent)
{
	__u64 size;

	if (e->flags & EVENT_F_OWNER_KNOWN)
		size = EVENT_SIZE_OWNER;
	else if (settings.collect_owner)
		size = EVENT_SIZE_TASK;
	else
		size = EVENT_SIZE_BASE;
	if (bpf_ringbuf_output(&events, e, size, wakeup_flag(sent)))
		count(COUNTER_RINGBUF_DROPS);
}

/* Whether the family and namespace filters keep `e` (a socket's namespace
 * never changes: its times are not needed). */
static __always_inline bool socket_matches(const struct event *e)
{
	return (!settings.target_family ||
		e->family == settings.target_family) &&
	       (!settings.target_netns || e->netns == settings.target_netns);
}

/*
 * The common path. `e` holds skaddr, states, family, ports, addresses and
 * netns; the rest is filled here. `sk` and `tp` are the socket as BTF
 * pointers (tp_btf), or NULL where the program has none to give the storage
 * helpers and direct loads. With close records, track() sends them and
 * nothing else is.
 */
static __always_inline int handle(struct event *e, struct sock *sk,
				  const struct tcp_sock *tp, __u16 protocol)
{
	__u64 now;

	if (protocol != IPPROTO_TCP || !socket_matches(e))
		return 0;

	/*
	 * Bookkeeping comes before the port and state filters: a client's
	 * local port is 0 at CLOSE -> SYN_SENT, and a socket filtered out then
	 * must still have its time recorded for the transitions that do match
	 * later; a transition kept for its state needs the time of the one
	 * before it, which the filter may have dropped.
	 */
	now = bpf_ktime_get_ns();
	e->ts_ns = now;
	if (settings.track_sockets)
		track(e, sk, tp, now);
	if (settings.close_records)
		return 0;

	if (settings.filter_sport && !bpf_map_lookup_elem(&sports, &e->sport))
		return 0;
	if (settings.filter_dport && !bpf_map_lookup_elem(&dports, &e->dport))
		return 0;
	if (settings.state_mask &&
	    !(settings.state_mask &
	      (state_bit(e->oldstate) | state_bit(e->newstate))))
		return 0;
	/* An unknown time is not known to be long enough. */
	if (settings.min_delta_ns &&
	    ((e->flags & EVENT_F_DURATION_UNKNOWN) ||
	     e->delta_ns < settings.min_delta_ns))
		return 0;
	if ((settings.filter_pid || settings.filter_comm ||
	     settings.filter_uid || settings.filter_groups) &&
	    !owner_matches(e))
		return 0;

	if (settings.summary_mode) {
		aggregate(e);
		return 0;
	}
	read_task(e);
	send(e, count(COUNTER_EVENTS));
	return 0;
}

/* Returns the time handle() read, 0 if it left the transition out first. */
static __always_inline __u64 handle_btf(const struct sock *sk, int oldstate,
					int newstate)
{
	/* NULL unless a TCP socket; typed, so its inet fields read directly. */
	struct tcp_sock *tp = bpf_skc_to_tcp_sock((void *)sk);
	struct event e = {};

	if (!tp)
		return 0;
	read_sock_btf(&e, (const struct inet_sock *)tp);
	e.oldstate = oldstate;
	e.newstate = newstate;
	handle(&e, (struct sock *)sk, tp, IPPROTO_TCP);
	return e.ts_ns;
}

SEC("?tp_btf/inet_sock_set_state")
int BPF_PROG(handle_tp_btf, const struct sock *sk, const int oldstate,
	     const int newstate)
{
	struct handled *h = enter_main();

	leave_main(h, sk, oldstate, newstate,
		   handle_btf(sk, oldstate, newstate));
	return 0;
}

SEC("?tp_btf/inet_sock_set_state")
int BPF_PROG(handle_tp_btf_missed, const struct sock *sk, const int oldstate,
	     const int newstate)
{
	__u32 zero = 0;
	struct handled *h = bpf_map_lookup_elem(&last_handled, &zero);

	if (!h)
		return 0;
	h->in_backup = 1;
	if (h->in_main || !take_handled(h, sk, oldstate, newstate)) {
		count(COUNTER_NESTED);
		handle_btf(sk, oldstate, newstate);
	}
	h->in_backup = 0;
	return 0;
}

/* A socket and the transition the kprobes or the tracepoint report for it,
 * through the common path. */
static __always_inline int handle_sock(struct sock *sk, int oldstate,
				       int newstate)
{
	struct event e = {};

	read_sock(&e, sk);
	e.oldstate = oldstate;
	e.newstate = newstate;
	return handle(&e, NULL, NULL,
		      BPF_CORE_READ_BITFIELD_PROBED(sk, sk_protocol));
}

/* The tracepoint's own fields give the states; the socket, read as the
 * kprobes read it, the rest (its sport, addresses and protocol are the
 * socket's fields, copied, and the protocol field changed size in 5.6). */
SEC("?tracepoint/sock/inet_sock_set_state")
int handle_tracepoint(struct trace_event_raw_inet_sock_set_state *ctx)
{
	return handle_sock((struct sock *)BPF_CORE_READ(ctx, skaddr),
			   BPF_CORE_READ(ctx, oldstate),
			   BPF_CORE_READ(ctx, newstate));
}

/*
 * kprobe mode. Most transitions go through tcp_set_state; two do not, and
 * need their own probes to report what the tracepoint reports: a listener's
 * CLOSE -> LISTEN (and LISTEN -> CLOSE when listen() then fails), set in
 * inet_csk_listen_start, and a passive child's LISTEN -> SYN_RECV, set in
 * inet_csk_clone_lock.
 */
SEC("?kprobe/tcp_set_state")
int BPF_KPROBE(handle_kprobe, struct sock *sk, int state)
{
	/* On entry the socket still holds the state it leaves. */
	return handle_sock(sk, BPF_CORE_READ(sk, __sk_common.skc_state), state);
}

SEC("?kprobe/inet_csk_listen_start")
int BPF_KPROBE(handle_listen_start, struct sock *sk)
{
	__u64 tid = bpf_get_current_pid_tgid(), skaddr = (__u64)sk;

	bpf_map_update_elem(&listening, &tid, &skaddr, BPF_ANY);
	return handle_sock(sk, BPF_CORE_READ(sk, __sk_common.skc_state),
			   TCP_LISTEN);
}

SEC("?kretprobe/inet_csk_listen_start")
int BPF_KRETPROBE(handle_listen_start_ret, int err)
{
	__u64 tid = bpf_get_current_pid_tgid(), *skaddr;
	struct sock *sk;

	skaddr = bpf_map_lookup_elem(&listening, &tid);
	if (!skaddr)
		return 0;
	sk = (struct sock *)*skaddr;
	bpf_map_delete_elem(&listening, &tid);
	/* A failed listen() puts the socket back to CLOSE. */
	return err ? handle_sock(sk, TCP_LISTEN, TCP_CLOSE) : 0;
}

SEC("?kretprobe/inet_csk_clone_lock")
int BPF_KRETPROBE(handle_clone_ret, struct sock *child)
{
	/* The child is a copy of the listener, so it leaves LISTEN. */
	return child ? handle_sock(child, TCP_LISTEN, TCP_SYN_RECV) : 0;
}

/*
 * kprobe mode: the moment a process accepts a connection, which is not a
 * state change, makes it the socket's owner. The kernel's state gets it at
 * once; without it (the reader keeps the owners), a record that is not a
 * transition tells the reader.
 */
SEC("?kretprobe/inet_csk_accept")
int BPF_KRETPROBE(handle_accept_ret, struct sock *newsk)
{
	struct event e = {};
	__u64 key = (__u64)newsk;

	if (!newsk)
		return 0;
	if (settings.track_sockets) {
		struct sock_state *st = lookup_state(&key);

		if (st && settings.keep_owner)
			take_owner(st);
		return 0;
	}
	if (!settings.collect_owner)
		return 0;
	read_sock(&e, newsk);
	if (!socket_matches(&e))
		return 0;
	e.flags = EVENT_F_ACCEPTED;
	e.ts_ns = bpf_ktime_get_ns();
	read_task(&e);
	/* Not a transition: not counted, and never the record that wakes. */
	send(&e, 1);
	return 0;
}

/*
 * A cgroup made (only the cgroup v2 hierarchy's: its hierarchy id is 0):
 * its path, kept for user space, which names owners by it even once the
 * group is gone (a short-lived container), and its id, sent to user space,
 * which looks its names up and judges it at once. Loaded when owners are
 * shown or groups judged.
 */
SEC("?tp_btf/cgroup_mkdir")
int BPF_PROG(handle_cgroup_mkdir, struct cgroup *cgrp, const char *path)
{
	struct group_path value;
	__u64 id;

	if (BPF_CORE_READ(cgrp, root, hierarchy_id) != 0)
		return 0;
	id = BPF_CORE_READ(cgrp, kn, id);
	if (bpf_probe_read_kernel_str(value.path, sizeof(value.path), path) < 0)
		return 0;
	bpf_map_update_elem(&group_paths, &id, &value, BPF_ANY);
	bpf_ringbuf_output(&group_events, &id, sizeof(id), 0);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
