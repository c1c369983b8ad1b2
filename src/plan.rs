//! One decision in one place: from the configuration, what the host offers
//! and the attach mode, where each socket's time and owner live, what the
//! kernel reads and sends, and how the ring buffer is sized and wakes the
//! reader. The loader fills the BPF program's settings and sizes its maps
//! from a [`Plan`] ([`Plan::settings`], [`Plan::map_sizes`]); the reader
//! builds its decoder from the same plan: the two cannot disagree. Pure:
//! every decision is a table test below.

use crate::batching;
use crate::bpf::types;
use crate::config::{
    AttachMode, Config, DEFAULT_MAP_SOCKETS, Family, Filter, Mode, PortLabels, SnapshotFrom,
};
use crate::event::record;
use crate::identity::groups;

/// What the host offers, read once (`host::facts`), passed in so that the
/// plan stays pure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostFacts {
    /// BTF tracing programs get bpf_get_current_task_btf and socket-local
    /// storage (Linux 5.11+, with the kernel's own BTF: the helpers type
    /// their results with it, and a kernel described by a --btf file has
    /// none to give).
    pub tracing_5_11: bool,
    /// CPUs online: how many fill the ring buffer at once.
    pub online_cpus: usize,
    /// CPUs possible: how many per-CPU counters the program keeps.
    pub possible_cpus: usize,
    /// The page size: the smallest ring buffer.
    pub page_bytes: u32,
    /// BPF programs may read another CPU's per-CPU value (Linux 5.19+).
    pub percpu_lookup: bool,
    /// The kernel walks its TCP sockets and the processes' files for BPF
    /// (socket and task_file iterators, Linux 5.9+, with its own BTF).
    pub socket_iterators: bool,
    /// TCP sockets the host has now, in every namespace.
    pub tcp_sockets: u64,
}

/// How soon the reader must see each event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// A wakeup per event (a terminal sees each line at once; the tests).
    EachEvent,
    /// Wakeups once a batch waits; the reader also polls on a timer.
    Batched,
}

/// Where the kernel keeps each socket's last-transition time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelStore {
    /// Nowhere: the reader keeps them (no filter needs them in the kernel).
    None,
    /// In the socket's own storage, freed with the socket: no bound.
    SocketLocal,
    /// In a preallocated map of this many sockets, keyed by address.
    Map(u32),
}

impl KernelStore {
    /// Where the times are, for -v.
    pub fn describe(self) -> &'static str {
        match self {
            KernelStore::None => "here",
            KernelStore::SocketLocal => "in the kernel, with each socket",
            KernelStore::Map(_) => "in the kernel's map",
        }
    }
}

/// Who keeps each socket's owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerKeeper {
    /// Nobody: no output shows owners and no filter needs them.
    Nobody,
    /// The reader, from the current task each event carries.
    Reader,
    /// The kernel, with the socket's time; events carry the owner.
    Kernel,
}

