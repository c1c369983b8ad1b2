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

/* Event flags (an enum, so that the skeleton exports them to Rust). */
enum event_flags {
	/* The time the socket entered `oldstate` is not known: the socket
	 * existed before tracing started, or the per-socket map had no room
	 * for it. */
	EVENT_F_DURATION_UNKNOWN = 0x1,
	/* The per-socket map was full when this socket needed an entry. */
	EVENT_F_MAP_FULL = 0x2,
	/* The owner_* fields hold the socket's owner (kept by the kernel). */
	EVENT_F_OWNER_KNOWN = 0x4,
	/* The owner's cgroup passes --cgroup, --unit and --container. */
	EVENT_F_OWNER_IN_GROUPS = 0x8,
	/* Not a transition: the current task accepted the socket (kprobe
	 * mode), which makes it the owner. Only skaddr, family and the task
	 * are set. */
	EVENT_F_ACCEPTED = 0x10,
	/* The owner's cgroup was made since user space last filled `groups`:
	 * user space decides whether it passes the group filters. */
	EVENT_F_OWNER_UNDECIDED = 0x20,
	/* A close record's lifetime is not known: the socket's start came
	 * before the trace. */
	EVENT_F_LIFETIME_UNKNOWN = 0x40,
	/* Close records: this side's FIN was sent and acknowledged (it takes
	 * one of bytes_acked), and the peer's FIN reached this socket (one of
	 * bytes_received). */
	EVENT_F_FIN_ACKED = 0x80,
	EVENT_F_FIN_RECEIVED = 0x100,
	/* With EVENT_F_DURATION_UNKNOWN: the socket has been in `oldstate`
	 * since before the trace began (no transition of it was seen, and the
	 * per-socket store never ran out), so its time there is at least the
	 * trace's age. */
	EVENT_F_BEFORE_TRACE = 0x200,
};

/*
 * Why a connection ended, judged in the kernel at its CLOSE transition from
 * the state it left, the socket's error and its flags (see close.bpf.h).
 */
enum close_cause {
	/* The states and the error fit none below. */
	CAUSE_UNKNOWN = 0,
	/* Both FINs went through (detail: which side sent the first). */
	CAUSE_NORMAL = 1,
	/* A reset answered the SYN (ECONNREFUSED). */
	CAUSE_REFUSED = 2,
	/* The handshake, a retransmission or keepalive gave up (detail). */
	CAUSE_TIMEOUT = 3,
	/* The peer reset the connection (ECONNRESET, EPIPE). */
	CAUSE_RESET = 4,
	/* This side closed it with a reset (detail: unread data, SO_LINGER
	 * 0, never accepted, or else). */
	CAUSE_ABORTED = 5,
	/* The application closed it during SYN_SENT. */
	CAUSE_CANCELLED = 6,
	/* A listening socket closed. */
	CAUSE_LISTENER = 7,
	/* Another error ended it (an ICMP error during the handshake, say):
	 * the record carries the errno. */
	CAUSE_ERROR = 8,
	CLOSE_CAUSES = 9,
};

/* What else the cause says. */
enum close_detail {
	DETAIL_NONE = 0,
	/* CAUSE_NORMAL: who sent the first FIN. */
	DETAIL_LOCAL_FIRST = 1,
	DETAIL_PEER_FIRST = 2,
	DETAIL_BOTH = 3,
	/* CAUSE_TIMEOUT: what gave up. */
	DETAIL_HANDSHAKE = 4,
	DETAIL_RETRANSMISSION = 5,
	DETAIL_KEEPALIVE = 6,
	/* CAUSE_ABORTED: why a reset was sent. */
	DETAIL_UNREAD_DATA = 7,
	DETAIL_LINGER_ZERO = 8,
	/* ... its listener closed before the application accepted it. */
	DETAIL_UNACCEPTED = 9,
};

/* How the socket came to be. */
enum close_role {
	/* Its start came before the trace, and its states do not say. */
	ROLE_UNKNOWN = 0,
	/* Active open (connect). */
	ROLE_CLIENT = 1,
	/* Passive open (accepted from a listener). */
	ROLE_SERVER = 2,
	ROLE_LISTENER = 3,
	CLOSE_ROLES = 4,
};

/* Which of a close record's counters the kernel has (older kernels lack
 * some tcp_sock fields: absent, never zero). */
enum close_counters {
	HAS_BYTES_ACKED = 0x1,
	HAS_BYTES_RECEIVED = 0x2,
	HAS_SEGS_IN = 0x4,
	HAS_SEGS_OUT = 0x8,
	HAS_TOTAL_RETRANS = 0x10,
	HAS_SRTT = 0x20,
	HAS_RTT_MIN = 0x40,
};

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
	/* Owners judged in a cgroup made since `groups` was filled: user space
	 * walks the hierarchy again when this grows. */
	COUNTER_NEW_GROUPS = 6,
	/* Summary mode: transitions the group filters could not judge (their
	 * owner's cgroup was too new), left out. */
	COUNTER_UNDECIDED = 7,
	COUNTER_MAX = 8,
};

