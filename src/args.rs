//! The command line's clap definition and the value parsers that reject bad
//! input. Self-contained (clap, std and the plain config types): `build.rs`
//! includes it too, to generate the man page and shell completions from the
//! same definition.

use std::path::PathBuf;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{ArgAction, Parser, ValueEnum};

use crate::cause::Cause;
use crate::config::{AttachMode, LabelBy, ReportFormat};
use crate::state::TcpState;

/// The examples `--help` and the manual show: a command line (after the
/// program's name) and what it does.
pub const EXAMPLES: &[(&str, &str)] = &[
    ("", "trace all TCP state changes"),
    ("-T", "add an HH:MM:SS column"),
    ("-t", "add a seconds-since-first-event column"),
    ("-w", "wide columns, fits IPv6 addresses"),
    ("-s", "comma-separated values"),
    ("-x", "the socket's owner, netns and cgroup too"),
    ("-j | jq .", "JSON lines"),
    ("-Y", "also log each transition to the systemd journal"),
    ("-L 80,443", "only sockets with local port 80 or 443"),
    ("-D 5432", "only sockets with remote port 5432"),
    ("-6", "IPv6 sockets only"),
    ("-x -c nginx", "only sockets owned by processes named nginx"),
    ("-p 1234,5678", "only sockets owned by these processes"),
    (
        "--cgroup /system.slice/docker.service",
        "one cgroup, and below",
    ),
    ("-x --unit nginx", "one systemd unit (nginx.service)"),
    ("-x --container web", "one container, by name or id"),
    (
        "--metrics 9977 --label-by container",
        "metrics by container",
    ),
    (
        "--state CLOSE_WAIT",
        "only sockets entering or leaving CLOSE_WAIT",
    ),
    (
        "--min-ms 200 -L 443",
        "only states held 200 ms or more, port 443",
    ),
    ("--netns /run/netns/blue", "only one network namespace"),
    (
        "--count 100 --duration 60",
        "at most 100 lines, at most a minute",
    ),
    (
        "--attach tracepoint -v",
        "force an attach point, say what happened",
    ),
    (
        "-v --report kv",
        "counters for scripts, the ring's high-water mark",
    ),
    ("-C", "one record per socket at close: why and how it lived"),
    (
        "-C --cause failed -x",
        "only connections that failed, with owners",
    ),
    ("-S", "in-kernel summary: histograms at Ctrl-C"),
    ("-S 10 -T", "a summary every 10 seconds, stamped"),
    (
        "--metrics 9977",
        "serve the summary to Prometheus on 127.0.0.1:9977",
    ),
];

/// The columns of the table and CSV: `--help`'s COLUMNS, the manual's
/// FIELDS.
pub const COLUMNS: &[(&str, &str)] = &[
    ("TIME", "-T: the local time of the transition, HH:MM:SS"),
    ("TIME(s)", "-t: seconds since the first transition printed"),
    (
        "SKADDR",
        "the socket's kernel address: one socket while it lives",
    ),
    (
        "C-PID, C-COMM",
        "the task on the CPU when the state changed (\"current\"), not necessarily the \
         socket's owner: many transitions run in softirq context",
    ),
    (
        "O-PID, O-COMM, UID",
        "-x: the socket's owner, the process that last changed its state in a system call",
    ),
    ("IP", "-w, -s: 4 or 6"),
    (
        "LADDR, LPORT",
        "the local address and port (port 0 at CLOSE -> SYN_SENT, before the kernel picks it)",
    ),
    ("RADDR, RPORT", "the remote address and port"),
    (
        "OLDSTATE -> NEWSTATE",
        "the state left and the state entered, the kernel's names without TCP_",
    ),
    (
        "MS",
        "the time spent in OLDSTATE, in milliseconds; '-' when it is not known (the socket \
         is new); '>N' when the socket was in OLDSTATE before the trace began: at least N",
    ),
    ("NETNS", "-x: the socket's network namespace inode"),
    (
        "UNIT/CONTAINER",
        "-x: who the owner belongs to: its pod (NAMESPACE/POD/CONTAINER), else its container \
         (RUNTIME:NAME, or the id's first 12 digits), else its user unit (user@UID:UNIT), else \
         its systemd unit; '-' when none is known",
    ),
    ("CGROUP", "-x: the owner's cgroup v2 path"),
    (
        "ROLE, CAUSE, MS, TX_B, RX_B, SEGS_OUT, SEGS_IN, RETRANS, SRTT_US, MINRTT_US, STATES",
        "-C, one row per socket at close: client, server or listener; why it ended (normal, \
         refused, timeout, reset, aborted, cancelled, listener, error; :detail); its lifetime in \
         ms; data bytes acknowledged and received; segments; retransmissions; smoothed and \
         minimum RTT; every state left with its ms. PID and COMM are then the owner's",
    ),
];

