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
 * the filters, keeps the per-socket time of the last transition when a port
 * filter is on (user space keeps it otherwise) and sends the event through
 * the ring buffer.
 */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "tcpstates.h"

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_FIN_WAIT1 4
#define TCP_CLOSE 7
#define TCP_CLOSE_WAIT 8
#define TCP_LAST_ACK 9
#define TCP_LISTEN 10

/* Set by user space between open and load. 0 means any family. */
const volatile __u16 target_family = 0;
const volatile bool filter_sport = false;
const volatile bool filter_dport = false;
/* Only sockets of this network namespace (its inode; 0: any). */
const volatile __u32 target_netns = 0;
/* Only transitions into or out of these states (bit n: state n; 0: any). */
const volatile __u32 state_mask = 0;
/* Only transitions that left a state after at least this long (0: any);
 * needs track_sockets. */
const volatile __u64 min_delta_ns = 0;
/* Owner filters (the socket's owner, kept by the kernel: track_sockets):
 * its tgid among `pids`, its name, its uid, its cgroup or one below. */
const volatile bool filter_pid = false;
const volatile bool filter_comm = false;
const volatile char target_comm[TASK_COMM_LEN] = {};
const volatile bool filter_uid = false;
const volatile __u32 target_uid = 0;
const volatile bool filter_cgroup = false;
const volatile __u64 target_cgroup = 0;
const volatile int target_cgroup_level = 0;
/* Whether each event carries the current task's uid and cgroup, from which
 * user space keeps the sockets' owners (-x, -j, -Y). */
const volatile bool collect_owner = false;
/*
 * 0: wake the reader for every event it is waiting for (a terminal sees each
 * line at once). N: wake it only once N bytes are waiting; it also polls on
 * a timer, so nothing waits longer than one poll interval. Batching wakeups
 * is most of what keeps the reader's cost per event low in a storm.
 */
const volatile __u32 wakeup_bytes = 0;
/*
 * With wakeup_bytes: how much waits is looked at only when this CPU's event
 * count & wakeup_mask is 0, since the query reads the positions that the
 * other CPUs and the reader keep writing. User space sizes it so that the
 * events between two looks fit many times in the ring.
 */
const volatile __u32 wakeup_mask = 0;
/*
 * Whether this program keeps each socket's time of its last transition (in
 * the `sockets` map) and sends the time in the old state. Only needed when a
 * port filter drops events here: otherwise user space sees every transition
 * and keeps the times itself, which costs the traced host far less than any
 * per-socket store in the kernel.
 */
const volatile bool track_sockets = false;
/*
 * With track_sockets, in tp_btf mode on kernels that allow socket-local
 * storage in tracing programs (5.11+): keep each socket's state in its own
 * storage (`sk_states`), which the kernel frees with the socket, instead of
 * the `sockets` map. Memory then grows only with the sockets there are, with
 * no bound to size in advance, and an address reused by the next socket
 * cannot inherit an entry.
 */
const volatile bool use_sk_storage = false;
/*
 * Whether the kernel has bpf_get_current_task_btf (5.11+, and its own BTF).
 * Set by user space from the kernel release: a CO-RE check of the helper's
 * enum value would cost every start another search of the kernel's BTF.
 */
const volatile bool has_task_btf = false;
/*
 * Summary mode: each transition that passes the filters is added to the
 * per-CPU `summary` instead of going through the ring buffer (needs
 * track_sockets for the times).
 */
const volatile bool summary_mode = false;
/* With track_sockets: whether the kernel keeps each socket's owner (an
 * owner filter, or an output that shows owners). */
const volatile bool keep_owner = true;
/* Summary mode in tp_btf: read only the fields a filter looks at (an event
 * is never sent, so nothing else is needed). */
const volatile bool lean_reads = false;

/* Makes `struct event` and `enum counter` part of the object's BTF, so the
 * skeleton generates them for Rust. */
