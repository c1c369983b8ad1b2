//! The command line: clap's derive definition, value parsers that reject
//! bad input, and the conversion into a plain [`Config`].

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{ArgAction, Parser, ValueEnum, error::ErrorKind};

use crate::output::OutputOptions;
use crate::tracer::{AttachMode, AttachRequest, Family, Filter, TracerOptions};

const EXAMPLES: &str = "\
EXAMPLES:
    tcpstates                  # trace all TCP state changes
    tcpstates -T               # add an HH:MM:SS column
    tcpstates -t               # add a seconds-since-first-event column
    tcpstates -w               # wide columns, fits IPv6 addresses
    tcpstates -s               # comma-separated values
    tcpstates -L 80,443        # only sockets with local port 80 or 443
    tcpstates -D 5432          # only sockets with remote port 5432
    tcpstates -6               # IPv6 sockets only
    tcpstates --attach tracepoint -v   # force an attach point, say what happened

COLUMNS:
    C-PID and C-COMM are the task on the CPU when the state changed (\"current\"),
    not necessarily the socket's owner: many transitions run in softirq context.
    MS is the time the socket spent in OLDSTATE; '-' means it is not known (the
    socket is new, or predates the trace).";

/// Version and the attach modes built in, for `--version`.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\nattach modes: tp-btf tracepoint kprobe (auto tries them in that order)"
);

/// Trace TCP socket state changes, with the time spent in the state left.
#[derive(Debug, Parser)]
#[command(
    name = "tcpstates",
    version = VERSION,
    about,
    after_help = EXAMPLES,
    max_term_width = 100
)]
struct Args {
    /// Include an HH:MM:SS column
    #[arg(short = 'T', long)]
    time: bool,

    /// Include a column of seconds since the first event
    #[arg(short = 't', long)]
    timestamp: bool,

    /// Wide columns (an IP version column, fits IPv6 addresses)
    #[arg(short = 'w', long)]
    wide: bool,

    /// Comma-separated values
    #[arg(short = 's', long)]
    csv: bool,

    /// Comma-separated list of local ports to trace
    #[arg(short = 'L', long = "localport", value_name = "PORTS", value_parser = parse_ports, action = ArgAction::Append)]
    local_ports: Vec<Ports>,

    /// Comma-separated list of remote ports to trace
    #[arg(short = 'D', long = "remoteport", value_name = "PORTS", value_parser = parse_ports, action = ArgAction::Append)]
    remote_ports: Vec<Ports>,

    /// Trace IPv4 sockets only
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    ipv4: bool,

    /// Trace IPv6 sockets only
    #[arg(short = '6', long = "ipv6")]
    ipv6: bool,

    /// Say which attach point is used, show libbpf's log and periodic counters
    #[arg(short = 'v', long)]
    verbose: bool,

    /// Kernel BTF file, for kernels without /sys/kernel/btf/vmlinux
    #[arg(long, value_name = "FILE", value_parser = parse_file)]
    btf: Option<PathBuf>,

    /// Where to attach
    #[arg(long, value_enum, default_value_t = AttachArg::Auto)]
    attach: AttachArg,

