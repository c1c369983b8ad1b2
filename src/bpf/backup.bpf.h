/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * tp_btf's backup program: how handle_tp_btf_missed knows which transitions
 * handle_tp_btf handled (the programs themselves are in tcpstates.bpf.c).
 */
#ifndef BACKUP_BPF_H
#define BACKUP_BPF_H

#include "maps.bpf.h"

/* Per CPU: the transitions handle_tp_btf handled last. */
struct transition_id {
	__u64 skaddr;
	__s32 oldstate;
	__s32 newstate;
	/* When handle_tp_btf handled it (0: it left it out at once). */
	__u64 at_ns;
	/* The socket's ports: a socket freed and another allocated at its
	 * address (within microseconds in a storm) makes the same transitions,
	 * on other ports. */
	__u32 ports;
};

/* The ones not yet taken by the backup, in a few slots: see below why more
 * than one. */
#define HANDLED_RING 32
struct handled {
	struct transition_id last[HANDLED_RING];
	/* Where the next record goes first (round robin). */
	__u32 next;
	/* The slot of the last record. */
	__u32 newest;
	/* handle_tp_btf_missed is running on this CPU: the kernel will skip it
	 * for a transition that interrupts it, so nothing would take that
	 * transition's record. */
	volatile __u32 in_backup;
	/* handle_tp_btf is running on this CPU: the kernel skips it for a
	 * transition that interrupts it, which the backup then handles without
	 * looking for a record. Both flags volatile: the compiler must store
	 * each where it is written, as an interrupt may read it anywhere. */
	volatile __u32 in_main;
};

/* A record older than this was left by a transition whose backup the
 * kernel skipped in the few instructions around in_backup; the slot is
 * free again. Both programs of one transition run far closer together,
 * even when the task is preempted between them. */
#define HANDLED_STALE_NS 1000000000ULL

/* At most this many CPUs' records are searched for a task that moved. */
#define HANDLED_CPUS_MAX 64

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct handled);
} last_handled SEC(".maps");

/*
 * The kernel does not run a BPF program on a CPU where it is already running:
 * a softirq that interrupts handle_tp_btf and changes another socket's state
 * would be lost, counted only as the program's "recursion miss". So tp_btf
 * mode attaches two programs, in this order, and both run for every
 * transition. handle_tp_btf raises in_main while it runs, handles the
 * transition and records which one it was. handle_tp_btf_missed, right
 * after it, handles the transition when handle_tp_btf did not run for it:
 *   - in_main is raised: the transition interrupted handle_tp_btf on this
 *     CPU, so the kernel skipped it;
 *   - else when it finds no record of it: the transition interrupted the
 *     few instructions the kernel runs around handle_tp_btf, before in_main
 *     is raised or after it is lowered.
 * Looking for a record only in that second case matters: a record whose
 * backup never came (the transition interrupted the backup, at its edges,
 * where in_backup is not raised yet or no longer) stays until it is stale,
 * and a socket allocated at the same address makes the same transitions.
 * Before in_main, the backup looked for a record of every transition, and a
 * record of the same socket address and states left by an earlier socket
 * made it take an interrupted transition as handled: the likely cause of 4
 * transitions of 20,000 lost, once, in a storm with every CPU busy (a
 * softirq that interrupts the backup's edges with a batch of transitions
 * leaves a record of each). The socket's ports in the record keep even the
 * second case from matching another connection.
 *
 * A few records, not one: when a softirq interrupts handle_tp_btf_missed
 * before it reads the record, handle_tp_btf handles the transitions of that
 * softirq (possibly several) and records them after the first, which must
 * still be found. So a record goes into a free slot (the backup frees its
 * record when it takes it), never over one still waiting for its backup
 * while a free one exists; and no record is left for a transition that
 * interrupts the backup, which the kernel skips for it. A transition is
 * lost only if it interrupts both programs; user space counts those from
 * the kernel's miss counter and COUNTER_NESTED.
 */
static __always_inline struct handled *enter_main(void)
{
	__u32 zero = 0;
	struct handled *h = bpf_map_lookup_elem(&last_handled, &zero);

	if (h)
		h->in_main = 1;
	return h;
}

/* handle_tp_btf's end: records the transition it handled, lowers in_main. */
static __always_inline void leave_main(struct handled *h, const struct sock *sk,
				       int oldstate, int newstate, __u64 now)
{
	__u32 i, slot;
	struct transition_id *id;

	if (!h)
		return;
	if (h->in_backup)
		goto out;
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
	id->ports = sk->__sk_common.skc_portpair;
	h->newest = slot;
	h->next = slot + 1;
out:
	h->in_main = 0;
}

/* Whether `id` is this transition; forgets it if so. */
static __always_inline bool take_if_same(struct transition_id *id,
					 const struct sock *sk, int oldstate,
					 int newstate)
{
	if (id->skaddr != (__u64)sk || id->oldstate != oldstate ||
	    id->newstate != newstate ||
	    id->ports != sk->__sk_common.skc_portpair)
		return false;
	id->skaddr = 0;
	return true;
}

/* Whether handle_tp_btf recorded this transition; forgets it if so. Nearly
 * always it is the newest record, so that is looked at first. */
static __always_inline bool take_any(struct handled *h, const struct sock *sk,
				     int oldstate, int newstate)
{
	int i;

	for (i = 0; i < HANDLED_RING; i++) {
		if (take_if_same(&h->last[i], sk, oldstate, newstate))
			return true;
	}
	return false;
}

static __always_inline bool take_handled(struct handled *h,
					 const struct sock *sk, int oldstate,
					 int newstate)
{
	__u32 zero = 0, cpu;
	struct handled *other;

	if (take_if_same(&h->last[h->newest % HANDLED_RING], sk, oldstate,
			 newstate) ||
	    take_any(h, sk, oldstate, newstate))
		return true;
	/*
	 * Tracepoint probes can run preemptibly (Linux 6.x): the task may have
	 * moved to another CPU between the two programs, its record left on
	 * the CPU handle_tp_btf ran on (seen as a duplicate line 2 ms later
	 * with every CPU busy). Reading another CPU's value needs 5.19.
	 */
	if (!settings.has_percpu_lookup)
		return false;
	for (cpu = 0; cpu < settings.cpus && cpu < HANDLED_CPUS_MAX; cpu++) {
		other = bpf_map_lookup_percpu_elem(&last_handled, &zero, cpu);
		if (other && other != h && take_any(other, sk, oldstate, newstate))
			return true;
	}
	return false;
}

#endif /* BACKUP_BPF_H */
