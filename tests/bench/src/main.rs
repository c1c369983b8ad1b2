//! The benchmark: tcpstates against libbpf-tools' tcpstates on the same
//! loopback connection storm, with an in-kernel ground truth.
//!
//! For each run it makes a storm three ways, interleaved: untraced, traced by
//! ours, traced by theirs (each tracer writing to a file), and reports the
//! share of the ground truth's transitions each tracer printed, its CPU time
//! per event, how much it slowed the storm, and its peak RSS. Startup time
//! (exec to attached) is measured apart, on a pseudo-terminal, where both
//! tools print their header as soon as they are attached. `--soak SECS` runs
//! storms back to back under ours and samples RSS and map occupancy.
//!
//! Run it with `scripts/bench` (as root). The parts: [`sample`] runs one
//! storm under one tool, [`kernel`] measures the tracers' in-kernel time,
//! [`startup`] their start, [`soak`] a long run, [`scale`] the cost with
//! many sockets held open, [`snapshot`] the cost at start with them, [`stats`] the statistics
//! the tables print.

mod burst;
mod kernel;
mod sample;
mod scale;
mod snapshot;
mod soak;
mod startup;
mod stats;

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, ensure};
use clap::Parser;
use tcpstates_testkit::host::set_tracefs;
use tcpstates_testkit::storm::{Ending, Storm};

use crate::kernel::kernel_cost_table;
use crate::sample::{Sample, storm_once};
use crate::soak::soak;
use crate::startup::startup_table;
use crate::stats::{median, median_ci};

#[derive(Debug, Parser)]
#[command(about = "Benchmark tcpstates against libbpf-tools' tcpstates on a loopback storm")]
struct Args {
    /// Connections per storm
    #[arg(long, default_value_t = 20_000)]
    connections: usize,
    /// Client threads (and as many server threads)
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Storms per tool
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// IPv6 instead of IPv4
    #[arg(long)]
    ipv6: bool,
    /// Close with RST instead of FIN
    #[arg(long)]
    rst: bool,
    /// Our binary
    #[arg(long, default_value = "target/release/tcpstates")]
    ours: PathBuf,
    /// Extra arguments for ours (e.g. --ring-buffer 2M)
    #[arg(long, allow_hyphen_values = true)]
    ours_args: Vec<String>,
    /// The baseline binary ("none" to skip it)
    #[arg(long, default_value = "/usr/sbin/tcpstates")]
    theirs: String,
    /// Arguments for the baseline (e.g. when it is ours too)
    #[arg(long, allow_hyphen_values = true)]
    theirs_args: Vec<String>,
    /// Also run each storm under a control: a process that prints a header
    /// and sleeps, traces nothing. Its "slowdown" is the method's noise.
    #[arg(long)]
    control: bool,
    /// Also run each storm under ours in summary mode (`-S -j`: the kernel
    /// aggregates, one JSON summary at exit, whose transitions are counted)
    #[arg(long)]
    summary: bool,
    /// Also run each storm under ours in event mode, beside ours with
    /// --ours-args (say, close records: `-C -j`), with the same arguments
    /// but `-C` (`-j`)
    #[arg(long)]
    events: bool,
    /// (internal) Be the control: print a header, sleep until SIGINT.
    #[arg(long, hide = true)]
    sleeper: bool,
    /// Storms per tool for the in-kernel cost (kernel BPF statistics on,
    /// after the other runs; 0: none)
    #[arg(long, default_value_t = 3)]
    kernel_runs: usize,
    /// Startup measurements per tool (0: none)
    #[arg(long, default_value_t = 10)]
    startups: usize,
    /// Milliseconds to wait after a tracer exits before the next one starts.
    /// The kernel makes the first attach to a tracepoint wait for an RCU
    /// grace period when the last program left it less than one ago, so
    /// starts right after an exit measure the previous run's exit
    #[arg(long, default_value_t = 250)]
    startup_gap: u64,
    /// Instead: run storms back to back under ours for this many seconds,
    /// sampling RSS and map occupancy
    #[arg(long, value_name = "SECS")]
    soak: Option<u64>,
    /// Seconds between soak samples
    #[arg(long, default_value_t = 30)]
    soak_every: u64,
    /// Instead: for each of these socket counts (comma list), hold that many
    /// loopback sockets open under ours, then storm, and report memory per
    /// tracked socket, CPU per event and in-kernel time per transition
    #[arg(long, value_name = "SOCKETS", value_delimiter = ',')]
    scale: Vec<usize>,
    /// Storms per socket count and tracer setup, with --scale
    #[arg(long, default_value_t = 3)]
    scale_runs: usize,
    /// The snapshot's cost at start with this many sockets held (a comma list)
    #[arg(long, value_name = "SOCKETS", value_delimiter = ',')]
    snapshot: Vec<usize>,
    /// Starts per socket count and setup, with --snapshot
    #[arg(long, default_value_t = 5)]
    snapshot_runs: usize,
    /// (internal) Be a holder of this many connections (see --scale).
    #[arg(long, hide = true, value_name = "CONNECTIONS")]
    holder: Option<usize>,
    /// Instead: the burst (holders close every connection at once) under
    /// ours with each --burst-setups entry and under theirs, --runs times
    #[arg(long)]
    burst: bool,
    /// With --burst: ours's argument strings, one per setup ("{ports}": the
    /// holders' ports); default: the table, -x, -j, -s, -L {ports}, -u 0
    #[arg(long, allow_hyphen_values = true)]
    burst_setups: Vec<String>,
    /// With --burst: holder processes
    #[arg(long, default_value_t = 8)]
    burst_holders: usize,
    /// With --burst: connections per holder
    #[arg(long, default_value_t = 4_500)]
    burst_connections: usize,
    /// With --burst: a CPU-bound process per CPU beside it
    #[arg(long)]
    busy: bool,
    /// Where the tracers' output goes
    #[arg(long, default_value = "target/bench")]
    workdir: PathBuf,
    /// Tracers write into a pipe that the benchmark reads and counts, as a
    /// log shipper would, instead of into a file
    #[arg(long)]
    into_pipe: bool,
}

