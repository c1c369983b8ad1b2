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
//! Run it with `scripts/bench` (as root).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use libbpf_rs::query::ProgInfoIter;
use tcpstates::groundtruth::TransitionCounter;
use tcpstates::storm::{self, Ending, Storm};

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
    /// Also run each storm under a control: a process that prints a header
    /// and sleeps, traces nothing. Its "slowdown" is the method's noise.
    #[arg(long)]
    control: bool,
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
    /// Where the tracers' output goes
    #[arg(long, default_value = "target/bench")]
    workdir: PathBuf,
}

/// One traced (or untraced) storm.
#[derive(Debug, Clone, Default)]
struct Sample {
    storm_secs: f64,
    truth: u64,
    captured: u64,
    printed: u64,
    cpu_secs: f64,
    sys_secs: f64,
    max_rss_kb: i64,
    busy_secs: f64,
    stderr: String,
    /// With program statistics on: the tracer's BPF programs' run time and
    /// runs over the storm, and the ground truth's.
    programs: Option<ProgramCost>,
}

/// Run time and runs of some BPF programs over one storm.
#[derive(Debug, Clone, Copy, Default)]
struct ProgramCost {
    tracer_ns: u64,
    tracer_runs: u64,
    truth_ns: u64,
    truth_runs: u64,
}

