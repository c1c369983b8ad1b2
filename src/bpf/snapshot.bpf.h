/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * The snapshot at start (src/snapshot.rs): the TCP sockets that exist when
 * the trace begins, walked by two iterators once the transition programs
 * are attached (Linux 5.9+). First every process's open files
 * (iter/task_file): each TCP socket's holder into `holders`. Then each
 * network namespace's TCP sockets (iter/tcp, one walk per namespace,
 * entered by user space): a record per full socket for user space, with its
 * holder; and where the kernel keeps the sockets' state, the socket put
 * there as found, unless a transition put it there first.
 *
 * Since Linux 5.15 the walk holds each full socket's lock while it looks
 * at it, as the kernel does while it changes the socket's state: a
 * transition comes wholly before the walk reads the socket (its result is
 * what the walk finds, and its store entry is there) or wholly after (the
 * seeded entry is what it finds). Earlier kernels hold the hash bucket's
 * lock only: a transition on another CPU can race the walk.
 */
#ifndef SNAPSHOT_BPF_H
#define SNAPSHOT_BPF_H

#include "maps.bpf.h"
#include "sock.bpf.h"
#include "track.bpf.h"

#define S_IFMT 00170000
#define S_IFSOCK 0140000

/* The owner fields of `from` into `to` (a holder, a sock_state or a
 * snap_sock: the same names). */
#define COPY_OWNER_FIELDS(to, from)                                        \
	do {                                                               \
		(to)->owner_pid = (from)->owner_pid;                       \
		(to)->owner_uid = (from)->owner_uid;                       \
		(to)->owner_cgroup = (from)->owner_cgroup;                 \
		__builtin_memcpy((to)->owner_comm, (from)->owner_comm,     \
				 sizeof((to)->owner_comm));                \
	} while (0)

/* Each TCP socket's first holder found, by address; emptied as the socket
 * walk takes them (user space deletes what is left). Not preallocated:
 * sized for the host's sockets, it takes memory only while the snapshot
 * runs. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1);
	__type(key, __u64);
	__type(value, struct holder);
} holders SEC(".maps");

/* Holders the map could not take (no memory). */
volatile __u64 snap_holders_lost = 0;

