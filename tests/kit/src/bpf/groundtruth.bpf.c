// SPDX-License-Identifier: BSD-2-Clause
/*
 * Ground truth for benchmarks and loss tests: counts, in the kernel, the TCP
 * state transitions that involve one of a few ports (local or remote). A per-CPU
 * counter cannot lose, so it is what a tracer's output is compared with.
 * Written apart from tcpstates.bpf.c on purpose: it shares none of its code.
 */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

/* The ports, in host byte order; sized before load, filled after. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u16);
	__type(value, __u8);
} ports SEC(".maps");

/* [0]: transitions counted; [1]: times the backup program counted one. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u64);
} transitions SEC(".maps");

/* Per CPU: the transitions count_transition saw, until count_nested takes
 * them (the scheme of tcpstates.bpf.c, which explains it). */
struct transition_id {
	__u64 skaddr;
	__s32 oldstate;
	__s32 newstate;
	__u64 at_ns;
	__u32 ports;
};

#define SEEN_RING 32
#define SEEN_STALE_NS 1000000000ULL
struct seen {
	struct transition_id last[SEEN_RING];
	__u32 next;
	/* count_nested is running on this CPU. */
	volatile __u32 in_backup;
	/* count_transition is running on this CPU. */
	volatile __u32 in_main;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct seen);
} last_seen SEC(".maps");

static __always_inline void add(__u32 slot)
{
	__u64 *n = bpf_map_lookup_elem(&transitions, &slot);

	/* Atomic: a softirq can interrupt this program on the same CPU. */
	if (n)
		__sync_fetch_and_add(n, 1);
}

/*
 * With `distinct` (set before load), each (socket, old, new) is counted
 * once, however many times the two programs below see it: right where no
 * socket makes the same transition twice (a burst of closes, where no
 * socket is created), a count that a handling of one transition by both
 * programs (which happens, rarely, for reasons not found) cannot inflate.
 */
const volatile bool distinct = false;

struct transition_key {
	__u64 skaddr;
	__s32 oldstate;
	__s32 newstate;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1);
	__type(key, struct transition_key);
	__type(value, __u8);
} counted SEC(".maps");

static __always_inline void count(const struct sock *sk, int oldstate,
				  int newstate)
{
	const struct inet_sock *inet = (const struct inet_sock *)sk;
	struct transition_key key = {
		.skaddr = (__u64)sk,
		.oldstate = oldstate,
		.newstate = newstate,
	};
	__u16 sport, dport;
	__u8 one = 1;

	if (BPF_CORE_READ_BITFIELD_PROBED(sk, sk_protocol) != 6 /* TCP */)
		return;
	sport = bpf_ntohs(BPF_CORE_READ(inet, inet_sport));
	dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (!bpf_map_lookup_elem(&ports, &sport) &&
	    !bpf_map_lookup_elem(&ports, &dport))
		return;
	if (distinct &&
	    bpf_map_update_elem(&counted, &key, &one, BPF_NOEXIST))
		return;
	add(0);
	/* Slot 2: sockets that closed, but listeners (7: CLOSE, 10: LISTEN):
	 * the close records a tracer with -C must print. */
	if (newstate == 7 && oldstate != 10)
		add(2);
}

/*
 * The kernel skips a program that is already running on the CPU, so a
 * transition in a softirq that interrupts count_transition would not be
 * counted. count_nested, attached after it and run right after it, counts
 * exactly those: the transitions count_transition did not record as seen
 * (the scheme of tcpstates.bpf.c, which explains the ring of records).
 */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(count_transition, const struct sock *sk, const int oldstate,
	     const int newstate)
{
	__u32 zero = 0, i, slot;
	struct transition_id *id;
	struct seen *s = bpf_map_lookup_elem(&last_seen, &zero);
	__u64 now;

	if (!s)
		return 0;
	s->in_main = 1;
	count(sk, oldstate, newstate);
	/* The kernel skips count_nested for a transition that interrupts it:
	 * no record, nothing would take it. */
	if (s->in_backup)
		goto out;
	now = bpf_ktime_get_ns();
	slot = s->next % SEEN_RING;
	for (i = 0; i < SEEN_RING; i++) {
		id = &s->last[(s->next + i) % SEEN_RING];
		if (!id->skaddr || now - id->at_ns > SEEN_STALE_NS) {
			slot = (s->next + i) % SEEN_RING;
			break;
		}
	}
	id = &s->last[slot];
	id->skaddr = (__u64)sk;
	id->oldstate = oldstate;
	id->newstate = newstate;
	id->at_ns = now;
	id->ports = sk->__sk_common.skc_portpair;
	s->next = slot + 1;
out:
	s->in_main = 0;
	return 0;
}

/* Whether `s` holds this transition's record; takes it if so. */
static __always_inline bool take(struct seen *s, const struct sock *sk,
				 int oldstate, int newstate)
{
	int i;

	for (i = 0; i < SEEN_RING; i++) {
		if (s->last[i].skaddr == (__u64)sk &&
		    s->last[i].oldstate == oldstate &&
		    s->last[i].newstate == newstate &&
		    s->last[i].ports == sk->__sk_common.skc_portpair) {
			s->last[i].skaddr = 0;
			return true;
		}
	}
	return false;
}

/* CPUs whose records count_nested also looks at: set before load. */
const volatile __u32 cpus = 1;
#define MAX_CPUS 64

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(count_nested, const struct sock *sk, const int oldstate,
	     const int newstate)
{
	__u32 zero = 0, cpu;
	struct seen *s = bpf_map_lookup_elem(&last_seen, &zero), *other;
	bool taken;

	if (!s)
		return 0;
	s->in_backup = 1;
	/* In count_transition's run on this CPU (it raises in_main): the
	 * kernel skipped it, and a record found would be an earlier socket's
	 * at the same address. */
	taken = !s->in_main && take(s, sk, oldstate, newstate);
	/*
	 * Not on this CPU: the task may have moved to another CPU between the
	 * two programs (tracepoint probes can run preemptibly), leaving the
	 * record on the CPU count_transition ran on.
	 */
	for (cpu = 0; !taken && !s->in_main && cpu < cpus && cpu < MAX_CPUS; cpu++) {
		other = bpf_map_lookup_percpu_elem(&last_seen, &zero, cpu);
		if (other && other != s)
			taken = take(other, sk, oldstate, newstate);
	}
	if (!taken) {
		add(1);
		count(sk, oldstate, newstate);
	}
	s->in_backup = 0;
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