/// A program run alongside a storm.
#[derive(Debug, Clone)]
struct Tool {
    name: &'static str,
    path: PathBuf,
    args: Vec<String>,
    /// False for the control, which loads nothing and prints no events.
    traces: bool,
    /// It prints one record per socket at close (ours `-C`, tcplife), not
    /// one line per transition: what it captured is measured against the
    /// ground truth's sockets that closed (listeners left out).
    records: bool,
}

impl Tool {
    fn command(&self) -> Command {
        let mut command = Command::new(&self.path);
        command.args(&self.args);
        command
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.sleeper {
        return sleep_until_interrupted();
    }
    if let Some(connections) = args.holder {
        return tcpstates_testkit::hold::holder_main(connections);
    }
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "the benchmark loads BPF programs: run it as root"
    );
    ensure!(
        args.ours.exists(),
        "{} is missing: cargo build --release",
        args.ours.display()
    );
    fs::create_dir_all(&args.workdir)?;
    // libbpf-tools attaches the classic tracepoint, which needs tracefs.
    set_tracefs(true).map_err(anyhow::Error::msg)?;
    let theirs = (args.theirs != "none").then(|| PathBuf::from(&args.theirs));
    if let Some(path) = &theirs {
        ensure!(
            path.exists(),
            "{} is missing: apt-get install libbpf-tools (or --theirs none)",
            path.display()
        );
    }
    let storm = Storm {
        connections: args.connections,
        concurrency: args.concurrency,
        ending: if args.rst {
            Ending::Reset
        } else {
            Ending::Graceful
        },
    };
    if let Some(secs) = args.soak {
        return soak(&args, &storm, Duration::from_secs(secs));
    }
    if !args.scale.is_empty() {
        return scale::scale(&args, &storm);
    }
    if !args.snapshot.is_empty() {
        return snapshot::snapshot_table(&args);
    }
    if args.burst {
        return burst::burst(&args);
    }

    print_machine();
    println!(
        "storm: {} connections, {} client + {} server threads, {}, {} close; {} runs per tool\n",
        storm.connections,
        storm.concurrency,
        storm.concurrency,
        if args.ipv6 { "IPv6" } else { "IPv4" },
        if args.rst { "RST" } else { "FIN" },
        args.runs
    );

