/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * How each connection lived and why it ended: its role and start, the
 * states it left with the time in each (close records, -C), and at its
 * CLOSE the cause, judged from the state it leaves, the socket's error and
 * its flags, read once (see enum close_cause):
 *   - tcp_reset() sets sk_err before tcp_done(): ECONNREFUSED in SYN_SENT,
 *     EPIPE in CLOSE_WAIT, ECONNRESET otherwise (reset by the peer);
 *   - tcp_write_err() sets sk_err_soft or ETIMEDOUT before tcp_done(): the
 *     handshake (SYN_SENT), retransmissions (icsk_retransmits > 0) or
 *     keepalive or window probes (icsk_probes_out > 0) gave up;
 *   - tcp_close() with unread data, or with SO_LINGER 0, goes to CLOSE
 *     straight from ESTABLISHED or CLOSE_WAIT (and sends a reset after),
 *     as does a listener's close for the connections it never handed to
 *     accept() (they have no struct socket);
 *     in SYN_SENT, the connect is cancelled; no error is set before the
 *     transition (tcp_disconnect sets ECONNRESET only after it);
 *   - otherwise both FINs went through: FIN_WAIT2 (or TIME_WAIT) -> CLOSE
 *     when this side sent the first, LAST_ACK -> CLOSE when the peer did,
 *     CLOSING -> CLOSE when both did at once.
 * The reset tracepoints add nothing to this: tcp_receive_reset fires when
 * sk_err is about to say the same, and the reason tcp_send_reset gives
 * (6.10+) comes after the CLOSE transition it would explain.
 */
#ifndef CLOSE_BPF_H
#define CLOSE_BPF_H

#include "maps.bpf.h"
#include "sock.bpf.h"
#include "track.bpf.h"

#define TCP_FIN_WAIT2 5
#define TCP_TIME_WAIT 6
#define TCP_CLOSING 11

#define EPIPE 32
#define ECONNABORTED 103
#define ECONNRESET 104
#define ETIMEDOUT 110
#define ECONNREFUSED 111

/*
 * How the socket came to be, and when (close records, summary mode): a
 * transition that starts a socket says both; for a socket older than the
 * trace, the state it leaves may say its role.
 */
static __always_inline void track_role(const struct event *e,
				       struct sock_state *st, __u64 now)
{
	if (starts_anew(e)) {
		st->born_ns = now;
		if (e->newstate == TCP_SYN_SENT)
			st->role = ROLE_CLIENT;
		else if (e->newstate == TCP_LISTEN)
			st->role = ROLE_LISTENER;
		else if (e->newstate == TCP_SYN_RECV)
			st->role = ROLE_SERVER;
		else
			st->role = ROLE_UNKNOWN;
		return;
	}
	if (st->role != ROLE_UNKNOWN)
		return;
	if (e->oldstate == TCP_SYN_SENT)
		st->role = ROLE_CLIENT;
	else if (e->oldstate == TCP_SYN_RECV)
		st->role = ROLE_SERVER;
	else if (e->oldstate == TCP_LISTEN)
		st->role = ROLE_LISTENER;
}

/* Appends the state `e` leaves, and the time spent in it, to `t`; a
 * socket that starts anew starts a new timeline. */
static __always_inline void add_step(const struct event *e, struct timeline *t)
{
	__u32 i;

	if (starts_anew(e)) {
		t->steps = 0;
		t->more = 0;
	}
	i = t->steps;
	if (i < TIMELINE_STEPS) {
		t->steps = i + 1;
	} else {
		i = TIMELINE_STEPS - 1;
		if (t->more < 255)
			t->more++;
	}
	barrier_var(i);
	if (i >= TIMELINE_STEPS)
		return;
	t->left[i] = e->oldstate;
	if (e->flags & EVENT_F_BEFORE_TRACE)
		t->spent_ns[i] = TIME_AT_LEAST | e->ts_ns;
	else if (e->flags & EVENT_F_DURATION_UNKNOWN)
		t->spent_ns[i] = TIME_UNKNOWN;
	else
		t->spent_ns[i] = e->delta_ns;
}