/// Everything a run decides before it loads the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// The attach mode this plan is for.
    pub mode: AttachMode,
    /// Summary mode: the kernel aggregates, sends no events.
    pub summary: bool,
    /// Close records: the kernel keeps each socket's timeline and sends
    /// one record at its CLOSE, no events.
    pub closes: bool,
    /// Where each socket's time lives.
    pub store: KernelStore,
    /// Who keeps owners.
    pub owners: OwnerKeeper,
    /// An output shows owners (their cgroup paths are looked up).
    pub owners_shown: bool,
    /// The reader keeps at most this many sockets' times and owners
    /// (None: no bound), when it keeps them.
    pub reader_sockets: Option<u32>,
    /// The kernel reads only the fields a filter looks at (summary mode
    /// without owners: nothing is sent).
    pub lean_reads: bool,
    /// The task is read through bpf_get_current_task_btf.
    pub task_btf: bool,
    /// CPUs possible, and whether the backup may search their records.
    pub cpus: usize,
    /// See [`HostFacts::percpu_lookup`].
    pub percpu_lookup: bool,
    /// The ring buffer's size in bytes.
    pub ring_bytes: u32,
    /// Wake the reader once this many bytes wait (0: per event).
    pub wakeup_bytes: u32,
    /// Look at how much waits every wakeup_mask + 1 events of a CPU.
    pub wakeup_mask: u32,
    /// The largest record the program sends, in bytes.
    pub record_bytes: usize,
    /// The kernel judges owners' cgroups by the table of groups (a group
    /// filter, or summary labels: src/identity/groups.rs).
    pub group_table: bool,
    /// Summary mode's slots: one, or one per label (--label-by).
    pub summary_slots: u32,
    /// The labels are service ports (--label-by port), not owners' groups.
    pub port_labels: bool,
    /// ... the busiest ones, which the kernel counts until named.
    pub rank_ports: bool,
    /// The host's page size: the smallest ring buffer.
    pub page_bytes: u32,
    /// The sockets that exist at start are walked (src/snapshot/): for
    /// their owners, or the kernel's store (and so the census).
    pub snapshot: bool,
    /// ... from the socket iterators or the netlink socket diagnostics.
    pub snapshot_from: SnapshotFrom,
    /// ... with their holders (someone keeps owners).
    pub snapshot_holders: bool,
    /// ... how many, about: what the holders' map may take (iterators).
    pub snapshot_sockets: u32,
    /// The netlink snapshot's map (preallocated): the host's sockets and a
    /// quarter more, for them and a mark per socket that changes while the
    /// snapshot is taken.
    pub diag_sockets: u32,
    /// Summary mode keeps the census of sockets in each state.
    pub census: bool,
    /// `--stuck`: the states watched, and the threshold.
    pub stuck: Option<(u32, u64)>,
}

/// Sizes of the program's maps: a map a run does not use gets one entry
/// (preallocated maps take their memory at load).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapSizes {
    /// The ring buffer, bytes.
    pub events: u32,
    /// Sockets' times keyed by address.
    pub sockets: u32,
    /// The same with their timelines, for close records.
    pub close_sockets: u32,
    /// Listeners' owners, for their children, with the map.
    pub listener_owners: u32,
    /// kprobe mode's listen() in flight.
    pub listening: u32,
    /// The pid filter.
    pub pids: u32,
    /// The port filters.
    pub sports: u32,
    /// The port filters.
    pub dports: u32,
    /// The table of cgroups.
    pub groups: u32,
    /// The paths of groups made while tracing.
    pub group_paths: u32,
    /// Their ids as they are made, bytes.
    pub group_events: u32,
    /// Summary mode's slots.
    pub summary: u32,
    /// Ports with a label slot.
    pub port_labels: u32,
    /// Service ports counted until they have a label.
    pub port_busy: u32,
    /// The snapshot's holders (not preallocated: a bound only).
    pub holders: u32,
    /// The netlink snapshot's sockets, for the kernel's store.
    pub diag: u32,
}

/// The kernel's map of sockets without `--max-sockets`: room for twice the
/// sockets the host has now (the snapshot puts them all there), at least
/// [`DEFAULT_MAP_SOCKETS`].
pub fn map_sockets_for(tcp_sockets: u64) -> u32 {
    let wanted = tcp_sockets
        .saturating_mul(2)
        .checked_next_multiple_of(1 << 16)
        .unwrap_or(u64::MAX);
    u32::try_from(wanted)
        .unwrap_or(u32::MAX)
        .clamp(DEFAULT_MAP_SOCKETS, crate::args::MAX_SOCKETS)
}

/// Service ports the kernel counts, to find the busiest, at most.
pub const RANKED_PORTS: u32 = 1024;