struct event unused_event = {};
enum counter unused_counter = COUNTER_EVENTS;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	/* Resized by user space before load. */
	__uint(max_entries, 1 << 22);
} events SEC(".maps");

/* Socket address -> state, when track_sockets. Preallocated (the default
 * for a hash map): some kernels refuse run-time allocation from tracepoint
 * and kprobe programs. User space sizes it to one entry when unused. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct sock_state);
} sockets SEC(".maps");

/* Socket-local state, when use_sk_storage. Cloned into a passive child
 * with its listener: the child starts with the listener's owner. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC | BPF_F_CLONE);
	__type(key, int);
	__type(value, struct sock_state);
} sk_states SEC(".maps");

/* Owner pids for filter_pid, filled by user space after load. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u8);
} pids SEC(".maps");

/* Listening sockets' owners, by (netns inode << 16 | port), for their
 * children when the state is kept in the `sockets` map (socket-local
 * storage clones it into the child). */
struct listener_key {
	__u32 netns;
	__u32 port;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct listener_key);
	__type(value, struct sock_state);
} listener_owners SEC(".maps");

/* kprobe mode: thread -> socket, from entry to return of
 * inet_csk_listen_start. One entry in the other modes. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, __u64);
} listening SEC(".maps");

/* Local and remote port sets, filled by user space after load. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u16);
	__type(value, __u8);
} sports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u16);
	__type(value, __u8);
} dports SEC(".maps");

/* Per CPU: the transitions handle_tp_btf handled last. */
struct transition_id {
	__u64 skaddr;
	__s32 oldstate;
	__s32 newstate;
	/* When handle_tp_btf handled it (0: it left it out at once). */
	__u64 at_ns;
};

/* The ones not yet taken by the backup, in a few slots: see below why more
 * than one. */
#define HANDLED_RING 8
struct handled {
	struct transition_id last[HANDLED_RING];
	/* Where the next record goes first (round robin). */
	__u32 next;
	/* The slot of the last record. */
	__u32 newest;
	/* handle_tp_btf_missed is running on this CPU: the kernel will skip it
	 * for a transition that interrupts it, so nothing would take that
	 * transition's record. */
	__u32 in_backup;
};

/* A record older than this was left by a transition whose backup the
 * kernel skipped in the few instructions around in_backup; the slot is
 * free again. Both programs of one transition run without preemption, in
 * far less time. */
#define HANDLED_STALE_NS 100000000ULL

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct handled);
} last_handled SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* Summary mode's aggregates, filled per CPU and summed by user space. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct summary);
} summary SEC(".maps");

/* Adds one to a counter; returns its value on this CPU after the add. */
static __always_inline __u64 count(__u32 which)
{
	__u64 *n = bpf_map_lookup_elem(&counters, &which);

	if (!n)
		return 0;
	/*
	 * Per-CPU, yet atomic: a softirq (or, on preemptible kernels, another
	 * task) can run this program on the same CPU in the middle of an add.
	 * The add's result is not used: an atomic add that returns the old
	 * value needs Linux 5.12, and the value read after it serves.
	 */
	__sync_fetch_and_add(n, 1);
	return *n;
}

/*
 * Leaving CLOSE, or a passive child leaving the LISTEN it inherited: the
 * socket is new, so what is kept for it is stale (an earlier socket at its
 * address ended without a CLOSE this program saw, or this one is reused).
 */
static __always_inline bool starts_anew(const struct event *e)
{
	return e->oldstate == TCP_CLOSE ||
	       (e->oldstate == TCP_LISTEN && e->newstate == TCP_SYN_RECV);
}

/*
 * Whether the kernel makes this transition only in a system call of the
 * process holding the socket (connect, listen, close, shutdown), never in
 * softirq: then the current task is the socket's owner. src/durations.rs
 * has the same list.
 */
