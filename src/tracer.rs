//! The privileged core: open, configure, load and attach the BPF program
//! (falling back from one attach mode to the next), and hand out its ring
//! buffer and counters. Only the tracing session uses it; nothing else in
//! the crate needs root.

use std::cell::Cell;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, anyhow, bail};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, MapHandle, OpenObject, PrintLevel};

use crate::bpf::types;
use crate::bpf::types::counter;
use crate::bpf::{OpenTcpstatesSkel, TcpstatesSkel, TcpstatesSkelBuilder};
use crate::census::Census;
use crate::cgroup;
use crate::config::{AttachMode, Config, LabelBy, Labels, SnapshotFrom, Stuck};
use crate::host;
use crate::identity::groups::{GroupMaps, GroupRules, GroupTable, Keeper};
use crate::identity::names::{Names, SharedNames};
use crate::plan::{KernelStore, Plan, Wake};
use crate::ports::PortLabeller;
use crate::ring::RingReader;
use crate::snapshot::start::CensusBase;
use crate::snapshot::{self, Found, Taken};
use crate::stats::KernelCounters;
use crate::stuck::StuckSocket;
use crate::summary::{ByLabel, Summary};
use crate::track::Seeds;

/// The programs of `mode`, as fields of a skeleton's `progs` (open or
/// loaded), borrowed as `$borrow` says (`&` or `&mut`), in the order they
/// must attach: the kernel runs a tracepoint's programs in that order, and
/// the tp_btf backup must run after the main program (see tcpstates.bpf.c).
/// Fields, not names: renaming a program in the C fails the build.
macro_rules! programs {
    ($mode:expr, $($borrow:tt)+) => {
        match $mode {
            AttachMode::TpBtf => vec![
                $($borrow)+.handle_tp_btf,
                $($borrow)+.handle_tp_btf_missed,
            ],
            AttachMode::Tracepoint => vec![$($borrow)+.handle_tracepoint],
            AttachMode::Kprobe => vec![
                $($borrow)+.handle_kprobe,
                $($borrow)+.handle_listen_start,
                $($borrow)+.handle_listen_start_ret,
                $($borrow)+.handle_clone_ret,
                $($borrow)+.handle_accept_ret,
            ],
        }
    };
}

/// A loaded and attached program. Detaches when dropped.
pub struct Tracer {
    /// Held for its thread, which fills the table of groups; dropped
    /// first, so it stops before the maps it fills go.
    _groups: Option<Keeper>,
    /// The containers' and pods' names, shared with that thread.
    names: SharedNames,
    skel: TcpstatesSkel<'static>,
    /// Empty once detached.
    links: Cell<Vec<Link>>,
    plan: Plan,
    view: Arc<KernelView>,
    /// The monotonic time once every program was attached: a socket not
    /// seen since has been in its state at least since then.
    began_ns: u64,
    /// What the snapshot at start found.
    taken: Option<Taken>,
    /// ... and its sockets' holders, when the reader keeps the owners.
    seeds: Cell<Option<Seeds>>,
}

impl Tracer {
    /// Checks privileges and BTF, then loads and attaches with the first
    /// mode of `config.attach` that works, as its [`Plan`] says; the kernel
    /// wakes the reader as `wake` says.
    pub fn start(config: &Config, wake: Wake) -> Result<Self> {
        host::check_privileges()?;
        host::check_btf(config.btf.as_deref())?;
        set_libbpf_log(config.verbose);
        let facts = host::facts()?;
        if config.stuck.is_some() && !(facts.socket_iterators && config.btf.is_none()) {
            bail!(
                "--stuck walks the sockets with the kernel's socket iterators: Linux 5.9 or later, \
                 with its own BTF"
            );
        }
        if config.stuck.is_some() && config.snapshot_from == Some(SnapshotFrom::Netlink) {
            bail!(
                "--stuck judges the sockets the iterators' snapshot found: not with --snapshot-from netlink"
            );
        }
        if config.snapshot_from == Some(SnapshotFrom::Iterators)
            && !(facts.socket_iterators && config.btf.is_none())
        {
            bail!(
                "--snapshot-from iterators needs the kernel's socket iterators: Linux 5.9 or \
                 later, with its own BTF (--snapshot-from netlink works everywhere)"
            );
        }
        let mut failures = Vec::new();
        for &mode in &config.attach {
            match Self::start_mode(config, Plan::new(config, &facts, mode, wake)) {
                Ok(tracer) => return Ok(tracer),
                Err(err) => {
                    if config.verbose {
                        eprintln!("tcpstates: {mode} did not attach: {err:#}");
                    }
                    failures.push(format!("{mode}: {err:#}"));
                }
            }
        }
        let hint = if config.verbose {
            ""
        } else {
            " (-v shows libbpf's log)"
        };
        Err(anyhow!("could not attach: {}{hint}", failures.join("; ")))
    }