impl Plan {
    /// The plan for `config` in `mode` on `host`, delivering as `wake` says.
    pub fn new(config: &Config, host: &HostFacts, mode: AttachMode, wake: Wake) -> Self {
        let summary = matches!(config.mode, Mode::Summary(_));
        let closes = config.mode == Mode::Closes;
        // A filter that drops transitions the reader would need (a client's
        // local port is 0 at CLOSE -> SYN_SENT), or summary mode, whose
        // times never leave the kernel, or close records, which the kernel
        // sends once per socket.
        let kernel_tracks = config.filter.tracks_in_kernel() || summary || closes;
        let iterators = host.socket_iterators && config.btf.is_none();
        let snapshot_from = config.snapshot_from.unwrap_or(if iterators {
            SnapshotFrom::Iterators
        } else {
            SnapshotFrom::Netlink
        });
        // The netlink snapshot's sockets are found by their addresses at
        // their first transition, and put in the map (src/bpf/snapshot.bpf.h).
        let netlink = config.snapshot && snapshot_from == SnapshotFrom::Netlink;
        let owners_shown = config.collects_owners();
        let store = if !kernel_tracks {
            KernelStore::None
        } else if mode == AttachMode::TpBtf
            && host.tracing_5_11
            && config.max_sockets.is_none()
            && !summary
            && !closes
            && !netlink
        {
            // Summary mode and close records keep every socket's time, and
            // the socket's own storage costs an allocation and an
            // RCU-deferred free per socket: the map instead (BENCHMARKS.md:
            // a busy storm 4.8% slower against 10.1%). An explicit bound
            // asks for the map.
            KernelStore::SocketLocal
        } else {
            KernelStore::Map(
                config
                    .max_sockets
                    .unwrap_or_else(|| map_sockets_for(host.tcp_sockets)),
            )
        };
        let snapshot = config.snapshot;
        let labels = config.labels.filter(|_| summary);
        let owner_labels = labels.filter(|l| l.by.by_owner());
        let port_labels = labels.is_some_and(|l| !l.by.by_owner());
        // Stuck sockets are reported with their owners, in every mode.
        let stuck = config.stuck.is_some();
        let owners = if store != KernelStore::None
            && (config.filter.by_owner()
                || owner_labels.is_some()
                || closes
                || stuck
                || (!summary && owners_shown))
        {
            OwnerKeeper::Kernel
        } else if store == KernelStore::None && (owners_shown || stuck) {
            OwnerKeeper::Reader
        } else {
            OwnerKeeper::Nobody
        };
        let record_bytes = if closes {
            crate::close::RECORD_BYTES
        } else {
            record::largest(owners == OwnerKeeper::Reader, owners == OwnerKeeper::Kernel)
        };
        let ring_bytes = if summary {
            host.page_bytes
        } else {
            config.ring_bytes_for(host.online_cpus)
        };
        let wakeup_bytes = match wake {
            Wake::Batched if !summary => batching::wakeup_bytes(ring_bytes),
            _ => 0,
        };
        Plan {
            mode,
            summary,
            closes,
            store,
            owners,
            owners_shown,
            reader_sockets: config.max_sockets,
            lean_reads: summary && owners == OwnerKeeper::Nobody,
            task_btf: host.tracing_5_11,
            cpus: host.possible_cpus,
            percpu_lookup: host.percpu_lookup,
            ring_bytes,
            wakeup_bytes,
            wakeup_mask: batching::wakeup_mask(
                ring_bytes,
                host.possible_cpus,
                record::in_ring(record_bytes),
            ),
            record_bytes,
            group_table: config.filter.by_group() || owner_labels.is_some(),
            summary_slots: labels.map_or(1, |l| u32::from(groups::LABEL_FIRST + l.max)),
            port_labels,
            rank_ports: port_labels && config.label_ports == PortLabels::Busiest,
            page_bytes: host.page_bytes,
            // Nothing to learn from a walk when nobody keeps owners and the
            // reader keeps the times (their lower bounds need none).
            snapshot: snapshot && (owners != OwnerKeeper::Nobody || store != KernelStore::None),
            snapshot_from,
            diag_sockets: u32::try_from(host.tcp_sockets + host.tcp_sockets / 4 + 4096)
                .unwrap_or(u32::MAX),
            snapshot_holders: snapshot && owners != OwnerKeeper::Nobody,
            snapshot_sockets: u32::try_from(host.tcp_sockets.saturating_mul(2))
                .unwrap_or(u32::MAX)
                .max(DEFAULT_MAP_SOCKETS),
            census: summary && matches!(store, KernelStore::Map(_)),
            stuck: config.stuck.map(|s| (s.states, s.after_ns())),
        }
    }

