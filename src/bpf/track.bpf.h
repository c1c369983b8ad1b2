/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * Each socket's time of its last transition and its owner, kept by the
 * kernel when a filter drops transitions user space would need (or in
 * summary mode): in the socket's own storage (use_sk_storage) or in the
 * `sockets` map keyed by the socket's address. src/track.rs applies the
 * same rules in user space; the owner moments are the table in
 * is_owner_moment(), which Rust reads through the same definition.
 */
#ifndef TRACK_BPF_H
#define TRACK_BPF_H

#include "maps.bpf.h"

#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_FIN_WAIT1 4
#define TCP_CLOSE 7
#define TCP_CLOSE_WAIT 8
#define TCP_LAST_ACK 9
#define TCP_LISTEN 10

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
 * softirq: then the current task is the socket's owner. src/track.rs has
 * the same list.
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

/*
 * What `groups` says of the owner's cgroup, into `st`: whether it passes
 * the group filters and its label, or that it is undecided (a cgroup made
 * since user space last walked the hierarchy; it walks again when told).
 */
static __always_inline void judge_group(struct sock_state *st)
{
	struct group *g = bpf_map_lookup_elem(&groups, &st->owner_cgroup);
	__u32 zero = 0;
	__u64 *known;

	st->owner_undecided = 0;
	if (g) {
		st->owner_in_groups = g->in_groups;
		st->owner_label = g->label;
		return;
	}
	st->owner_in_groups = 0;
	st->owner_label = GROUP_LABEL_NONE;
	known = bpf_map_lookup_elem(&groups_known, &zero);
	if (!known || st->owner_cgroup > *known) {
		st->owner_undecided = 1;
		st->owner_label = GROUP_LABEL_UNKNOWN;
		count(COUNTER_NEW_GROUPS);
	}
}

/* The current task becomes the owner in `st`. */
static __always_inline void take_owner(struct sock_state *st)
{
	st->owner_pid = bpf_get_current_pid_tgid() >> 32;
	st->owner_uid = (__u32)bpf_get_current_uid_gid();
	st->owner_cgroup = bpf_get_current_cgroup_id();
	bpf_get_current_comm(st->owner_comm, sizeof(st->owner_comm));
	st->owner_known = 1;
	if (settings.filter_groups || settings.label_groups)
		judge_group(st);
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
	to->owner_in_groups = from->owner_in_groups;
	to->owner_undecided = from->owner_undecided;
	to->owner_label = from->owner_label;
	to->owner_known = from->owner_known;
}

/*
 * The owner part of a transition, for the state in `st` (the map's, or the
 * socket's own with `local`): a new socket forgets what it had, except a
 * passive child, which starts with its listener's (cloned with the socket's
 * own storage; kept apart by port for the map); an owner moment takes the
 * current task. Then the owner, if known, goes into the event. Nothing
 * unless the program keeps owners.
 */
static __always_inline void track_owner(struct event *e, struct sock_state *st,
					bool local)
{
	struct listener_key key = { .netns = e->netns, .port = e->sport };
	bool child = e->oldstate == TCP_LISTEN && e->newstate == TCP_SYN_RECV;

	if (!settings.keep_owner)
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
	/* Judged too early: user space may have walked the hierarchy since. */
	if (st->owner_undecided)
		judge_group(st);
	e->flags |= EVENT_F_OWNER_KNOWN;
	if (st->owner_in_groups)
		e->flags |= EVENT_F_OWNER_IN_GROUPS;
	if (st->owner_undecided)
		e->flags |= EVENT_F_OWNER_UNDECIDED;
	e->label = st->owner_label;
	e->owner_pid = st->owner_pid;
	e->owner_uid = st->owner_uid;
	e->owner_cgroup = st->owner_cgroup;
	__builtin_memcpy(e->owner_comm, st->owner_comm, sizeof(e->owner_comm));
}

/* The socket's state in the map, by address: the map close records use
 * when on (the verifier keeps only the branch the settings take). */
static __always_inline struct sock_state *lookup_state(__u64 *key)
{
	if (settings.close_records)
		return bpf_map_lookup_elem(&close_sockets, key);
	return bpf_map_lookup_elem(&sockets, key);
}

static __always_inline long update_state(__u64 *key, struct close_state *value,
					 __u64 flags)
{
	if (settings.close_records)
		return bpf_map_update_elem(&close_sockets, key, value, flags);
	return bpf_map_update_elem(&sockets, key, value, flags);
}

static __always_inline void delete_state(__u64 *key)
{
	if (settings.close_records)
		bpf_map_delete_elem(&close_sockets, key);
	else
		bpf_map_delete_elem(&sockets, key);
}

/*
 * Set once the per-socket store had no room (the map full, or no memory for
 * a socket's storage): from then on a socket missing from it may have been
 * seen before, and no time is claimed as older than the trace.
 */
volatile __u8 store_ran_out = 0;

static __always_inline void ran_out_quietly(void)
{
	count(COUNTER_MAP_FULL);
	store_ran_out = 1;
}

static __always_inline void ran_out(struct event *e)
{
	ran_out_quietly();
	e->flags |= EVENT_F_MAP_FULL;
}