    fn start_mode(config: &Config, plan: Plan) -> Result<Self> {
        let mode = plan.mode;
        let skel = load(config, &plan)?;
        fill_port_set(&skel.maps.sports, &config.filter.local_ports)?;
        fill_port_set(&skel.maps.dports, &config.filter.remote_ports)?;
        for pid in &config.filter.pids {
            skel.maps
                .pids
                .update(&pid.to_ne_bytes(), &[1], MapFlags::ANY)
                .with_context(|| format!("adding pid {pid} to the filter"))?;
        }
        // Groups made from here on are seen being made; then the table is
        // filled; then the transitions come.
        let mut links = Vec::new();
        if plan.sees_groups_made() {
            links.push(
                skel.progs
                    .handle_cgroup_mkdir
                    .attach()
                    .context("attaching to cgroup_mkdir (owners' groups)")?,
            );
        }
        let names: SharedNames = Arc::new(Mutex::new(Names::new(&config.host_root)));
        let groups = if plan.sees_groups_made() {
            start_keeper(&skel, GroupRules::of(config), Arc::clone(&names))?
        } else {
            None
        };
        if plan.seeds_from_netlink() {
            // Open before the first transition program attaches: every
            // transition that may race the dump leaves its mark.
            snapshot::start::set_diag_window(&skel, true)?;
        }
        for prog in programs!(mode, &skel.progs) {
            links.push(prog.attach().with_context(|| {
                format!("attaching the {mode} program{}", host::attach_hint(mode))
            })?);
        }
        let began_ns = crate::clock::monotonic_ns();
        let stuck = match (config.stuck, plan.stuck) {
            (Some(options), Some(_)) => {
                let link = skel
                    .progs
                    .walk_stuck
                    .attach()
                    .context("attaching the walk for stuck sockets")?;
                let walker = StuckWalker {
                    link: link
                        .as_fd()
                        .try_clone_to_owned()
                        .context("duplicating a link's descriptor")?,
                    only: config.filter.netns,
                    options,
                    began_ns,
                };
                links.push(link);
                Some(walker)
            }
            _ => None,
        };
        let ports = match config.labels {
            Some(labels) if plan.port_labels => {
                Some(PortLabeller::start(&skel, &config.label_ports, labels.max)?)
            }
            _ => None,
        };
        let labels = config
            .labels
            .filter(|_| plan.summary_slots > 1)
            .zip(match &ports {
                Some(ports) => Some(ports.names()),
                None => groups.as_ref().map(Keeper::label_list),
            });
        let view = Arc::new(KernelView::new(
            &skel,
            mode,
            labels,
            ports,
            plan.summary_slots,
            plan.census,
            stuck,
        )?);
        let (taken, seeds) = if plan.snapshot {
            let started = snapshot::start::take(&skel, &plan, config.filter.netns).context(
                "taking the snapshot of the sockets that exist (--no-snapshot skips it)",
            )?;
            if let Some(base) = started.census_base {
                view.set_census_base(base);
            }
            (Some(started.taken), started.seeds)
        } else {
            (None, None)
        };
        Ok(Tracer {
            _groups: groups,
            names,
            skel,
            links: Cell::new(links),
            plan,
            view,
            began_ns,
            taken,
            seeds: Cell::new(seeds),
        })
    }

    /// What the snapshot at start found, if one was taken.
    pub fn snapshot(&self) -> Option<&Taken> {
        self.taken.as_ref()
    }

    /// The snapshot's sockets and holders, for the reader when it keeps
    /// the owners (once).
    pub fn take_seeds(&self) -> Option<Seeds> {
        self.seeds.take()
    }