/// A program run alongside a storm.
#[derive(Debug, Clone)]
struct Tool {
    name: &'static str,
    path: PathBuf,
    args: Vec<String>,
    /// False for the control, which loads nothing and prints no events.
    traces: bool,
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
    ensure_tracefs()?;
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
    }];
    if let Some(path) = &theirs {
        tools.push(Tool {
            name: "libbpf-tools",
            path: path.clone(),
            args: Vec::new(),
            traces: true,
        });
    }
    if args.control {
        tools.push(Tool {
            name: "control (traces nothing)",
            path: std::env::current_exe()?,
            args: vec!["--sleeper".into()],
            traces: false,
        });
    }
    let mut untraced = Vec::new();
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); tools.len()];
    for run in 0..args.runs {
        let runs = std::iter::once((None, &mut untraced))
            .chain(tools.iter().map(Some).zip(samples.iter_mut()));
        for (i, (tool, into)) in runs.enumerate() {
            let tag = format!("run{run}-{i}");
            let sample = storm_once(&args, &storm, tool, &tag, false)?;
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
        "| tool | captured (min of runs) | lost | CPU per event | storm rate | slowdown | slowdown 95% CI | storm CPU | peak RSS |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    println!("| untraced | | | | {base_rate:.0} conn/s | | | | |");
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
            format!("{min_captured:.3}% | {lost} of {truth} | {cpu_us:.3} us")
        } else {
            "- | - | -".into()
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
        startup_table(&args, &tracers)?;
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

/// Starts each tracer `--startups` times, in turns, and prints the table of
/// exec-to-attached times.
fn startup_table(args: &Args, tools: &[Tool]) -> Result<()> {
    let mut times = vec![Vec::new(); tools.len()];
    let mut rss = vec![Vec::new(); tools.len()];
    for _ in 0..args.startups {
        for (i, tool) in tools.iter().enumerate() {
            sleep(Duration::from_millis(args.startup_gap));
            let (t, kb) = startup(tool)?;
            times[i].push(t * 1e3);
            rss[i].push(kb as f64 / 1024.0);
        }
    }
    println!(
        "| tool | exec to attached (median of {}) | min | max | peak RSS at startup |",
        args.startups
    );
    println!("| --- | --- | --- | --- | --- |");
    for (i, Tool { name, .. }) in tools.iter().enumerate() {
        let min = times[i].iter().copied().fold(f64::INFINITY, f64::min);
        let max = times[i].iter().copied().fold(0.0, f64::max);
        println!(
            "| {name} | {:.1} ms | {min:.1} ms | {max:.1} ms | {:.1} MB |",
            median(times[i].iter().copied()),
            median(rss[i].iter().copied())
        );
    }
    Ok(())
}

/// Runs `--kernel-runs` storms per tracer with the kernel's BPF program
/// statistics on, and prints the time the tracer's programs ran per
/// transition: CPU the traced host pays in the tracepoint, on whatever task
/// made the transition, which the tracer's own rusage never shows. The
/// statistics cost each program run two clock reads, so this pass is kept
/// apart from the storms that measure the slowdown; the ground truth's
/// programs, a per-CPU counter, show about what that adds per run.
fn kernel_cost_table(
    args: &Args,
    storm: &Storm,
    tools: &[Tool],
    untraced: &[Sample],
) -> Result<()> {
    let _stats = ProgramStats::enable()?;
    let mut costs = vec![Vec::new(); tools.len()];
    for run in 0..args.kernel_runs {
        for (i, tool) in tools.iter().enumerate() {
            let tag = format!("kernel{run}-{i}");
            let sample = storm_once(args, storm, Some(tool), &tag, true)?;
            let cost = sample.programs.unwrap_or_default();
            ensure!(
                cost.tracer_runs > 0,
                "{}: none of its BPF programs ran during the storm (not attached 1.5 s after it started?)",
                tool.name
            );
            eprintln!(
                "kernel run {} {}: {:.0} ns per transition in {} program runs, truth {}",
                run + 1,
                tool.name,
                cost.tracer_ns as f64 / sample.truth.max(1) as f64,
                cost.tracer_runs,
                sample.truth
            );
            costs[i].push(sample);
        }
    }
    // What the untraced storm spends per transition, all CPUs together: the
    // share below is the slowdown the programs alone cause when the storm
    // keeps every CPU busy.
    let storm_ns = median(
        untraced
            .iter()
            .map(|s| s.busy_secs * 1e9 / s.truth.max(1) as f64),
    );
    println!(
        "| tool | program runs per transition | in-kernel time per transition | share of the storm's CPU ({storm_ns:.0} ns per transition untraced) |"
    );
    println!("| --- | --- | --- | --- |");
    let mut truth = (0, 0);
    for (i, Tool { name, .. }) in tools.iter().enumerate() {
        let per_run = |f: fn(&ProgramCost) -> u64| {
            median(
                costs[i]
                    .iter()
                    .map(|s| f(&s.programs.unwrap_or_default()) as f64 / s.truth.max(1) as f64),
            )
        };
        let ns = per_run(|p| p.tracer_ns);
        println!(
            "| {name} | {:.2} | {ns:.0} ns | {:.1}% |",
            per_run(|p| p.tracer_runs),
            ns * 100.0 / storm_ns
        );
        for sample in &costs[i] {
            let p = sample.programs.unwrap_or_default();
            truth = (truth.0 + p.truth_ns, truth.1 + p.truth_runs);
        }
    }
    println!(
        "\nMedians of {} storms per tool. The ground truth's two programs (a port compare and a \
         per-CPU counter each), under the same statistics: {:.0} ns per run, at most what the \
         statistics add to one run.\n",
        args.kernel_runs,
        truth.0 as f64 / truth.1.max(1) as f64
    );
    Ok(())
}

/// Program id -> (run time in ns, runs), as the kernel counts them.
type RunStats = HashMap<u32, (u64, u64)>;

/// The kernel's BPF run-time statistics, on while this lives (the bpf
/// syscall's BPF_ENABLE_STATS: off again when its descriptor closes, however
/// the benchmark ends).
struct ProgramStats {
    _fd: OwnedFd,
}

impl ProgramStats {
    fn enable() -> Result<Self> {
        // SAFETY: no pointers; returns a new descriptor or a negative error.
        let fd = unsafe {
            libbpf_rs::libbpf_sys::bpf_enable_stats(libbpf_rs::libbpf_sys::BPF_STATS_RUN_TIME)
        };
        ensure!(
            fd >= 0,
            "enabling BPF program statistics: {}",
            std::io::Error::from_raw_os_error(-fd)
        );
        // SAFETY: the descriptor was just returned to us and is owned here.
        Ok(Self {
            _fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Run time (ns) and runs of every loaded program, by id.
    fn snapshot() -> RunStats {
        ProgInfoIter::default()
            .map(|p| (p.id, (p.run_time_ns, p.run_cnt)))
            .collect()
    }
}

/// Run time and runs, between two snapshots, of the programs in `after`
/// whose ids are in `ids`.
fn cost_of(ids: &[u32], before: &RunStats, after: &RunStats) -> (u64, u64) {
    ids.iter().fold((0, 0), |(ns, runs), id| {
        let (ns0, runs0) = before.get(id).copied().unwrap_or_default();
        let (ns1, runs1) = after.get(id).copied().unwrap_or_default();
        (
            ns + ns1.saturating_sub(ns0),
            runs + runs1.saturating_sub(runs0),
        )
    })
}

/// Ids in `now` that are not in `earlier`: the programs loaded in between.
fn new_ids(earlier: &RunStats, now: &RunStats) -> Vec<u32> {
    now.keys()
        .filter(|id| !earlier.contains_key(id))
        .copied()
        .collect()
}

/// One storm, traced by `tool` (or not), with the ground truth. With
/// `programs` (and the statistics on), also the run time of the tracer's
/// programs and the ground truth's over the storm.
fn storm_once(
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
    let child = match tool {
        Some(tool) => {
            let child = tool
                .command()
                .stdout(File::create(&out)?)
                .stderr(File::create(&err)?)
                .stdin(Stdio::null())
                .spawn()
                .with_context(|| format!("starting {}", tool.path.display()))?;
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
    let busy_before = busy_secs()?;
    let storm_secs = storm::run(&listener, storm)
        .context("the storm")?
        .as_secs_f64();
    let busy = busy_secs()? - busy_before;
    let after_storm = snapshot();
    sleep(Duration::from_millis(500));
    let truth_count = truth.count()?;
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
        busy_secs: busy,
        programs,
        ..Sample::default()
    };
    if let Some(child) = child {
        let (status, usage) = interrupt(&child);
        ensure!(libc::WIFEXITED(status), "{} did not exit cleanly", tag);
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        sample.cpu_secs = tv(usage.ru_utime) + tv(usage.ru_stime);
        sample.sys_secs = tv(usage.ru_stime);
        sample.max_rss_kb = usage.ru_maxrss;
        let (captured, printed) = count_lines(&out, port)?;
        sample.captured = captured;
        sample.printed = printed;
        sample.stderr = fs::read_to_string(&err)?;
        fs::remove_file(&out)?;
    }
    Ok(sample)
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

/// (lines for `port`, all rows) in a tracer's default output.
fn count_lines(path: &Path, port: u16) -> Result<(u64, u64)> {
    let port = port.to_string();
    let (mut captured, mut rows) = (0, 0);
    for line in BufReader::new(File::open(path)?).lines() {
        let line = line?;
        let t: Vec<&str> = line.split_whitespace().collect();
        let n = t.len();
        if n < 11 || t[n - 3] != "->" {
            continue;
        }
        rows += 1;
        if t[n - 7] == port || t[n - 5] == port {
            captured += 1;
        }
    }
    Ok((captured, rows))
}

/// Seconds from exec to the header on a pseudo-terminal (both tools print it
/// once attached, and flush it at once on a terminal), and the peak RSS.
fn startup(tool: &Tool) -> Result<(f64, i64)> {
    let (mut master_fd, mut slave_fd) = (0, 0);
    // SAFETY: openpty writes two fds into the ints we own; the name, termios
    // and window size may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master_fd,
            &mut slave_fd,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    ensure!(rc == 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both fds were just returned by openpty and are owned here.
    let (master, slave) = unsafe {
        (
            OwnedFd::from_raw_fd(master_fd),
            OwnedFd::from_raw_fd(slave_fd),
        )
    };
    let start = Instant::now();
    let child = tool
        .command()
        .stdout(Stdio::from(slave))
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .spawn()?;
    let mut pty = File::from(master);
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let elapsed = loop {
        let n = pty.read(&mut buf).context("reading the pseudo-terminal")?;
        if n == 0 {
            bail!("{} exited before attaching", tool.path.display());
        }
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen);
        if let Some(at) = text.find("SKADDR") {
            if text[at..].contains('\n') {
                break start.elapsed().as_secs_f64();
            }
        }
    };
    let (_, usage) = interrupt(&child);
    Ok((elapsed, usage.ru_maxrss))
}

/// Stops a tracer as Ctrl-C would and reaps it: its wait status and its
/// resource usage (CPU time, peak RSS).
fn interrupt(child: &Child) -> (libc::c_int, libc::rusage) {
    let pid = child.id() as libc::pid_t;
    // SAFETY: kill and wait4 have no memory preconditions beyond the status
    // and rusage we own (all-zero bytes are a valid rusage); the pid is our
    // child's, not reaped before.
    unsafe {
        libc::kill(pid, libc::SIGINT);
        let mut status = 0;
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::wait4(pid, &mut status, 0, &mut usage);
        (status, usage)
    }
}

/// Storms back to back under ours for `length`, sampling its RSS and map
/// occupancy (from its -v report) every `--soak-every` seconds.
fn soak(args: &Args, storm: &Storm, length: Duration) -> Result<()> {
    print_machine();
    let ip = if args.ipv6 { "::1" } else { "127.0.0.1" };
    let listener = TcpListener::bind(SocketAddr::new(ip.parse()?, 0))?;
    let port = listener.local_addr()?.port();
    let out = args.workdir.join("soak.out");
    let err = args.workdir.join("soak.err");
    let child = Command::new(&args.ours)
        .arg("-v")
        .args(&args.ours_args)
        .stdout(File::create(&out)?)
        .stderr(File::create(&err)?)
        .spawn()?;
    sleep(Duration::from_millis(1500));
    let truth = TransitionCounter::start(port)?;
    println!(
        "soak: {} s of back-to-back storms of {} connections, sampled every {} s; ours run as: {} -v {}\n",
        length.as_secs(),
        storm.connections,
        args.soak_every,
        args.ours.display(),
        args.ours_args.join(" ")
    );
    println!("| elapsed | storms | transitions (truth) | RSS | sockets tracked |");
    println!("| --- | --- | --- | --- | --- |");
    let start = Instant::now();
    let mut next_sample = Duration::ZERO;
    let mut storms = 0u64;
    while start.elapsed() < length {
        storm::run(&listener, storm).context("the storm")?;
        storms += 1;
        if start.elapsed() >= next_sample {
            next_sample += Duration::from_secs(args.soak_every);
            let rss = fs::read_to_string(format!("/proc/{}/status", child.id()))?
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().to_owned()))
                .unwrap_or_default();
            let tracked = fs::read_to_string(&err)?
                .lines()
                .rev()
                .find_map(|l| {
                    l.split(", ")
                        .find_map(|p| p.strip_suffix(" sockets tracked"))
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| "-".into());
            println!(
                "| {:.0} s | {storms} | {} | {rss} | {tracked} |",
                start.elapsed().as_secs_f64(),
                truth.count()?
            );
        }
    }
    sleep(Duration::from_millis(500));
    let expected = truth.count()?;
    interrupt(&child);
    let (captured, _) = count_lines(&out, port)?;
    fs::remove_file(&out)?;
    println!(
        "\ncaptured {captured} of {expected} transitions ({:.3}%)",
        captured as f64 * 100.0 / expected.max(1) as f64
    );
    if let Some(line) = fs::read_to_string(&err)?.lines().last() {
        println!("tcpstates said at exit: {line}");
    }
    Ok(())
}

/// (first quartile, median, third quartile), nearest rank.
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[(v.len() - 1).div_ceil(2)]
}

/// A 95% confidence interval for the median of `values`, from their order
/// statistics alone (no assumption about the distribution): the k-th lowest
/// and the k-th highest value, with k the largest rank for which fewer than
/// k of n values fall below the median with probability at most 2.5%
/// (Binomial(n, 1/2)). None below 6 values, where no such k exists.
fn median_ci(values: &[f64]) -> Option<(f64, f64)> {
    let n = values.len();
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    // P(X <= j) for X ~ Binomial(n, 1/2), j = 0, 1, ...
    let mut below = 0.0;
    let mut choose = 1.0;
    let mut k = 0;
    for j in 0..n {
        below += choose * 0.5f64.powi(n as i32);
        if below > 0.025 {
            break;
        }
        k = j + 1;
        choose = choose * (n - j) as f64 / (j + 1) as f64;
    }
    (k >= 1).then(|| (v[k - 1], v[n - k]))
}

fn ensure_tracefs() -> Result<()> {
    // libbpf-tools attaches the classic tracepoint, which needs tracefs.
    if !Path::new("/sys/kernel/tracing/events").exists() {
        let ok = Command::new("mount")
            .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
            .status()?
            .success();
        ensure!(ok, "could not mount tracefs");
    }
    Ok(())
}

fn print_machine() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), 2.0);
        assert_eq!(median([4.0, 1.0, 3.0, 2.0].into_iter()), 3.0);
        assert_eq!(median(std::iter::empty()), 0.0);
    }

    #[test]
    fn median_ci_uses_binomial_ranks() {
        // n = 20: P(X <= 5) = 0.021, P(X <= 6) = 0.058, so the 6th lowest
        // and the 6th highest (95.9% coverage).
        let v: Vec<f64> = (1..=20).rev().map(f64::from).collect();
        assert_eq!(median_ci(&v), Some((6.0, 15.0)));
        // n = 6: only the extremes (P(X = 0) = 1/64).
        assert_eq!(median_ci(&[5.0, 1.0, 4.0, 2.0, 6.0, 3.0]), Some((1.0, 6.0)));
        // n = 5: even the extremes cover only 93.8%.
        assert_eq!(median_ci(&[1.0, 2.0, 3.0, 4.0, 5.0]), None);
    }
}