/*
 * The snapshot at start (snapshot.bpf.h): a TCP socket's holder, the
 * process with it among its open files, by socket address ...
 */
struct holder {
	__u64 owner_cgroup;
	__u32 owner_pid;
	__u32 owner_uid;
	char owner_comm[TASK_COMM_LEN];
};

enum snap_flags {
	/* The owner_* fields hold a process that has the socket open. */
	SNAP_F_HOLDER = 0x1,
	/* The kernel's per-socket store took the socket from the snapshot
	 * (no transition of it had put it there first). */
	SNAP_F_SEEDED = 0x2,
	/* The stuck walk: since_ns is when the socket entered its state,
	 * from the kernel's store. */
	SNAP_F_SINCE = 0x4,
	/* ... or the store says it has been in it since before the trace. */
	SNAP_F_BEFORE_TRACE = 0x8,
	/* ... and owner_* is its owner, from the store. */
	SNAP_F_OWNER = 0x10,
};

/*
 * The snapshot from the netlink socket diagnostics (what `ss` uses), where
 * the kernel has no socket iterator: the dump names a socket by its
 * namespace and addresses, never by its address in memory. Each socket it
 * found is put in `diag` by user space under this key, which a transition
 * of the socket can make too (src/snapshot/netlink.rs makes it the same
 * way).
 */
struct diag_key {
	/* Network namespace inode. */
	__u32 netns;
	/* A listener's inode (listeners sharing a port with SO_REUSEPORT
	 * have the same addresses); 0 for any other socket (a connection's
	 * four addresses are its own in its namespace). */
	__u32 inode;
	__u16 family;
	/* Host byte order. */
	__u16 sport;
	__u16 dport;
	__u16 __pad;
	/* IPv4 addresses use the first 4 bytes; network byte order. */
	__u8 saddr[16];
	__u8 daddr[16];
};

enum diag_kinds {
	/* A socket the dump found: its state and first holder. */
	DIAG_SEED = 1,
	/* A transition of a socket not in the store came before the dump's
	 * copy of it: that copy is not counted (the transition counted
	 * it). */
	DIAG_RACED = 2,
};

struct diag_seed {
	__u64 owner_cgroup;
	__u32 owner_pid;
	__u32 owner_uid;
	char owner_comm[TASK_COMM_LEN];
	__u8 kind;
	__u8 state;
	/* The owner_* fields hold a process that has it open. */
	__u8 holder_known;
	__u8 __pad[5];
};

/* ... and one existing full socket, as a socket iterator walked it (the
 * snapshot, or the walk for stuck sockets). */
struct snap_sock {
	__u64 skaddr;
	/* bpf_ktime_get_ns() when walked: a transition of the socket before
	 * it is in `state`, one after it is not. */
	__u64 ts_ns;
	/* With SNAP_F_SINCE. */
	__u64 since_ns;
	__u64 owner_cgroup;
	__u32 owner_pid;
	__u32 owner_uid;
	char owner_comm[TASK_COMM_LEN];
	__u32 netns;
	__u16 family;
	/* Host byte order. */
	__u16 sport;
	__u16 dport;
	__u8 state;
	__u8 flags;
	__u8 saddr[16];
	__u8 daddr[16];
	__u8 __pad[4];
};

/* Summary mode: sockets in each state now, as changes per CPU (summed by
 * user space; a CPU's own sum may be negative). */
struct census {
	__s64 sockets[16 /* SUMMARY_STATES */];
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
	/* What `groups` says of the owner's cgroup (see judge_group). */
	__u8 owner_in_groups;
	__u8 owner_undecided;
	/* enum close_role, from the socket's first transition seen. */
	__u8 role;
	__u16 owner_label;
	/* The state the socket is in (for the census). */
	__u8 state;
	/* Put here by the snapshot at start (snapshot.bpf.h), not by a
	 * transition: the socket has been in `state` since before the trace
	 * (since_ns is 0 until its first transition). */
	__u8 seeded;
	/* When the socket's first transition seen started it (connect,
	 * listen, a passive child's clone); 0 if it started before the
	 * trace. */
	__u64 born_ns;
};

/*
 * Close records (-C): every state a socket left, in order, with the time
 * spent in it, kept with the socket's state until its CLOSE.
 */
enum timeline_dims {
	TIMELINE_STEPS = 10,
};

/* A time spent that is not known (the socket is new, or older than the
 * trace). */