    /// The paths the kernel keeps of groups made while tracing, when the
    /// table of groups is used.
    pub fn group_paths(&self) -> Result<Option<MapHandle>> {
        if !self.plan.sees_groups_made() {
            return Ok(None);
        }
        Ok(Some(MapHandle::try_from(&self.skel.maps.group_paths)?))
    }

    /// The containers' and pods' names found so far (the reader's, to
    /// name owners).
    pub fn names(&self) -> SharedNames {
        Arc::clone(&self.names)
    }

    /// Stops new events; what is already in the ring buffer stays readable,
    /// and the counters become final.
    pub fn detach(&self) {
        drop(self.links.take());
    }

    /// The mode that attached.
    pub fn mode(&self) -> AttachMode {
        self.plan.mode
    }

    /// When the trace began (monotonic): every program was attached.
    pub fn began_ns(&self) -> u64 {
        self.began_ns
    }

    /// The plan the program was loaded with: the reader's decoder is
    /// built from it.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// A reader of the ring buffer the events come through.
    pub fn ring_reader(&self) -> Result<RingReader<'_>> {
        let events = &self.skel.maps.events;
        RingReader::new(events.as_fd(), events.max_entries()).context("mapping the ring buffer")
    }

    /// Reads the in-kernel counters.
    pub fn counters(&self) -> Result<KernelCounters> {
        self.view.counters()
    }

    /// What the kernel counts, readable from another thread.
    pub fn view(&self) -> Arc<KernelView> {
        Arc::clone(&self.view)
    }

    /// Sockets whose last transition time the kernel keeps now (none
    /// unless the filter `tracks_in_kernel`). Walks the map: for -v, not for
    /// every read of the counters.
    pub fn sockets_tracked(&self) -> Result<u64> {
        match self.plan.store {
            KernelStore::None => Ok(0),
            KernelStore::Map(_) if self.plan.closes => {
                Ok(self.skel.maps.close_sockets.keys().count() as u64)
            }
            KernelStore::Map(_) => Ok(self.skel.maps.sockets.keys().count() as u64),
            KernelStore::SocketLocal => {
                let read = |which: counter| sum_percpu(&self.view.counters, which.0);
                let started = read(counter::COUNTER_LOCAL_STARTED)?;
                Ok(started.saturating_sub(read(counter::COUNTER_LOCAL_STOPPED)?))
            }
        }
    }
}

/// What the kernel counts: its counters and summary mode's aggregates,
/// through descriptors of its own, so that any thread can read them while
/// the program runs, and after it detaches.
#[derive(Debug)]
pub struct KernelView {
    counters: MapHandle,
    summary: MapHandle,
    /// The programs whose recursion misses are transitions nobody handled.
    missing: Vec<OwnedFd>,
    /// tp_btf: the backup program handled some of those misses, and
    /// counted them in COUNTER_NESTED.
    backup: bool,
    /// With --label-by: what the labels are, and the named ones so far.
    labels: Option<(LabelBy, Arc<Mutex<Vec<String>>>)>,
    /// With --label-by port: who gives ports their labels.
    ports: Option<PortLabeller>,
    /// The summary map's slots.
    slots: u32,
    /// Summary mode's census, when kept.
    census: Option<MapHandle>,
    /// ... and what user space counted of the netlink snapshot's sockets,
    /// by state, with whether all found went in.
    census_base: std::sync::OnceLock<CensusBase>,
    /// With --stuck: the walk.
    stuck: Option<StuckWalker>,
}

/// The walk for stuck sockets: the iterator's link, the namespace filter,
/// the options, when the trace began.
#[derive(Debug)]
struct StuckWalker {
    link: OwnedFd,
    only: Option<u32>,
    options: Stuck,
    began_ns: u64,
}

