//! The tracers' in-kernel cost: the kernel's BPF run-time statistics.

use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd};

use anyhow::{Result, ensure};
use libbpf_rs::query::ProgInfoIter;
use tcpstates_testkit::storm::Storm;

use crate::sample::{ProgramCost, Sample, storm_once};
use crate::stats::median;
use crate::{Args, Tool};

/// Runs `--kernel-runs` storms per tracer with the kernel's BPF program
/// statistics on, and prints the time the tracer's programs ran per
/// transition: CPU the traced host pays in the tracepoint, on whatever task
/// made the transition, which the tracer's own rusage never shows. The
/// statistics cost each program run two clock reads, so this pass is kept
/// apart from the storms that measure the slowdown; the ground truth's
/// programs, a per-CPU counter, show about what that adds per run.
pub fn kernel_cost_table(
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
pub type RunStats = HashMap<u32, (u64, u64)>;

/// The kernel's BPF run-time statistics, on while this lives (the bpf
/// syscall's BPF_ENABLE_STATS: off again when its descriptor closes, however
/// the benchmark ends).
pub struct ProgramStats {
    _fd: OwnedFd,
}

impl ProgramStats {
    pub fn enable() -> Result<Self> {
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
    pub fn snapshot() -> RunStats {
        ProgInfoIter::default()
            .map(|p| (p.id, (p.run_time_ns, p.run_cnt)))
            .collect()
    }
}

/// Run time and runs, between two snapshots, of the programs in `after`
/// whose ids are in `ids`.
pub fn cost_of(ids: &[u32], before: &RunStats, after: &RunStats) -> (u64, u64) {
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
pub fn new_ids(earlier: &RunStats, now: &RunStats) -> Vec<u32> {
    now.keys()
        .filter(|id| !earlier.contains_key(id))
        .copied()
        .collect()
}
