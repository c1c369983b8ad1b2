//! An in-kernel count of the TCP transitions involving some ports, written
//! apart from the tracer: what benchmarks and loss tests compare a tracer's
//! output with. Needs root and a tp_btf-capable kernel.

use std::mem::MaybeUninit;

use anyhow::{Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, OpenObject};

mod skel {
    include!(concat!(env!("OUT_DIR"), "/groundtruth.skel.rs"));
}

use skel::{GroundtruthSkel, GroundtruthSkelBuilder};

/// Counts, from attach on, every TCP transition whose local or remote port
/// is one of a set.
pub struct TransitionCounter {
    skel: GroundtruthSkel<'static>,
    _links: [Link; 2],
}

impl TransitionCounter {
    /// Loads and attaches the counter for `port` (needs root and tp_btf).
    pub fn start(port: u16) -> Result<Self> {
        Self::for_ports(&[port])
    }

    /// Counts every TCP transition whose local or remote port is one of
    /// `ports`.
    pub fn for_ports(ports: &[u16]) -> Result<Self> {
        Self::load(ports, None)
    }

    /// Counts each (socket, old state, new state) of those once, for up to
    /// `most` of them: exact where no socket makes the same transition
    /// twice (a burst of closes).
    pub fn distinct_for_ports(ports: &[u16], most: u32) -> Result<Self> {
        Self::load(ports, Some(most))
    }

    fn load(ports: &[u16], distinct: Option<u32>) -> Result<Self> {
        // The skeleton borrows its storage for as long as it lives.
        let storage: &'static mut MaybeUninit<OpenObject> =
            Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = GroundtruthSkelBuilder::default()
            .open(storage)
            .context("opening the ground-truth counter")?;
        open.maps
            .rodata_data
            .as_deref_mut()
            .context("the counter has no read-only data")?
            .cpus = libbpf_rs::num_possible_cpus().context("counting the CPUs")? as u32;
        if let Some(most) = distinct {
            open.maps
                .rodata_data
                .as_deref_mut()
                .context("the counter has no read-only data")?
                .distinct = true;
            open.maps
                .counted
                .set_max_entries(most)
                .context("sizing the counter's set")?;
        }
        let entries = u32::try_from(ports.len().max(1)).context("too many ports")?;
        open.maps
            .ports
            .set_max_entries(entries)
            .context("sizing the counter's port set")?;
        let skel = open.load().context("loading the ground-truth counter")?;
        for port in ports {
            skel.maps
                .ports
                .update(&port.to_ne_bytes(), &[1], MapFlags::ANY)
                .context("filling the counter's port set")?;
        }
        // In this order: the kernel runs them in the order they attach.
        let main = skel.progs.count_transition.attach();
        let backup = skel.progs.count_nested.attach();
        let links = [
            main.context("attaching the ground-truth counter")?,
            backup.context("attaching the ground-truth counter")?,
        ];
        Ok(Self {
            skel,
            _links: links,
        })
    }

    /// Transitions counted so far.
    pub fn count(&self) -> Result<u64> {
        self.slot(0)
    }

    /// Of those, the transitions to CLOSE of sockets that were not
    /// listening: one per close record a tracer with `-C` must print.
    pub fn closes(&self) -> Result<u64> {
        self.slot(2)
    }

    /// Of those, how many the backup program counted: transitions that
    /// interrupted the main one.
    pub fn nested(&self) -> Result<u64> {
        self.slot(1)
    }

    fn slot(&self, slot: u32) -> Result<u64> {
        let per_cpu = self
            .skel
            .maps
            .transitions
            .lookup_percpu(&slot.to_ne_bytes(), MapFlags::ANY)
            .context("reading the ground truth's counter")?
            .unwrap_or_default();
        Ok(per_cpu
            .iter()
            .filter_map(|v| v.get(..8)?.try_into().ok().map(u64::from_ne_bytes))
            .sum())
    }
}