impl KernelView {
    fn new(
        skel: &TcpstatesSkel<'_>,
        mode: AttachMode,
        labels: Option<(Labels, Arc<Mutex<Vec<String>>>)>,
        ports: Option<PortLabeller>,
        slots: u32,
        census: bool,
        stuck: Option<StuckWalker>,
    ) -> Result<Self> {
        let progs = &skel.progs;
        // The backup's own misses are transitions the main program handled:
        // only the main one's count, less what the backup caught, is lost.
        let missing = match mode {
            AttachMode::TpBtf => vec![&progs.handle_tp_btf],
            mode => programs!(mode, &progs),
        };
        Ok(Self {
            counters: MapHandle::try_from(&skel.maps.counters)?,
            summary: MapHandle::try_from(&skel.maps.summary)?,
            missing: missing
                .into_iter()
                .map(|prog| prog.as_fd().try_clone_to_owned())
                .collect::<std::io::Result<_>>()
                .context("duplicating a program's descriptor")?,
            backup: mode == AttachMode::TpBtf,
            labels: labels.map(|(l, names)| (l.by, names)),
            ports,
            slots,
            census: census
                .then(|| MapHandle::try_from(&skel.maps.census))
                .transpose()?,
            census_base: std::sync::OnceLock::new(),
            stuck,
        })
    }

    /// What user space counted of the netlink snapshot's sockets (the
    /// kernel takes each back as it seeds it), and whether every socket
    /// found went into the kernel's map.
    fn set_census_base(&self, base: CensusBase) {
        // Once, at start.
        let _ = self.census_base.set(base);
    }

    /// With --stuck: its options.
    pub fn stuck_options(&self) -> Option<Stuck> {
        self.stuck.as_ref().map(|w| w.options)
    }

    /// With --stuck: every socket in a watched state (only the stuck ones
    /// where the kernel keeps the times), walked now.
    pub fn walk_stuck(&self) -> Result<Option<Vec<Found>>> {
        let Some(walker) = &self.stuck else {
            return Ok(None);
        };
        let mut found = Vec::new();
        snapshot::walk(walker.link.as_fd(), walker.only, |f| found.push(f))
            .context("walking the sockets for stuck ones")?;
        Ok(Some(found))
    }

    /// With --stuck, where the kernel keeps the times (summary mode): the
    /// sockets stuck now.
    pub fn stuck_now(&self) -> Result<Option<Vec<StuckSocket>>> {
        let Some(walker) = &self.stuck else {
            return Ok(None);
        };
        let threshold = walker.options.after_ns();
        let found = self.walk_stuck()?.unwrap_or_default();
        Ok(Some(
            found
                .into_iter()
                .filter_map(|f| StuckSocket::judge_in_kernel(f, walker.began_ns, threshold))
                .collect(),
        ))
    }

    /// Summary mode's census of sockets in each state now (None when not
    /// kept): exact while the kernel's store never lacked room and no
    /// transition went unhandled (a socket whose CLOSE was missed stays
    /// counted until its address is reused).
    pub fn census(&self) -> Result<Option<Census>> {
        let Some(map) = &self.census else {
            return Ok(None);
        };
        let mut per_cpu = map
            .lookup_percpu(&0u32.to_ne_bytes(), MapFlags::ANY)
            .context("reading the census map")?
            .unwrap_or_default();
        let mut all_in = true;
        if let Some(&(counted, all)) = self.census_base.get() {
            per_cpu.push(snapshot::start::bytes_of(&types::census { sockets: counted }).to_vec());
            all_in = all;
        }
        let exact = all_in
            && sum_percpu(&self.counters, counter::COUNTER_MAP_FULL.0)? == 0
            && self.recursion_misses()? == 0;
        Census::sum_of(&per_cpu, exact).map(Some)
    }

    /// Reads the in-kernel counters.
    pub fn counters(&self) -> Result<KernelCounters> {
        let read = |which: counter| sum_percpu(&self.counters, which.0);
        Ok(KernelCounters {
            events: read(counter::COUNTER_EVENTS)?,
            ringbuf_drops: read(counter::COUNTER_RINGBUF_DROPS)?,
            map_full: read(counter::COUNTER_MAP_FULL)?,
            recursion_misses: self.recursion_misses()?,
            unjudged: read(counter::COUNTER_UNDECIDED)?,
        })
    }

    /// Summary mode's aggregates, summed over CPUs.
    pub fn summary(&self) -> Result<Summary> {
        Ok(self.summaries()?.0)
    }

    /// With --label-by: each label's counts (those with any).
    pub fn by_label(&self) -> Result<Option<ByLabel>> {
        Ok(self.summaries()?.1)
    }