static __always_inline bool is_owner_moment(int oldstate, int newstate)
{
	return (oldstate == TCP_CLOSE &&
		(newstate == TCP_SYN_SENT || newstate == TCP_LISTEN)) ||
	       (oldstate == TCP_LISTEN && newstate == TCP_CLOSE) ||
	       ((oldstate == TCP_ESTABLISHED || oldstate == TCP_SYN_RECV) &&
		newstate == TCP_FIN_WAIT1) ||
	       (oldstate == TCP_CLOSE_WAIT && newstate == TCP_LAST_ACK);
}

/* The current task becomes the owner in `st`. */
static __always_inline void take_owner(struct sock_state *st)
{
	st->owner_pid = bpf_get_current_pid_tgid() >> 32;
	st->owner_uid = (__u32)bpf_get_current_uid_gid();
	st->owner_cgroup = bpf_get_current_cgroup_id();
	bpf_get_current_comm(st->owner_comm, sizeof(st->owner_comm));
	st->owner_in_cgroup =
		filter_cgroup &&
		bpf_get_current_ancestor_cgroup_id(target_cgroup_level) ==
			target_cgroup;
	st->owner_known = 1;
}

/* The owner part of `from` into `to`. */
static __always_inline void copy_owner(struct sock_state *to,
				       const struct sock_state *from)
{
	to->owner_pid = from->owner_pid;
	to->owner_uid = from->owner_uid;
	to->owner_cgroup = from->owner_cgroup;
	__builtin_memcpy(to->owner_comm, from->owner_comm,
			 sizeof(to->owner_comm));
	to->owner_in_cgroup = from->owner_in_cgroup;
	to->owner_known = from->owner_known;
}

/*
 * The owner part of a transition, for the state in `st` (the map's, or the
 * socket's own with `local`): a new socket forgets what it had, except a
 * passive child, which starts with its listener's (cloned with the socket's
 * own storage; kept apart by port for the map); an owner moment takes the
 * current task. Then the owner, if known, goes into the event. Nothing
 * unless the program keeps owners (`keep_owner`).
 */
static __always_inline void track_owner(struct event *e, struct sock_state *st,
					bool local)
{
	struct listener_key key = { .netns = e->netns, .port = e->sport };
	bool child = e->oldstate == TCP_LISTEN && e->newstate == TCP_SYN_RECV;

	if (!keep_owner)
		return;
	if (child && !local) {
		struct sock_state *listener =
			bpf_map_lookup_elem(&listener_owners, &key);

		if (listener)
			copy_owner(st, listener);
		else
			st->owner_known = 0;
	} else if (!child && starts_anew(e)) {
		st->owner_known = 0;
	}
	if (is_owner_moment(e->oldstate, e->newstate)) {
		take_owner(st);
		if (e->newstate == TCP_LISTEN && !local)
			bpf_map_update_elem(&listener_owners, &key, st,
					    BPF_ANY);
	}
	if (e->oldstate == TCP_LISTEN && e->newstate == TCP_CLOSE && !local)
		bpf_map_delete_elem(&listener_owners, &key);
	if (!st->owner_known)
		return;
	e->flags |= EVENT_F_OWNER_KNOWN;
	if (st->owner_in_cgroup)
		e->flags |= EVENT_F_OWNER_IN_CGROUP;
	e->owner_pid = st->owner_pid;
	e->owner_uid = st->owner_uid;
	e->owner_cgroup = st->owner_cgroup;
	__builtin_memcpy(e->owner_comm, st->owner_comm, sizeof(e->owner_comm));
}

/* Whether the owner's name in `e` is the --comm filter's. */
static __always_inline bool same_comm(const struct event *e)
{
	int i;

	for (i = 0; i < TASK_COMM_LEN; i++) {
		if (e->owner_comm[i] != target_comm[i])
			return false;
		if (!target_comm[i])
			return true;
	}
	return true;
}