/// The exit codes: `--help`'s and the manual's EXIT STATUS.
pub const EXIT_STATUS: &[(&str, &str)] = &[
    (
        "0",
        "the run ended as asked: Ctrl-C, SIGTERM, --count, --duration, or a reader that \
         closed standard output; help and version",
    ),
    (
        "1",
        "it could not trace: privileges missing, no BTF, nothing attached, a --metrics \
         address that cannot be bound, no journal for -Y",
    ),
    ("2", "bad arguments: one line on standard error says which"),
];

/// The manual's FILES (build.rs renders them; `--help` does not).
#[allow(dead_code)]
pub const FILES: &[(&str, &str)] = &[
    (
        "/sys/kernel/btf/vmlinux",
        "the kernel's BTF, which CO-RE needs (else --btf FILE)",
    ),
    (
        "/sys/kernel/tracing",
        "tracefs: the classic tracepoint's attach mode needs it mounted",
    ),
    ("/run/systemd/journal/socket", "where -Y sends its entries"),
    (
        "/var/lib/containers/storage, /var/lib/docker/containers",
        "Podman's, CRI-O's and Docker's state: the containers' names (under --host-root)",
    ),
    (
        "/var/log/pods, /var/log/containers",
        "the kubelet's log folders: the pods' namespaces and names, their containers' names \
         (under --host-root)",
    ),
    (
        "/etc/default/tcpstates-rs, /etc/sysconfig/tcpstates-rs",
        "the metrics service's options (the .deb's, the .rpm's)",
    ),
    (
        "tcpstates-rs.service",
        "the metrics service's systemd unit, disabled when installed",
    ),
];

/// The manual's SEE ALSO (build.rs renders it; `--help` does not).
#[allow(dead_code)]
pub const SEE_ALSO: &str =
    "tcpstates(8), tcpstates-bpfcc(8), ss(8), journalctl(1), systemd.exec(5)";

/// The EXAMPLES, COLUMNS and EXIT STATUS blocks after the options in
/// `--help`, naming the program `name`.
pub fn after_help(name: &str) -> String {
    let mut text = String::from("EXAMPLES:\n");
    for (args, what) in EXAMPLES {
        let command = format!("{name} {args}");
        text.push_str(&format!("    {:<30} # {what}\n", command.trim_end()));
    }
    for (title, items) in [("COLUMNS", COLUMNS), ("EXIT STATUS", EXIT_STATUS)] {
        text.push_str(&format!("\n{title}:\n"));
        for (term, what) in items {
            text.push_str(&format!("    {term}\n"));
            wrap(&mut text, what, 8, 88);
        }
    }
    text.trim_end().to_owned()
}

