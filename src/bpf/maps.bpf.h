/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * The program's state: the settings user space fills before load, and the
 * maps. Maps that a run does not use are sized to one entry by user space
 * (preallocated maps take their memory at load).
 */
#ifndef MAPS_BPF_H
#define MAPS_BPF_H

#include "tcpstates.h"

const volatile struct settings settings = {};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	/* Resized by user space before load. */
	__uint(max_entries, 1 << 22);
} events SEC(".maps");

/* Socket address -> state, when track_sockets. Preallocated (the default
 * for a hash map): some kernels refuse run-time allocation from tracepoint
 * and kprobe programs. */
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

/* With close records on (close_records), the map instead: each socket's
 * state with its timeline, by address (close records always keep the
 * map, src/plan.rs). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u64);
	__type(value, struct close_state);
} close_sockets SEC(".maps");

/* Owner pids for filter_pid, filled by user space after load. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u8);
} pids SEC(".maps");

/* Listening sockets' owners, by namespace and port, for their children
 * when the state is kept in the `sockets` map (socket-local storage clones
 * it into the child). */
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
 * inet_csk_listen_start. */
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

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* What user space says of cgroups, by id (see struct group). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u64);
	__type(value, struct group);
} groups SEC(".maps");

/* Paths of cgroup v2 groups made while tracing, by id: the most recent
 * ones (LRU), for groups gone before user space could see them. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1);
	__type(key, __u64);
	__type(value, struct group_path);
} group_paths SEC(".maps");

/* The ids of cgroup v2 groups made while tracing, as they are made: user
 * space judges them at once, before a process in them can open a socket. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} group_events SEC(".maps");

/* The largest cgroup id `groups` is complete up to. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} groups_known SEC(".maps");

/* Summary mode's aggregates, filled per CPU and summed by user space: one
 * per label slot with --label-by (see enum group_labels), else one. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct summary);
} summary SEC(".maps");

/* --label-by port: each labelled local port's summary slot, by port (host
 * byte order); filled by user space. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u16);
	__type(value, __u16);
} port_labels SEC(".maps");

/* --label-by port without --label-ports: transitions of each service
 * port without a label yet, for user space to label the busiest. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u16);
	__type(value, __u64);
} port_busy SEC(".maps");

/* Summary mode's census (settings.census): one, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct census);
} census SEC(".maps");

/* Adds `n` to the census of `state` (a number out of range counts as 0,
 * as in the summary). */
static __always_inline void census_add(__u32 state, __s64 n)
{
	__u32 zero = 0;
	struct census *c;

	if (!settings.census)
		return;
	c = bpf_map_lookup_elem(&census, &zero);
	if (!c)
		return;
	if (state >= 16)
		state = 0;
	/* The mask says to the verifier what the test above does (the
	 * compiler may index with the unclamped register). */
	__sync_fetch_and_add(&c->sockets[state & 15], n);
}

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

#endif /* MAPS_BPF_H */
