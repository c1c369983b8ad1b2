//! The plain configuration of a run: what the command line produces and
//! everything else reads. Nothing here touches the system.
//!
//! Self-contained (clap and std only): `build.rs` includes it with the
//! command line's definition, to generate the man page and completions.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::ValueEnum;

/// Everything a tracing run needs, parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// What the run produces.
    pub mode: Mode,
    /// How each transition is written, in stream mode.
    pub format: Format,
    /// What the kernel side keeps.
    pub filter: Filter,
    /// Attach modes to try, in this order; the first that attaches is used.
    pub attach: Vec<AttachMode>,
    /// BTF of the running kernel, when it has none at /sys/kernel/btf/vmlinux.
    pub btf: Option<PathBuf>,
    /// `--max-sockets`: at most this many sockets' last-transition times are
    /// kept at once (in the kernel with a port filter, else in user space).
    /// None: no bound where memory grows with use (user space, the kernel's
    /// socket-local storage), [`DEFAULT_MAP_SOCKETS`] for the kernel's
    /// preallocated map.
    pub max_sockets: Option<u32>,
    /// `--ring-buffer`: size of the ring buffer in bytes (a power of two,
    /// at least a page); None: [`Config::ring_bytes_for`] the host.
    pub ring_bytes: Option<u32>,
    /// `-Y`: also send each transition to the systemd journal.
    pub journal: bool,
    /// `--count`: end after this many transitions.
    pub count: Option<u64>,
    /// `--duration`: end after this long.
    pub duration: Option<std::time::Duration>,
    /// `-v`: say which attach point is used, show libbpf's log and report
    /// the counters periodically and at exit.
    pub verbose: bool,
    /// The form of the counters report.
    pub report: ReportFormat,
    /// `--metrics`: serve the in-kernel summary to Prometheus at this
    /// address (summary mode).
    pub metrics: Option<SocketAddr>,
    /// `--web.config.file`: TLS and basic auth for the metrics endpoint.
    pub web: Option<crate::web::WebConfig>,
    /// `--label-by`: summary mode counts by the owner's unit or container,
    /// or by service port.
    pub labels: Option<Labels>,
    /// With `--label-by port`: which ports.
    pub label_ports: PortLabels,
    /// `--host-root`: where the container runtimes' state and the kubelet's
    /// logs are read (`/`).
    pub host_root: PathBuf,
    /// Walk the sockets that exist at start (not `--no-snapshot`).
    pub snapshot: bool,
    /// `--snapshot-from`: with what (None: the socket iterators where the
    /// kernel has them, else the netlink socket diagnostics).
    pub snapshot_from: Option<SnapshotFrom>,
    /// `--stuck`: report sockets that stay in a state too long.
    pub stuck: Option<Stuck>,
}

/// Where a snapshot comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SnapshotFrom {
    /// The kernel's socket iterators (Linux 5.9+ with its own BTF).
    #[default]
    Iterators,
    /// The netlink socket diagnostics and `/proc/*/fd`.
    Netlink,
}

impl SnapshotFrom {
    /// As `--snapshot-from` names it.
    pub fn name(self) -> &'static str {
        match self {
            SnapshotFrom::Iterators => "iterators",
            SnapshotFrom::Netlink => "netlink",
        }
    }
}

/// `--stuck SECONDS`, `--stuck-states`, `--stuck-owners`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stuck {
    /// A socket in a watched state longer than this is stuck.
    pub after: std::time::Duration,
    /// The watched states (bit n: state n).
    pub states: u32,
    /// The metrics label stuck sockets by owner name, at most this many
    /// names (0: no owner label).
    pub owners: u16,
}

impl Stuck {
    /// Every state a socket can sit in but ESTABLISHED and LISTEN (their
    /// normal long states): SYN_SENT, SYN_RECV, FIN_WAIT1, FIN_WAIT2,
    /// CLOSE_WAIT, LAST_ACK, CLOSING.
    pub const DEFAULT_STATES: u32 = 1 << 2 | 1 << 3 | 1 << 4 | 1 << 5 | 1 << 8 | 1 << 9 | 1 << 11;

    /// The threshold in nanoseconds (the kernel's clock).
    pub fn after_ns(&self) -> u64 {
        u64::try_from(self.after.as_nanos()).unwrap_or(u64::MAX)
    }

    /// How often the sockets are walked: a tenth of the threshold, from
    /// one second to ten.
    pub fn walk_every(&self) -> std::time::Duration {
        (self.after / 10).clamp(
            std::time::Duration::from_secs(1),
            std::time::Duration::from_secs(10),
        )
    }
}

/// What `--label-by` labels the summary's counts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
pub enum LabelBy {
    /// The owner's systemd unit (a user's unit as user@UID:UNIT)
    Unit,
    /// The owner's container (its name, or its id's first 12 digits; a
    /// pod's container as NAMESPACE/POD/CONTAINER)
    Container,
    /// The service: the local port of listening sockets and the
    /// connections they accept (--label-ports, or the busiest)
    Port,
}