/// Appends `words`, indented by `indent`, in lines of at most `width`.
fn wrap(out: &mut String, words: &str, indent: usize, width: usize) {
    let mut line = String::new();
    for word in words.split_whitespace() {
        if !line.is_empty() && indent + line.len() + 1 + word.len() > width {
            out.push_str(&format!("{:indent$}{line}\n", ""));
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    out.push_str(&format!("{:indent$}{line}\n", ""));
}

/// The most values `--max-labels` takes.
pub const MAX_LABELS: u16 = 500;

/// `--max-labels` when not given.
pub const DEFAULT_MAX_LABELS: u16 = 20;

/// The most owner names `--stuck-owners` takes.
pub const MAX_STUCK_OWNERS: u16 = 100;

/// The most sockets `--max-sockets` takes.
pub const MAX_SOCKETS: u32 = 1 << 24;

/// Trace TCP socket state changes, with the time spent in the state left.
#[derive(Debug, Parser)]
#[command(name = "tcpstates", about, max_term_width = 100)]
pub struct Args {
    /// Include an HH:MM:SS column
    #[arg(short = 'T', long)]
    pub time: bool,

    /// Include a column of seconds since the first event
    #[arg(short = 't', long)]
    pub timestamp: bool,

    /// Wide columns (an IP version column, fits IPv6 addresses)
    #[arg(short = 'w', long)]
    pub wide: bool,

    /// Comma-separated values
    #[arg(short = 's', long)]
    pub csv: bool,

    /// Extended: the socket owner's PID, COMM and UID, the netns and the cgroup as columns
    #[arg(short = 'x', long)]
    pub extended: bool,

    /// JSON lines: one object per transition (fields in the README)
    #[arg(short = 'j', long, conflicts_with_all = ["csv", "time", "timestamp", "wide", "extended"])]
    pub json: bool,

    /// Also log each transition to the systemd journal (BCC's fields)
    #[arg(short = 'Y', long)]
    pub journal: bool,

    /// Close records: one line per socket when it closes, with its role, why it ended
    /// (CAUSE), how long it lived, its states and its bytes, segments and RTT
    #[arg(short = 'C', long, conflicts_with_all = ["summary", "metrics"])]
    pub closes: bool,

    /// With -C: only these causes (names, any case; failed: every one but normal and
    /// listener): --cause refused,timeout
    #[arg(long = "cause", value_name = "CAUSES", value_parser = parse_causes,
          action = ArgAction::Append)]
    pub causes: Vec<u32>,

    /// Summary: the kernel counts transitions and histograms the time in each state;
    /// printed at exit, and every SECS seconds if given (each time what happened since)
    #[arg(short = 'S', long, value_name = "SECS", num_args = 0..=1, value_parser = parse_duration,
          conflicts_with_all = ["csv", "timestamp", "wide", "extended", "journal", "count"])]
    pub summary: Option<Option<std::time::Duration>>,

    /// Serve the summary over HTTP for Prometheus at ADDR:PORT (a bare PORT: 127.0.0.1)
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_listen,
          conflicts_with_all = ["csv", "timestamp", "wide", "extended", "journal", "count"])]
    pub metrics: Option<std::net::SocketAddr>,

    /// With --metrics: TLS, client certificates and basic auth from FILE, in the Prometheus
    /// exporter toolkit's web configuration format (as node_exporter's)
    #[arg(long = "web.config.file", value_name = "FILE", requires = "metrics")]
    pub web_config_file: Option<PathBuf>,

    /// Summary and metrics: count by the owner's unit or container, or by service port, as a
    /// label
    #[arg(long, value_enum, value_name = "WHAT")]
    pub label_by: Option<LabelBy>,

    /// With --label-by port: these local ports are the labels (the rest: `other`), not the
    /// busiest
    #[arg(long, value_name = "PORTS", value_parser = parse_ports, requires = "label_by")]
    pub label_ports: Vec<Ports>,

    /// With --label-by: at most N values; the rest count under `other` [default: 20]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=MAX_LABELS as i64))]
    pub max_labels: Option<u16>,

    /// Where the container runtimes' state and the kubelet's logs are read (the host's / as
    /// mounted in the tracer's container)
    #[arg(long, value_name = "DIR", default_value = "/", value_parser = parse_dir)]
    pub host_root: PathBuf,

    /// Comma-separated list of local ports to trace
    #[arg(short = 'L', long = "localport", value_name = "PORTS", value_parser = parse_ports,
          action = ArgAction::Append, allow_hyphen_values = true)]
    pub local_ports: Vec<Ports>,

    /// Comma-separated list of remote ports to trace
    #[arg(short = 'D', long = "remoteport", value_name = "PORTS", value_parser = parse_ports,
          action = ArgAction::Append, allow_hyphen_values = true)]
    pub remote_ports: Vec<Ports>,

    /// Only sockets owned by these processes (their PIDs, comma-separated)
    #[arg(short = 'p', long = "pid", value_name = "PIDS", value_parser = parse_pids,
          action = ArgAction::Append, allow_hyphen_values = true)]
    pub pids: Vec<Vec<u32>>,

    /// Only sockets whose owner has this command name (exact)
    #[arg(short = 'c', long, value_name = "NAME", value_parser = parse_comm)]
    pub comm: Option<String>,

    /// Only sockets whose owner runs as this uid
    #[arg(short = 'u', long, value_name = "UID", value_parser = parse_uid, allow_hyphen_values = true)]
    pub uid: Option<u32>,

    /// Only sockets whose owner is in this cgroup v2 group or below (its path under the mount)
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<String>,

    /// Only sockets whose owner is in this systemd unit or below (a name without a suffix is
    /// a service)
    #[arg(long, value_name = "NAME", value_parser = parse_unit)]
    pub unit: Option<String>,

    /// Only sockets whose owner is in this container: its name, or a prefix of its id (3
    /// digits or more)
    #[arg(long, value_name = "ID|NAME", value_parser = parse_container)]
    pub container: Option<String>,

    /// Only transitions into or out of these states (names, any case): --state CLOSE_WAIT;
    /// with -C, sockets that were in one of them
    #[arg(long = "state", value_name = "STATES", value_parser = parse_states,
          action = ArgAction::Append)]
    pub states: Vec<u32>,

    /// Only transitions that left a state after at least MS milliseconds (its time known);
    /// with -C, sockets that lived that long
    #[arg(long, value_name = "MS", value_parser = parse_min_ms, allow_hyphen_values = true)]
    pub min_ms: Option<u64>,

    /// Only sockets of this network namespace: its inode, or a file such as /run/netns/NAME
    #[arg(long, value_name = "INODE|PATH", value_parser = parse_netns)]
    pub netns: Option<u32>,

    /// End after this many transitions (exit 0, counters reported as at Ctrl-C)
    #[arg(long, value_name = "N", value_parser = parse_count, allow_hyphen_values = true)]
    pub count: Option<u64>,

    /// End after SECS seconds (exit 0, counters reported as at Ctrl-C)
    #[arg(long, value_name = "SECS", value_parser = parse_duration, allow_hyphen_values = true)]
    pub duration: Option<std::time::Duration>,

    /// Trace IPv4 sockets only
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub ipv4: bool,

    /// Trace IPv6 sockets only
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,

    /// Say which attach point is used, show libbpf's log and periodic counters
    #[arg(short = 'v', long)]
    pub verbose: bool,

    /// The form of the counters -v reports (kv: stable key=value pairs)
    #[arg(long, value_enum, value_name = "FORM", default_value = "text")]
    pub report: ReportFormat,

    /// Kernel BTF file, for kernels without /sys/kernel/btf/vmlinux
    #[arg(long, value_name = "FILE", value_parser = parse_file)]
    pub btf: Option<PathBuf>,

    /// Where to attach; a comma list is tried in its order (auto = all, best first)
    #[arg(long, value_parser = attach_parser(), value_delimiter = ',', default_value = "auto")]
    pub attach: Vec<AttachArg>,

    /// At most N sockets' last-change times kept at once (default: no bound where memory
    /// grows with use; 65536 for the kernel's preallocated map, used with -L/-D outside
    /// tp-btf and in summary mode)
    #[arg(long, value_name = "N", value_parser = parse_max_sockets, allow_hyphen_values = true)]
    pub max_sockets: Option<u32>,

    /// Report sockets that stay longer than SECONDS in one state (with --stuck-states; by
    /// default every state but ESTABLISHED and LISTEN): a row when they cross the line, a
    /// list with each summary, a gauge per state in the metrics
    #[arg(long, value_name = "SECONDS", value_parser = parse_stuck_seconds,
          conflicts_with = "closes")]
    pub stuck: Option<std::time::Duration>,

    /// With --stuck: the states watched (names, any case)
    #[arg(long, value_name = "STATES", value_parser = parse_states, requires = "stuck",
          action = ArgAction::Append)]
    pub stuck_states: Vec<u32>,

    /// With --stuck and --metrics: label the stuck sockets' gauge by owner name too, at
    /// most N names (the most stuck; the rest `other`)
    #[arg(long, value_name = "N", requires = "stuck",
          value_parser = clap::value_parser!(u16).range(1..=MAX_STUCK_OWNERS as i64))]
    pub stuck_owners: Option<u16>,

    /// Do not walk the sockets that exist at start (their owners stay unknown until a
    /// process changes their state; summary mode keeps no census)
    #[arg(long)]
    pub no_snapshot: bool,

    /// Take the snapshot at start with the kernel's socket iterators (Linux 5.9+) or the
    /// netlink socket diagnostics, as ss does [default: iterators where the kernel has them]
    #[arg(long, value_name = "FROM", value_parser = ["iterators", "netlink"],
          conflicts_with = "no_snapshot")]
    pub snapshot_from: Option<String>,

    /// Ring buffer size: a power of two from 4K to 1G, with an optional K/M/G suffix
    /// [default: 4M per CPU, from 8M to 64M]
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub ring_buffer: Option<u32>,
}

