//! tcpstates: trace TCP socket state changes, and the time each socket spent
//! in the state it left, with an eBPF program (CO-RE, libbpf-rs).
//!
//! `main.rs` is a thin entry point over this library:
//! - [`cli`] parses the command line (defined in `args.rs`) into a
//!   [`config::Config`], the plain configuration everything else reads;
//! - [`session`] runs one tracing session in the mode the config asks for;
//! - [`plan`] decides, once, from the config, the host and the attach mode,
//!   where times and owners live, what the kernel reads and how the ring
//!   buffer is sized and wakes the reader: the program's settings and the
//!   reader's decoder both come from it;
//! - [`tracer`] is the only privileged code: open, configure, load, attach;
//!   [`host`] says what the host offers it, and [`ring`] reads its ring
//!   buffer from the mapping;
//! - [`event`] decodes the kernel's records into typed [`event::Event`]s,
//!   [`state`] is the one table of TCP states and their text, and
//!   [`track`] keeps each socket's time in its state, and its owner, when
//!   the kernel does not; [`cgroup`] names owners' cgroups, [`identity`]
//!   says which unit, container and pod they belong to (and keeps the
//!   kernel's table of the groups the filters and labels ask about);
//! - [`output`] holds the outputs behind one [`output::Sink`] trait (the
//!   table, CSV, JSON and journal formatters are pure, unit-tested without
//!   root), with
//!   [`clock`] for every time conversion and [`batching`] for how events
//!   are batched on their way out;
//! - with `-C` the kernel sends one record per socket at its CLOSE instead:
//!   [`close`] decodes it (its role, the cause of its end, every state with
//!   its time, its counters), [`cause`] names the causes, and the same
//!   outputs print it;
//! - in summary mode the kernel aggregates instead: [`summary`] reads and
//!   renders its histograms and transition counts (printed by
//!   [`output::summary`]), [`metrics`] serves them to Prometheus;
//! - [`snapshot`] walks the sockets that exist at start (and again for
//!   [`stuck`] sockets); [`census`] is summary mode's count of sockets in
//!   each state now;
//! - [`stats`] holds the run's counters and their reports; [`signals`]
//!   ends a run cleanly.

#![warn(missing_docs)]

mod args;
pub mod batching;
pub mod cause;
pub mod census;
pub mod cgroup;
pub mod cli;
pub mod clock;
pub mod close;
pub mod config;
pub mod event;
pub mod host;
pub mod identity;
pub mod metrics;
pub mod output;
pub mod plan;
pub mod ports;
pub mod ring;
pub mod session;
pub mod signals;
pub mod snapshot;
pub mod state;
pub mod stats;
pub mod stuck;
pub mod summary;
pub mod tracer;
pub mod track;
pub mod web;

/// The skeleton libbpf-cargo generates from `src/bpf/tcpstates.bpf.c`.
mod bpf {
    include!(concat!(env!("OUT_DIR"), "/tcpstates.skel.rs"));
}
