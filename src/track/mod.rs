//! Each socket's time in the state it leaves, and its owner, kept in user
//! space.
//!
//! Without a filter that needs them in the kernel, the kernel sends every
//! transition of the traced family, so the reader can remember when each
//! socket last changed state, and which process owns it.
//! That keeps the kernel side to reading and sending: a per-socket store in
//! the kernel (a hash map, or socket-local storage) costs the traced host
//! more than everything else the program does (see BENCHMARKS.md). With a
//! port, state, duration or owner filter the kernel drops transitions this
//! side would need, so it keeps the times and owners itself, by the same
//! rules (`src/bpf/track.bpf.h`).
//!
//! [`Decoder`] turns records into events with both; [`times`] keeps the
//! sockets' times, [`owners`] their owners.

mod owners;
mod times;

pub use owners::{Owners, is_owner_moment};
pub use times::{AddressHasher, SocketTimes, Tracked};

use crate::cgroup::{CgroupPaths, cgroup2_mount};
use crate::event::{DecodeError, Event};
use crate::plan::{OwnerKeeper, Plan};

/// Turns ring buffer records into events, with the time in the old state
/// from the kernel or from [`SocketTimes`], whichever keeps it, and, when
/// an output shows them, the socket's owner from [`Owners`].
#[derive(Debug)]
pub struct Decoder {
    /// `None` when the kernel keeps the times.
    times: Option<SocketTimes>,
    /// `None` when owners are not shown, or the reader does not see every
    /// transition (the kernel keeps the times, and the owners).
    owners: Option<Owners>,
    /// The owners' cgroup paths, when owners are shown.
    cgroups: Option<CgroupPaths>,
}

impl Decoder {
    /// For the program `plan` loads.
    pub fn for_plan(plan: &Plan) -> Self {
        Self {
            times: plan
                .reader_keeps_times()
                .then(|| SocketTimes::new(plan.reader_sockets)),
            owners: (plan.owners == OwnerKeeper::Reader).then(|| Owners::new(plan.reader_sockets)),
            cgroups: plan.owners_shown.then(|| CgroupPaths::at(cgroup2_mount())),
        }
    }

    /// Decodes one record; the caller must pass every record, in order.
    /// None for a record that is not a transition (the program says a
    /// process accepted a socket), which it takes in.
    pub fn decode(&mut self, data: &[u8]) -> Result<Option<Event>, DecodeError> {
        let mut event = Event::decode(data)?;
        if event.accepted {
            if let Some(owners) = &mut self.owners {
                owners.accepted(&event);
            }
            return Ok(None);
        }
        if let Some(times) = &mut self.times {
            let tracked = times.observe(event.skaddr, event.old, event.new, event.ts_ns);
            event.duration_ns = tracked.duration_ns;
            event.map_full = tracked.no_room;
        }
        if let Some(owners) = &mut self.owners {
            event.owner = owners.observe(&event);
        }
        if let (Some(cgroups), Some(owner)) = (&mut self.cgroups, event.owner) {
            event.cgroup = cgroups.path(owner.cgroup_id);
        }
        Ok(Some(event))
    }

    /// The user-space times, unless the kernel keeps them.
    pub fn times(&self) -> Option<&SocketTimes> {
        self.times.as_ref()
    }
}