/*
 * The cause of a CLOSE into `e` (see the top of this file): `tp` a
 * pointer LOAD reads fields through (a BTF pointer, or any with CO-RE).
 */
#define JUDGE_CLOSE(e, tp, LOAD)                                              \
	do {                                                                  \
		int err = LOAD(tp, inet_conn.icsk_inet.sk.sk_err);            \
		__u8 retransmits = LOAD(tp, inet_conn.icsk_retransmits);      \
		__u8 probes = LOAD(tp, inet_conn.icsk_probes_out);            \
		int old = (e)->oldstate;                                      \
		(e)->error = err;                                             \
		(e)->detail = DETAIL_NONE;                                    \
		if (err == ECONNREFUSED) {                                    \
			(e)->cause = CAUSE_REFUSED;                           \
		} else if (err == ECONNRESET || err == EPIPE) {               \
			(e)->cause = CAUSE_RESET;                             \
		} else if (err == ECONNABORTED) {                             \
			(e)->cause = CAUSE_ABORTED;                           \
		} else if (err && (old == TCP_SYN_SENT ||                     \
				   old == TCP_SYN_RECV)) {                    \
			(e)->cause = err == ETIMEDOUT ? CAUSE_TIMEOUT         \
						      : CAUSE_ERROR;          \
			(e)->detail = DETAIL_HANDSHAKE;                       \
		} else if (err) {                                             \
			(e)->cause = err == ETIMEDOUT || retransmits || probes \
					     ? CAUSE_TIMEOUT                  \
					     : CAUSE_ERROR;                   \
			if ((e)->cause == CAUSE_TIMEOUT)                      \
				(e)->detail = probes && !retransmits          \
						      ? DETAIL_KEEPALIVE      \
						      : DETAIL_RETRANSMISSION; \
		} else if (old == TCP_SYN_SENT) {                             \
			(e)->cause = CAUSE_CANCELLED;                         \
		} else if (old == TCP_LISTEN) {                               \
			(e)->cause = CAUSE_LISTENER;                          \
		} else if (old == TCP_FIN_WAIT2 || old == TCP_TIME_WAIT) {    \
			(e)->cause = CAUSE_NORMAL;                            \
			(e)->detail = DETAIL_LOCAL_FIRST;                     \
		} else if (old == TCP_LAST_ACK) {                             \
			(e)->cause = CAUSE_NORMAL;                            \
			(e)->detail = DETAIL_PEER_FIRST;                      \
		} else if (old == TCP_CLOSING) {                              \
			(e)->cause = CAUSE_NORMAL;                            \
			(e)->detail = DETAIL_BOTH;                            \
		} else if (old == TCP_ESTABLISHED || old == TCP_CLOSE_WAIT || \
			   old == TCP_SYN_RECV || old == TCP_FIN_WAIT1) {     \
			/* Unread bytes, less a FIN received, not read. */    \
			__s32 unread = LOAD(tp, rcv_nxt) -                    \
				       LOAD(tp, copied_seq) -                 \
				       (old == TCP_CLOSE_WAIT);               \
			__u64 flags = LOAD(tp, inet_conn.icsk_inet.sk.__sk_common.skc_flags); \
			long linger =                                         \
				LOAD(tp, inet_conn.icsk_inet.sk.sk_lingertime); \
			(e)->cause = CAUSE_ABORTED;                           \
			if (old != TCP_FIN_WAIT1 &&                           \
			    !LOAD(tp, inet_conn.icsk_inet.sk.sk_socket))      \
				(e)->detail = DETAIL_UNACCEPTED;              \
			else if (unread > 0)                                  \
				(e)->detail = DETAIL_UNREAD_DATA;             \
			else if ((flags >> bpf_core_enum_value(enum sock_flags, \
							       SOCK_LINGER)) & \
					 1 &&                                 \
				 !linger)                                     \
				(e)->detail = DETAIL_LINGER_ZERO;             \
		} else {                                                      \
			(e)->cause = CAUSE_UNKNOWN;                           \
		}                                                             \
	} while (0)

/*
 * tcp_sock's counters into the record `r`, each with its bit in
 * `present` where the kernel has the field.
 */