impl LabelBy {
    /// The label's name in the metrics and the summary.
    pub fn name(self) -> &'static str {
        match self {
            LabelBy::Unit => "unit",
            LabelBy::Container => "container",
            LabelBy::Port => "port",
        }
    }

    /// Whether the label is the owner's (a unit or container), which the
    /// kernel keeps with each socket.
    pub fn by_owner(self) -> bool {
        self != LabelBy::Port
    }
}

/// Summary labels: by what, and how many values at most (the rest are
/// `other`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Labels {
    /// By unit or by container.
    pub by: LabelBy,
    /// At most this many values.
    pub max: u16,
}

/// `--label-by port`: which ports are labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortLabels {
    /// These, in this order (`--label-ports`).
    Named(Vec<u16>),
    /// The busiest ones as they show, up to `--max-labels`.
    Busiest,
}

impl Config {
    /// Whether an output shows sockets' owners (`-x`, `-j`, `-Y`): the
    /// program then sends each transition's task uid and cgroup, and the
    /// reader keeps each socket's owner.
    pub fn collects_owners(&self) -> bool {
        self.journal
            || match self.format {
                Format::Table { extended, .. } | Format::Csv { extended, .. } => extended,
                Format::Json => true,
            }
    }

    /// The ring buffer's size on a host with `cpus` CPUs online: the size
    /// asked for, else 4 MiB per CPU from 8 MiB to 64 MiB. Every CPU can
    /// fill the ring at once while the one reader drains it: when a host
    /// closes 36,000 connections at once, the reader of a 2-CPU machine
    /// found up to 6 MiB waiting (BENCHMARKS.md, the burst).
    pub fn ring_bytes_for(&self, cpus: usize) -> u32 {
        self.ring_bytes.unwrap_or_else(|| {
            let per_cpu = (cpus.max(1) as u64).next_power_of_two() * (4 << 20);
            per_cpu.clamp(8 << 20, 64 << 20) as u32
        })
    }
}

impl Default for Config {
    /// The command line's defaults.
    fn default() -> Self {
        Self {
            mode: Mode::Stream,
            format: Format::default(),
            filter: Filter::default(),
            attach: AttachMode::ALL.to_vec(),
            btf: None,
            max_sockets: None,
            ring_bytes: None,
            journal: false,
            count: None,
            duration: None,
            verbose: false,
            report: ReportFormat::Text,
            metrics: None,
            web: None,
            labels: None,
            label_ports: PortLabels::Busiest,
            host_root: PathBuf::from("/"),
            snapshot: true,
            snapshot_from: None,
            stuck: None,
        }
    }
}

/// Sockets the kernel's preallocated per-socket map holds when
/// `--max-sockets` is not given (it takes memory for all of them at load).
pub const DEFAULT_MAP_SOCKETS: u32 = 65536;

/// What a run produces.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// One record per transition, through the ring buffer, to the outputs.
    #[default]
    Stream,
    /// `-S`, `--metrics`: no records; the kernel aggregates.
    Summary(SummaryOutput),
    /// `-C`: one record per socket at its CLOSE, through the ring buffer,
    /// to the outputs.
    Closes,
}

/// What summary mode prints (the metrics endpoint is apart).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SummaryOutput {
    /// `-S`: print histograms and the transition matrix at exit (and every
    /// `interval`); false with `--metrics` alone.
    pub print: bool,
    /// `-S INTERVAL`: also print every this long, each time what happened
    /// since the last.
    pub interval: Option<Duration>,
    /// `-T`: stamp each print with the local time.
    pub clock: bool,
    /// `-j`: each print as one JSON object on one line.
    pub json: bool,
}

/// The optional time columns, first on each line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeColumns {
    /// `-T`: the local time of day of the transition, HH:MM:SS.
    pub clock: bool,
    /// `-t`: seconds since the first transition printed.
    pub elapsed: bool,
}

/// How each transition is written to standard output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// BCC's aligned columns.
    Table {
        /// Time columns.
        times: TimeColumns,
        /// `-w`: an IP version column and room for IPv6 addresses.
        wide: bool,
        /// `-x`: the owner's columns, the netns and the cgroup.
        extended: bool,
    },
    /// `-s`: comma-separated values (always with the IP version column).
    Csv {
        /// Time columns.
        times: TimeColumns,
        /// `-x`: the owner's columns, the netns and the cgroup.
        extended: bool,
    },
    /// `-j`: one JSON object per line (always with the event's time).
    Json,
}

impl Default for Format {
    fn default() -> Self {
        Format::Table {
            times: TimeColumns::default(),
            wide: false,
            extended: false,
        }
    }
}

/// An address family to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// AF_INET.
    Ipv4,
    /// AF_INET6.
    Ipv6,
}