/// One `--attach` value: a mode, or `auto` for all of them, best first.
pub type AttachArg = Option<AttachMode>;

/// `auto` and every [`AttachMode`], with their help, for the parser, the
/// completions and the error that lists them.
fn attach_parser() -> impl TypedValueParser<Value = AttachArg> {
    let auto =
        PossibleValue::new("auto").help("The best one the kernel supports, in the order below");
    let modes = AttachMode::value_variants()
        .iter()
        .filter_map(ValueEnum::to_possible_value);
    // Only the listed names get through, so anything but a mode is auto.
    PossibleValuesParser::new(std::iter::once(auto).chain(modes))
        .map(|name| AttachMode::from_str(&name, false).ok())
}

/// A list of ports as given once on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ports(pub Vec<u16>);

fn parse_ports(text: &str) -> Result<Ports, String> {
    text.split(',')
        .map(|item| {
            let item = item.trim();
            if item.is_empty() {
                return Err(format!("empty item in port list '{text}'"));
            }
            parse_in_range(item, 1, 65535, "port", "port number").map(|port| port as u16)
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Ports)
}

/// `--metrics`: an address and port, or a port alone (on loopback).
fn parse_listen(text: &str) -> Result<std::net::SocketAddr, String> {
    let text = text.trim();
    if let Ok(port) = text.parse::<u16>() {
        return Ok((std::net::Ipv4Addr::LOCALHOST, port).into());
    }
    text.parse().map_err(|_| {
        format!("'{text}' is not ADDR:PORT or PORT (for example 127.0.0.1:9977 or [::1]:9977)")
    })
}

fn parse_max_sockets(text: &str) -> Result<u32, String> {
    parse_in_range(
        text.trim(),
        1,
        MAX_SOCKETS,
        "socket count",
        "number of sockets",
    )
}

/// A whole number from `low` to `high`, or an error that says it is not
/// `a` or that this `what` is out of range.
fn parse_in_range(item: &str, low: u32, high: u32, what: &str, a: &str) -> Result<u32, String> {
    match item.parse::<u64>() {
        Ok(n) if (u64::from(low)..=u64::from(high)).contains(&n) => Ok(n as u32),
        Ok(n) => Err(format!("{what} {n} is out of range {low}-{high}")),
        Err(_) => Err(format!("'{item}' is not a {a}")),
    }
}

fn parse_causes(text: &str) -> Result<u32, String> {
    Cause::parse_mask(text)
}

/// A comma list of state names (any case, `TCP_` optional) as a bit mask:
/// bit n for state n.
fn parse_states(text: &str) -> Result<u32, String> {
    let mut mask = 0;
    for item in text.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err(format!("empty item in state list '{text}'"));
        }
        let state = TcpState::by_name(item)
            .ok_or_else(|| format!("'{item}' is not a TCP state ({})", TcpState::names()))?;
        mask |= 1 << state.number();
    }
    Ok(mask)
}

