//! tcpstates: trace TCP socket state changes, and the time each socket spent
//! in the state it left, with an eBPF program (CO-RE, libbpf-rs).
//!
//! `main.rs` is a thin entry point over this library:
//! - [`cli`] parses the command line into a [`cli::Config`];
//! - [`durations`] keeps each socket's time in its state, when the kernel
//!   does not;
//! - [`event`] decodes the kernel's records into typed [`event::Event`]s;
//! - [`output`] formats them (pure, unit-tested without root);
//! - [`ring`] reads the kernel's ring buffer from its mapping;
//! - [`tracer`] is the only privileged code: open, configure, load, attach, poll;
//! - [`writer`] writes the output on a thread of its own;
//! - [`run`] ties them together for one tracing session.
//!
//! For the loss tests and the benchmark: [`storm`] makes loopback connection
//! storms, and [`groundtruth`] counts their transitions in the kernel,
//! independently of the tracer (privileged too).

#![warn(missing_docs)]

mod args;
pub mod cli;
pub mod durations;
pub mod event;
pub mod groundtruth;
pub mod output;
pub mod ring;
pub mod run;
pub mod signals;
pub mod storm;
pub mod tracer;
pub mod writer;

/// The skeleton libbpf-cargo generates from `src/bpf/tcpstates.bpf.c`.
mod bpf {
    include!(concat!(env!("OUT_DIR"), "/tcpstates.skel.rs"));
}
