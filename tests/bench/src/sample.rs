//! One storm, traced by one tool or untraced, with the ground truth.

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Stdio;
use std::thread::sleep;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use tcpstates_testkit::groundtruth::TransitionCounter;
use tcpstates_testkit::process::interrupt;
use tcpstates_testkit::rows::{json_ports, table_ports};
use tcpstates_testkit::storm::{self, Storm};

use crate::kernel::{ProgramStats, RunStats, cost_of, new_ids};
use crate::{Args, Tool};

/// One traced (or untraced) storm.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub storm_secs: f64,
    pub truth: u64,
    /// Of the truth, the sockets that closed, but listeners: the close
    /// records a tracer with `-C` (or tcplife) must print.
    pub truth_closes: u64,
    pub captured: u64,
    pub printed: u64,
    pub cpu_secs: f64,
    /// The tracer's CPU time from the storm's start until its output was
    /// drained (its threads' run time): what tracing the storm cost it,
    /// without the start (loading, verifying, preallocating maps).
    pub storm_cpu_secs: f64,
    pub sys_secs: f64,
    pub max_rss_kb: i64,
    pub busy_secs: f64,
    pub stderr: String,
    /// With program statistics on: the tracer's BPF programs' run time and
    /// runs over the storm, and the ground truth's.
    pub programs: Option<ProgramCost>,
}

/// Run time and runs of some BPF programs over one storm.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProgramCost {
    pub tracer_ns: u64,
    pub tracer_runs: u64,
    pub truth_ns: u64,
    pub truth_runs: u64,
}

/// One storm, traced by `tool` (or not), with the ground truth. With
/// `programs` (and the statistics on), also the run time of the tracer's
/// programs and the ground truth's over the storm.
pub fn storm_once(
    args: &Args,
    storm: &Storm,
    tool: Option<&Tool>,
    tag: &str,
    programs: bool,
) -> Result<Sample> {
    let ip = if args.ipv6 { "::1" } else { "127.0.0.1" };
    let listener = TcpListener::bind(SocketAddr::new(ip.parse()?, 0))?;
    let port = listener.local_addr()?.port();
    let out = args.workdir.join(format!("{tag}.out"));
    let err = args.workdir.join(format!("{tag}.err"));
    // Program statistics only when asked for: each snapshot queries every
    // loaded program.
    let snapshot = || {
        if programs {
            ProgramStats::snapshot()
        } else {
            RunStats::new()
        }
    };
    let before_tool = snapshot();
    let mut pipe_reader = None;
    let child = match tool {
        Some(tool) => {
            let stdout = if args.into_pipe {
                Stdio::piped()
            } else {
                Stdio::from(File::create(&out)?)
            };
            let mut child = tool
                .command()
                .stdout(stdout)
                .stderr(File::create(&err)?)
                .stdin(Stdio::null())
                .spawn()
                .with_context(|| format!("starting {}", tool.path.display()))?;
            // A consumer of the pipe, as a log shipper would be: it counts.
            pipe_reader = child
                .stdout
                .take()
                .map(|stdout| std::thread::spawn(move || count_in(BufReader::new(stdout), port)));
            Some(child)
        }
        None => None,
    };
    // Both tools attach in tens of milliseconds; a file gives no signal
    // (theirs buffers its header), so wait generously. Every storm waits
    // the same, traced or not: a storm that starts after a pause of the
    // machine runs slower than one that starts right after other work (a
    // control that traces nothing came out 4-10% "slower" than the untraced
    // storm when only traced storms waited).
    sleep(Duration::from_millis(1500));
    let before_truth = snapshot();
    let truth = TransitionCounter::start(port)?;
    let before_storm = snapshot();
    let tracer_cpu = || child.as_ref().map_or(Ok(0), |c| threads_cpu_ns(c.id()));
    let cpu_before = tracer_cpu()?;
    let busy_before = busy_secs()?;
    let storm_secs = storm::run(&listener, storm)
        .context("the storm")?
        .as_secs_f64();
    let busy = busy_secs()? - busy_before;
    let after_storm = snapshot();
    sleep(Duration::from_millis(500));
    let storm_cpu_ns = tracer_cpu()?.saturating_sub(cpu_before);
    let truth_count = truth.count()?;
    let truth_closes = truth.closes()?;
    let programs = programs.then(|| {
        let (tracer_ns, tracer_runs) = cost_of(
            &new_ids(&before_tool, &before_truth),
            &before_storm,
            &after_storm,
        );
        let (truth_ns, truth_runs) = cost_of(
            &new_ids(&before_truth, &before_storm),
            &before_storm,
            &after_storm,
        );
        ProgramCost {
            tracer_ns,
            tracer_runs,
            truth_ns,
            truth_runs,
        }
    });
    let mut sample = Sample {
        storm_secs,
        truth: truth_count,
        truth_closes,
        busy_secs: busy,
        storm_cpu_secs: storm_cpu_ns as f64 / 1e9,
        programs,
        ..Sample::default()
    };
    if let Some(child) = child {
        let ended = interrupt(&child);
        let usage = ended.usage;
        ensure!(ended.code().is_some(), "{} did not exit cleanly", tag);
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        sample.cpu_secs = tv(usage.ru_utime) + tv(usage.ru_stime);
        sample.sys_secs = tv(usage.ru_stime);
        sample.max_rss_kb = usage.ru_maxrss;
        let (captured, printed) = match pipe_reader {
            Some(reader) => reader
                .join()
                .map_err(|_| anyhow::anyhow!("the pipe's reader panicked"))??,
            None => {
                let counts = count_lines(&out, port)?;
                fs::remove_file(&out)?;
                counts
            }
        };
        sample.captured = captured;
        sample.printed = printed;
        sample.stderr = fs::read_to_string(&err)?;
    }
    Ok(sample)
}

