//! The snapshot's cost at start: with N sockets held open, the time from
//! exec to the tracer's "Tracing tcpstates" line (printed once it is
//! attached and the snapshot taken: the first event can be decoded from
//! then on), its peak RSS, and the memory it keeps afterwards beside a run
//! with --no-snapshot; `ss -tan` and `ss -tanp` on the same sockets for
//! scale. From the iterators and from the netlink socket diagnostics (the
//! path of kernels without iterators).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tcpstates_testkit::hold::Holders;
use tcpstates_testkit::process::interrupt;

use crate::stats::median;
use crate::{Args, print_machine};

/// The setups measured at each count: a name and ours' arguments.
const SETUPS: [(&str, &[&str]); 6] = [
    ("no snapshot (-x --no-snapshot)", &["-x", "--no-snapshot"]),
    ("default (table)", &[]),
    ("owners shown (-x): the reader keeps the holders", &["-x"]),
    (
        "summary (-S): the kernel keeps them, with the census",
        &["-S"],
    ),
    (
        "netlink, owners shown (-x --snapshot-from netlink)",
        &["-x", "--snapshot-from", "netlink"],
    ),
    (
        "netlink, summary (-S --snapshot-from netlink)",
        &["-S", "--snapshot-from", "netlink"],
    ),
];

/// Prints the table for each socket count of `--snapshot`.
pub fn snapshot_table(args: &Args) -> Result<()> {
    print_machine();
    println!(
        "snapshot: per socket count, {} starts per setup, in turns\n",
        args.snapshot_runs
    );
    println!(
        "| sockets held | setup | exec to tracing (median) | max | peak RSS | RSS kept per socket |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    let me = std::env::current_exe()?;
    for &sockets in &args.snapshot {
        let mut holders = Holders::start(sockets, |connections| {
            let mut command = Command::new(&me);
            command.args(["--holder", &connections.to_string()]);
            command
        })?;
        holders.open()?;
        std::thread::sleep(Duration::from_millis(500));
        let mut results: Vec<Vec<(f64, u64, u64)>> = vec![Vec::new(); SETUPS.len()];
        for _ in 0..args.snapshot_runs {
            for (i, (_, extra)) in SETUPS.iter().enumerate() {
                std::thread::sleep(Duration::from_millis(300));
                results[i].push(start_once(args, extra)?);
            }
        }
        let base_rss = median(results[0].iter().map(|r| r.2 as f64));
        for (i, (name, _)) in SETUPS.iter().enumerate() {
            let secs = median(results[i].iter().map(|r| r.0));
            let max = results[i].iter().map(|r| r.0).fold(0.0, f64::max);
            let peak = median(results[i].iter().map(|r| r.1 as f64));
            let kept = median(results[i].iter().map(|r| r.2 as f64));
            let per_socket = if i == 0 {
                "-".to_owned()
            } else {
                format!("{:.1} B", (kept - base_rss) / sockets as f64)
            };
            println!(
                "| {sockets} | {name} | {:.0} ms | {:.0} ms | {:.1} MB | {per_socket} |",
                secs * 1e3,
                max * 1e3,
                peak / 1024.0 / 1024.0
            );
        }
        for (name, flags) in [("ss -tan", "-tan"), ("ss -tanp", "-tanp")] {
            let start = Instant::now();
            let out = Command::new("ss")
                .arg(flags)
                .output()
                .context("running ss")?;
            if !out.status.success() {
                bail!("ss {flags} failed");
            }
            println!(
                "| {sockets} | {name} ({} lines) | {:.0} ms | | | |",
                out.stdout.iter().filter(|&&b| b == b'\n').count(),
                start.elapsed().as_secs_f64() * 1e3
            );
        }
        holders.close()?;
    }
    println!(
        "\nMedians of the starts. RSS kept per socket: ours' resident memory once tracing, less the \
         run without a snapshot's, divided by the sockets held."
    );
    Ok(())
}

/// One start of ours with `extra`: seconds from exec to "Tracing
/// tcpstates", the peak RSS and the RSS then, in bytes.
fn start_once(args: &Args, extra: &[&str]) -> Result<(f64, u64, u64)> {
    let start = Instant::now();
    let mut child = Command::new(&args.ours)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting ours")?;
    let stderr = child.stderr.take().context("ours' stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let secs = loop {
        match lines.next() {
            Some(Ok(line)) if line.starts_with("Tracing tcpstates") => {
                break start.elapsed().as_secs_f64();
            }
            Some(Ok(_)) => {}
            _ => bail!("ours ended before tracing"),
        }
    };
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()))?;
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let (peak, now) = (kib("VmHWM:") * 1024, kib("VmRSS:") * 1024);
    let ended = interrupt(&child);
    if ended.code() != Some(0) {
        bail!("ours ended with {:?}", ended.code());
    }
    Ok((secs, peak, now))
}
