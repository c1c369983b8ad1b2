//! Exec to attached, on a pseudo-terminal.

use std::fs::File;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::Stdio;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use tcpstates_testkit::process::interrupt;

use crate::stats::median;
use crate::{Args, Tool};

/// Starts each tracer `--startups` times, in turns, and prints the table of
/// exec-to-attached times.
pub fn startup_table(args: &Args, tools: &[Tool]) -> Result<()> {
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
    Ok((elapsed, interrupt(&child).usage.ru_maxrss))
}
