/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * Summary mode: each transition that passes the filters is added to the
 * per-CPU `summary` (see tcpstates.h for its slots) instead of going
 * through the ring buffer.
 */
#ifndef SUMMARY_BPF_H
#define SUMMARY_BPF_H

#include "maps.bpf.h"

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

/* A connection's end: by cause and role, and its lifetime. */
static __always_inline void count_close(struct summary *s,
					const struct event *e)
{
	__u64 cause = e->cause, role = e->role, slot;

	barrier_var(cause);
	barrier_var(role);
	if (cause >= CLOSE_CAUSES || role >= CLOSE_ROLES)
		return;
	__sync_fetch_and_add(&s->closed[cause][role], 1);
	if (e->flags & EVENT_F_LIFETIME_UNKNOWN) {
		__sync_fetch_and_add(&s->lifetime_unknown, 1);
		return;
	}
	slot = time_slot(e->lifetime_ns);
	barrier_var(slot);
	if (slot > SUMMARY_SLOTS - 1)
		slot = SUMMARY_SLOTS - 1;
	__sync_fetch_and_add(&s->lifetime_slots[slot / 2][slot % 2], 1);
	__sync_fetch_and_add(&s->lifetime_sum_ns, e->lifetime_ns);
}

/*
 * --label-by port: the slot of the socket's service. A listener and the
 * connections it accepted are their local port's (if labelled, else
 * `other`, counted for the ranking of the busiest); a connection this host
 * opened is `client`; a socket older than the trace whose role its states
 * have not told is its port's if labelled, else `unknown`.
 */
static __always_inline __u32 port_label(const struct event *e)
{
	__u16 port = e->sport;
	__u16 *slot;
	__u64 one = 1, *busy;

	if (e->role == ROLE_CLIENT)
		return PORT_LABEL_CLIENT;
	slot = bpf_map_lookup_elem(&port_labels, &port);
	if (slot)
		return *slot;
	if (e->role == ROLE_UNKNOWN)
		return PORT_LABEL_UNKNOWN;
	if (settings.rank_ports) {
		busy = bpf_map_lookup_elem(&port_busy, &port);
		if (busy)
			__sync_fetch_and_add(busy, 1);
		else
			/* Full: this port is not ranked (counted under other). */
			bpf_map_update_elem(&port_busy, &port, &one, BPF_NOEXIST);
	}
	return PORT_LABEL_OTHER;
}

/*
 * Summary mode: counts the transition and its time in the state left, in
 * the owner's label's slot with --label-by, or the service port's.
 * Atomic adds, as in count(): the tp_btf backup program can run in the
 * middle of the main one on the same CPU.
 */
static __always_inline void aggregate(const struct event *e)
{
	__u32 slot_key = settings.label_groups ? e->label :
			 settings.label_ports  ? port_label(e) :
						 0;
	/* 64-bit, so that each bound is checked on the register that is used:
	 * with 32-bit indexes the compiler checks a zero-extended copy, whose
	 * bound verifiers before 6.12 or so do not carry over. */
	__u64 old = summary_state(e->oldstate), new = summary_state(e->newstate);
	__u64 slot;
	struct summary *s = bpf_map_lookup_elem(&summary, &slot_key);

	if (!s)
		return;
	/* The compiler turns the range checks into forms the verifier cannot
	 * follow: bound the indexes again where it must keep the bounds. */
	barrier_var(old);
	barrier_var(new);
	old &= SUMMARY_STATES - 1;
	new &= SUMMARY_STATES - 1;
	__sync_fetch_and_add(&s->transitions[old][new], 1);
	if (settings.count_closes && e->closing)
		count_close(s, e);
	if (e->flags & EVENT_F_BEFORE_TRACE) {
		__sync_fetch_and_add(&s->before_trace[old], 1);
		return;
	}
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

#endif /* SUMMARY_BPF_H */