    /// The BPF program's settings (`struct settings` in tcpstates.h).
    pub fn settings(&self, filter: &Filter) -> types::settings {
        let mut s = types::settings {
            target_family: match filter.family {
                None => 0,
                Some(Family::Ipv4) => libc::AF_INET as u16,
                Some(Family::Ipv6) => libc::AF_INET6 as u16,
            },
            target_netns: filter.netns.unwrap_or(0),
            state_mask: filter.states,
            // 0 means no filter: a threshold of 0 still drops unknown times.
            min_delta_ns: filter.min_duration_ns.map_or(0, |ns| ns.max(1)),
            filter_sport: u8::from(!filter.local_ports.is_empty()),
            filter_dport: u8::from(!filter.remote_ports.is_empty()),
            filter_pid: u8::from(!filter.pids.is_empty()),
            filter_comm: u8::from(filter.comm.is_some()),
            filter_uid: u8::from(filter.uid.is_some()),
            target_uid: filter.uid.unwrap_or(0),
            filter_groups: u8::from(filter.by_group()),
            label_groups: u8::from(self.summary_slots > 1 && !self.port_labels),
            label_ports: u8::from(self.port_labels),
            rank_ports: u8::from(self.rank_ports),
            collect_owner: u8::from(self.owners == OwnerKeeper::Reader),
            track_sockets: u8::from(self.store != KernelStore::None),
            use_sk_storage: u8::from(self.store == KernelStore::SocketLocal),
            has_task_btf: u8::from(self.task_btf),
            summary_mode: u8::from(self.summary),
            keep_owner: u8::from(self.owners == OwnerKeeper::Kernel),
            lean_reads: u8::from(self.lean_reads),
            wakeup_bytes: self.wakeup_bytes,
            wakeup_mask: self.wakeup_mask,
            cpus: u32::try_from(self.cpus).unwrap_or(u32::MAX),
            has_percpu_lookup: u8::from(self.percpu_lookup),
            close_records: u8::from(self.closes),
            count_closes: u8::from(self.summary),
            cause_mask: filter.causes,
            census: u8::from(self.census),
            snap_records: u8::from(
                self.snapshot
                    && self.snapshot_from == SnapshotFrom::Iterators
                    && self.owners == OwnerKeeper::Reader,
            ),
            diag_seeds: u8::from(self.seeds_from_netlink()),
            stuck_mask: self.stuck.map_or(0, |(states, _)| states),
            stuck_ns: self.stuck.map_or(0, |(_, ns)| ns),
            ..Default::default()
        };
        if let Some(comm) = &filter.comm {
            for (dst, src) in s.target_comm.iter_mut().zip(comm.bytes()) {
                *dst = src as _;
            }
        }
        s
    }

    /// The maps' sizes for this plan and `filter`.
    pub fn map_sizes(&self, filter: &Filter) -> MapSizes {
        let at_least_one = |n: usize| u32::try_from(n.max(1)).unwrap_or(u32::MAX);
        let map = match self.store {
            KernelStore::Map(sockets) => Some(sockets),
            KernelStore::None | KernelStore::SocketLocal => None,
        };
        MapSizes {
            events: self.ring_bytes,
            sockets: map.filter(|_| !self.closes).unwrap_or(1),
            close_sockets: map.filter(|_| self.closes).unwrap_or(1),
            listener_owners: if map.is_some() { 4096 } else { 1 },
            listening: if self.mode == AttachMode::Kprobe {
                1024
            } else {
                1
            },
            pids: at_least_one(filter.pids.len()),
            sports: at_least_one(filter.local_ports.len()),
            dports: at_least_one(filter.remote_ports.len()),
            groups: if self.group_table {
                groups::MAX_GROUPS
            } else {
                1
            },
            group_paths: if self.sees_groups_made() {
                groups::NEW_GROUP_PATHS
            } else {
                1
            },
            group_events: if self.sees_groups_made() {
                self.page_bytes.max(64 << 10)
            } else {
                self.page_bytes
            },
            summary: self.summary_slots,
            port_labels: if self.port_labels {
                self.summary_slots
            } else {
                1
            },
            port_busy: if self.rank_ports { RANKED_PORTS } else { 1 },
            holders: if self.snapshot_holders && self.snapshot_from == SnapshotFrom::Iterators {
                self.snapshot_sockets
            } else {
                1
            },
            diag: if self.seeds_from_netlink() {
                self.diag_sockets
            } else {
                1
            },
        }
    }