/// What the kernel side keeps; everything else never reaches user space.
/// Every filter given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this family (None: both).
    pub family: Option<Family>,
    /// Only sockets with one of these local ports (empty: any), sorted.
    pub local_ports: Vec<u16>,
    /// Only sockets with one of these remote ports (empty: any), sorted.
    pub remote_ports: Vec<u16>,
    /// Only transitions into or out of these states: bit n for state n
    /// (0: any).
    pub states: u32,
    /// Only transitions that left a state after at least this many
    /// nanoseconds (its time known).
    pub min_duration_ns: Option<u64>,
    /// Only sockets in the network namespace of this inode.
    pub netns: Option<u32>,
    /// Only sockets whose owner's tgid is one of these (empty: any).
    pub pids: Vec<u32>,
    /// Only sockets whose owner has this name (at most 15 bytes).
    pub comm: Option<String>,
    /// Only sockets whose owner has this uid.
    pub uid: Option<u32>,
    /// Only sockets whose owner is in this cgroup v2 group or below it (its
    /// path under the cgroup2 mount, `/` first, no `/` last).
    pub cgroup: Option<String>,
    /// Only sockets whose owner is in this systemd unit or below it (its
    /// name as systemd spells it: `nginx.service`).
    pub unit: Option<String>,
    /// Only sockets whose owner is in this container: its name, or a prefix
    /// of its id.
    pub container: Option<String>,
    /// `-C --cause`: only connections that ended so: bit n for the cause
    /// numbered n (0: any).
    pub causes: u32,
}

impl Filter {
    /// Whether the kernel keeps each socket's last-transition time. With a
    /// port, state, duration or owner filter it must: it drops transitions user
    /// space would need (a client's local port is still 0 at CLOSE ->
    /// SYN_SENT; a kept transition's time starts at one the state filter
    /// dropped), or needs the time itself. Without one, user space sees
    /// every transition of the sockets kept and keeps the times itself
    /// (src/track/), which costs the traced host much less.
    pub fn tracks_in_kernel(&self) -> bool {
        !self.local_ports.is_empty()
            || !self.remote_ports.is_empty()
            || self.states != 0
            || self.min_duration_ns.is_some()
            || self.by_owner()
    }

    /// Whether a filter looks at the socket's owner (the kernel then keeps
    /// the owners, and a socket whose owner is unknown is left out).
    pub fn by_owner(&self) -> bool {
        !self.pids.is_empty() || self.comm.is_some() || self.uid.is_some() || self.by_group()
    }

    /// Whether a filter looks at the owner's cgroup (`--cgroup`, `--unit`,
    /// `--container`).
    pub fn by_group(&self) -> bool {
        self.cgroup.is_some() || self.unit.is_some() || self.container.is_some()
    }
}

/// Where the program attaches. The `--attach` values, their help and the
/// `--version` line all come from this one list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
pub enum AttachMode {
    /// BTF tracepoint sock:inet_sock_set_state (needs no tracefs)
    TpBtf,
    /// Classic tracepoint sock:inet_sock_set_state (needs tracefs)
    Tracepoint,
    /// kprobe on tcp_set_state (kernels without the tracepoint)
    Kprobe,
}

impl AttachMode {
    /// Every mode, best first: the order `auto` tries them in.
    pub const ALL: [AttachMode; 3] = [
        AttachMode::TpBtf,
        AttachMode::Tracepoint,
        AttachMode::Kprobe,
    ];

    /// The name `--attach` takes.
    pub fn name(self) -> &'static str {
        match self {
            AttachMode::TpBtf => "tp-btf",
            AttachMode::Tracepoint => "tracepoint",
            AttachMode::Kprobe => "kprobe",
        }
    }
}

impl std::fmt::Display for AttachMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The form of the counters report (`-v`, and the final line).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// A sentence for people
    #[default]
    Text,
    /// key=value pairs with stable keys, for scripts
    Kv,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_names_are_claps() {
        for mode in AttachMode::ALL {
            let value = mode.to_possible_value().expect("every mode is a value");
            assert_eq!(value.get_name(), mode.name());
        }
        assert_eq!(AttachMode::value_variants(), AttachMode::ALL);
    }

    #[test]
    fn the_ring_grows_with_the_cpus_within_bounds() {
        let default = Config::default();
        let mib = |cpus| default.ring_bytes_for(cpus) >> 20;
        assert_eq!(
            [0, 1, 2, 3, 4, 8, 16, 64, 4096].map(mib),
            [8, 8, 8, 16, 16, 32, 64, 64, 64]
        );
        let asked = Config {
            ring_bytes: Some(4096),
            ..Config::default()
        };
        assert_eq!(asked.ring_bytes_for(64), 4096);
    }

    #[test]
    fn port_filters_move_the_times_into_the_kernel() {
        assert!(!Filter::default().tracks_in_kernel());
        let filter = Filter {
            remote_ports: vec![80],
            ..Filter::default()
        };
        assert!(filter.tracks_in_kernel());
    }
}