    /// Sockets whose last transition time is kept at once (kernel map size)
    #[arg(long, value_name = "N", default_value_t = 65536,
          value_parser = clap::value_parser!(u32).range(1..=(1 << 24)))]
    max_sockets: u32,

    /// Ring buffer size: a power of two from 4K to 1G, with an optional K/M/G suffix
    #[arg(long, value_name = "SIZE", default_value = "8M", value_parser = parse_size)]
    ring_buffer: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum AttachArg {
    /// The best one the kernel supports: tp-btf, then tracepoint, then kprobe
    Auto,
    /// BTF tracepoint sock:inet_sock_set_state (needs no tracefs)
    TpBtf,
    /// Classic tracepoint sock:inet_sock_set_state (needs tracefs)
    Tracepoint,
    /// kprobe on tcp_set_state (kernels without the tracepoint)
    Kprobe,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Ports(Vec<u16>);

fn parse_ports(text: &str) -> Result<Ports, String> {
    text.split(',')
        .map(|item| {
            let item = item.trim();
            if item.is_empty() {
                return Err(format!("empty item in port list '{text}'"));
            }
            match item.parse::<u32>() {
                Ok(port @ 1..=65535) => Ok(port as u16),
                Ok(port) => Err(format!("port {port} is out of range 1-65535")),
                Err(_) => Err(format!("'{item}' is not a port number")),
            }
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Ports)
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

/// Everything a tracing run needs, parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub output: OutputOptions,
    pub tracer: TracerOptions,
}

/// The outcome of parsing: run, or print something and exit.
#[derive(Debug)]
pub enum Parsed {
    Run(Config),
    /// Help or version (to stdout, exit 0), or a usage error (one line to
    /// stderr, exit 2).
    Exit {
        code: u8,
        message: String,
    },
}

/// Parses a full command line (program name first).
pub fn parse<I, T>(args: I) -> Parsed
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    match Args::try_parse_from(args) {
        Ok(args) => Parsed::Run(args.into_config()),
        Err(err) => match err.kind() {
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => Parsed::Exit {
                code: 0,
                message: err.render().to_string(),
            },
            _ => {
                let rendered = err.render().to_string();
                let first = rendered.lines().next().unwrap_or("invalid arguments");
                Parsed::Exit {
                    code: 2,
                    message: format!(
                        "tcpstates: {} (see --help)\n",
                        first.trim_start_matches("error: ")
                    ),
                }
            }
        },
    }
}

impl Args {
    fn into_config(self) -> Config {
        let flatten = |lists: Vec<Ports>| {
            let mut ports: Vec<u16> = lists.into_iter().flat_map(|p| p.0).collect();
            ports.sort_unstable();
            ports.dedup();
            ports
        };
        let family = match (self.ipv4, self.ipv6) {
            (true, _) => Some(Family::Ipv4),
            (_, true) => Some(Family::Ipv6),
            _ => None,
        };
        let attach = match self.attach {
            AttachArg::Auto => AttachRequest::Auto,
            AttachArg::TpBtf => AttachRequest::Only(AttachMode::TpBtf),
            AttachArg::Tracepoint => AttachRequest::Only(AttachMode::Tracepoint),
            AttachArg::Kprobe => AttachRequest::Only(AttachMode::Kprobe),
        };
        Config {
            output: OutputOptions {
                time: self.time,
                timestamp: self.timestamp,
                wide: self.wide,
                csv: self.csv,
            },
            tracer: TracerOptions {
                filter: Filter {
                    family,
                    local_ports: flatten(self.local_ports),
                    remote_ports: flatten(self.remote_ports),
                },
                attach,
                btf: self.btf,
                max_sockets: self.max_sockets,
                ringbuf_bytes: self.ring_buffer,
                verbose: self.verbose,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> Config {
        match parse(std::iter::once("tcpstates").chain(args.iter().copied())) {
            Parsed::Run(config) => config,
            Parsed::Exit { message, .. } => panic!("{args:?} rejected: {message}"),
        }
    }

    fn rejected(args: &[&str]) -> String {
        match parse(std::iter::once("tcpstates").chain(args.iter().copied())) {
            Parsed::Run(config) => panic!("{args:?} accepted: {config:?}"),
            Parsed::Exit { code, message } => {
                assert_eq!(code, 2, "{message}");
                assert_eq!(message.lines().count(), 1, "{message}");
                message
            }
        }
    }

    #[test]
    fn defaults() {
        let c = config(&[]);
        assert_eq!(c.output, OutputOptions::default());
        assert_eq!(c.tracer.filter, Filter::default());
        assert_eq!(c.tracer.attach, AttachRequest::Auto);
        assert_eq!(c.tracer.attach.candidates(), AttachMode::ALL.to_vec());
        assert_eq!(c.tracer.max_sockets, 65536);
        assert_eq!(c.tracer.ringbuf_bytes, 8 << 20);
        assert_eq!(c.tracer, TracerOptions::default());
        assert!(!c.tracer.verbose && c.tracer.btf.is_none());
    }

    #[test]
    fn bcc_flags() {
        let c = config(&["-T", "-t", "-w", "-s", "-4", "-v"]);
        assert!(c.output.time && c.output.timestamp && c.output.wide && c.output.csv);
        assert_eq!(c.tracer.filter.family, Some(Family::Ipv4));
        assert!(c.tracer.verbose);
        assert_eq!(config(&["--ipv6"]).tracer.filter.family, Some(Family::Ipv6));
    }

    #[test]
    fn port_lists_merge_sort_and_dedup() {
        let c = config(&["-L", "443,80", "--localport=80", "-D", " 5432 "]);
        assert_eq!(c.tracer.filter.local_ports, [80, 443]);
        assert_eq!(c.tracer.filter.remote_ports, [5432]);
        assert_eq!(config(&["-L65535"]).tracer.filter.local_ports, [65535]);
    }

    #[test]
    fn attach_modes() {
        assert_eq!(
            config(&["--attach", "tp-btf"]).tracer.attach,
            AttachRequest::Only(AttachMode::TpBtf)
        );
        assert_eq!(
            config(&["--attach=kprobe"]).tracer.attach.candidates(),
            [AttachMode::Kprobe]
        );
        assert_eq!(
            config(&["--attach", "tracepoint"]).tracer.attach,
            AttachRequest::Only(AttachMode::Tracepoint)
        );
    }

    #[test]
    fn ring_buffer_sizes() {
        let size = |s: &str| config(&["--ring-buffer", s]).tracer.ringbuf_bytes;
        assert_eq!(size("4096"), 4096);
        assert_eq!(size("64K"), 65536);
        assert_eq!(size("16m"), 16 << 20);
        assert_eq!(size("1G"), 1 << 30);
        for bad in [
            "2K",
            "3M",
            "2G",
            "0",
            "",
            "K",
            "8MB",
            "-4K",
            "99999999999999999999G",
        ] {
            rejected(&["--ring-buffer", bad]);
        }
    }

    #[test]
    fn rejects_bad_ports() {
        assert!(rejected(&["-L", "0"]).contains("port 0 is out of range 1-65535"));
        assert!(rejected(&["-D", "65536"]).contains("out of range"));
        assert!(rejected(&["-L", "80,,443"]).contains("empty item"));
        assert!(rejected(&["-L", "80,"]).contains("empty item"));
        assert!(rejected(&["-L", ""]).contains("empty item"));
        assert!(rejected(&["-D", "http"]).contains("'http' is not a port number"));
        assert!(rejected(&["-L", "-1"]).contains("-1"));
    }

    #[test]
    fn rejects_other_bad_input() {
        assert!(rejected(&["-4", "-6"]).contains("cannot be used with"));
        assert!(rejected(&["--attach", "uprobe"]).contains("uprobe"));
        assert!(rejected(&["--btf", "/nonexistent/btf"]).contains("no such file"));
        assert!(rejected(&["--max-sockets", "0"]).contains("0"));
        assert!(rejected(&["--bogus"]).contains("--bogus"));
        assert!(rejected(&["extra"]).contains("extra"));
    }

    #[test]
    fn help_and_version_exit_zero() {
        for flag in ["-h", "--help"] {
            match parse(["tcpstates", flag]) {
                Parsed::Exit { code: 0, message } => {
                    assert!(message.contains("EXAMPLES:"), "{message}");
                    assert!(message.contains("--localport"), "{message}");
                }
                other => panic!("{flag}: {other:?}"),
            }
        }
        match parse(["tcpstates", "--version"]) {
            Parsed::Exit { code: 0, message } => {
                assert!(message.starts_with(&format!("tcpstates {}", env!("CARGO_PKG_VERSION"))));
                assert!(message.contains("tp-btf tracepoint kprobe"), "{message}");
            }
            other => panic!("--version: {other:?}"),
        }
    }
}