    /// Whether the kernel's store takes the netlink snapshot's sockets.
    pub fn seeds_from_netlink(&self) -> bool {
        self.snapshot
            && self.snapshot_from == SnapshotFrom::Netlink
            && self.store != KernelStore::None
    }

    /// Whether the kernel keeps the paths of groups made while tracing
    /// (owners are named by them, or groups judged).
    pub fn sees_groups_made(&self) -> bool {
        self.owners_shown || self.group_table
    }

    /// Whether the reader keeps each socket's time (the kernel does not).
    pub fn reader_keeps_times(&self) -> bool {
        self.store == KernelStore::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LabelBy, Labels, SummaryOutput};

    const HOST: HostFacts = HostFacts {
        tracing_5_11: true,
        online_cpus: 2,
        possible_cpus: 2,
        page_bytes: 4096,
        percpu_lookup: true,
        socket_iterators: true,
        tcp_sockets: 0,
    };
    /// Linux 5.8: no socket iterators, no socket storage for tracing.
    const OLD_HOST: HostFacts = HostFacts {
        tracing_5_11: false,
        percpu_lookup: false,
        socket_iterators: false,
        ..HOST
    };

    fn config(args: &[&str]) -> Config {
        match crate::cli::parse(std::iter::once("tcpstates").chain(args.iter().copied())) {
            crate::cli::Parsed::Run(config) => *config,
            crate::cli::Parsed::Exit { message, .. } => panic!("{args:?} rejected: {message}"),
        }
    }

    fn plan(args: &[&str], host: &HostFacts, mode: AttachMode) -> Plan {
        Plan::new(&config(args), host, mode, Wake::Batched)
    }

    /// Where times and owners live, by options, host and mode: the table.
    #[test]
    fn where_times_and_owners_live() {
        use AttachMode::*;
        use KernelStore as S;
        use OwnerKeeper as O;
        let map = S::Map(DEFAULT_MAP_SOCKETS);
        let rows: [(&[&str], &HostFacts, AttachMode, KernelStore, OwnerKeeper); 13] = [
            (&[], &HOST, TpBtf, S::None, O::Nobody),
            (&["-x"], &HOST, TpBtf, S::None, O::Reader),
            (&["-j"], &HOST, Kprobe, S::None, O::Reader),
            (&["-L", "80"], &HOST, TpBtf, S::SocketLocal, O::Nobody),
            (&["-L", "80"], &OLD_HOST, TpBtf, map, O::Nobody),
            (&["-L", "80"], &HOST, Tracepoint, map, O::Nobody),
            (&["-L", "80", "-x"], &HOST, TpBtf, S::SocketLocal, O::Kernel),
            (
                &["-L", "80", "--max-sockets", "9"],
                &HOST,
                TpBtf,
                S::Map(9),
                O::Nobody,
            ),
            (&["-c", "nginx"], &HOST, Kprobe, map, O::Kernel),
            (
                &["--state", "LISTEN"],
                &HOST,
                TpBtf,
                S::SocketLocal,
                O::Nobody,
            ),
            (&["-S"], &HOST, TpBtf, map, O::Nobody),
            (
                &["--metrics", "9977", "-L", "443"],
                &HOST,
                Kprobe,
                map,
                O::Nobody,
            ),
            (&["-S", "-u", "0"], &HOST, TpBtf, map, O::Kernel),
        ];
        for (args, host, mode, store, owners) in rows {
            let p = plan(args, host, mode);
            assert_eq!((p.store, p.owners), (store, owners), "{args:?} {mode}");
            assert_eq!(p.reader_keeps_times(), store == S::None);
        }
    }