    /// Both, each slot of the map read once: the total of every slot, and,
    /// with --label-by, each label's counts (those with any).
    pub fn summaries(&self) -> Result<(Summary, Option<ByLabel>)> {
        if let Some(ports) = &self.ports {
            ports.rank(true)?;
        }
        let named = match &self.labels {
            Some((_, named)) => named.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            None => Vec::new(),
        };
        let mut total = Summary::default();
        let mut values = Vec::new();
        let by = self.labels.as_ref().map(|(by, _)| *by);
        for (slot, label) in (0..self.slots).zip(ByLabel::slot_names(by, &named)) {
            let summary = self.summary_slot(slot)?;
            total.merge(&summary);
            if summary.total() > 0 {
                values.push((label, summary));
            }
        }
        let labelled = self
            .labels
            .as_ref()
            .map(|(by, _)| ByLabel { by: *by, values });
        Ok((total, labelled))
    }

    /// With --label-by port and no --label-ports: labels the busiest
    /// service ports, if a second has passed since they were last looked
    /// for.
    pub fn rank_ports(&self) -> Result<()> {
        match &self.ports {
            Some(ports) => ports.rank(false),
            None => Ok(()),
        }
    }

    fn summary_slot(&self, slot: u32) -> Result<Summary> {
        let per_cpu = self
            .summary
            .lookup_percpu(&slot.to_ne_bytes(), MapFlags::ANY)
            .context("reading the summary map")?
            .unwrap_or_default();
        Summary::sum_of(&per_cpu).map_err(|err| anyhow!("reading the summary map: {err}"))
    }

    /// Transitions no program handled.
    fn recursion_misses(&self) -> Result<u64> {
        let misses = self
            .missing
            .iter()
            .map(|fd| recursion_misses(fd.as_fd()))
            .sum::<Result<u64>>()?;
        if self.backup {
            Ok(misses.saturating_sub(sum_percpu(&self.counters, counter::COUNTER_NESTED.0)?))
        } else {
            Ok(misses)
        }
    }
}

/// How often the kernel skipped the program `prog` because it was already
/// running on that CPU (Linux 5.12+; 0 before).
fn recursion_misses(prog: BorrowedFd<'_>) -> Result<u64> {
    let mut info = libbpf_rs::libbpf_sys::bpf_prog_info::default();
    let mut len = std::mem::size_of_val(&info) as u32;
    // SAFETY: the fd is a loaded program's, open while `prog` is borrowed;
    // `info` is a zeroed bpf_prog_info of `len` bytes, which the kernel fills
    // (no pointer in it is set, so it writes nowhere else).
    let rc = unsafe {
        libbpf_rs::libbpf_sys::bpf_prog_get_info_by_fd(prog.as_raw_fd(), &mut info, &mut len)
    };
    if rc != 0 {
        bail!(
            "reading the program's statistics: {}",
            std::io::Error::from_raw_os_error(-rc)
        );
    }
    Ok(info.recursion_misses)
}

/// Opens, configures and loads the object as `plan` says, with only its
/// mode's programs enabled. Public so tests can check that a program passes
/// the verifier on a kernel where it cannot attach.
pub fn load(config: &Config, plan: &Plan) -> Result<TcpstatesSkel<'static>> {
    // The skeleton borrows its object storage for as long as it lives. Each
    // attempt gets its own: a failed one leaks this small allocation (its
    // object is closed), which happens at most once per attach mode.
    let storage: &'static mut MaybeUninit<OpenObject> = Box::leak(Box::new(MaybeUninit::uninit()));
    let mut builder = TcpstatesSkelBuilder::default();
    if let Some(btf) = &config.btf {
        builder
            .obj_builder
            .btf_custom_path(btf)
            .with_context(|| format!("using BTF file {}", btf.display()))?;
    }
    let mut open = builder.open(storage).context("opening the BPF object")?;
    configure(&mut open, config, plan)?;
    open.load()
        .with_context(|| format!("loading the {} program", plan.mode))
}