/* A socket's role, timeline and, at CLOSE, its end (close.bpf.h). */
static __always_inline void chronicle(struct event *e, struct sock_state *st,
				      const struct tcp_sock *tp, __u64 now);

/* A socket in no store, as the netlink snapshot found it, seeded
 * (snapshot.bpf.h). */
static __always_inline bool diag_take(const struct event *e,
				      struct close_state *scratch);
static __always_inline void diag_forget(const struct event *e,
					const struct sock_state *st,
					struct close_state *scratch);

/*
 * The one tracker: sets e's time in its old state from the socket's
 * previous transition and remembers this one. With the socket's own storage
 * (`sk` given and use_sk_storage) the state lives until the socket is
 * freed, and CLOSE only forgets its time; with the map, CLOSE drops the
 * entry, since the address is reused by the next socket allocated there.
 * With close records or summary mode, a socket's CLOSE is judged here,
 * while its state is at hand (close.bpf.h); `tp` is the socket as a BTF
 * pointer (tp_btf), or NULL.
 */
static __always_inline void track(struct event *e, struct sock *sk,
				  const struct tcp_sock *tp, __u64 now)
{
	struct sock_state *st, *at;
	struct close_state fresh;
	bool local = settings.use_sk_storage && sk;
	__u64 key = e->skaddr;
	bool kept;

	if (local) {
		/* Never with close records or summary mode: they keep the
		 * map (src/plan.rs). */
		st = bpf_sk_storage_get(&sk_states, sk, 0,
					BPF_SK_STORAGE_GET_F_CREATE);
		if (!st) {
			/* The allocation failed: the kernel is short of memory. */
			ran_out(e);
			e->flags |= EVENT_F_DURATION_UNKNOWN;
			return;
		}
	} else {
		st = lookup_state(&key);
		if (!st && settings.diag_seeds && !starts_anew(e) &&
		    diag_take(e, &fresh))
			st = lookup_state(&key);
		else if (st && settings.diag_seeds && settings.census)
			diag_forget(e, st, &fresh);
	}
	kept = st && st->since_ns;
	if (kept && !starts_anew(e))
		e->delta_ns = now - st->since_ns;
	else if (!starts_anew(e) && (st ? st->seeded : !store_ran_out))
		/* Found by the snapshot and not seen since; or never seen,
		 * and every socket seen is in the store: it has been in its
		 * old state since before the trace. */
		e->flags |= EVENT_F_DURATION_UNKNOWN | EVENT_F_BEFORE_TRACE;
	else
		e->flags |= EVENT_F_DURATION_UNKNOWN;
	if (!st)
		__builtin_memset(&fresh, 0, sizeof(fresh));
	at = st ? st : &fresh.s;
	track_owner(e, at, local);
	if (settings.close_records || settings.count_closes)
		chronicle(e, at, tp, now);
	/* The service port's label needs every transition's role. */
	if (settings.label_ports)
		e->role = at->role;
	if (local) {
		if (e->newstate == TCP_CLOSE && (kept || st->seeded))
			count(COUNTER_LOCAL_STOPPED);
		else if (e->newstate != TCP_CLOSE && !kept && !st->seeded)
			count(COUNTER_LOCAL_STARTED);
		st->since_ns = e->newstate == TCP_CLOSE ? 0 : now;
		st->state = e->newstate;
		st->seeded = 0;
		return;
	}
	/* The census: the socket leaves the state it was counted in (what
	 * the store says: an entry left by a socket whose CLOSE went unseen
	 * is that socket's), and is counted in its new one while kept. */
	if (st)
		census_add(st->state, -1);
	if (e->newstate == TCP_CLOSE) {
		if (st)
			delete_state(&key);
		return;
	}
	if (st) {
		st->since_ns = now;
		st->state = e->newstate;
		st->seeded = 0;
	} else {
		fresh.s.since_ns = now;
		fresh.s.state = e->newstate;
		if (update_state(&key, &fresh, BPF_ANY)) {
			ran_out(e);
			return;
		}
	}
	census_add(e->newstate, 1);
}

/* Whether the owner's name in `e` is the --comm filter's. */
static __always_inline bool same_comm(const struct event *e)
{
	int i;

	for (i = 0; i < TASK_COMM_LEN; i++) {
		if (e->owner_comm[i] != settings.target_comm[i])
			return false;
		if (!settings.target_comm[i])
			return true;
	}
	return true;
}

/* Whether the owner filters keep `e`. */
static __always_inline bool owner_matches(const struct event *e)
{
	if (!(e->flags & EVENT_F_OWNER_KNOWN))
		return false;
	if (settings.filter_pid && !bpf_map_lookup_elem(&pids, &e->owner_pid))
		return false;
	if (settings.filter_uid && e->owner_uid != settings.target_uid)
		return false;
	if (settings.filter_comm && !same_comm(e))
		return false;
	if (settings.filter_groups && !(e->flags & EVENT_F_OWNER_IN_GROUPS)) {
		if (!(e->flags & EVENT_F_OWNER_UNDECIDED))
			return false;
		/* Events go to user space, which decides; a summary cannot
		 * wait, so it says how many it left out. */
		if (settings.summary_mode) {
			count(COUNTER_UNDECIDED);
			return false;
		}
	}
	return true;
}

#endif /* TRACK_BPF_H */