/* Whether the owner filters keep `e`. */
static __always_inline bool owner_matches(const struct event *e)
{
	if (!(e->flags & EVENT_F_OWNER_KNOWN))
		return false;
	if (filter_pid && !bpf_map_lookup_elem(&pids, &e->owner_pid))
		return false;
	if (filter_uid && e->owner_uid != target_uid)
		return false;
	if (filter_comm && !same_comm(e))
		return false;
	if (filter_cgroup && !(e->flags & EVENT_F_OWNER_IN_CGROUP))
		return false;
	return true;
}

/*
 * Sets e's time in its old state from the socket's previous transition, and
 * remembers this one in the `sockets` map, keyed by the socket's address.
 * src/durations.rs applies the same rules in user space.
 */
static __always_inline void track(struct event *e, __u64 now)
{
	struct sock_state *st, fresh = {};
	__u64 key = e->skaddr;

	st = bpf_map_lookup_elem(&sockets, &key);
	if (st && starts_anew(e))
		st->since_ns = 0;
	if (st && st->since_ns)
		e->delta_ns = now - st->since_ns;
	else
		e->flags |= EVENT_F_DURATION_UNKNOWN;
	if (e->newstate == TCP_CLOSE) {
		/* The address is reused by the next socket allocated there. */
		track_owner(e, st ? st : &fresh, false);
		if (st)
			bpf_map_delete_elem(&sockets, &key);
	} else if (st) {
		st->since_ns = now;
		track_owner(e, st, false);
	} else {
		fresh.since_ns = now;
		track_owner(e, &fresh, false);
		if (bpf_map_update_elem(&sockets, &key, &fresh, BPF_ANY)) {
			count(COUNTER_MAP_FULL);
			e->flags |= EVENT_F_MAP_FULL;
		}
	}
}

/*
 * track() with the state in the socket's own storage (use_sk_storage): the
 * same rules, without the map. A socket's storage lives until the socket is
 * freed; at CLOSE its time is only forgotten.
 */
static __always_inline void track_local(struct event *e, struct sock *sk,
					__u64 now)
{
	struct sock_state *st;
	bool kept;

	st = bpf_sk_storage_get(&sk_states, sk, 0,
				BPF_SK_STORAGE_GET_F_CREATE);
	if (!st) {
		/* The allocation failed: the kernel is short of memory. */
		count(COUNTER_MAP_FULL);
		e->flags |= EVENT_F_DURATION_UNKNOWN | EVENT_F_MAP_FULL;
		return;
	}
	kept = st->since_ns != 0;
	if (kept && !starts_anew(e))
		e->delta_ns = now - st->since_ns;
	else
		e->flags |= EVENT_F_DURATION_UNKNOWN;
	track_owner(e, st, true);
	if (e->newstate == TCP_CLOSE) {
		st->since_ns = 0;
		if (kept)
			count(COUNTER_LOCAL_STOPPED);
	} else {
		st->since_ns = now;
		if (!kept)
			count(COUNTER_LOCAL_STARTED);
	}
}

/*
 * The current task's thread group id and name: plain loads through the typed
 * task pointer where the kernel has bpf_get_current_task_btf, else two
 * helpers (the name one copies and pads byte by byte, at several times the
 * cost). Bytes after the name's NUL are not cleared; user space stops at the
 * NUL.
 */
static __always_inline void current_task(struct event *e)
{
	if (has_task_btf) {
		const struct task_struct *task = bpf_get_current_task_btf();
		const __u64 *name = (const __u64 *)task->comm;

		e->pid = task->tgid;
		((__u64 *)e->comm)[0] = name[0];
		((__u64 *)e->comm)[1] = name[1];
	} else {
		e->pid = bpf_get_current_pid_tgid() >> 32;
		bpf_get_current_comm(e->comm, TASK_COMM_LEN);
	}
}

/* The floor of the base-2 logarithm of v > 0. */
static __always_inline __u32 log2_u32(__u32 v)
{
	__u32 r, shift;

	r = (v > 0xFFFF) << 4;
	v >>= r;
	shift = (v > 0xFF) << 3;
	v >>= shift;
	r |= shift;
	shift = (v > 0xF) << 2;
	v >>= shift;
	r |= shift;
	shift = (v > 0x3) << 1;
	v >>= shift;
	r |= shift;
	return r | (v >> 1);
}

