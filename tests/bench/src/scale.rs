//! The cost of a busy host (`--scale`): with N loopback sockets held open
//! (opened while ours traces, so it keeps each one's time), how much memory
//! each tracked socket takes, and what one more event costs, in user space
//! and in the kernel, while a storm runs beside them. Run for every N and
//! for three setups: untraced (the baseline of the kernel's memory), ours
//! with default options (times kept by the reader), ours with a port filter
//! (times kept by the kernel, in socket-local storage on 5.11+).

use std::fs::{self, File};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use tcpstates_testkit::groundtruth::TransitionCounter;
use tcpstates_testkit::hold::Holders;
use tcpstates_testkit::process::interrupt;
use tcpstates_testkit::rows::last_counters;
use tcpstates_testkit::storm::{self, Storm};

use crate::kernel::{ProgramStats, cost_of, new_ids};
use crate::sample::count_lines;
use crate::stats::median;
use crate::{Args, print_machine};

/// What runs beside the held sockets and the storm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    Untraced,
    /// Ours, default options: the reader keeps the times.
    Reader,
    /// Ours with `-L` on every port involved: the kernel keeps them.
    Kernel,
}

impl Setup {
    const ALL: [Setup; 3] = [Setup::Untraced, Setup::Reader, Setup::Kernel];

    fn name(self) -> &'static str {
        match self {
            Setup::Untraced => "untraced",
            Setup::Reader => "ours, times in the reader",
            Setup::Kernel => "ours -L, times in the kernel",
        }
    }
}

/// One measurement.
#[derive(Debug, Clone, Copy, Default)]
struct Point {
    /// Growth of the tracer's RSS while the sockets opened, in bytes.
    rss_bytes: f64,
    /// Growth of the kernel's kmalloc caches while they opened, in bytes.
    kmalloc_bytes: f64,
    /// The tracer's CPU time over the storm, per storm event printed.
    cpu_ns_per_event: f64,
    /// The tracer's BPF programs' run time over the storm, per transition.
    kernel_ns_per_transition: f64,
    /// Sockets the tracer said it kept at exit, before the holders closed.
    tracked: u64,
}

/// `--scale N,N,...`.
pub fn scale(args: &Args, storm: &Storm) -> Result<()> {
    print_machine();
    let _stats = ProgramStats::enable()?;
    println!(
        "scale: per socket count, {} storms of {} connections per setup, beside the held sockets\n",
        args.scale_runs, storm.connections
    );
    println!(
        "| sockets held | setup | sockets tracked | tracer RSS per socket | kernel memory per socket | CPU per event | in-kernel time per transition |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for &sockets in &args.scale {
        let mut points: Vec<Vec<Point>> = vec![Vec::new(); Setup::ALL.len()];
        for run in 0..args.scale_runs {
            for (i, setup) in Setup::ALL.into_iter().enumerate() {
                let point = measure(
                    args,
                    storm,
                    sockets,
                    setup,
                    &format!("scale{sockets}-{run}-{i}"),
                )?;
                eprintln!("{sockets} sockets, {}: {point:?}", setup.name());
                points[i].push(point);
            }
        }
        let base_kmalloc = median(points[0].iter().map(|p| p.kmalloc_bytes));
        for (i, setup) in Setup::ALL.into_iter().enumerate().skip(1) {
            let m = |f: fn(&Point) -> f64| median(points[i].iter().map(f));
            let tracked = m(|p| p.tracked as f64);
            let per = |bytes: f64| bytes / (sockets as f64);
            println!(
                "| {sockets} | {} | {tracked:.0} | {:.1} B | {:.1} B | {:.3} us | {:.0} ns |",
                setup.name(),
                per(m(|p| p.rss_bytes)),
                per(m(|p| p.kmalloc_bytes) - base_kmalloc),
                m(|p| p.cpu_ns_per_event) / 1e3,
                m(|p| p.kernel_ns_per_transition),
            );
        }
    }
    println!(
        "\nMedians of the runs. Memory per socket: the growth while the sockets opened, divided by \
         the sockets held; the kernel's is the growth of its kmalloc caches less the untraced \
         setup's (the sockets' own allocations)."
    );
    Ok(())
}