    let mut tools = vec![Tool {
        name: "tcpstates (ours)",
        path: args.ours.clone(),
        args: args.ours_args.clone(),
        traces: true,
        records: args.ours_args.iter().any(|a| a == "-C" || a == "--closes"),
    }];
    if args.events {
        tools.push(Tool {
            name: "tcpstates (ours, events)",
            path: args.ours.clone(),
            args: args
                .ours_args
                .iter()
                .filter(|a| *a != "-C" && *a != "--closes")
                .cloned()
                .collect(),
            traces: true,
            records: false,
        });
    }
    if args.summary {
        tools.push(Tool {
            name: "tcpstates -S (ours, summary)",
            path: args.ours.clone(),
            args: ["-S", "-j"]
                .map(String::from)
                .into_iter()
                .chain(args.ours_args.iter().cloned())
                .collect(),
            traces: true,
            records: false,
        });
    }
    if let Some(path) = &theirs {
        let tcplife = path.file_name().is_some_and(|n| n == "tcplife");
        tools.push(Tool {
            name: if tcplife {
                "libbpf-tools tcplife"
            } else {
                "libbpf-tools"
            },
            path: path.clone(),
            args: args.theirs_args.clone(),
            traces: true,
            records: tcplife,
        });
    }
    if args.control {
        tools.push(Tool {
            name: "control (traces nothing)",
            path: std::env::current_exe()?,
            args: vec!["--sleeper".into()],
            traces: false,
            records: false,
        });
    }
    let mut untraced = Vec::new();
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); tools.len()];
    for run in 0..args.runs {
        let runs = std::iter::once((None, &mut untraced))
            .chain(tools.iter().map(Some).zip(samples.iter_mut()));
        for (i, (tool, into)) in runs.enumerate() {
            let tag = format!("run{run}-{i}");
            let mut sample = storm_once(&args, &storm, tool, &tag, false)?;
            if tool.is_some_and(|t| t.records) {
                // One record per socket that closed.
                sample.truth = sample.truth_closes;
            }
            eprintln!(
                "run {} {}: {:.2} s, busy {:.2} s, truth {}, captured {}, cpu {:.3} s (sys {:.3} s)",
                run + 1,
                tool.map_or("untraced", |t| t.name),
                sample.storm_secs,
                sample.busy_secs,
                sample.truth,
                sample.captured,
                sample.cpu_secs,
                sample.sys_secs
            );
            into.push(sample);
        }
    }

    let base_rate = median(
        untraced
            .iter()
            .map(|s| storm.connections as f64 / s.storm_secs),
    );
    println!(
        "| tool | captured (min of runs) | lost | CPU per line | tracer CPU per storm | CPU per connection in the storm | storm rate | slowdown | slowdown 95% CI | storm CPU | peak RSS |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    println!("| untraced | | | | | | {base_rate:.0} conn/s | | | | |");
    for (tool, runs) in tools.iter().zip(&samples) {
        let min_captured = runs
            .iter()
            .map(|s| s.captured as f64 * 100.0 / s.truth.max(1) as f64)
            .fold(f64::INFINITY, f64::min);
        let lost: u64 = runs
            .iter()
            .map(|s| s.truth.saturating_sub(s.captured))
            .sum();
        let truth: u64 = runs.iter().map(|s| s.truth).sum();
        let cpu_us = median(
            runs.iter()
                .map(|s| s.cpu_secs * 1e6 / s.printed.max(1) as f64),
        );
        let cpu_ms = median(runs.iter().map(|s| s.cpu_secs * 1e3));
        let per_connection = median(
            runs.iter()
                .map(|s| s.storm_cpu_secs * 1e6 / storm.connections as f64),
        );
        let rate = median(runs.iter().map(|s| storm.connections as f64 / s.storm_secs));
        let rss = median(runs.iter().map(|s| s.max_rss_kb as f64)) / 1024.0;
        // Each traced storm against the untraced one of the same run: the
        // storm's own speed drifts over a run (TIME_WAIT sockets pile up, the
        // host's load changes), pairs cancel most of that.
        let pairs = || untraced.iter().zip(runs);
        // Rate drop: 1 - traced rate / untraced rate.
        let slowdowns: Vec<f64> = pairs()
            .map(|(base, traced)| (1.0 - base.storm_secs / traced.storm_secs) * 100.0)
            .collect();
        let slowdown = median(slowdowns.iter().copied());
        let ci = match median_ci(&slowdowns) {
            Some((low, high)) => format!("{low:.1}% to {high:.1}%"),
            None => "too few runs".into(),
        };
        let storm_cpu =
            median(pairs().map(|(base, traced)| (traced.busy_secs / base.busy_secs - 1.0) * 100.0));
        let traced = if tool.traces {
            format!(
                "{min_captured:.3}% | {lost} of {truth} | {cpu_us:.4} us | {cpu_ms:.1} ms | \
                 {per_connection:.2} us"
            )
        } else {
            "- | - | - | - | -".into()
        };
        println!(
            "| {} | {traced} | {rate:.0} conn/s | {slowdown:.1}% | {ci} | {storm_cpu:+.1}% | {rss:.1} MB |",
            tool.name
        );
    }
    println!();

    let tracers: Vec<Tool> = tools.iter().filter(|t| t.traces).cloned().collect();
    if args.kernel_runs > 0 {
        kernel_cost_table(&args, &storm, &tracers, &untraced)?;
    }
    if args.startups > 0 {
        // Summary mode prints nothing until it ends: no header to time.
        let printing: Vec<Tool> = tracers
            .iter()
            .filter(|t| !t.args.iter().any(|a| a == "-S"))
            .cloned()
            .collect();
        startup_table(&args, &printing)?;
    }
    for (tool, runs) in tools.iter().zip(&samples) {
        for s in runs {
            let last = s.stderr.lines().rfind(|l| !l.starts_with("Tracing"));
            if let Some(line) = last {
                println!("\n{} said: {line}", tool.name);
            }
        }
    }
    Ok(())
}

/// The control's life (`--sleeper`): a header line, then nothing until
/// SIGINT or SIGTERM, then a clean exit, as a tracer's.
fn sleep_until_interrupted() -> Result<()> {
    // SAFETY: a zeroed sigset_t is valid to initialize; the calls write only
    // into the set and the int we own, and block the two signals for this
    // (single) thread so that sigwait takes them.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        println!("SKADDR (control: traces nothing)");
        std::io::Write::flush(&mut std::io::stdout())?;
        let mut signal = 0;
        libc::sigwait(&set, &mut signal);
    }
    Ok(())
}

pub fn print_machine() {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name\t: ").map(str::to_owned))
        })
        .unwrap_or_default();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("machine: {cpus} CPUs ({cpu}), Linux {}", kernel.trim());
}