/// Whole seconds from 1 to a day.
fn parse_stuck_seconds(text: &str) -> Result<std::time::Duration, String> {
    match text.trim().parse::<u64>() {
        Ok(seconds @ 1..=86_400) => Ok(std::time::Duration::from_secs(seconds)),
        _ => Err(format!(
            "'{text}' is not a whole number of seconds from 1 to 86400"
        )),
    }
}

/// Milliseconds, a decimal number of at least 0, as nanoseconds.
fn parse_min_ms(text: &str) -> Result<u64, String> {
    let ms: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a number of milliseconds"))?;
    if !ms.is_finite() || !(0.0..=1e12).contains(&ms) {
        return Err(format!("{text} is not a number of milliseconds from 0"));
    }
    Ok((ms * 1e6).round() as u64)
}

/// A network namespace: an inode number, or a file whose inode it is
/// (/proc/PID/ns/net, /run/netns/NAME).
fn parse_netns(text: &str) -> Result<u32, String> {
    if let Ok(inode) = text.parse::<u32>() {
        return if inode > 0 {
            Ok(inode)
        } else {
            Err("network namespace inode 0 does not exist".into())
        };
    }
    let inode = std::os::unix::fs::MetadataExt::ino(
        &std::fs::metadata(text)
            .map_err(|e| format!("'{text}' is neither a namespace inode nor a file: {e}"))?,
    );
    u32::try_from(inode).map_err(|_| format!("{text}: inode {inode} is no namespace's"))
}