    /// The ring, its wakeups and the records, by options and host.
    #[test]
    fn the_ring_and_its_records() {
        let p = plan(&[], &HOST, AttachMode::TpBtf);
        assert_eq!((p.ring_bytes, p.wakeup_bytes), (8 << 20, 256 << 10));
        assert_eq!(p.record_bytes, record::BASE);
        assert_eq!(
            plan(&["-j"], &HOST, AttachMode::TpBtf).record_bytes,
            record::TASK
        );
        assert_eq!(
            plan(&["-x", "-L", "1"], &HOST, AttachMode::TpBtf).record_bytes,
            record::OWNER
        );
        let each = Plan::new(&config(&[]), &HOST, AttachMode::TpBtf, Wake::EachEvent);
        assert_eq!(each.wakeup_bytes, 0);
        let big = HostFacts {
            online_cpus: 64,
            ..HOST
        };
        assert_eq!(plan(&[], &big, AttachMode::TpBtf).ring_bytes, 64 << 20);
        assert_eq!(
            plan(&["--ring-buffer", "64K"], &big, AttachMode::TpBtf).ring_bytes,
            64 << 10
        );
        // Summary mode sends no event: the smallest ring, no wakeups, lean
        // reads unless owners are kept.
        let s = plan(&["-S"], &HOST, AttachMode::TpBtf);
        assert_eq!(
            (s.ring_bytes, s.wakeup_bytes, s.lean_reads),
            (4096, 0, true)
        );
        assert!(!plan(&["-S", "-u", "0"], &HOST, AttachMode::TpBtf).lean_reads);
        assert!(!plan(&["-L", "1"], &HOST, AttachMode::TpBtf).lean_reads);
    }

    /// The program's settings: each filter and each decision lands in its
    /// field.
    #[test]
    fn settings_from_the_plan_and_the_filters() {
        let c = config(&["-6", "-L", "80", "-u", "7", "--min-ms", "0", "-c", "curl"]);
        let p = Plan::new(&c, &OLD_HOST, AttachMode::Kprobe, Wake::Batched);
        let s = p.settings(&c.filter);
        assert_eq!(s.target_family, libc::AF_INET6 as u16);
        let on = |flag: u8| flag == 1;
        assert!(on(s.filter_sport) && !on(s.filter_dport) && on(s.filter_uid) && on(s.filter_comm));
        assert_eq!(s.target_uid, 7);
        assert_eq!(s.min_delta_ns, 1, "0 ms still drops unknown times");
        let comm: Vec<u8> = s.target_comm[..5].iter().map(|&c| c as u8).collect();
        assert_eq!(comm, b"curl\0");
        assert!(on(s.track_sockets) && !on(s.use_sk_storage) && on(s.keep_owner));
        assert!(!on(s.collect_owner) && !on(s.has_task_btf) && !on(s.summary_mode));
        assert!(!on(s.has_percpu_lookup));
        assert_eq!(
            (s.wakeup_bytes, s.wakeup_mask),
            (p.wakeup_bytes, p.wakeup_mask)
        );

        let plain = config(&["-x"]);
        let s = plan(&["-x"], &HOST, AttachMode::TpBtf).settings(&plain.filter);
        assert!(on(s.collect_owner) && !on(s.track_sockets) && !on(s.keep_owner));
        assert!(on(s.has_task_btf) && on(s.has_percpu_lookup));
        assert_eq!(s.cpus, 2);
        assert_eq!((s.target_family, s.state_mask, s.min_delta_ns), (0, 0, 0));

        let mut cgroup = Config::default();
        cgroup.filter.cgroup = Some("/a/b".into());
        cgroup.mode = Mode::Summary(SummaryOutput::default());
        let p = Plan::new(&cgroup, &HOST, AttachMode::TpBtf, Wake::Batched);
        let s = p.settings(&cgroup.filter);
        assert!(on(s.filter_groups) && on(s.summary_mode) && on(s.keep_owner));
        assert!(!on(s.label_groups) && p.group_table && p.summary_slots == 1);
        assert_eq!(p.map_sizes(&cgroup.filter).groups, groups::MAX_GROUPS);

        // Labels: the kernel keeps owners, one slot per label; only in
        // summary mode.
        let mut labels = Config {
            labels: Some(Labels {
                by: LabelBy::Unit,
                max: 20,
            }),
            ..Config::default()
        };
        labels.mode = Mode::Summary(SummaryOutput::default());
        let p = Plan::new(&labels, &HOST, AttachMode::TpBtf, Wake::Batched);
        let s = p.settings(&labels.filter);
        assert!(on(s.label_groups) && !on(s.filter_groups) && on(s.keep_owner));
        assert!(!p.lean_reads && p.group_table);
        assert_eq!(p.map_sizes(&labels.filter).summary, 23);
        assert!(!on(s.label_ports) && !on(s.rank_ports));

        // By service port: no owners, no groups; the busiest ranked in
        // the kernel, or the named ones only.
        let ports = config(&["-S", "--label-by", "port", "--max-labels", "5"]);
        let p = Plan::new(&ports, &HOST, AttachMode::TpBtf, Wake::Batched);
        let s = p.settings(&ports.filter);
        assert!(on(s.label_ports) && on(s.rank_ports) && !on(s.label_groups));
        assert!(!on(s.keep_owner) && !p.group_table && p.lean_reads);
        let sizes = p.map_sizes(&ports.filter);
        assert_eq!(
            (sizes.summary, sizes.port_labels, sizes.port_busy),
            (8, 8, RANKED_PORTS)
        );
        let named = config(&["-S", "--label-by", "port", "--label-ports", "443,80"]);
        let p = Plan::new(&named, &HOST, AttachMode::TpBtf, Wake::Batched);
        let s = p.settings(&named.filter);
        assert!(on(s.label_ports) && !on(s.rank_ports));
        let sizes = p.map_sizes(&named.filter);
        assert_eq!(
            (sizes.summary, sizes.port_labels, sizes.port_busy),
            (5, 5, 1)
        );
    }

