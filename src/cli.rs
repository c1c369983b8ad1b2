//! The command line: parses it with the clap definition of `args.rs` and
//! turns the arguments into the plain [`Config`] everything else reads.

use std::ffi::OsString;
use std::path::Path;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory, FromArgMatches};

use crate::args::MAX_LABELS;
use crate::args::{Args, Ports};
use crate::cgroup;
use crate::config::{
    AttachMode, Config, Family, Filter, Format, LabelBy, Labels, Mode, PortLabels, Stuck,
    SummaryOutput, TimeColumns,
};

/// The outcome of parsing: run, or print something and exit.
#[derive(Debug)]
pub enum Parsed {
    /// Trace with this configuration.
    Run(Box<Config>),
    /// Help or version (to stdout, exit 0), or a usage error (one line to
    /// stderr, exit 2).
    Exit {
        /// The exit code.
        code: u8,
        /// What to print, newline included.
        message: String,
    },
}

/// `--version`: the version and the attach modes built in.
fn version() -> String {
    let modes: Vec<&str> = AttachMode::ALL.iter().map(|m| m.name()).collect();
    format!(
        "{}\nattach modes: {} (auto tries them in that order)",
        env!("CARGO_PKG_VERSION"),
        modes.join(" ")
    )
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
        .after_help(crate::args::after_help(&invoked))
        .display_name(invoked)
        .version(version())
        .try_get_matches_from(args)
        .and_then(|matches| Args::from_arg_matches(&matches));
    match parsed {
        Ok(args) => match args.into_config() {
            Ok(config) => Parsed::Run(Box::new(config)),
            Err(message) => Parsed::Exit {
                code: 2,
                message: format!("tcpstates: {message} (see --help)\n"),
            },
        },
        Err(err) => match err.kind() {
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => Parsed::Exit {
                code: 0,
                message: err.render().to_string(),
            },
            _ => Parsed::Exit {
                code: 2,
                message: format!("tcpstates: {} (see --help)\n", one_line(&err)),
            },
        },
    }
}

/// clap's error as one line: its first line, and the values it would have
/// taken where it lists them on lines of their own.
fn one_line(err: &clap::Error) -> String {
    let rendered = err.render().to_string();
    let first = rendered.lines().next().unwrap_or("invalid arguments");
    let first = first.trim_start_matches("error: ");
    match err.get(ContextKind::ValidValue) {
        Some(ContextValue::Strings(values)) if !values.is_empty() => {
            format!("{first}; valid values: {}", values.join(", "))
        }
        _ => match (err.kind(), err.get(ContextKind::InvalidArg)) {
            // Which: clap names them on lines of their own.
            (ErrorKind::MissingRequiredArgument, Some(ContextValue::Strings(missing))) => {
                format!("{} {}", first.trim_end_matches(':'), missing.join(", "))
            }
            _ => first.to_owned(),
        },
    }
}

