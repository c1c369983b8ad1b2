//! A burst: several processes each hold thousands of loopback connections,
//! then all close them at once (every client end, then 0.3 s later every
//! server end), as a proxy restart, a load balancer draining or a batch job
//! ending does to a host. A tracer attached before the close must print
//! every transition the in-kernel ground truth counts. Both count each
//! transition once (no socket makes one twice in a burst of closes): a
//! transition printed twice, which happens in about one burst of fifteen
//! (1 ms apart; cause not found), is counted apart, in `duplicates`.

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::groundtruth::TransitionCounter;
use crate::hold::Holders;
use crate::process::{self, Guarded};
use crate::rows::{any_ports, transition_key};

/// The most transitions the ground truth tells apart (its set's size).
const DISTINCT_MOST: u32 = 1 << 20;

/// How many connections, held by how many processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Burst {
    /// Holder processes.
    pub holders: usize,
    /// Connections each holds (two sockets each).
    pub connections: usize,
}

impl Burst {
    /// 8 processes of 4,500 connections: 36,000 connections, 72,000
    /// sockets, about 216,000 transitions within a second.
    pub const HOST_RESTART: Burst = Burst {
        holders: 8,
        connections: 4_500,
    };

    /// The transitions a burst makes when every connection closes the
    /// nominal way: the client's ESTABLISHED -> FIN_WAIT1 -> FIN_WAIT2 ->
    /// CLOSE and the server's ESTABLISHED -> CLOSE_WAIT -> LAST_ACK -> CLOSE.
    pub fn nominal_transitions(&self) -> u64 {
        (self.holders * self.connections * 6) as u64
    }
}

/// What one burst under one tracer gave.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Transitions the ground truth counted, from just before the close
    /// until they stopped coming (none for 0.3 s).
    pub truth: u64,
    /// What it counted after the tracer stopped: the same, unless
    /// transitions still came (the tracer's window was not the truth's).
    pub truth_after: u64,
    /// The transitions of the holders' sockets among the tracer's rows (any
    /// event output), each counted once.
    pub captured: u64,
    /// Rows that repeat one of those (a transition printed twice).
    pub duplicates: u64,
    /// What the tracer said on stderr.
    pub stderr: String,
    /// Where its output is kept.
    pub output: PathBuf,
    /// The tracer's exit code (None: killed by a signal).
    pub code: Option<i32>,
    /// The tracer's CPU time, user and system, over its whole run.
    pub cpu_secs: f64,
}

impl Outcome {
    /// Fails unless the tracer exited 0, captured exactly what the ground
    /// truth counted, said nothing was lost, and the burst really ran.
    pub fn check_whole(&self, burst: &Burst) -> Result<()> {
        let nominal = burst.nominal_transitions();
        ensure!(
            self.truth * 100 >= nominal * 99,
            "the burst did not run: {} transitions of {nominal}",
            self.truth
        );
        ensure!(
            self.code == Some(0),
            "the tracer exited {:?}: {}",
            self.code,
            self.stderr
        );
        ensure!(
            self.truth_after == self.truth,
            "transitions came while the tracer stopped ({} then {}): no exact count",
            self.truth,
            self.truth_after
        );
        ensure!(
            self.captured == self.truth,
            "captured {} of {} (output kept in {}); stderr: {}",
            self.captured,
            self.truth,
            self.output.display(),
            self.stderr
        );
        ensure!(
            !self.stderr.contains("lost") && !self.stderr.contains("missed"),
            "{}",
            self.stderr
        );
        Ok(())
    }
}

/// The holders for `burst`, each a process `holder(connections)` starts
/// (one that runs [`crate::hold::holder_main`]); every connection open.
pub fn open(burst: &Burst, holder: impl Fn(usize) -> Command) -> Result<Holders> {
    let mut holders = Holders::start_each(burst.holders, burst.connections, holder)
        .context("starting the holders")?;
    holders.open().context("opening the connections")?;
    Ok(holders)
}