SEC("?iter/task_file")
int snap_holders(struct bpf_iter__task_file *ctx)
{
	long err;
	struct task_struct *task = ctx->task;
	struct file *file = ctx->file;
	struct holder h = {};
	struct socket *sock;
	struct sock *sk;
	__u16 family;
	__u64 key;

	if (!task || !file)
		return 0;
	if ((BPF_CORE_READ(file, f_inode, i_mode) & S_IFMT) != S_IFSOCK)
		return 0;
	sock = (struct socket *)BPF_CORE_READ(file, private_data);
	sk = BPF_CORE_READ(sock, sk);
	if (!sk || BPF_CORE_READ_BITFIELD_PROBED(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return 0;
	key = (__u64)sk;
	h.owner_pid = BPF_CORE_READ(task, tgid);
	h.owner_uid = BPF_CORE_READ(task, cred, uid.val);
	h.owner_cgroup = BPF_CORE_READ(task, cgroups, dfl_cgrp, kn, id);
	BPF_CORE_READ_INTO(&h.owner_comm, task, comm);
	/* The first holder found stays (a socket passed to, or inherited
	 * by, other processes has several). */
	err = bpf_map_update_elem(&holders, &key, &h, BPF_NOEXIST);
	if (err && err != -17 /* EEXIST */)
		snap_holders_lost++;
	return 0;
}

/* `st` as a socket found in `state`, held by a process whose fields
 * (those of COPY_OWNER_FIELDS) are already in it when `held`. */
static __always_inline void found_as(struct sock_state *st, __u8 state,
				     bool held)
{
	st->state = state;
	st->seeded = 1;
	if (state == TCP_LISTEN)
		st->role = ROLE_LISTENER;
	if (held && settings.keep_owner) {
		st->owner_known = 1;
		if (settings.filter_groups || settings.label_groups)
			judge_group(st);
	}
}

/* The socket of `e`, found and made in `scratch`, into the map, unless a
 * transition put it there first; the census counts it. */
static __always_inline bool seed_map(const struct event *e,
				     struct close_state *scratch)
{
	struct listener_key lkey = { .netns = e->netns, .port = e->sport };
	struct sock_state *st = &scratch->s;
	__u64 key = e->skaddr;
	/* A transition that raced the walk (before 5.15) wins. */
	long err = update_state(&key, scratch, BPF_NOEXIST);

	if (err == -17 /* EEXIST */)
		return false;
	if (err) {
		ran_out_quietly();
		return false;
	}
	if (st->state == TCP_LISTEN && st->owner_known)
		bpf_map_update_elem(&listener_owners, &lkey, st, BPF_NOEXIST);
	census_add(st->state, 1);
	return true;
}

/*
 * The socket found in `state` into the kernel's store, unless a transition
 * put it there first, with its holder `h` as its owner: its first
 * transition then has a lower bound and an owner, a listener's children its
 * owner, and the census counts it. `scratch` is room for a map entry.
 */
static __always_inline bool seed(const struct event *e, struct sock *sk,
				 __u8 state, const struct holder *h,
				 struct close_state *scratch)
{
	struct sock_state *st;
	__u64 key = e->skaddr;

	if (!settings.use_sk_storage) {
		if (lookup_state(&key))
			return false;
		__builtin_memset(scratch, 0, sizeof(*scratch));
		if (h)
			COPY_OWNER_FIELDS(&scratch->s, h);
		found_as(&scratch->s, state, h);
		return seed_map(e, scratch);
	}
	st = bpf_sk_storage_get(&sk_states, sk, 0, 0);
	if (st && (st->since_ns || st->seeded))
		return false;
	if (!st)
		st = bpf_sk_storage_get(&sk_states, sk, 0,
					BPF_SK_STORAGE_GET_F_CREATE);
	if (!st) {
		ran_out_quietly();
		return false;
	}
	count(COUNTER_LOCAL_STARTED);
	if (h)
		COPY_OWNER_FIELDS(st, h);
	found_as(st, state, h);
	census_add(state, 1);
	return true;
}

/*
 * The netlink snapshot (src/snapshot/netlink.rs), for kernels without
 * socket iterators: user space dumps the sockets after the programs attach
 * and puts each one found in `diag`, by namespace and addresses, counted in
 * the census. A socket's first transition that finds it in no store takes
 * it from there: the socket is seeded as if the walk had found it (its
 * owner, its lower bound; the census's count moves to the store).
 *
 * The dump comes with no time, and also finds sockets the trace saw born:
 * while the window is open (from before the programs attach until every
 * socket found is in `diag`), a transition of a socket the dump may have
 * found (one in no store, or one born since the window opened, in the
 * state it was born in) leaves a DIAG_RACED mark, unless the dump's copy
 * is there; user space, finding the mark where it puts the copy, counts it
 * no more: the store counts the socket, whether the dump read it before or
 * after. A map update is atomic: the mark or the copy comes first, never
 * both. A copy of a socket the store has is taken back (once the window is
 * closed, too, at the first transition after the socket's birth).
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, struct diag_key);
	__type(value, struct diag_seed);
} diag SEC(".maps");

/* DIAG_WINDOW_OPEN while open; then when it closed (bpf_ktime_get_ns()):
 * a socket born before may have a copy in `diag`. */
#define DIAG_WINDOW_OPEN (~0ULL)

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} diag_window SEC(".maps");

/* The inode of the socket `sk` belongs to (0: none, an orphan). */
static __always_inline __u32 sock_inode(const struct sock *sk)
{
	struct socket *sock = BPF_CORE_READ(sk, sk_socket);

	if (!sock)
		return 0;
	/* struct socket_alloc begins with the socket, then its inode. */
	return BPF_CORE_READ((struct socket_alloc *)sock, vfs_inode.i_ino);
}

/* What the dump names the socket `sk` by, as it leaves `oldstate`: the
 * fields inet_diag reports (the bound local address, the port). */
static __always_inline void diag_key_of(struct diag_key *k,
					const struct sock *sk, int oldstate)
{
	const struct inet_sock *inet = (const struct inet_sock *)sk;

	k->family = BPF_CORE_READ(sk, __sk_common.skc_family);
	k->sport = bpf_ntohs(BPF_CORE_READ(inet, inet_sport));
	k->dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	k->netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	if (k->family == AF_INET) {
		*(__u32 *)k->saddr =
			BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
		*(__u32 *)k->daddr = BPF_CORE_READ(sk, __sk_common.skc_daddr);
	} else {
		BPF_CORE_READ_INTO(&k->saddr, sk,
				   __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(&k->daddr, sk,
				   __sk_common.skc_v6_daddr.in6_u.u6_addr8);
	}
	if (oldstate == TCP_LISTEN)
		k->inode = sock_inode(sk);
}

/* When the window closed (DIAG_WINDOW_OPEN: it is open; 0: never
 * opened). */
static __always_inline __u64 diag_window_closed(void)
{
	__u32 zero = 0;
	__u64 *at = bpf_map_lookup_elem(&diag_window, &zero);

	return at ? *at : 0;
}

/*
 * The dump's copy of the socket of `e`, taken out of `diag` (its state and
 * holder into scratch->s, zeroed otherwise); while the window is open, a
 * mark instead if the copy is not there yet. `scratch` is the caller's
 * room for a map entry; the key and the mark are made in it too. True when
 * a copy was taken: user space had counted it, and its count is taken back
 * here.
 */
static __always_inline bool diag_claim(const struct event *e,
				       struct close_state *scratch)
{
	struct diag_key *k = (struct diag_key *)&scratch->t;
	struct diag_seed *mark = (struct diag_seed *)&scratch->s;
	struct diag_seed *found;
	long err;

	_Static_assert(sizeof(struct diag_key) <= sizeof(struct timeline),
		       "the key fits the timeline's room");
	_Static_assert(sizeof(struct diag_seed) <= sizeof(struct sock_state),
		       "a mark fits the state's room");
	__builtin_memset(k, 0, sizeof(*k));
	diag_key_of(k, (const struct sock *)e->skaddr, e->oldstate);
	if (diag_window_closed() == DIAG_WINDOW_OPEN) {
		__builtin_memset(mark, 0, sizeof(*mark));
		mark->kind = DIAG_RACED;
		err = bpf_map_update_elem(&diag, k, mark, BPF_NOEXIST);
		if (!err)
			return false;
		if (err != -17 /* EEXIST: the dump's copy is there */) {
			ran_out_quietly();
			return false;
		}
	}
	found = bpf_map_lookup_elem(&diag, k);
	if (!found || found->kind != DIAG_SEED)
		return false;
	__builtin_memset(&scratch->s, 0, sizeof(scratch->s));
	if (found->holder_known) {
		COPY_OWNER_FIELDS(&scratch->s, found);
		/* Held: owner_known is set by found_as when owners are kept. */
		scratch->s.owner_known = 1;
	}
	scratch->s.state = found->state;
	/* Whoever deletes it has it. */
	if (bpf_map_delete_elem(&diag, k))
		return false;
	__builtin_memset(&scratch->t, 0, sizeof(scratch->t));
	census_add(scratch->s.state, -1);
	return true;
}

/*
 * The socket of `e`, in no store (the map: src/plan.rs keeps no other with
 * this snapshot), as the dump found it: seeded, counted by the store. True
 * when it was.
 */
static __always_inline bool diag_take(const struct event *e,
				      struct close_state *scratch)
{
	bool held;

	if (!diag_claim(e, scratch))
		return false;
	held = scratch->s.owner_known;
	scratch->s.owner_known = 0;
	found_as(&scratch->s, scratch->s.state, held);
	return seed_map(e, scratch);
}

/*
 * The socket of `e` is in the store, `st`: a copy the dump made of it is
 * not counted (only one born before the window closed, in the state it was
 * born in, can have one: the census is summary mode's, which keeps
 * born_ns).
 */
static __always_inline void diag_forget(const struct event *e,
					const struct sock_state *st,
					struct close_state *scratch)
{
	if (!st->born_ns || st->since_ns != st->born_ns || starts_anew(e) ||
	    st->born_ns >= diag_window_closed())
		return;
	diag_claim(e, scratch);
}

/*
 * The full socket behind an iterator's `skc` into `r` (NULL for TIME_WAIT
 * and request sockets: no transition of theirs is traced), unless the
 * family and namespace filters leave it out.
 */
static __always_inline struct tcp_sock *walked(struct sock_common *skc,
					       struct snap_sock *r)
{
	struct event e = {};
	struct tcp_sock *tp;

	if (!skc)
		return NULL;
	tp = bpf_skc_to_tcp_sock(skc);
	if (!tp)
		return NULL;
	read_sock_whole(&e, (const struct inet_sock *)tp);
	if ((settings.target_family && e.family != settings.target_family) ||
	    (settings.target_netns && e.netns != settings.target_netns))
		return NULL;
	r->skaddr = e.skaddr;
	r->ts_ns = bpf_ktime_get_ns();
	r->state = tp->inet_conn.icsk_inet.sk.__sk_common.skc_state;
	r->family = e.family;
	r->sport = e.sport;
	r->dport = e.dport;
	r->netns = e.netns;
	__builtin_memcpy(r->saddr, e.saddr, sizeof(r->saddr));
	__builtin_memcpy(r->daddr, e.daddr, sizeof(r->daddr));
	return tp;
}

/* What the snapshot walked, when it sends no records. */
volatile __u64 snap_walked = 0;
volatile __u64 snap_held = 0;

SEC("?iter/tcp")
int snap_sockets(struct bpf_iter__tcp *ctx)
{
	struct close_state scratch;
	struct snap_sock r = {};
	struct event e = {};
	struct holder *h;
	struct tcp_sock *tp = walked(ctx->sk_common, &r);

	if (!tp)
		return 0;
	e.skaddr = r.skaddr;
	e.netns = r.netns;
	e.sport = r.sport;
	h = bpf_map_lookup_elem(&holders, &r.skaddr);
	if (h) {
		r.flags |= SNAP_F_HOLDER;
		COPY_OWNER_FIELDS(&r, h);
	}
	if (settings.track_sockets &&
	    seed(&e, (struct sock *)tp, r.state, h, &scratch))
		r.flags |= SNAP_F_SEEDED;
	if (settings.snap_records) {
		/* A record that does not fit the walk's buffer is made again,
		 * by a second run for the socket once user space has read the
		 * buffer: the holder goes only with a record that went. */
		if (bpf_seq_write(ctx->meta->seq, &r, sizeof(r)) == 0 && h)
			bpf_map_delete_elem(&holders, &r.skaddr);
	} else {
		if (h)
			bpf_map_delete_elem(&holders, &r.skaddr);
		/* One walk at a time: user space runs them in turn. */
		snap_walked++;
		if (h)
			snap_held++;
	}
	return 0;
}

/* Whether the owner filters keep a socket whose state is `st`. */
static __always_inline bool stuck_owner_matches(const struct sock_state *st)
{
	struct event e = {};

	if (!st || !st->owner_known)
		return false;
	e.flags = EVENT_F_OWNER_KNOWN;
	if (st->owner_in_groups)
		e.flags |= EVENT_F_OWNER_IN_GROUPS;
	e.owner_pid = st->owner_pid;
	e.owner_uid = st->owner_uid;
	__builtin_memcpy(e.owner_comm, st->owner_comm, sizeof(e.owner_comm));
	return owner_matches(&e);
}

/*
 * --stuck: the sockets in a watched state, walked again every few seconds;
 * where the kernel keeps the times, only those in it for at least
 * stuck_ns (or since before the trace), with their owner.
 */
SEC("?iter/tcp")
int walk_stuck(struct bpf_iter__tcp *ctx)
{
	struct snap_sock r = {};
	struct sock_state *st;
	struct tcp_sock *tp = walked(ctx->sk_common, &r);
	__u64 key;

	if (!tp || !(settings.stuck_mask & (1u << (r.state & 31))))
		return 0;
	if (settings.filter_sport && !bpf_map_lookup_elem(&sports, &r.sport))
		return 0;
	if (settings.filter_dport && !bpf_map_lookup_elem(&dports, &r.dport))
		return 0;
	if (settings.track_sockets) {
		key = r.skaddr;
		if (settings.use_sk_storage)
			st = bpf_sk_storage_get(&sk_states, (struct sock *)tp,
						0, 0);
		else
			st = lookup_state(&key);
		/* A store entry in another state missed a transition: its
		 * time is not the socket's. */
		if (st && st->state != r.state)
			st = NULL;
		if (st && st->since_ns) {
			if (r.ts_ns - st->since_ns < settings.stuck_ns)
				return 0;
			r.since_ns = st->since_ns;
			r.flags |= SNAP_F_SINCE;
		} else if (st && st->seeded) {
			r.flags |= SNAP_F_BEFORE_TRACE;
		}
		if (st && st->owner_known) {
			r.flags |= SNAP_F_OWNER;
			COPY_OWNER_FIELDS(&r, st);
		}
		if ((settings.filter_pid || settings.filter_comm ||
		     settings.filter_uid || settings.filter_groups) &&
		    !stuck_owner_matches(st))
			return 0;
	}
	bpf_seq_write(ctx->meta->seq, &r, sizeof(r));
	return 0;
}

#endif /* SNAPSHOT_BPF_H */