/* The summary's slot of a time in nanoseconds (see tcpstates.h). */
static __always_inline __u32 time_slot(__u64 ns)
{
	__u64 us = ns / 1000;
	__u32 slot;

	if (!us)
		return 0;
	slot = (us >> 32 ? log2_u32(us >> 32) + 32 : log2_u32(us)) + 1;
	return slot < SUMMARY_SLOTS ? slot : SUMMARY_SLOTS - 1;
}

/* A state's index in the summary: 0 for a number out of range. */
static __always_inline __u32 summary_state(int state)
{
	return state > 0 && state < SUMMARY_STATES ? state : 0;
}

/*
 * Summary mode: counts the transition and its time in the state left.
 * Atomic adds, as in count(): the tp_btf backup program can run in the
 * middle of the main one on the same CPU.
 */
static __always_inline void aggregate(const struct event *e)
{
	__u32 zero = 0;
	/* 64-bit, so that each bound is checked on the register that is used:
	 * with 32-bit indexes the compiler checks a zero-extended copy, whose
	 * bound verifiers before 6.12 or so do not carry over. */
	__u64 old = summary_state(e->oldstate), new = summary_state(e->newstate);
	__u64 slot;
	struct summary *s = bpf_map_lookup_elem(&summary, &zero);

	if (!s)
		return;
	/* The compiler turns the range checks into forms the verifier cannot
	 * follow: bound the indexes again where it must keep the bounds. */
	barrier_var(old);
	barrier_var(new);
	old &= SUMMARY_STATES - 1;
	new &= SUMMARY_STATES - 1;
	__sync_fetch_and_add(&s->transitions[old][new], 1);
	if (e->flags & EVENT_F_DURATION_UNKNOWN) {
		__sync_fetch_and_add(&s->unknown[old], 1);
		return;
	}
	slot = time_slot(e->delta_ns);
	barrier_var(slot);
	if (slot > SUMMARY_SLOTS - 1)
		slot = SUMMARY_SLOTS - 1;
	__sync_fetch_and_add(&s->slots[old][slot / 2][slot % 2], 1);
	__sync_fetch_and_add(&s->sum_ns[old], e->delta_ns);
}

/* The bit of `state` in state_mask; none for a number out of its range. */
static __always_inline __u32 state_bit(int state)
{
	return state >= 0 && state < 32 ? 1u << state : 0;
}

/*
 * Sends `e` through the ring buffer, as long as the fields it carries need:
 * the owner only when it is known, the current task's uid and cgroup only
 * with collect_owner.
 */
static __always_inline int send(struct event *e)
{
	__u64 sent, size, wakeup = 0;

	if (e->flags & EVENT_F_OWNER_KNOWN)
		size = EVENT_SIZE_OWNER;
	else if (collect_owner)
		size = EVENT_SIZE_TASK;
	else
		size = EVENT_SIZE_BASE;
	sent = count(COUNTER_EVENTS);
	if (wakeup_bytes)
		wakeup = (sent & wakeup_mask) == 0 &&
				 bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wakeup_bytes
			 ? BPF_RB_FORCE_WAKEUP
			 : BPF_RB_NO_WAKEUP;
	if (bpf_ringbuf_output(&events, e, size, wakeup))
		count(COUNTER_RINGBUF_DROPS);
	return 0;
}

/*
 * Common path. `e` holds skaddr, states, family, ports, addresses and netns;
 * the rest is filled here. `sk` is the socket as a BTF pointer (tp_btf), or
 * NULL where the program has none to give the storage helpers.
 */