#define TIME_UNKNOWN (~0ULL)
/* A time spent in a state entered before the trace: this bit, and the
 * bpf_ktime_get_ns() the socket left it at (user space makes the lower
 * bound, the time since the trace began, from it). */
#define TIME_AT_LEAST (1ULL << 63)

struct timeline {
	__u64 spent_ns[TIMELINE_STEPS];
	__u8 left[TIMELINE_STEPS];
	/* Steps kept (at most TIMELINE_STEPS), and steps beyond them: the
	 * last element then holds the latest. */
	__u8 steps;
	__u8 more;
	__u8 __pad[4];
};

/* The per-socket state with close records on. */
struct close_state {
	struct sock_state s;
	struct timeline t;
};

/*
 * What user space (src/identity/groups.rs) says of a cgroup, in the
 * `groups` map by cgroup id: whether its processes pass the group filters
 * (--cgroup, --unit, --container), and the summary's label for it
 * (--label-by). A cgroup not in the map, with an id no larger than
 * `groups_known`'s, passes no filter and has label GROUP_LABEL_NONE; a
 * larger id is a group made since, undecided.
 */
struct group {
	__u8 in_groups;
	__u8 __pad;
	__u16 label;
};

/* A cgroup's path as the kernel made it (cgroup_mkdir), NUL-terminated,
 * in `group_paths`: user space judges groups gone before it saw them. */
enum group_path_dims {
	GROUP_PATH_LEN = 256,
};

struct group_path {
	char path[GROUP_PATH_LEN];
};

/* The summary's label slots before the ones user space names. */
enum group_labels {
	/* The owner is not known, or its group was too new to judge. */
	GROUP_LABEL_UNKNOWN = 0,
	/* The owner is in no unit (or container) at all. */
	GROUP_LABEL_NONE = 1,
	/* A unit or container beyond --max-labels. */
	GROUP_LABEL_OTHER = 2,
	GROUP_LABEL_FIRST = 3,
};

/* The same slots with --label-by port (summary.bpf.h's port_label). */
enum port_label_slots {
	/* A socket whose role is unknown (older than the trace), on a port
	 * with no label. */
	PORT_LABEL_UNKNOWN = GROUP_LABEL_UNKNOWN,
	/* A connection this host opened (its local port is no service's). */
	PORT_LABEL_CLIENT = GROUP_LABEL_NONE,
	/* A listener, or a connection it accepted, on a port with no label. */
	PORT_LABEL_OTHER = GROUP_LABEL_OTHER,
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
	/* Summary mode with --label-by: the owner's group's label slot (enum
	 * group_labels); never sent. */
	__u16 label;
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
	/*
	 * Never sent: at CLOSE, with the socket's state kept in the kernel,
	 * the connection's end as judged (close records, summary mode).
	 */
	__u64 lifetime_ns;
	__s32 error;
	__u8 cause;
	__u8 detail;
	__u8 role;
	__u8 closing;
};

/* The sizes a record can have; user space reads a shorter one into a
 * zeroed struct event. */
#define EVENT_SIZE_BASE __builtin_offsetof(struct event, uid)
#define EVENT_SIZE_TASK __builtin_offsetof(struct event, owner_cgroup)
#define EVENT_SIZE_OWNER __builtin_offsetof(struct event, lifetime_ns)

/*
 * One connection's end (-C): sent at its CLOSE instead of the transitions.
 * Flags as an event's (owner known, in groups, undecided, lifetime
 * unknown).
 */
struct close_record {
	__u64 skaddr;
	/* bpf_ktime_get_ns() at CLOSE. */
	__u64 ts_ns;
	/* From the socket's start (see sock_state.born_ns) to CLOSE. */
	__u64 lifetime_ns;
	__u64 owner_cgroup;
	/* tcp_sock's counters at CLOSE, each valid with its HAS_ bit. */
	__u64 bytes_acked;
	__u64 bytes_received;
	__u32 segs_in;
	__u32 segs_out;
	__u32 total_retrans;
	/* Smoothed RTT, and the minimum seen, in microseconds. */
	__u32 srtt_us;
	__u32 rtt_min_us;
	__u32 present;
	__u32 netns;
	/* The task on the CPU at CLOSE. */
	__u32 pid;
	__u32 owner_pid;
	__u32 owner_uid;
	__u32 flags;
	/* The socket's error at CLOSE (an errno; 0: none). */
	__s32 error;
	__u16 family;
	__u16 sport;
	__u16 dport;
	__u8 cause;
	__u8 detail;
	__u8 role;
	__u8 __pad[3];
	char comm[TASK_COMM_LEN];
	char owner_comm[TASK_COMM_LEN];
	__u8 saddr[16];
	__u8 daddr[16];
	struct timeline t;
};