fn parse_pids(text: &str) -> Result<Vec<u32>, String> {
    text.split(',')
        .map(|item| {
            let item = item.trim();
            if item.is_empty() {
                return Err(format!("empty item in pid list '{text}'"));
            }
            match item.parse::<u32>() {
                Ok(pid) if pid > 0 && pid <= 4_194_304 => Ok(pid),
                _ => Err(format!("'{item}' is not a process id (1-4194304)")),
            }
        })
        .collect()
}

fn parse_comm(text: &str) -> Result<String, String> {
    if text.is_empty() {
        Err("an empty name matches no task".into())
    } else if text.len() > 15 {
        Err(format!(
            "'{text}' is longer than a task name can be (15 bytes; the kernel cuts longer ones)"
        ))
    } else {
        Ok(text.to_owned())
    }
}

fn parse_unit(text: &str) -> Result<String, String> {
    if text.is_empty() || text.contains(['/', ' ']) {
        Err(format!(
            "'{text}' is not a unit name (nginx, nginx.service, user-1000.slice)"
        ))
    } else {
        Ok(text.to_owned())
    }
}

fn parse_container(text: &str) -> Result<String, String> {
    if text.is_empty() || text.contains(char::is_whitespace) {
        Err(format!("'{text}' is not a container name or id"))
    } else {
        Ok(text.to_owned())
    }
}

fn parse_dir(text: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(text);
    if path.is_dir() {
        Ok(path)
    } else {
        Err(format!("no such directory: {text}"))
    }
}

fn parse_uid(text: &str) -> Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(uid) if uid != u32::MAX => Ok(uid),
        _ => Err(format!("'{text}' is not a uid")),
    }
}

fn parse_count(text: &str) -> Result<u64, String> {
    match text.trim().parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "'{text}' is not a count of transitions (1 or more)"
        )),
    }
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let secs: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a number of seconds"))?;
    if !secs.is_finite() || secs <= 0.0 || secs > 1e9 {
        return Err(format!("{text} is not a number of seconds above 0"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

fn parse_size(text: &str) -> Result<u32, String> {
    let (digits, shift) = match text.strip_suffix(['K', 'k']) {
        Some(d) => (d, 10),
        None => match text.strip_suffix(['M', 'm']) {
            Some(d) => (d, 20),
            None => match text.strip_suffix(['G', 'g']) {
                Some(d) => (d, 30),
                None => (text, 0),
            },
        },
    };
    let bytes = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_shl(shift).filter(|b| b >> shift == n))
        .ok_or_else(|| format!("'{text}' is not a size (like 64K or 8M)"))?;
    if !bytes.is_power_of_two() || !(4096..=1 << 30).contains(&bytes) {
        return Err(format!("{text} is not a power of two from 4K to 1G"));
    }
    Ok(bytes as u32)
}

fn parse_file(text: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(text);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!("no such file: {text}"))
    }
}