    /// The snapshot where the kernel has iterators, unless --no-snapshot;
    /// its holders' bound and the summary's map sized for the host's
    /// sockets; the census in summary mode only.
    #[test]
    fn snapshot_and_census() {
        let busy = HostFacts {
            socket_iterators: true,
            tcp_sockets: 100_000,
            ..HOST
        };
        // Nothing to learn by default: no owners, times in the reader.
        assert!(!plan(&[], &busy, AttachMode::TpBtf).snapshot);
        let c = config(&["-x"]);
        let p = Plan::new(&c, &busy, AttachMode::TpBtf, Wake::Batched);
        assert!(p.snapshot && p.snapshot_holders && !p.census);
        assert_eq!(p.settings(&c.filter).snap_records, 1);
        assert_eq!(p.map_sizes(&c.filter).holders, 200_000);
        assert!(!plan(&["-x", "--no-snapshot"], &busy, AttachMode::TpBtf).snapshot);
        assert_eq!(p.snapshot_from, SnapshotFrom::Iterators);
        assert!(!p.seeds_from_netlink());
        // Summary mode: the kernel's store, no holders unless owners.
        let c = config(&["-S"]);
        let p = Plan::new(&c, &busy, AttachMode::Tracepoint, Wake::Batched);
        assert!(p.census && p.settings(&c.filter).census == 1);
        assert!(p.snapshot && !p.snapshot_holders);
        assert_eq!(p.settings(&c.filter).snap_records, 0);
        assert_eq!(p.map_sizes(&c.filter).holders, 1);
        assert_eq!(p.store, KernelStore::Map(262_144));
        let p = Plan::new(&c, &HOST, AttachMode::Tracepoint, Wake::Batched);
        assert_eq!(p.store, KernelStore::Map(DEFAULT_MAP_SOCKETS));
        assert_eq!(map_sockets_for(u64::MAX), crate::args::MAX_SOCKETS);
    }

    /// Without socket iterators (or when asked), the snapshot comes from
    /// the netlink dump: the reader takes its holders by addresses; the
    /// kernel's store, always the map then, takes its sockets from `diag`.
    #[test]
    fn the_netlink_snapshot_where_there_are_no_iterators() {
        let old = HostFacts {
            socket_iterators: false,
            tracing_5_11: false,
            tcp_sockets: 100_000,
            ..HOST
        };
        let c = config(&["-x"]);
        let p = Plan::new(&c, &old, AttachMode::Tracepoint, Wake::Batched);
        assert!(p.snapshot && p.snapshot_holders && !p.seeds_from_netlink());
        assert_eq!(p.snapshot_from, SnapshotFrom::Netlink);
        let s = p.settings(&c.filter);
        assert_eq!((s.snap_records, s.diag_seeds), (0, 0));
        assert_eq!(
            (p.map_sizes(&c.filter).holders, p.map_sizes(&c.filter).diag),
            (1, 1)
        );
        let c = config(&["-S"]);
        let p = Plan::new(&c, &old, AttachMode::Tracepoint, Wake::Batched);
        assert!(p.seeds_from_netlink() && p.census);
        assert_eq!(p.settings(&c.filter).diag_seeds, 1);
        assert_eq!(p.map_sizes(&c.filter).diag, 100_000 + 25_000 + 4096);
        // Asked for on a kernel with iterators: the map, not the socket's
        // own storage (a socket the dump found is found by its addresses,
        // into the map).
        let new = HostFacts {
            socket_iterators: true,
            tracing_5_11: true,
            ..HOST
        };
        let c = config(&["-p", "1", "--snapshot-from", "netlink"]);
        let p = Plan::new(&c, &new, AttachMode::TpBtf, Wake::Batched);
        assert!(p.seeds_from_netlink() && matches!(p.store, KernelStore::Map(_)));
        let c = config(&["-p", "1"]);
        let p = Plan::new(&c, &new, AttachMode::TpBtf, Wake::Batched);
        assert_eq!(
            (p.snapshot_from, p.store),
            (SnapshotFrom::Iterators, KernelStore::SocketLocal)
        );
    }

