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

use std::sync::Arc;

pub use owners::{Owners, Seeds, is_owner_moment};
pub use times::{AddressHasher, SocketTimes, Tracked};

use crate::cgroup::cgroup2_mount;
use crate::close::Close;
use crate::config::Config;
use crate::event::{DecodeError, Event, Owner};
use crate::identity::Identities;
use crate::identity::Identity;
use crate::identity::groups::GroupRules;
use crate::plan::OwnerKeeper;
use crate::snapshot::Found;
use crate::stuck::{Since, StuckSocket};
use crate::tracer::{KernelView, Tracer};

/// What [`Decoder::place`] says of an owner.
enum Placed {
    /// The group filters leave the record out.
    LeftOut,
    /// Its cgroup path and identity, when shown and known.
    At(Option<Arc<str>>, Option<Arc<Identity>>),
}

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
    /// The owners' cgroup paths and identities, when owners are shown or
    /// a group filter needs them.
    identities: Option<Identities>,
    /// Owners show their cgroup and identity.
    owners_shown: bool,
    /// The group filters, when on: the kernel leaves the events of owners
    /// in groups made since its table was filled to the reader.
    group_filter: Option<GroupRules>,
    /// Such events whose owner's group was gone before it could be judged.
    unjudged: u64,
    /// When the trace began: the lower bound of a time in a state entered
    /// before it is the time since.
    began_ns: u64,
    /// What tells whether an event was lost (a lower bound assumes none).
    losses: Losses,
}

/// Whether any transition went unseen so far: then a socket not seen
/// before may have entered its state during the trace, and no lower bound
/// is claimed from then on.
#[derive(Debug)]
struct Losses {
    view: Arc<KernelView>,
    /// The counters showed no loss at this monotonic time.
    none_until_ns: u64,
    lost: bool,
}

impl Losses {
    /// Nothing was lost up to `ts_ns`: the counters are read again only
    /// for an event later than their last reading.
    fn none_before(&mut self, ts_ns: u64) -> bool {
        if self.lost || ts_ns <= self.none_until_ns {
            return !self.lost;
        }
        let now = crate::clock::monotonic_ns();
        match self.view.counters() {
            Ok(c) if c.ringbuf_drops == 0 && c.recursion_misses == 0 => {
                self.none_until_ns = now;
                true
            }
            _ => {
                self.lost = true;
                false
            }
        }
    }
}

impl Decoder {
    /// For the program `tracer` loaded for `config`: owners named with
    /// what the tracer learns of groups made while tracing, their paths
    /// ([`Tracer::group_paths`]) and names ([`Tracer::names`]).
    pub fn for_tracer(tracer: &Tracer, config: &Config) -> anyhow::Result<Self> {
        let plan = tracer.plan();
        let group_filter = GroupRules::of(config).filter(GroupRules::filters);
        let identities = if plan.owners_shown || group_filter.is_some() {
            Some(Identities::new(
                cgroup2_mount(),
                tracer.names(),
                tracer.group_paths()?,
            ))
        } else {
            None
        };
        Ok(Self {
            times: plan
                .reader_keeps_times()
                .then(|| SocketTimes::new(plan.reader_sockets)),
            owners: (plan.owners == OwnerKeeper::Reader).then(|| {
                let mut owners = Owners::new(plan.reader_sockets);
                if let Some(seeds) = tracer.take_seeds() {
                    owners.seed(seeds);
                }
                owners
            }),
            identities,
            owners_shown: plan.owners_shown,
            group_filter,
            unjudged: 0,
            began_ns: tracer.began_ns(),
            losses: Losses {
                view: tracer.view(),
                none_until_ns: 0,
                lost: false,
            },
        })
    }

