//! The command line: clap's derive definition, value parsers that reject
//! bad input, and the conversion into a plain [`Config`].

use std::ffi::OsString;

use std::path::Path;

use clap::{CommandFactory, FromArgMatches, error::ErrorKind};

use crate::args::{Args, AttachArg, Ports};

use crate::output::OutputOptions;
use crate::tracer::{AttachMode, AttachRequest, Family, Filter, TracerOptions};

/// Everything a tracing run needs, parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// How lines look.
    pub output: OutputOptions,
    /// What is traced, and how.
    pub tracer: TracerOptions,
}

/// The outcome of parsing: run, or print something and exit.
#[derive(Debug)]
pub enum Parsed {
    /// Trace with this configuration.
    Run(Config),
    /// Help or version (to stdout, exit 0), or a usage error (one line to
    /// stderr, exit 2).
    Exit {
        /// The exit code.
        code: u8,
        /// What to print, newline included.
        message: String,
    },
}

/// Parses a full command line (program name first).
pub fn parse<I, T>(args: I) -> Parsed
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    // Help and version name the binary as it was invoked: the packages
    // install it as tcpstates-rs.
    let invoked = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "tcpstates".to_owned());
    let parsed = Args::command()
        .display_name(invoked)
        .try_get_matches_from(args)
        .and_then(|matches| Args::from_arg_matches(&matches));
    match parsed {
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
        // Each name, auto standing for every mode, best first; a mode named
        // twice keeps its first place.
        let mut modes: Vec<AttachMode> = Vec::new();
        for arg in &self.attach {
            let named = match arg {
                AttachArg::Auto => &AttachMode::ALL[..],
                AttachArg::TpBtf => &[AttachMode::TpBtf],
                AttachArg::Tracepoint => &[AttachMode::Tracepoint],
                AttachArg::Kprobe => &[AttachMode::Kprobe],
            };
            for mode in named {
                if !modes.contains(mode) {
                    modes.push(*mode);
                }
            }
        }
        let attach = match modes.as_slice() {
            [one] => AttachRequest::Only(*one),
            all if all == AttachMode::ALL => AttachRequest::Auto,
            _ => AttachRequest::Order(modes),
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
                // Set by the run, which knows where the output goes.
                wakeup_bytes: 0,
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
        assert_eq!(c.tracer.ringbuf_bytes, 4 << 20);
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
        assert_eq!(
            config(&["--attach", "kprobe,tracepoint"]).tracer.attach,
            AttachRequest::Order(vec![AttachMode::Kprobe, AttachMode::Tracepoint])
        );
        assert_eq!(
            config(&["--attach", "kprobe,auto"])
                .tracer
                .attach
                .candidates(),
            [
                AttachMode::Kprobe,
                AttachMode::TpBtf,
                AttachMode::Tracepoint
            ]
        );
        assert_eq!(
            config(&["--attach", "tp-btf,tracepoint,kprobe"])
                .tracer
                .attach,
            AttachRequest::Auto
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
        assert!(rejected(&["--attach", "tp-btf,"]).contains("--attach"));
        assert!(rejected(&["--btf", "/nonexistent/btf"]).contains("no such file"));
        assert!(rejected(&["--max-sockets", "0"]).contains("0"));
        assert!(rejected(&["--bogus"]).contains("--bogus"));
        assert!(rejected(&["extra"]).contains("extra"));
    }

    #[test]
    fn version_names_the_binary_as_invoked() {
        match parse(["/usr/sbin/tcpstates-rs", "-V"]) {
            Parsed::Exit { code: 0, message } => {
                assert!(message.starts_with("tcpstates-rs 0."), "{message}")
            }
            other => panic!("{other:?}"),
        }
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
