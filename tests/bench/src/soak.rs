//! Storms back to back under ours, sampling its memory and map.

use std::fs::{self, File};
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tcpstates_testkit::groundtruth::TransitionCounter;
use tcpstates_testkit::process::interrupt;
use tcpstates_testkit::rows::last_counters;
use tcpstates_testkit::storm::{self, Storm};

use crate::sample::count_lines;
use crate::{Args, print_machine};

/// Storms back to back under ours for `length`, sampling its RSS and map
/// occupancy (from its -v report) every `--soak-every` seconds.
pub fn soak(args: &Args, storm: &Storm, length: Duration) -> Result<()> {
    print_machine();
    let ip = if args.ipv6 { "::1" } else { "127.0.0.1" };
    let listener = TcpListener::bind(SocketAddr::new(ip.parse()?, 0))?;
    let port = listener.local_addr()?.port();
    let out = args.workdir.join("soak.out");
    let err = args.workdir.join("soak.err");
    let child = Command::new(&args.ours)
        .args(["-v", "--report", "kv"])
        .args(&args.ours_args)
        .stdout(File::create(&out)?)
        .stderr(File::create(&err)?)
        .spawn()?;
    sleep(Duration::from_millis(1500));
    let truth = TransitionCounter::start(port)?;
    println!(
        "soak: {} s of back-to-back storms of {} connections, sampled every {} s; ours run as: {} -v --report kv {}\n",
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
            let tracked = last_counters(&fs::read_to_string(&err)?)
                .and_then(|c| c.get("sockets_tracked").copied())
                .map_or_else(|| "-".into(), |n| n.to_string());
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