fn measure(args: &Args, storm: &Storm, sockets: usize, setup: Setup, tag: &str) -> Result<Point> {
    let listener = TcpListener::bind(SocketAddr::new("127.0.0.1".parse()?, 0))?;
    let port = listener.local_addr()?.port();
    let me = std::env::current_exe()?;
    let mut holders = Holders::start(sockets, |connections| {
        let mut command = Command::new(&me);
        command.args(["--holder", &connections.to_string()]);
        command
    })?;
    let out = args.workdir.join(format!("{tag}.out"));
    let err = args.workdir.join(format!("{tag}.err"));
    let before_tool = ProgramStats::snapshot();
    let tracer = match setup {
        Setup::Untraced => None,
        Setup::Reader | Setup::Kernel => {
            let mut command = Command::new(&args.ours);
            command
                .args(["-4", "-v", "--report", "kv"])
                .args(&args.ours_args);
            if setup == Setup::Kernel {
                let mut ports = holders.ports();
                ports.push(port);
                let list: Vec<String> = ports.iter().map(u16::to_string).collect();
                command.args(["-L", &list.join(",")]);
            }
            let child = command
                .stdout(File::create(&out)?)
                .stderr(File::create(&err)?)
                .stdin(Stdio::null())
                .spawn()
                .context("starting ours")?;
            wait_for_header(&out, &err)?;
            Some(child)
        }
    };
    let rss0 = tracer.as_ref().map_or(Ok(0), rss_bytes)?;
    let kmalloc0 = kmalloc_bytes()?;
    holders.open()?;
    sleep(Duration::from_millis(500));
    let rss1 = tracer.as_ref().map_or(Ok(0), rss_bytes)?;
    let kmalloc1 = kmalloc_bytes()?;

    let before_truth = ProgramStats::snapshot();
    let truth = TransitionCounter::start(port)?;
    let cpu0 = tracer.as_ref().map_or(Ok(0), cpu_ns)?;
    let before_storm = ProgramStats::snapshot();
    storm::run(&listener, storm).context("the storm")?;
    let after_storm = ProgramStats::snapshot();
    sleep(Duration::from_millis(300));
    let cpu1 = tracer.as_ref().map_or(Ok(0), cpu_ns)?;
    let transitions = truth.count()?;
    let (program_ns, _) = cost_of(
        &new_ids(&before_tool, &before_truth),
        &before_storm,
        &after_storm,
    );
    let mut point = Point {
        rss_bytes: rss1.saturating_sub(rss0) as f64,
        kmalloc_bytes: kmalloc1 as f64 - kmalloc0 as f64,
        kernel_ns_per_transition: program_ns as f64 / transitions.max(1) as f64,
        ..Point::default()
    };
    if let Some(child) = tracer {
        // Stopped while the sockets are still held: its last report counts
        // them.
        interrupt(&child);
        let counters = last_counters(&fs::read_to_string(&err)?)
            .with_context(|| format!("{tag}: no counters from ours"))?;
        point.tracked = counters["sockets_tracked"];
        let lost = counters["ring_drops"] + counters["recursion_misses"] + counters["no_room"];
        ensure!(lost == 0, "{tag}: ours lost or did not time {lost}");
        // With -L only the storm's server side is printed.
        let (captured, _) = count_lines(&out, port)?;
        let expected = match setup {
            Setup::Kernel => transitions / 2,
            _ => transitions,
        };
        ensure!(
            captured.abs_diff(expected) * 100 <= expected,
            "{tag}: captured {captured} of {expected}"
        );
        point.cpu_ns_per_event = (cpu1 - cpu0) as f64 / captured.max(1) as f64;
        fs::remove_file(&out)?;
    }
    holders.close()?;
    Ok(point)
}

/// Waits until the tracer printed its header: then it is attached.
fn wait_for_header(out: &Path, err: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while fs::metadata(out)?.len() == 0 {
        ensure!(
            Instant::now() < deadline,
            "ours printed no header: {}",
            fs::read_to_string(err).unwrap_or_default()
        );
        sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Resident memory of `child`, in bytes.
fn rss_bytes(child: &Child) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{}/status", child.id()))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .context("no VmRSS")?;
    Ok(kb * 1024)
}

/// CPU time of every thread of `child`, in ns (schedstat: not rounded to
/// clock ticks).
fn cpu_ns(child: &Child) -> Result<u64> {
    let mut total = 0;
    for task in fs::read_dir(format!("/proc/{}/task", child.id()))? {
        let stat = fs::read_to_string(task?.path().join("schedstat"))?;
        total += stat
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .context("schedstat")?;
    }
    Ok(total)
}

/// Bytes in the kernel's kmalloc caches (where socket-local storage and
/// map elements are allocated), from /proc/slabinfo.
fn kmalloc_bytes() -> Result<u64> {
    let info = fs::read_to_string("/proc/slabinfo").context("reading /proc/slabinfo")?;
    Ok(info
        .lines()
        .filter(|l| l.starts_with("kmalloc"))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let objects: u64 = f.get(2)?.parse().ok()?;
            let size: u64 = f.get(3)?.parse().ok()?;
            Some(objects * size)
        })
        .sum())
}