/*
 * Summary mode (-S, --metrics): what the kernel aggregates, per CPU, instead
 * of sending events. States are indexed by number; a number out of range
 * counts as 0. Slot 0 holds times under 1 us; slot i (1..SUMMARY_SLOTS-2)
 * times of [2^(i-1), 2^i) us; the last slot 2^32 us (71.6 minutes) and more.
 */
enum summary_dims {
	SUMMARY_STATES = 16,
	SUMMARY_SLOTS = 34,
};

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
	/* Transitions out of a state the socket had been in since before the
	 * trace (EVENT_F_BEFORE_TRACE: at least the trace's age), by state;
	 * not in `unknown`. */
	__u64 before_trace[SUMMARY_STATES];
	/* Connections closed, by enum close_cause and enum close_role. */
	__u64 closed[CLOSE_CAUSES][CLOSE_ROLES];
	/* Their lifetimes when known, in the slots above; their sum. */
	__u64 lifetime_slots[SUMMARY_SLOTS / 2][2];
	__u64 lifetime_sum_ns;
	/* Closed connections whose start came before the trace. */
	__u64 lifetime_unknown;
};

/*
 * What user space decides before load (src/plan.rs, from the command line
 * and the host), read by the program as constants: the verifier drops the
 * code a setting turns off.
 */
struct settings {
	/* Only transitions that left a state after at least this long (0:
	 * any); needs track_sockets. */
	__u64 min_delta_ns;
	/* Only sockets of this network namespace (its inode; 0: any). */
	__u32 target_netns;
	/* Only transitions into or out of these states (bit n: state n; 0:
	 * any). */
	__u32 state_mask;
	__u32 target_uid;
	/*
	 * 0: wake the reader for every event (a terminal sees each line at
	 * once). N: only once N bytes wait; the reader also polls on a timer.
	 * How much waits is looked at only when this CPU's event count &
	 * wakeup_mask is 0: the query reads positions every CPU writes.
	 */
	__u32 wakeup_bytes;
	__u32 wakeup_mask;
	/* CPUs possible: tp_btf's backup searches their records. */
	__u32 cpus;
	/* AF_INET or AF_INET6; 0: both. */
	__u16 target_family;
	char target_comm[TASK_COMM_LEN];
	/* Flags, 0 or 1 (a bool the Rust skeleton could not set plainly).
	 * Filters: local and remote port sets, owner pids, name, uid,
	 * groups (--cgroup, --unit, --container). */
	__u8 filter_sport;
	__u8 filter_dport;
	__u8 filter_pid;
	__u8 filter_comm;
	__u8 filter_uid;
	__u8 filter_groups;
	/* Summary mode: count by the owner's group's label (--label-by). */
	__u8 label_groups;
	/* Summary mode: count by service port (--label-by port): the label
	 * slot in `port_labels`. */
	__u8 label_ports;
	/* ... and count the unlabelled service ports' transitions in
	 * `port_busy`, for user space to label the busiest. */
	__u8 rank_ports;
	/* Each event carries the current task's uid and cgroup, from which
	 * user space keeps the sockets' owners. */
	__u8 collect_owner;
	/* The kernel keeps each socket's time of its last transition (a
	 * filter drops transitions user space would need, or summary mode). */
	__u8 track_sockets;
	/* ... in the socket's own storage (tp_btf, 5.11+), not the map. */
	__u8 use_sk_storage;
	/* The kernel has bpf_get_current_task_btf (5.11+, its own BTF). */
	__u8 has_task_btf;
	/* Aggregate into `summary` instead of sending events. */
	__u8 summary_mode;
	/* With track_sockets: keep each socket's owner too. */
	__u8 keep_owner;
	/* Summary mode in tp_btf: read only the fields a filter looks at. */
	__u8 lean_reads;
	/* The kernel has bpf_map_lookup_percpu_elem (5.19+). */
	__u8 has_percpu_lookup;
	/* -C: one close_record per socket at CLOSE, no events (needs
	 * track_sockets; the state is a close_state). */
	__u8 close_records;
	/* Summary mode: count closes by cause and role (needs
	 * track_sockets). */
	__u8 count_closes;
	/* -C --cause: only these causes (bit n: enum close_cause n; 0: any). */
	__u32 cause_mask;
	/* Summary mode: keep the census (needs the map store). */
	__u8 census;
	/* The snapshot sends each socket to user space (the reader keeps
	 * the owners); else it only counts them. */
	__u8 snap_records;
	/* The snapshot came from the netlink dump: a socket missing from
	 * the store at a transition may be one it found (`diag`). */
	__u8 diag_seeds;
	__u8 __pad_end[1];
	/* --stuck: the walk reports sockets in these states (bit n: state
	 * n) ... */
	__u32 stuck_mask;
	/* ... that have been in it at least this long, where the kernel
	 * keeps the times (else every one: user space knows their times). */
	__u64 stuck_ns;
};

#endif /* TCPSTATES_H */