    /// Maps a run does not use get one entry.
    #[test]
    fn unused_maps_take_one_entry() {
        let c = config(&[]);
        let sizes = plan(&[], &HOST, AttachMode::TpBtf).map_sizes(&c.filter);
        assert_eq!(
            sizes,
            MapSizes {
                events: 8 << 20,
                sockets: 1,
                close_sockets: 1,
                listener_owners: 1,
                listening: 1,
                pids: 1,
                sports: 1,
                dports: 1,
                groups: 1,
                group_paths: 1,
                group_events: 4096,
                summary: 1,
                port_labels: 1,
                port_busy: 1,
                holders: 1,
                diag: 1,
            }
        );
        let c = config(&["-L", "80,443", "-p", "1,2,3"]);
        let sizes = Plan::new(&c, &HOST, AttachMode::Kprobe, Wake::Batched).map_sizes(&c.filter);
        assert_eq!(
            (sizes.sockets, sizes.listener_owners, sizes.listening),
            (DEFAULT_MAP_SOCKETS, 4096, 1024)
        );
        assert_eq!((sizes.pids, sizes.sports, sizes.dports), (3, 2, 1));
    }

    /// Close records: the kernel keeps every socket's state with its
    /// timeline in the map (as summary mode, the cheaper store for short
    /// connections), keeps owners, and sends close records only.
    #[test]
    fn close_records_keep_timelines_in_the_kernel() {
        let on = |flag: u8| flag == 1;
        for mode in AttachMode::ALL {
            let c = config(&["-C", "--cause", "refused,reset"]);
            let p = Plan::new(&c, &HOST, mode, Wake::Batched);
            assert!(p.closes && !p.summary);
            assert_eq!(p.store, KernelStore::Map(DEFAULT_MAP_SOCKETS));
            assert_eq!(p.owners, OwnerKeeper::Kernel);
            assert_eq!(p.record_bytes, crate::close::RECORD_BYTES);
            let s = p.settings(&c.filter);
            assert!(on(s.close_records) && on(s.track_sockets) && on(s.keep_owner));
            assert!(!on(s.count_closes) && !on(s.collect_owner) && !on(s.use_sk_storage));
            assert_eq!(s.cause_mask, 1 << 2 | 1 << 4);
            let sizes = p.map_sizes(&c.filter);
            assert_eq!(
                (sizes.sockets, sizes.close_sockets),
                (1, DEFAULT_MAP_SOCKETS)
            );
        }
        let bounded = config(&["-C", "--max-sockets", "1000"]);
        let p = Plan::new(&bounded, &HOST, AttachMode::TpBtf, Wake::Batched);
        assert_eq!(p.map_sizes(&bounded.filter).close_sockets, 1000);
        // Summary mode counts closes; event mode does neither.
        let summary = config(&["-S"]);
        let s = plan(&["-S"], &HOST, AttachMode::TpBtf).settings(&summary.filter);
        assert!(on(s.count_closes) && !on(s.close_records));
        let events = config(&[]);
        let s = plan(&[], &HOST, AttachMode::TpBtf).settings(&events.filter);
        assert!(!on(s.count_closes) && !on(s.close_records));
    }
}