impl Args {
    /// The config; fails where a value needs the host to check (a cgroup).
    fn into_config(self) -> Result<Config, String> {
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
        let mut attach: Vec<AttachMode> = Vec::new();
        for arg in &self.attach {
            let named = match arg {
                None => &AttachMode::ALL[..],
                Some(mode) => std::slice::from_ref(mode),
            };
            for mode in named {
                if !attach.contains(mode) {
                    attach.push(*mode);
                }
            }
        }
        let times = TimeColumns {
            clock: self.time,
            elapsed: self.timestamp,
        };
        let extended = self.extended;
        let format = if self.json {
            Format::Json
        } else if self.csv {
            Format::Csv { times, extended }
        } else {
            Format::Table {
                times,
                wide: self.wide,
                extended,
            }
        };
        let cgroup = self.cgroup.as_deref().map(cgroup_filter).transpose()?;
        if self.max_labels.is_some() && self.label_by.is_none() {
            return Err("--max-labels needs --label-by".into());
        }
        // In the order given, each once.
        let mut named_ports: Vec<u16> = Vec::new();
        for &port in self.label_ports.iter().flat_map(|p| &p.0) {
            if !named_ports.contains(&port) {
                named_ports.push(port);
            }
        }
        let label_ports = match (self.label_by, named_ports.is_empty()) {
            (_, true) => PortLabels::Busiest,
            (Some(LabelBy::Port), false) if self.max_labels.is_some() => {
                return Err("--label-ports names the labels: no --max-labels with it".into());
            }
            (Some(LabelBy::Port), false) if named_ports.len() > usize::from(MAX_LABELS) => {
                return Err(format!("--label-ports: at most {MAX_LABELS} ports"));
            }
            (Some(LabelBy::Port), false) => PortLabels::Named(named_ports),
            (_, false) => return Err("--label-ports needs --label-by port".into()),
        };
        if self.label_by.is_some() && self.summary.is_none() && self.metrics.is_none() {
            return Err("--label-by needs -S or --metrics (it labels the summary's counts)".into());
        }
        for (asked, option) in [
            (self.unit.is_some(), "--unit"),
            (self.container.is_some(), "--container"),
        ] {
            if asked && cgroup::cgroup2_mount().is_none() {
                return Err(format!(
                    "{option} needs cgroup v2, and this host has no cgroup2 mount"
                ));
            }
        }
        let mut pids: Vec<u32> = self.pids.into_iter().flatten().collect();
        pids.sort_unstable();
        pids.dedup();
        let web = self
            .web_config_file
            .as_deref()
            .map(crate::web::WebConfig::load)
            .transpose()?;
        let mode = if self.summary.is_some() || self.metrics.is_some() {
            Mode::Summary(SummaryOutput {
                print: self.summary.is_some(),
                interval: self.summary.flatten(),
                clock: self.time,
                json: self.json,
            })
        } else if self.closes {
            Mode::Closes
        } else {
            Mode::Stream
        };
        if !self.causes.is_empty() && mode != Mode::Closes {
            return Err("--cause needs -C (it filters close records)".into());
        }
        Ok(Config {
            mode,
            format,
            filter: Filter {
                family,
                local_ports: flatten(self.local_ports),
                remote_ports: flatten(self.remote_ports),
                states: self.states.iter().fold(0, |all, one| all | one),
                min_duration_ns: self.min_ms,
                netns: self.netns,
                pids,
                comm: self.comm,
                uid: self.uid,
                cgroup,
                unit: self.unit.as_deref().map(crate::identity::unit_name),
                container: self.container,
                causes: self.causes.iter().fold(0, |all, one| all | one),
            },
            attach,
            btf: self.btf,
            max_sockets: self.max_sockets,
            snapshot: !self.no_snapshot,
            snapshot_from: self.snapshot_from.as_deref().map(|from| match from {
                "netlink" => crate::config::SnapshotFrom::Netlink,
                _ => crate::config::SnapshotFrom::Iterators,
            }),
            stuck: self.stuck.map(|after| Stuck {
                after,
                states: match self.stuck_states.iter().fold(0, |all, one| all | one) {
                    0 => Stuck::DEFAULT_STATES,
                    states => states,
                },
                owners: self.stuck_owners.unwrap_or(0),
            }),
            ring_bytes: self.ring_buffer,
            journal: self.journal,
            count: self.count,
            duration: self.duration,
            verbose: self.verbose,
            report: self.report,
            metrics: self.metrics,
            web,
            labels: self.label_by.map(|by| Labels {
                by,
                max: match &label_ports {
                    PortLabels::Named(ports) if by == LabelBy::Port => ports.len() as u16,
                    _ => self.max_labels.unwrap_or(crate::args::DEFAULT_MAX_LABELS),
                },
            }),
            label_ports,
            host_root: self.host_root,
        })
    }
}