#define READ_COUNTERS(r, tp, LOAD)                                            \
	do {                                                                  \
		(r)->present = 0;                                             \
		(r)->bytes_acked = 0;                                         \
		(r)->bytes_received = 0;                                      \
		(r)->segs_in = 0;                                             \
		(r)->segs_out = 0;                                            \
		(r)->total_retrans = 0;                                       \
		(r)->srtt_us = 0;                                             \
		(r)->rtt_min_us = 0;                                          \
		if (bpf_core_field_exists(tp->bytes_acked)) {                 \
			(r)->bytes_acked = LOAD(tp, bytes_acked);             \
			(r)->present |= HAS_BYTES_ACKED;                      \
		}                                                             \
		if (bpf_core_field_exists(tp->bytes_received)) {              \
			(r)->bytes_received = LOAD(tp, bytes_received);       \
			(r)->present |= HAS_BYTES_RECEIVED;                   \
		}                                                             \
		if (bpf_core_field_exists(tp->segs_in)) {                     \
			(r)->segs_in = LOAD(tp, segs_in);                     \
			(r)->present |= HAS_SEGS_IN;                          \
		}                                                             \
		if (bpf_core_field_exists(tp->segs_out)) {                    \
			(r)->segs_out = LOAD(tp, segs_out);                   \
			(r)->present |= HAS_SEGS_OUT;                         \
		}                                                             \
		(r)->total_retrans = LOAD(tp, total_retrans);                 \
		(r)->present |= HAS_TOTAL_RETRANS;                            \
		(r)->srtt_us = LOAD(tp, srtt_us) >> 3;                        \
		(r)->present |= HAS_SRTT;                                     \
		if (bpf_core_field_exists(tp->rtt_min)) {                     \
			(r)->rtt_min_us = LOAD(tp, rtt_min.s[0].v);           \
			(r)->present |= HAS_RTT_MIN;                          \
		}                                                             \
	} while (0)

/*
 * Which FINs took a sequence number in the socket's counters, into the
 * record's flags: ours, sent (the socket left a state only a FIN enters)
 * and acknowledged (nothing after it unacknowledged); the peer's, taken
 * in by this socket (tcp_fin() sets SOCK_DONE; an orphan moves to
 * TIME_WAIT before it comes).
 */
#define READ_FINS(r, e, tp, LOAD)                                             \
	do {                                                                  \
		int old = (e)->oldstate;                                      \
		__u64 flags = LOAD(tp, inet_conn.icsk_inet.sk.__sk_common.skc_flags); \
		if ((old == TCP_FIN_WAIT1 || old == TCP_FIN_WAIT2 ||          \
		     old == TCP_CLOSING || old == TCP_LAST_ACK) &&            \
		    LOAD(tp, snd_una) == LOAD(tp, write_seq))                 \
			(r)->flags |= EVENT_F_FIN_ACKED;                      \
		if ((flags >> bpf_core_enum_value(enum sock_flags, SOCK_DONE)) & 1) \
			(r)->flags |= EVENT_F_FIN_RECEIVED;                   \
	} while (0)

/* The bit of `state` in a state mask; none for a number out of range. */
static __always_inline __u32 state_bit(int state)
{
	return state >= 0 && state < 32 ? 1u << state : 0;
}

/* Whether the filters keep the record of `e`'s socket, whose states left
 * are `t`'s: the ports and owner as for a transition, --state on any state
 * the socket was in, --min-ms on its lifetime, and --cause. */
static __always_inline bool close_passes(const struct event *e,
					 const struct timeline *t)
{
	__u32 states = state_bit(TCP_CLOSE);
	int i;

	if (settings.filter_sport && !bpf_map_lookup_elem(&sports, &e->sport))
		return false;
	if (settings.filter_dport && !bpf_map_lookup_elem(&dports, &e->dport))
		return false;
	if (settings.cause_mask && !(settings.cause_mask & (1u << e->cause)))
		return false;
	if (settings.min_delta_ns &&
	    ((e->flags & EVENT_F_LIFETIME_UNKNOWN) ||
	     e->lifetime_ns < settings.min_delta_ns))
		return false;
	if (settings.state_mask) {
		for (i = 0; i < TIMELINE_STEPS; i++)
			if (i < t->steps)
				states |= state_bit(t->left[i]);
		if (!(settings.state_mask & states))
			return false;
	}
	if ((settings.filter_pid || settings.filter_comm ||
	     settings.filter_uid || settings.filter_groups) &&
	    !owner_matches(e))
		return false;
	return true;
}