static __always_inline int handle(struct event *e, struct sock *sk,
				  __u16 protocol)
{
	__u64 now;

	if (protocol != IPPROTO_TCP)
		return 0;
	if (target_family && e->family != target_family)
		return 0;
	/* A socket's namespace never changes: its times are not needed. */
	if (target_netns && e->netns != target_netns)
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
	if (track_sockets) {
		if (use_sk_storage && sk)
			track_local(e, sk, now);
		else
			track(e, now);
	}

	if (filter_sport && !bpf_map_lookup_elem(&sports, &e->sport))
		return 0;
	if (filter_dport && !bpf_map_lookup_elem(&dports, &e->dport))
		return 0;
	if (state_mask && !(state_mask & (state_bit(e->oldstate) |
					  state_bit(e->newstate))))
		return 0;
	/* An unknown time is not known to be long enough. */
	if (min_delta_ns && ((e->flags & EVENT_F_DURATION_UNKNOWN) ||
			     e->delta_ns < min_delta_ns))
		return 0;
	if ((filter_pid || filter_comm || filter_uid || filter_cgroup) &&
	    !owner_matches(e))
		return 0;

	if (summary_mode) {
		aggregate(e);
		return 0;
	}
	current_task(e);
	if (collect_owner) {
		e->uid = (__u32)bpf_get_current_uid_gid();
		e->cgroup_id = bpf_get_current_cgroup_id();
	}

	return send(e);
}

/* Family, ports, addresses and netns of a socket, as the tracepoint reports
 * them. */