/// `--cgroup PATH`: the group's path under the cgroup2 mount, checked.
fn cgroup_filter(path: &str) -> Result<String, String> {
    let mount = cgroup::cgroup2_mount()
        .ok_or("--cgroup needs cgroup v2, and this host has no cgroup2 mount")?;
    let relative = path
        .strip_prefix(mount.to_string_lossy().as_ref())
        .unwrap_or(path)
        .trim_matches('/');
    let dir = mount.join(relative);
    let meta = std::fs::metadata(&dir)
        .map_err(|e| format!("--cgroup {path}: no such group ({}: {e})", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!("--cgroup {path}: {} is not a group", dir.display()));
    }
    Ok(format!("/{relative}"))
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ReportFormat;

    fn config(args: &[&str]) -> Config {
        match parse(std::iter::once("tcpstates").chain(args.iter().copied())) {
            Parsed::Run(config) => *config,
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
        assert_eq!(c, Config::default());
        assert_eq!(c.mode, Mode::Stream);
        assert_eq!(c.format, Format::default());
        assert_eq!(c.filter, Filter::default());
        assert_eq!(c.attach, AttachMode::ALL.to_vec());
        assert_eq!(c.max_sockets, None);
        assert_eq!(config(&["--max-sockets", "9"]).max_sockets, Some(9));
        assert_eq!(c.ring_bytes, None);
        assert_eq!(c.report, ReportFormat::Text);
        assert!(!c.verbose && c.btf.is_none());
    }

    #[test]
    fn bcc_flags() {
        let both = TimeColumns {
            clock: true,
            elapsed: true,
        };
        let c = config(&["-T", "-t", "-w", "-4", "-v"]);
        assert_eq!(
            c.format,
            Format::Table {
                times: both,
                wide: true,
                extended: false
            }
        );
        assert_eq!(c.filter.family, Some(Family::Ipv4));
        assert!(c.verbose);
        assert_eq!(config(&["--ipv6"]).filter.family, Some(Family::Ipv6));
        assert_eq!(
            config(&["-s", "-T", "-t"]).format,
            Format::Csv {
                times: both,
                extended: false
            }
        );
        assert_eq!(config(&["--report", "kv"]).report, ReportFormat::Kv);
    }

    #[test]
    fn state_duration_netns_filters_and_limits() {
        let c = config(&["--state", "close_wait,TCP_LAST_ACK", "--state=LISTEN"]);
        assert_eq!(c.filter.states, (1 << 8) | (1 << 9) | (1 << 10));
        assert!(c.filter.tracks_in_kernel());
        assert_eq!(
            config(&["--min-ms", "2.5"]).filter.min_duration_ns,
            Some(2_500_000)
        );
        assert_eq!(config(&["--min-ms", "0"]).filter.min_duration_ns, Some(0));
        assert_eq!(
            config(&["--netns", "4026531833"]).filter.netns,
            Some(4026531833)
        );
        let own =
            std::os::unix::fs::MetadataExt::ino(&std::fs::metadata("/proc/self/ns/net").unwrap());
        assert_eq!(
            config(&["--netns", "/proc/self/ns/net"]).filter.netns,
            Some(own as u32)
        );
        assert!(!config(&["--netns", "1"]).filter.tracks_in_kernel());
        let c = config(&["--count", "3", "--duration", "1.5"]);
        assert_eq!(
            (c.count, c.duration),
            (Some(3), Some(std::time::Duration::from_millis(1500)))
        );
    }

    #[test]
    fn summary_and_metrics() {
        let summary = |print, interval, clock, json| {
            Mode::Summary(SummaryOutput {
                print,
                interval,
                clock,
                json,
            })
        };
        assert_eq!(config(&["-S"]).mode, summary(true, None, false, false));
        let every = Some(std::time::Duration::from_secs(5));
        assert_eq!(
            config(&["-S", "5", "-T"]).mode,
            summary(true, every, true, false)
        );
        assert_eq!(config(&["-S", "-j"]).mode, summary(true, None, false, true));
        let c = config(&["--metrics", "9977", "-L", "443"]);
        assert_eq!(c.mode, summary(false, None, false, false));
        assert_eq!(c.metrics, Some("127.0.0.1:9977".parse().unwrap()));
        assert_eq!(
            config(&["--metrics", "[::]:9977"]).metrics,
            Some("[::]:9977".parse().unwrap())
        );
        for args in [
            &["-S", "-x"][..],
            &["-S", "-Y"],
            &["--metrics", "1", "--count", "3"],
        ] {
            assert!(rejected(args).contains("cannot be used with"), "{args:?}");
        }
        assert!(rejected(&["--metrics", "host"]).contains("is not ADDR:PORT or PORT"));
        assert!(
            rejected(&["--web.config.file", "web.yml"])
                .contains("required arguments were not provided --metrics <ADDR:PORT>")
        );
        assert!(
            rejected(&[
                "--metrics",
                "1",
                "--web.config.file",
                "/nonexistent/web.yml"
            ])
            .starts_with("tcpstates: --web.config.file /nonexistent/web.yml: No such file")
        );
        assert!(rejected(&["-S", "0"]).contains("above 0"));
    }

    #[test]
    fn rejects_bad_filters_and_limits() {
        let state = rejected(&["--state", "FOO"]);
        assert!(
            state.contains("'FOO' is not a TCP state (ESTABLISHED, SYN_SENT"),
            "{state}"
        );
        assert!(rejected(&["--state", "LISTEN,"]).contains("empty item"));
        assert!(rejected(&["--min-ms", "-1"]).contains("from 0"));
        assert!(rejected(&["--min-ms", "soon"]).contains("not a number of milliseconds"));
        assert!(rejected(&["--netns", "0"]).contains("inode 0"));
        assert!(
            rejected(&["--netns", "/nonexistent"]).contains("neither a namespace inode nor a file")
        );
        assert!(rejected(&["--count", "0"]).contains("not a count"));
        assert!(rejected(&["--duration", "0"]).contains("above 0"));
        assert!(rejected(&["--duration", "-3"]).contains("above 0"));
    }

    #[test]
    fn owner_filters() {
        let c = config(&["-p", "30,7", "--pid=7", "-c", "nginx", "-u", "33"]);
        assert_eq!(c.filter.pids, [7, 30]);
        assert_eq!(c.filter.comm.as_deref(), Some("nginx"));
        assert_eq!(c.filter.uid, Some(33));
        assert!(c.filter.by_owner() && c.filter.tracks_in_kernel());
        if let Some(mount) = cgroup::cgroup2_mount() {
            let root = config(&["--cgroup", "/"]).filter.cgroup.unwrap();
            assert_eq!(root, "/");
            let full = config(&["--cgroup", &mount.to_string_lossy()])
                .filter
                .cgroup
                .unwrap();
            assert_eq!(full, root);
            assert!(rejected(&["--cgroup", "/no/such/group"]).contains("no such group"));
        } else {
            assert!(rejected(&["--cgroup", "/"]).contains("needs cgroup v2"));
        }
        let c = config(&["--unit", "nginx", "--container", "web"]);
        assert_eq!(c.filter.unit.as_deref(), Some("nginx.service"));
        assert_eq!(c.filter.container.as_deref(), Some("web"));
        assert!(c.filter.by_group() && c.filter.by_owner());
        assert_eq!(
            config(&["--unit", "a.scope"]).filter.unit.as_deref(),
            Some("a.scope")
        );
        assert!(rejected(&["--unit", "system.slice/a"]).contains("is not a unit name"));
        assert!(rejected(&["--container", ""]).contains("is not a container name"));
        let c = config(&["-S", "--label-by", "container", "--max-labels", "5"]);
        assert_eq!(
            c.labels,
            Some(Labels {
                by: crate::config::LabelBy::Container,
                max: 5
            })
        );
        assert!(rejected(&["--label-by", "unit"]).contains("--label-by needs -S or --metrics"));
        let c = config(&[
            "-S",
            "--label-by",
            "port",
            "--label-ports",
            "443,80",
            "--label-ports",
            "443,22",
        ]);
        assert_eq!(c.label_ports, PortLabels::Named(vec![443, 80, 22]));
        assert_eq!(c.labels.map(|l| (l.by, l.max)), Some((LabelBy::Port, 3)));
        let c = config(&["--metrics", "1", "--label-by", "port"]);
        assert_eq!(c.label_ports, PortLabels::Busiest);
        assert_eq!(c.labels.map(|l| l.max), Some(20));
        assert!(
            rejected(&["-S", "--label-by", "unit", "--label-ports", "80"])
                .contains("--label-ports needs --label-by port")
        );
        assert!(
            rejected(&[
                "-S",
                "--label-by",
                "port",
                "--label-ports",
                "80",
                "--max-labels",
                "3"
            ])
            .contains("no --max-labels with it")
        );
        assert!(rejected(&["-S", "--label-ports", "80"]).contains("--label-by"));
        assert!(rejected(&["--cause", "refused"]).contains("--cause needs -C"));
        assert!(rejected(&["-C", "--cause", "slow"]).contains("'slow' is not a cause"));
        assert!(rejected(&["-C", "-S"]).contains("cannot be used with"));
        assert!(rejected(&["-C", "--metrics", "9977"]).contains("cannot be used with"));
        let closes = config(&["-C", "--cause", "refused", "--cause", "Reset"]);
        assert_eq!(closes.mode, Mode::Closes);
        assert_eq!(closes.filter.causes, 1 << 2 | 1 << 4);
        assert!(rejected(&["-S", "--max-labels", "3"]).contains("--label-by"));
        assert!(rejected(&["-S", "--label-by", "unit", "--max-labels", "0"]).contains("0"));
        assert!(rejected(&["--host-root", "/no/such/dir"]).contains("no such directory"));
        assert!(rejected(&["-p", "0"]).contains("'0' is not a process id"));
        assert!(rejected(&["-p", "-4"]).contains("'-4' is not a process id"));
        assert!(rejected(&["-c", "a-name-far-too-long"]).contains("longer than a task name"));
        assert!(rejected(&["-u", "root"]).contains("'root' is not a uid"));
    }

    #[test]
    fn port_lists_merge_sort_and_dedup() {
        let c = config(&["-L", "443,80", "--localport=80", "-D", " 5432 "]);
        assert_eq!(c.filter.local_ports, [80, 443]);
        assert_eq!(c.filter.remote_ports, [5432]);
        assert_eq!(config(&["-L65535"]).filter.local_ports, [65535]);
    }

    #[test]
    fn attach_modes() {
        use AttachMode::*;
        let attach = |value: &str| config(&["--attach", value]).attach;
        assert_eq!(attach("tp-btf"), [TpBtf]);
        assert_eq!(config(&["--attach=kprobe"]).attach, [Kprobe]);
        assert_eq!(attach("tracepoint"), [Tracepoint]);
        assert_eq!(attach("kprobe,tracepoint"), [Kprobe, Tracepoint]);
        assert_eq!(attach("kprobe,auto"), [Kprobe, TpBtf, Tracepoint]);
        assert_eq!(attach("tp-btf,tracepoint,kprobe"), AttachMode::ALL);
        assert_eq!(attach("auto,tp-btf"), AttachMode::ALL);
    }

    #[test]
    fn ring_buffer_sizes() {
        let size = |s: &str| config(&["--ring-buffer", s]).ring_bytes.unwrap();
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
        assert!(rejected(&["-L", "-1"]).contains("'-1' is not a port number"));
        assert!(rejected(&["-D", "-1"]).contains("'-1' is not a port number"));
    }

    #[test]
    fn rejects_other_bad_input() {
        assert!(rejected(&["-4", "-6"]).contains("cannot be used with"));
        let attach = rejected(&["--attach", "uprobe"]);
        assert!(
            attach.contains("uprobe") && attach.contains("auto, tp-btf, tracepoint, kprobe"),
            "{attach}"
        );
        assert!(rejected(&["--attach", "tp-btf,"]).contains("--attach"));
        assert!(rejected(&["--btf", "/nonexistent/btf"]).contains("no such file"));
        assert!(
            rejected(&["--max-sockets", "0"]).contains("socket count 0 is out of range 1-16777216")
        );
        assert!(rejected(&["--max-sockets", "abc"]).contains("'abc' is not a number of sockets"));
        assert!(rejected(&["--max-sockets", "-5"]).contains("'-5' is not a number of sockets"));
        assert!(rejected(&["--report", "json"]).contains("text, kv"));
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
                    for block in ["EXAMPLES:", "COLUMNS:", "EXIT STATUS:", "--localport"] {
                        assert!(message.contains(block), "{message}");
                    }
                    assert!(message.contains("\n    tcpstates -L 80,443 "), "{message}");
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
