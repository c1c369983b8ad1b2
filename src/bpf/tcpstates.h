/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * The one definition of what the kernel side sends to user space. The BPF
 * program includes it; Rust gets the same layout from the skeleton's
 * generated `types` module. Fixed-width, naturally aligned fields only, with
 * explicit padding, so that both sides agree byte for byte.
 */
#ifndef TCPSTATES_H
#define TCPSTATES_H

#define TASK_COMM_LEN 16

/* Event flags. */
/* The time the socket entered `oldstate` is not known: the socket existed
 * before tracing started, or the per-socket map had no room for it. */
#define EVENT_F_DURATION_UNKNOWN 0x1
/* The per-socket map was full when this socket needed an entry. */
#define EVENT_F_MAP_FULL 0x2
/* The owner_* fields hold the socket's owner (kept by the kernel). */
#define EVENT_F_OWNER_KNOWN 0x4
/* The owner's cgroup is the --cgroup filter's or below it. */
#define EVENT_F_OWNER_IN_CGROUP 0x8
/* Not a transition: the current task accepted the socket (kprobe mode),
 * which makes it the owner. Only skaddr, family and the task are set. */
#define EVENT_F_ACCEPTED 0x10

/* Indexes of the in-kernel counters (a per-CPU array). */
enum counter {
	/* Transitions of the traced family that passed the filters. */
	COUNTER_EVENTS = 0,
	/* Events lost because the ring buffer was full. */
	COUNTER_RINGBUF_DROPS = 1,
	/* Per-socket map updates that failed (map full). */
	COUNTER_MAP_FULL = 2,
	/* Transitions handled by the tp_btf backup program, because the kernel
	 * skipped the main one for them (they interrupted it). */
	COUNTER_NESTED = 3,
	/* Sockets whose time the socket-local storage started keeping, and
	 * stopped keeping (they reached CLOSE): the difference is how many it
	 * keeps now (the storage cannot be walked like a map). */
	COUNTER_LOCAL_STARTED = 4,
	COUNTER_LOCAL_STOPPED = 5,
	COUNTER_MAX = 6,
};

/* Per-socket state kept between transitions: in the socket's own storage
 * (tp_btf, Linux 5.11+), or in a map keyed by the socket address. A struct,
 * not a bare timestamp, so that later fields (owner process, ...) fit
 * without changing the map's shape. */
struct sock_state {
	/* bpf_ktime_get_ns() when the socket entered its current state. */
	__u64 since_ns;
	/* The owner: the process that last changed the socket's state in a
	 * system call (see is_owner_moment); for a passive child, its
	 * listener's until then. Valid when owner_known. */
	__u64 owner_cgroup;
	__u32 owner_pid;
	__u32 owner_uid;
	char owner_comm[TASK_COMM_LEN];
	__u8 owner_known;
	/* The owner's cgroup is the --cgroup filter's or below it. */
	__u8 owner_in_cgroup;
	__u8 __pad[6];
};

/* One TCP state transition. */
struct event {
	__u64 skaddr;
	/* bpf_ktime_get_ns() at the transition. */
	__u64 ts_ns;
	/* Time spent in `oldstate`; meaningless when EVENT_F_DURATION_UNKNOWN. */
	__u64 delta_ns;
	/* Up to the first NUL (what follows it is not cleared). 8-aligned:
	 * copied as two u64. */
	char comm[TASK_COMM_LEN];
	/* Network namespace inode number of the socket (0 if unknown). */
	__u32 netns;
	/* Task on the CPU at the transition ("current"), thread group id. */
	__u32 pid;
	__s32 oldstate;
	__s32 newstate;
	__u32 flags;
	/* AF_INET or AF_INET6. */
	__u16 family;
	/* Host byte order. */
	__u16 sport;
	__u16 dport;
	__u16 __pad0;
	/* IPv4 addresses use the first 4 bytes; network byte order. */
	__u8 saddr[16];
	__u8 daddr[16];
	/*
	 * A record ends here (EVENT_SIZE_BASE) unless a field below is needed:
	 * the ring buffer then holds more events, and the reader has fewer
	 * bytes to read.
	 *
	 * With collect_owner: the current task's uid and cgroup v2 id, so user
	 * space can keep each socket's owner from its process-context
	 * transitions (the record ends after cgroup_id: EVENT_SIZE_TASK).
	 */
	__u32 uid;
	__u64 cgroup_id;
	/* With EVENT_F_OWNER_KNOWN: the socket's owner, when the kernel keeps
	 * the sockets' state (a filter is on); the whole struct is sent. */
	__u64 owner_cgroup;
	__u32 owner_pid;
	__u32 owner_uid;
	char owner_comm[TASK_COMM_LEN];
};

/* The sizes a record can have; user space reads a shorter one into a
 * zeroed struct event. */
#define EVENT_SIZE_BASE __builtin_offsetof(struct event, uid)
#define EVENT_SIZE_TASK __builtin_offsetof(struct event, owner_cgroup)
#define EVENT_SIZE_OWNER sizeof(struct event)

/*
 * Summary mode (-S, --metrics): what the kernel aggregates, per CPU, instead
 * of sending events. States are indexed by number; a number out of range
 * counts as 0. Slot 0 holds times under 1 us; slot i (1..SUMMARY_SLOTS-2)
 * times of [2^(i-1), 2^i) us; the last slot 2^32 us (71.6 minutes) and more.
 */
#define SUMMARY_STATES 16
#define SUMMARY_SLOTS 34

struct summary {
	/* Transitions, by old state and new state. */
	__u64 transitions[SUMMARY_STATES][SUMMARY_STATES];
	/* Transitions with a known time in the state left, by that state and
	 * the log2 slot of the time in microseconds: slot n at [n / 2][n % 2]
	 * (the same bytes as [SUMMARY_SLOTS]; the Rust skeleton derives
	 * Default, which Rust has only for arrays of up to 32 elements). */
	__u64 slots[SUMMARY_STATES][SUMMARY_SLOTS / 2][2];
	/* The sum of those times in nanoseconds, by state left. */
	__u64 sum_ns[SUMMARY_STATES];
	/* Transitions whose time in the state left is not known, by state. */
	__u64 unknown[SUMMARY_STATES];
};

#endif /* TCPSTATES_H */