/// The run time of every thread of process `pid` so far, in nanoseconds
/// (the first field of each /proc/PID/task/TID/schedstat).
fn threads_cpu_ns(pid: u32) -> Result<u64> {
    let mut total = 0;
    for task in fs::read_dir(format!("/proc/{pid}/task"))? {
        let stat = fs::read_to_string(task?.path().join("schedstat")).unwrap_or_default();
        total += stat
            .split_whitespace()
            .next()
            .and_then(|ns| ns.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}

/// CPU time all CPUs have spent busy since boot (not idle, not waiting for
/// I/O, not stolen by the hypervisor), from /proc/stat.
fn busy_secs() -> Result<f64> {
    let stat = fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("/proc/stat is empty")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("parsing /proc/stat")?;
    ensure!(ticks.len() >= 8, "/proc/stat: short cpu line");
    // user nice system idle iowait irq softirq steal
    let busy = ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6];
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(busy as f64 / hz)
}

/// (lines for `port`, all rows) in a tracer's output: the default table,
/// or JSON lines.
pub fn count_lines(path: &Path, port: u16) -> Result<(u64, u64)> {
    count_in(BufReader::new(File::open(path)?), port)
}

/// (lines for `port`, all rows) of a tracer's output read from `input`.
fn count_in(input: impl BufRead, port: u16) -> Result<(u64, u64)> {
    let (mut captured, mut rows) = (0, 0);
    for line in input.lines() {
        let line = line?;
        // Summary mode (`-S -j`): one object of counts, of every port (the
        // storm's is nearly all there is on this host).
        if let Some(total) = summary_total(&line) {
            captured += total;
            rows += total;
            continue;
        }
        // Close records (`-C -j`): a listener's is not a connection's.
        if line.contains("\"role\":\"listener\"") {
            continue;
        }
        let Some(ports) = json_ports(&line)
            .or_else(|| table_ports(&line))
            .or_else(|| close_table_ports(&line))
            .or_else(|| tcplife_ports(&line))
        else {
            continue;
        };
        rows += 1;
        if ports.0 == port || ports.1 == port {
            captured += 1;
        }
    }
    Ok((captured, rows))
}

/// The local and remote ports of a row of ours' close records table
/// (`-C`): LPORT RADDR RPORT stand before ROLE; None for another line, and
/// for a listener's row (not a connection's).
fn close_table_ports(line: &str) -> Option<(u16, u16)> {
    let t: Vec<&str> = line.split_whitespace().collect();
    let role = t
        .iter()
        .position(|&c| matches!(c, "client" | "server" | "unknown"))?;
    if role < 3 || !t.last()?.ends_with("CLOSE") {
        return None;
    }
    Some((t[role - 3].parse().ok()?, t[role - 1].parse().ok()?))
}

/// The local and remote ports of a row of libbpf-tools' tcplife (`PID COMM
/// LADDR LPORT RADDR RPORT TX_KB RX_KB MS`), or None for another line.
fn tcplife_ports(line: &str) -> Option<(u16, u16)> {
    let t: Vec<&str> = line.split_whitespace().collect();
    let n = t.len();
    if n < 9 || t[n - 1].parse::<f64>().is_err() || t[n - 3].parse::<f64>().is_err() {
        return None;
    }
    Some((t[n - 6].parse().ok()?, t[n - 4].parse().ok()?))
}

/// The transitions a `-S -j` summary line counts; None for another line.
fn summary_total(line: &str) -> Option<u64> {
    if !line.starts_with("{\"time\"") || !line.contains("\"transitions\":") {
        return None;
    }
    let summary: serde_json::Value = serde_json::from_str(line).ok()?;
    summary["transitions"]
        .as_array()?
        .iter()
        .map(|t| t["count"].as_u64())
        .sum()
}