static __always_inline void read_sock(struct event *e, const struct sock *sk)
{
	const struct inet_sock *inet = (const struct inet_sock *)sk;

	e->skaddr = (__u64)sk;
	e->family = BPF_CORE_READ(sk, __sk_common.skc_family);
	/*
	 * skc_num is already 0 when a socket reaches CLOSE (the port is
	 * released first); inet_sport still holds it, in network order.
	 */
	e->sport = bpf_ntohs(BPF_CORE_READ(inet, inet_sport));
	e->dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (e->family == AF_INET) {
		BPF_CORE_READ_INTO((__u32 *)e->saddr, inet, inet_saddr);
		BPF_CORE_READ_INTO((__u32 *)e->daddr, sk, __sk_common.skc_daddr);
	} else {
		BPF_CORE_READ_INTO(&e->saddr, sk,
				   __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(&e->daddr, sk,
				   __sk_common.skc_v6_daddr.in6_u.u6_addr8);
	}
	e->netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
}

/*
 * read_sock() with plain loads where it can: a tp_btf argument is a BTF
 * pointer to a struct sock, which the verifier lets the program dereference
 * directly (relocated by CO-RE), with no helper call per field. The
 * inet_sock fields lie beyond struct sock as the verifier types it, so the
 * caller passes the pointer bpf_skc_to_tcp_sock returned (which also checks
 * the protocol), and every field is reached from inet_sock: one type for
 * libbpf to look up at load, not three. A shorter program is also less
 * often interrupted by a softirq that changes another socket's state on the
 * same CPU, which the kernel then skips (a recursion miss).
 */
static __always_inline void read_sock_btf(struct event *e,
					  const struct inet_sock *inet)
{
	e->skaddr = (__u64)inet;
	e->family = inet->sk.__sk_common.skc_family;
	if (lean_reads) {
		if (filter_sport)
			e->sport = bpf_ntohs(inet->inet_sport);
		if (filter_dport)
			e->dport = bpf_ntohs(inet->sk.__sk_common.skc_dport);
		if (target_netns)
			e->netns = inet->sk.__sk_common.skc_net.net->ns.inum;
		return;
	}
	e->sport = bpf_ntohs(inet->inet_sport);
	e->dport = bpf_ntohs(inet->sk.__sk_common.skc_dport);
	if (e->family == AF_INET) {
		*(__u32 *)e->saddr = inet->inet_saddr;
		*(__u32 *)e->daddr = inet->sk.__sk_common.skc_daddr;
	} else {
		__builtin_memcpy(e->saddr, inet->sk.__sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8,
				 sizeof(e->saddr));
		__builtin_memcpy(e->daddr, inet->sk.__sk_common.skc_v6_daddr.in6_u.u6_addr8,
				 sizeof(e->daddr));
	}
	e->netns = inet->sk.__sk_common.skc_net.net->ns.inum;
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
	handle(&e, (struct sock *)sk, IPPROTO_TCP);
	return e.ts_ns;
}

/*
 * The kernel does not run a BPF program on a CPU where it is already running:
 * a softirq that interrupts handle_tp_btf and changes another socket's state
 * would be lost, counted only as the program's "recursion miss". So tp_btf
 * mode attaches two programs, in this order, and both run for every
 * transition. handle_tp_btf handles it and then records which transition it
 * was. handle_tp_btf_missed, right after it, finds that record and stops
 * there; when it does not, handle_tp_btf did not run for this transition
 * (the kernel skipped it: the transition interrupted it, anywhere from its
 * entry to its exit), and handles it instead.
 *
 * A few records, not one: when a softirq interrupts handle_tp_btf_missed
 * before it reads the record, handle_tp_btf handles the transitions of that
 * softirq (possibly several) and records them after the first, which must
 * still be found. So a record goes into a free slot (the backup frees its
 * record when it takes it), never over one still waiting for its backup
 * while a free one exists; and no record is left for a transition that
 * interrupts the backup, which the kernel skips for it. A stale record
 * filled the slots over time, and overwriting one still waiting made the
 * backup handle its transition a second time (a duplicate line, seen when
 * a host closed 36,000 connections at once). A transition is lost only if
 * it interrupts both programs; user space counts those from the kernel's
 * miss counter and COUNTER_NESTED.
 */
static __always_inline void record_handled(const struct sock *sk, int oldstate,
					   int newstate, __u64 now)
{
	__u32 zero = 0, i, slot;
	struct handled *h = bpf_map_lookup_elem(&last_handled, &zero);
	struct transition_id *id;

	if (!h || h->in_backup)
		return;
	/* Left out before handle() read the clock: rare (another protocol,
	 * family or namespace), so the read is paid only then. */
	if (!now)
		now = bpf_ktime_get_ns();
	slot = h->next % HANDLED_RING;
	for (i = 0; i < HANDLED_RING; i++) {
		id = &h->last[(h->next + i) % HANDLED_RING];
		if (!id->skaddr || now - id->at_ns > HANDLED_STALE_NS) {
			slot = (h->next + i) % HANDLED_RING;
			break;
		}
	}
	id = &h->last[slot];
	id->skaddr = (__u64)sk;
	id->oldstate = oldstate;
	id->newstate = newstate;
	id->at_ns = now;
	h->newest = slot;
	h->next = slot + 1;
}

/* Whether `id` is this transition; forgets it if so. */
static __always_inline bool take_if_same(struct transition_id *id,
					 const struct sock *sk, int oldstate,
					 int newstate)
{
	if (id->skaddr != (__u64)sk || id->oldstate != oldstate ||
	    id->newstate != newstate)
		return false;
	id->skaddr = 0;
	return true;
}

/* Whether handle_tp_btf recorded this transition; forgets it if so. Nearly
 * always it is the newest record, so that is looked at first. */
static __always_inline bool take_handled(struct handled *h,
					 const struct sock *sk, int oldstate,
					 int newstate)
{
	int i;

	if (take_if_same(&h->last[h->newest % HANDLED_RING], sk, oldstate,
			 newstate))
		return true;
	for (i = 0; i < HANDLED_RING; i++) {
		if (take_if_same(&h->last[i], sk, oldstate, newstate))
			return true;
	}
	return false;
}

SEC("?tp_btf/inet_sock_set_state")
int BPF_PROG(handle_tp_btf, const struct sock *sk, const int oldstate,
	     const int newstate)
{
	record_handled(sk, oldstate, newstate,
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
	if (!take_handled(h, sk, oldstate, newstate)) {
		count(COUNTER_NESTED);
		handle_btf(sk, oldstate, newstate);
	}
	h->in_backup = 0;
	return 0;
}

SEC("?tracepoint/sock/inet_sock_set_state")
int handle_tracepoint(struct trace_event_raw_inet_sock_set_state *ctx)
{
	struct event e = {};
	const struct sock *sk = BPF_CORE_READ(ctx, skaddr);

	e.skaddr = (__u64)sk;
	e.oldstate = BPF_CORE_READ(ctx, oldstate);
	e.newstate = BPF_CORE_READ(ctx, newstate);
	e.family = BPF_CORE_READ(ctx, family);
	/* Already in host order in the tracepoint. */
	e.sport = BPF_CORE_READ(ctx, sport);
	e.dport = BPF_CORE_READ(ctx, dport);
	if (e.family == AF_INET) {
		bpf_core_read(&e.saddr, sizeof(ctx->saddr), &ctx->saddr);
		bpf_core_read(&e.daddr, sizeof(ctx->daddr), &ctx->daddr);
	} else {
		BPF_CORE_READ_INTO(&e.saddr, ctx, saddr_v6);
		BPF_CORE_READ_INTO(&e.daddr, ctx, daddr_v6);
	}
	e.netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	/* A u8 before Linux 5.6, a u16 since (the fields after it moved). */
	return handle(&e, NULL, BPF_CORE_READ_BITFIELD_PROBED(ctx, protocol));
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
	struct event e = {};

	read_sock(&e, sk);
	/* On entry the socket still holds the state it leaves. */
	e.oldstate = BPF_CORE_READ(sk, __sk_common.skc_state);
	e.newstate = state;
	return handle(&e, NULL, BPF_CORE_READ_BITFIELD_PROBED(sk, sk_protocol));
}

static __always_inline int handle_kprobe_change(struct sock *sk, int oldstate,
						int newstate)
{
	struct event e = {};

	read_sock(&e, sk);
	e.oldstate = oldstate;
	e.newstate = newstate;
	return handle(&e, NULL, BPF_CORE_READ_BITFIELD_PROBED(sk, sk_protocol));
}

SEC("?kprobe/inet_csk_listen_start")
int BPF_KPROBE(handle_listen_start, struct sock *sk)
{
	__u64 tid = bpf_get_current_pid_tgid(), skaddr = (__u64)sk;

	bpf_map_update_elem(&listening, &tid, &skaddr, BPF_ANY);
	return handle_kprobe_change(sk, BPF_CORE_READ(sk, __sk_common.skc_state),
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
	return err ? handle_kprobe_change(sk, TCP_LISTEN, TCP_CLOSE) : 0;
}

SEC("?kretprobe/inet_csk_clone_lock")
int BPF_KRETPROBE(handle_clone_ret, struct sock *child)
{
	/* The child is a copy of the listener, so it leaves LISTEN. */
	return child ? handle_kprobe_change(child, TCP_LISTEN, TCP_SYN_RECV) : 0;
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
	if (track_sockets) {
		struct sock_state *st = bpf_map_lookup_elem(&sockets, &key);

		if (st && keep_owner)
			take_owner(st);
		return 0;
	}
	if (!collect_owner)
		return 0;
	read_sock(&e, newsk);
	if (target_family && e.family != target_family)
		return 0;
	if (target_netns && e.netns != target_netns)
		return 0;
	e.flags = EVENT_F_ACCEPTED;
	e.ts_ns = bpf_ktime_get_ns();
	current_task(&e);
	e.uid = (__u32)bpf_get_current_uid_gid();
	e.cgroup_id = bpf_get_current_cgroup_id();
	if (bpf_ringbuf_output(&events, &e, EVENT_SIZE_TASK,
			       wakeup_bytes ? BPF_RB_NO_WAKEUP : 0))
		count(COUNTER_RINGBUF_DROPS);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
