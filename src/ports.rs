//! `--label-by port`: the service ports the summary counts by. Ports named
//! with `--label-ports` get their label slots before the program attaches;
//! without names, the kernel counts each unlabelled service port's
//! transitions (`port_busy`) and the busiest get the free slots as they
//! show, at most once a second and before each read of the summary. A
//! label, once given, stays: its series only grow. What a port did before
//! it had a label stays under `other`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use libbpf_rs::{MapCore, MapFlags, MapHandle};

use crate::bpf::TcpstatesSkel;
use crate::config::PortLabels;
use crate::identity::groups::LABEL_FIRST;

/// How often the busiest ports are looked for, at most.
const RANK_EVERY: Duration = Duration::from_secs(1);

/// The ports with a label, and the kernel's maps of them.
#[derive(Debug)]
pub struct PortLabeller {
    labels: MapHandle,
    /// Without --label-ports: the kernel's counts of unlabelled ports.
    busy: Option<MapHandle>,
    /// The labels, slot LABEL_FIRST first; they only grow.
    names: Arc<Mutex<Vec<String>>>,
    max: usize,
    ranked: Mutex<Option<Instant>>,
}

impl PortLabeller {
    /// Labels the named ports, or readies the ranking of at most `max`.
    pub fn start(skel: &TcpstatesSkel<'_>, ports: &PortLabels, max: u16) -> Result<Self> {
        let labeller = Self {
            labels: MapHandle::try_from(&skel.maps.port_labels)?,
            busy: match ports {
                PortLabels::Named(_) => None,
                PortLabels::Busiest => Some(MapHandle::try_from(&skel.maps.port_busy)?),
            },
            names: Arc::default(),
            max: usize::from(max),
            ranked: Mutex::new(None),
        };
        if let PortLabels::Named(ports) = ports {
            for &port in ports {
                labeller.label(port)?;
            }
        }
        Ok(labeller)
    }

    /// The labels so far.
    pub fn names(&self) -> Arc<Mutex<Vec<String>>> {
        Arc::clone(&self.names)
    }

    /// Gives `port` the next slot.
    fn label(&self, port: u16) -> Result<()> {
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        let slot = LABEL_FIRST + names.len() as u16;
        self.labels
            .update(&port.to_ne_bytes(), &slot.to_ne_bytes(), MapFlags::NO_EXIST)
            .with_context(|| format!("labelling port {port}"))?;
        names.push(port.to_string());
        Ok(())
    }

    /// Labels the busiest unlabelled service ports while slots are free
    /// (at most once every [`RANK_EVERY`] unless `now`).
    pub fn rank(&self, now: bool) -> Result<()> {
        let Some(busy) = &self.busy else {
            return Ok(());
        };
        // Held to the end: the session's tick and a scrape may rank at once.
        let mut ranked = self.ranked.lock().unwrap_or_else(|e| e.into_inner());
        if !now && ranked.is_some_and(|at| at.elapsed() < RANK_EVERY) {
            return Ok(());
        }
        *ranked = Some(Instant::now());
        let free = self.max - self.names.lock().unwrap_or_else(|e| e.into_inner()).len();
        if free == 0 {
            return Ok(());
        }
        let mut counts: Vec<(u64, u16)> = Vec::new();
        for key in busy.keys() {
            let Ok(port) = <[u8; 2]>::try_from(key.as_slice()).map(u16::from_ne_bytes) else {
                continue;
            };
            let count = busy
                .lookup(&key, MapFlags::ANY)
                .context("reading the service ports' counts")?
                .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                .map_or(0, u64::from_ne_bytes);
            counts.push((count, port));
        }
        // Busiest first; of equals, the lower port.
        counts.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for (_, port) in counts.into_iter().take(free) {
            self.label(port)?;
            // Counted no more (the kernel finds its label first): room for
            // another port.
            let _ = busy.delete(&port.to_ne_bytes());
        }
        Ok(())
    }
}
