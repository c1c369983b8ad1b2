//! Test and benchmark helpers for tcpstates, kept out of the product: its
//! build, and its packages, compile only what ships.
//!
//! - [`storm`] makes loopback connection storms;
//! - [`groundtruth`] counts their transitions in the kernel, apart from the
//!   tracer;
//! - [`rows`] parses the tracer's output rows and its `--report kv` line;
//! - [`net`] makes single loopback connections and closes them as a test
//!   asks;
//! - [`host`] holds the root requirement, tracefs and kprobe state;
//! - [`tracer`] runs a tracer binary: guarded, attached, its lines and
//!   stderr read, stopped with a signal;
//! - [`process`] stops, reaps and guards child processes;
//! - [`hold`] holds many connections open from child processes;
//! - [`burst`] closes them all at once under a tracer, and keeps every CPU
//!   busy when asked;
//! - [`tls`] makes certificates for the metrics endpoint's TLS;
//! - [`netns`] holds a second network namespace, and lists a namespace's
//!   TCP sockets by state as the kernel does.

#![warn(missing_docs)]

pub mod burst;
pub mod groundtruth;
pub mod hold;
pub mod host;
pub mod journal;
pub mod net;
pub mod netns;
pub mod process;
pub mod rows;
pub mod storm;
pub mod tls;
pub mod tracer;