/* The wakeup flag for the ring buffer output that is this CPU's `sent`th
 * (see struct settings: wakeup_bytes). */
static __always_inline __u64 wakeup_flag(__u64 sent)
{
	if (!settings.wakeup_bytes)
		return 0;
	return (sent & settings.wakeup_mask) == 0 &&
			       bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >=
				       settings.wakeup_bytes
		       ? BPF_RB_FORCE_WAKEUP
		       : BPF_RB_NO_WAKEUP;
}

/* The close record of `e`'s socket, with timeline `t`, into the ring. */
static __always_inline void send_close(const struct event *e,
				       const struct timeline *t,
				       const struct tcp_sock *tp)
{
	struct close_record *r = bpf_ringbuf_reserve(&events, sizeof(*r), 0);

	if (!r) {
		count(COUNTER_RINGBUF_DROPS);
		return;
	}
	r->skaddr = e->skaddr;
	r->ts_ns = e->ts_ns;
	r->lifetime_ns = e->lifetime_ns;
	r->owner_cgroup = e->owner_cgroup;
	r->netns = e->netns;
	r->pid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(r->comm, sizeof(r->comm));
	r->owner_pid = e->owner_pid;
	r->owner_uid = e->owner_uid;
	__builtin_memcpy(r->owner_comm, e->owner_comm, sizeof(r->owner_comm));
	r->flags = e->flags;
	r->error = e->error;
	r->family = e->family;
	r->sport = e->sport;
	r->dport = e->dport;
	r->cause = e->cause;
	r->detail = e->detail;
	r->role = e->role;
	r->__pad[0] = r->__pad[1] = r->__pad[2] = 0;
	__builtin_memcpy(r->saddr, e->saddr, sizeof(r->saddr));
	__builtin_memcpy(r->daddr, e->daddr, sizeof(r->daddr));
	__builtin_memcpy(&r->t, t, sizeof(r->t));
	if (tp) {
		READ_COUNTERS(r, tp, LOAD_BTF);
		READ_FINS(r, e, tp, LOAD_BTF);
	} else {
		const struct tcp_sock *ktp = (const struct tcp_sock *)e->skaddr;

		READ_COUNTERS(r, ktp, LOAD_CORE);
		READ_FINS(r, e, ktp, LOAD_CORE);
	}
	bpf_ringbuf_submit(r, wakeup_flag(count(COUNTER_EVENTS)));
}

/*
 * Close records and summary mode: the socket's role and start; with close
 * records, the state it leaves into its timeline; at CLOSE, why it ended
 * and how long it lived into `e` (summary mode counts them with the
 * transition), and its record, if the filters keep it.
 */
static __always_inline void chronicle(struct event *e, struct sock_state *st,
				      const struct tcp_sock *tp, __u64 now)
{
	struct timeline *t = &((struct close_state *)st)->t;

	track_role(e, st, now);
	if (settings.close_records)
		add_step(e, t);
	if (e->newstate != TCP_CLOSE)
		return;
	e->closing = 1;
	e->role = st->role;
	if (st->born_ns)
		e->lifetime_ns = now - st->born_ns;
	else
		e->flags |= EVENT_F_LIFETIME_UNKNOWN;
	if (tp) {
		JUDGE_CLOSE(e, tp, LOAD_BTF);
	} else {
		const struct tcp_sock *ktp = (const struct tcp_sock *)e->skaddr;

		JUDGE_CLOSE(e, ktp, LOAD_CORE);
	}
	if (settings.close_records && close_passes(e, t))
		send_close(e, t, tp);
}

#endif /* CLOSE_BPF_H */