fn configure(open: &mut OpenTcpstatesSkel<'_>, config: &Config, plan: &Plan) -> Result<()> {
    open.maps
        .rodata_data
        .as_deref_mut()
        .context("the BPF object has no read-only data section")?
        .settings = plan.settings(&config.filter);
    let sizes = plan.map_sizes(&config.filter);
    let maps = &mut open.maps;
    for (map, entries, what) in [
        (&mut maps.events, sizes.events, "the ring buffer"),
        (&mut maps.sockets, sizes.sockets, "the socket map"),
        (
            &mut maps.close_sockets,
            sizes.close_sockets,
            "the socket map",
        ),
        (
            &mut maps.listener_owners,
            sizes.listener_owners,
            "the listener owner map",
        ),
        (&mut maps.listening, sizes.listening, "the listener map"),
        (&mut maps.pids, sizes.pids, "the pid map"),
        (&mut maps.sports, sizes.sports, "a port map"),
        (&mut maps.dports, sizes.dports, "a port map"),
        (&mut maps.groups, sizes.groups, "the group table"),
        (
            &mut maps.group_paths,
            sizes.group_paths,
            "the new groups' paths",
        ),
        (
            &mut maps.group_events,
            sizes.group_events,
            "the new groups' ring buffer",
        ),
        (&mut maps.summary, sizes.summary, "the summary map"),
        (&mut maps.port_labels, sizes.port_labels, "the port labels"),
        (
            &mut maps.port_busy,
            sizes.port_busy,
            "the service ports' counts",
        ),
        (&mut maps.holders, sizes.holders, "the snapshot's holders"),
        (&mut maps.diag, sizes.diag, "the snapshot's sockets"),
    ] {
        map.set_max_entries(entries)
            .with_context(|| format!("sizing {what}"))?;
    }
    for prog in programs!(plan.mode, &mut open.progs) {
        prog.set_autoload(true);
    }
    if plan.sees_groups_made() {
        open.progs.handle_cgroup_mkdir.set_autoload(true);
    }
    let iterators = plan.snapshot_from == SnapshotFrom::Iterators;
    if plan.snapshot && iterators {
        open.progs.snap_sockets.set_autoload(true);
    }
    if plan.snapshot_holders && iterators {
        open.progs.snap_holders.set_autoload(true);
    }
    if plan.stuck.is_some() {
        open.progs.walk_stuck.set_autoload(true);
    }
    Ok(())
}

/// Fills the table of cgroups before the program attaches, and keeps it
/// filled; without rules, looks the names of groups made up as they are
/// made (none without a cgroup2 mount: owners then have no group).
fn start_keeper(
    skel: &TcpstatesSkel<'_>,
    rules: Option<GroupRules>,
    names: SharedNames,
) -> Result<Option<Keeper>> {
    let Some(mount) = cgroup::cgroup2_mount() else {
        if rules.is_some() {
            bail!("no cgroup2 mount: groups cannot be judged");
        }
        return Ok(None);
    };
    let maps = GroupMaps {
        groups: MapHandle::try_from(&skel.maps.groups)?,
        known: MapHandle::try_from(&skel.maps.groups_known)?,
        paths: MapHandle::try_from(&skel.maps.group_paths)?,
        events: MapHandle::try_from(&skel.maps.group_events)?,
        counters: MapHandle::try_from(&skel.maps.counters)?,
        new_groups: counter::COUNTER_NEW_GROUPS.0,
    };
    Keeper::start(GroupTable::new(rules, names), mount, maps).map(Some)
}

/// Reads slot `key` of a per-CPU array of u64 counters, summed over CPUs.
fn sum_percpu(map: &dyn MapCore, key: u32) -> Result<u64> {
    let per_cpu = map
        .lookup_percpu(&key.to_ne_bytes(), MapFlags::ANY)
        .with_context(|| format!("reading the {} map", map.name().to_string_lossy()))?
        .unwrap_or_default();
    Ok(per_cpu
        .iter()
        .filter_map(|v| v.get(..8)?.try_into().ok().map(u64::from_ne_bytes))
        .sum())
}

fn fill_port_set(map: &dyn MapCore, ports: &[u16]) -> Result<()> {
    for port in ports {
        map.update(&port.to_ne_bytes(), &[1], MapFlags::ANY)
            .with_context(|| format!("adding port {port} to the filter"))?;
    }
    Ok(())
}

fn set_libbpf_log(verbose: bool) {
    fn to_stderr(_level: PrintLevel, msg: String) {
        eprint!("{msg}");
    }
    if verbose {
        libbpf_rs::set_print(Some((PrintLevel::Debug, to_stderr)));
    } else {
        // Without -v, auto mode's failed attempts would print warnings for
        // modes that were never going to work; the final error says why
        // each one failed.
        libbpf_rs::set_print(None);
    }
}