    /// Decodes one record; the caller must pass every record, in order.
    /// None for a record that is not a transition (the program says a
    /// process accepted a socket), which it takes in, or one the group
    /// filters leave out (see [`Decoder::unjudged`]).
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
            event.before_trace = tracked.before_trace;
        }
        if event.before_trace && self.losses.none_before(event.ts_ns) {
            event.at_least_ns = Some(event.ts_ns.saturating_sub(self.began_ns));
        }
        if let Some(owners) = &mut self.owners {
            event.owner = owners.observe(&event);
        }
        match self.place(event.owner, event.owner_undecided) {
            Placed::LeftOut => Ok(None),
            Placed::At(cgroup, identity) => {
                event.cgroup = cgroup;
                event.identity = identity;
                Ok(Some(event))
            }
        }
    }

    /// Decodes one close record (`-C`), its owner named as a transition's.
    pub fn decode_close(&mut self, data: &[u8]) -> Result<Option<Close>, DecodeError> {
        let mut close = Close::decode(data)?;
        let losses = &mut self.losses;
        close.bound(self.began_ns, |left| losses.none_before(left));
        match self.place(close.owner, close.owner_undecided) {
            Placed::LeftOut => Ok(None),
            Placed::At(cgroup, identity) => {
                close.cgroup = cgroup;
                close.identity = identity;
                Ok(Some(close))
            }
        }
    }

    /// Where `owner` belongs, when owners are shown: its cgroup path and
    /// identity; or that the group filters leave its record out, when the
    /// kernel left it `undecided` to this side.
    fn place(&mut self, owner: Option<Owner>, undecided: bool) -> Placed {
        let (Some(owner), Some(identities)) = (owner, &mut self.identities) else {
            return Placed::At(None, None);
        };
        let found = identities.of(owner.cgroup_id);
        if let (true, Some(rules)) = (undecided, &self.group_filter) {
            match &found {
                Some((path, identity)) if rules.keeps(path, identity) => {}
                Some(_) => return Placed::LeftOut,
                None => {
                    self.unjudged += 1;
                    return Placed::LeftOut;
                }
            }
        }
        match (self.owners_shown, found) {
            (true, Some((path, identity))) => Placed::At(Some(path), Some(identity)),
            _ => Placed::At(None, None),
        }
    }

    /// Events the group filters left out because their owner's group, made
    /// since the kernel's table was filled, was gone before the reader
    /// could judge it.
    pub fn unjudged(&self) -> u64 {
        self.unjudged
    }

    /// A socket a walk found at `found.ts_ns`, once every record before
    /// then was decoded: judged stuck or not, from the reader's times and
    /// owners where it keeps them, else from what the kernel's walk said.
    pub fn stuck(&mut self, found: Found, threshold_ns: u64) -> Option<StuckSocket> {
        let Some(times) = &self.times else {
            return StuckSocket::judge_in_kernel(found, self.began_ns, threshold_ns);
        };
        let since = match times.since(found.skaddr) {
            // A transition after the walk: the state walked is left.
            Some(at) if at > found.ts_ns => Since::Unknown,
            Some(at) => Since::At(at),
            None if times.complete() && self.losses.none_before(found.ts_ns) => Since::BeforeTrace,
            None => Since::Unknown,
        };
        let owner = self.owners.as_ref().and_then(|o| o.of(found.skaddr));
        StuckSocket::judge(found, since, owner, self.began_ns, threshold_ns)
    }

    /// A stuck socket as an event for the stream outputs, its owner
    /// placed as a transition's (None when the group filters leave it
    /// out).
    pub fn stuck_event(&mut self, stuck: &StuckSocket) -> Option<Event> {
        let mut event = stuck.as_event();
        match self.place(event.owner, false) {
            Placed::LeftOut => None,
            Placed::At(cgroup, identity) => {
                event.cgroup = cgroup;
                event.identity = identity;
                Some(event)
            }
        }
    }

    /// The user-space times, unless the kernel keeps them.
    pub fn times(&self) -> Option<&SocketTimes> {
        self.times.as_ref()
    }
}
