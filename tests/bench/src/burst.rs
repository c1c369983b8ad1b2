//! `--burst`: 8 processes each holding 4,500 loopback connections close
//! them all at once (clients first, servers 0.3 s later) under each tracer
//! setup in turn, with an in-kernel ground truth. Reports, per setup, the
//! runs that lost anything, what they lost, the fullest the ring buffer got
//! (ours, from `--report kv`) and the tracer's CPU per burst.

use std::process::Command;

use anyhow::{Result, ensure};
use tcpstates_testkit::burst::{self, BusyCpus, Outcome};
use tcpstates_testkit::rows::last_counters;

use crate::Args;
use crate::stats::median;

/// One tracer setup: a name, a binary and its arguments; `{ports}` in an
/// argument stands for the holders' listening ports (a comma list).
struct Setup {
    name: String,
    path: String,
    args: Vec<String>,
    /// A filter leaves some of the burst out: its rows are not the
    /// ground truth's.
    filtered: bool,
}

/// Options that leave transitions of the burst out.
const FILTERS: [&str; 8] = [
    "-L", "-D", "-p", "-c", "-u", "--cgroup", "--state", "--min-ms",
];

/// Ours with each of these argument strings (split at spaces), unless
/// `--burst-setups` names others.
const DEFAULT_SETUPS: [&str; 6] = ["", "-x", "-j", "-s", "-L {ports}", "-u 0"];

pub fn burst(args: &Args) -> Result<()> {
    let shape = burst::Burst {
        holders: args.burst_holders,
        connections: args.burst_connections,
    };
    let given: Vec<String> = if args.burst_setups.is_empty() {
        DEFAULT_SETUPS.iter().map(|s| s.to_string()).collect()
    } else {
        args.burst_setups.clone()
    };
    let mut setups: Vec<Setup> = given
        .iter()
        .map(|s| Setup {
            name: if s.is_empty() {
                "ours (default)".into()
            } else {
                format!("ours {s}")
            },
            path: args.ours.display().to_string(),
            args: s
                .split_whitespace()
                .map(String::from)
                .chain(args.ours_args.iter().cloned())
                .chain(["-v", "--report", "kv"].map(String::from))
                .collect(),
            filtered: s.split_whitespace().any(|a| FILTERS.contains(&a)),
        })
        .collect();
    if args.theirs != "none" {
        setups.push(Setup {
            name: "libbpf-tools".into(),
            path: args.theirs.clone(),
            args: args.theirs_args.clone(),
            filtered: false,
        });
    }
    let busy = if args.busy {
        Some(BusyCpus::start()?)
    } else {
        None
    };
    crate::print_machine();
    println!(
        "burst: {} processes x {} connections ({} sockets), clients closed first, servers 0.3 s later; \
         {} runs per setup{}\n",
        shape.holders,
        shape.connections,
        shape.holders * shape.connections * 2,
        args.runs,
        busy.as_ref().map_or(String::new(), |b| format!(
            "; {} CPU-bound processes beside it",
            b.len()
        ))
    );
    let me = std::env::current_exe()?;
    let mut results: Vec<Vec<Outcome>> = setups.iter().map(|_| Vec::new()).collect();
    for run in 0..args.runs {
        for (i, setup) in setups.iter().enumerate() {
            let holders = burst::open(&shape, |connections| {
                let mut command = Command::new(&me);
                command.args(["--holder", &connections.to_string()]);
                command
            })?;
            let list: Vec<String> = holders.ports().iter().map(u16::to_string).collect();
            let list = list.join(",");
            let mut tracer = Command::new(&setup.path);
            tracer.args(setup.args.iter().map(|a| a.replace("{ports}", &list)));
            let outcome = burst::trace(
                holders,
                &mut tracer,
                &args.workdir,
                &format!("burst{run}-{i}"),
            )?;
            ensure!(
                outcome.code == Some(0),
                "{}: exited {:?}: {}",
                setup.name,
                outcome.code,
                outcome.stderr
            );
            let counters = last_counters(&outcome.stderr);
            let peak = counters
                .as_ref()
                .and_then(|c| {
                    Some(format!(
                        ", ring peak {}% ({} events)",
                        c.get("ring_peak_pct")?,
                        c.get("ring_peak_events")?
                    ))
                })
                .unwrap_or_default();
            eprintln!(
                "run {} {}: truth {} (after {}), captured {}, duplicates {}, lost {}{peak}, cpu {:.3} s",
                run + 1,
                setup.name,
                outcome.truth,
                outcome.truth_after,
                outcome.captured,
                outcome.duplicates,
                lost(setup, &outcome),
                outcome.cpu_secs
            );
            if outcome.captured == outcome.truth {
                let _ = std::fs::remove_file(&outcome.output);
            } else {
                eprintln!("  output kept in {}", outcome.output.display());
            }
            results[i].push(outcome);
        }
    }
    println!(
        "| setup | runs with a loss | lost (all runs) | rows = ground truth | lines printed twice | fullest ring (max of runs) | tracer CPU per burst |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (setup, runs) in setups.iter().zip(&results) {
        let losses: Vec<u64> = runs.iter().map(|o| lost(setup, o)).collect();
        let lossy = losses.iter().filter(|&&n| n > 0).count();
        let lost: u64 = losses.iter().sum();
        let truth: u64 = runs.iter().map(|o| o.truth).sum();
        let exact = if setup.filtered {
            "- (a filter)".to_string()
        } else {
            let equal = runs
                .iter()
                .filter(|o| o.captured == o.truth && o.truth_after == o.truth)
                .count();
            format!("{equal} of {}", runs.len())
        };
        let peaks: Vec<(u64, u64)> = runs
            .iter()
            .filter_map(|o| {
                let c = last_counters(&o.stderr)?;
                Some((*c.get("ring_peak_pct")?, *c.get("ring_peak_events")?))
            })
            .collect();
        let peak = peaks.iter().max().map_or("-".into(), |(pct, events)| {
            format!("{pct}% ({events} events)")
        });
        let cpu = median(runs.iter().map(|o| o.cpu_secs * 1e3));
        let twice: u64 = runs.iter().map(|o| o.duplicates).sum();
        println!(
            "| {} | {lossy} of {} | {lost} of {truth} | {exact} | {twice} | {peak} | {cpu:.0} ms |",
            setup.name,
            runs.len()
        );
    }
    Ok(())
}

/// What a run lost: for ours, what its counters say it dropped or did not
/// print of what it matched; for a tracer without them, the ground truth's
/// count less its rows.
fn lost(setup: &Setup, outcome: &Outcome) -> u64 {
    match last_counters(&outcome.stderr) {
        Some(c) => {
            let get = |key: &str| c.get(key).copied().unwrap_or(0);
            get("ring_drops")
                + get("recursion_misses")
                + get("matched").saturating_sub(get("printed"))
        }
        None if setup.filtered => 0,
        None => outcome.truth.saturating_sub(outcome.captured),
    }
}