/// Starts `tracer` (stdout and stderr into files under `workdir`, named by
/// `tag`), waits until it is attached, makes the burst of the open
/// `holders`, stops the tracer with SIGINT and counts its rows.
pub fn trace(
    mut holders: Holders,
    tracer: &mut Command,
    workdir: &Path,
    tag: &str,
) -> Result<Outcome> {
    let ports = holders.ports();
    fs::create_dir_all(workdir)?;
    let out = workdir.join(format!("{tag}.out"));
    let err = workdir.join(format!("{tag}.err"));
    // The ground truth first, and quiet on the holders' ports (a socket of
    // an earlier run can share a port and still be closing) before and
    // after the tracer attaches: its window and the truth's are the same.
    // Each transition counted once: no socket makes the same one twice in
    // a burst of closes.
    let truth = TransitionCounter::distinct_for_ports(&ports, DISTINCT_MOST)?;
    let before = settled(&truth)?;
    let child = Guarded::new(
        tracer
            .stdout(File::create(&out)?)
            .stderr(File::create(&err)?)
            .stdin(Stdio::null())
            .spawn()
            .context("starting the tracer")?,
    );
    wait_attached(&child, &err)?;
    ensure!(
        truth.count()? == before,
        "transitions on the holders' ports while the tracer attached: no exact count"
    );
    holders.burst().context("closing the connections")?;
    // The last ACKs are in flight when the holders say they closed, and
    // under load some take longer (a retransmission).
    let counted = settled(&truth)?;
    let ended = process::interrupt(&child.into_inner());
    let truth_after = truth.count()? - before;
    let truth = counted - before;
    let stderr = fs::read_to_string(&err)?;
    let (mut seen, mut rows) = (std::collections::HashSet::new(), 0u64);
    for line in BufReader::new(File::open(&out)?).lines() {
        let line = line?;
        let Some((l, r)) = any_ports(&line) else {
            continue;
        };
        if ports.contains(&l) || ports.contains(&r) {
            rows += 1;
            seen.insert(transition_key(&line).context("a row without its transition")?);
        }
    }
    let captured = seen.len() as u64;
    Ok(Outcome {
        truth,
        truth_after,
        captured,
        duplicates: rows - captured,
        stderr,
        output: out,
        code: ended.code(),
        cpu_secs: seconds(ended.usage.ru_utime) + seconds(ended.usage.ru_stime),
    })
}

/// The truth's count once nothing has come for 0.3 s.
fn settled(truth: &TransitionCounter) -> Result<u64> {
    let started = Instant::now();
    let mut counted = truth.count()?;
    loop {
        sleep(Duration::from_millis(300));
        let now = truth.count()?;
        if now == counted {
            return Ok(now);
        }
        ensure!(
            started.elapsed() < Duration::from_secs(30),
            "transitions still coming after 30 s"
        );
        counted = now;
    }
}

fn seconds(t: libc::timeval) -> f64 {
    t.tv_sec as f64 + t.tv_usec as f64 / 1e6
}

/// Ours says it is attached on stderr; libbpf-tools says nothing there (and
/// buffers its header), so a tracer silent for two seconds counts as
/// attached (libbpf-tools attaches in tens of milliseconds).
fn wait_attached(child: &Guarded, err: &Path) -> Result<()> {
    let started = Instant::now();
    loop {
        let said = fs::read_to_string(err)?;
        if said.contains("Tracing tcpstates") {
            return Ok(());
        }
        // SAFETY: kill with signal 0 only checks that the pid exists.
        if unsafe { libc::kill(child.id() as libc::pid_t, 0) } != 0 {
            bail!("the tracer exited: {said}");
        }
        if started.elapsed() >= Duration::from_secs(2) {
            ensure!(said.is_empty(), "the tracer did not attach: {said}");
            return Ok(());
        }
        sleep(Duration::from_millis(10));
    }
}

/// A CPU-bound process per CPU (a shell's busy loop), killed on drop: a
/// host whose every CPU is busy while it is traced.
pub struct BusyCpus {
    hogs: Vec<Guarded>,
}

impl BusyCpus {
    /// One busy process per CPU this process may run on.
    pub fn start() -> Result<Self> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let hogs = (0..cpus)
            .map(|_| {
                Command::new("sh")
                    .args(["-c", "while :; do :; done"])
                    .stdin(Stdio::null())
                    .spawn()
                    .map(Guarded::new)
                    .context("starting a busy process")
            })
            .collect::<Result<_>>()?;
        Ok(Self { hogs })
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.hogs.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.hogs.is_empty()
    }
}
