//! The privileged core: open, configure, load and attach the BPF program
//! (falling back from one attach mode to the next), and hand out its ring
//! buffer and counters. Only the tracing session uses it; nothing else in
//! the crate needs root.

use std::cell::Cell;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, MapHandle, OpenObject, PrintLevel};

use crate::batching;
use crate::bpf::types::counter;
use crate::bpf::{OpenTcpstatesSkel, TcpstatesSkel, TcpstatesSkelBuilder};
use crate::config::{AttachMode, Config, DEFAULT_MAP_SOCKETS, Family, Mode};
use crate::event::record;
use crate::host;
use crate::ring::RingReader;
use crate::stats::KernelCounters;
use crate::summary::Summary;

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

/// Where the kernel keeps each socket's last-transition time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelStore {
    /// Nowhere: the reader keeps them (no port filter).
    None,
    /// In the socket's own storage, freed with the socket: no bound.
    SocketLocal,
    /// In a preallocated map of this many sockets, keyed by address.
    Map(u32),
}

impl KernelStore {
    /// The store for `config` in `mode`. The socket's own storage needs
    /// tp_btf on a kernel that allows it (`local_ok`); an explicit
    /// `--max-sockets` asks for a bound, which only the map has. Summary
    /// mode keeps every socket's time, and the socket's own storage costs
    /// an allocation and an RCU-deferred free per socket: the map instead
    /// (BENCHMARKS.md: a busy storm 4.8% slower against 10.1%).
    pub fn choose(config: &Config, mode: AttachMode, local_ok: bool) -> Self {
        let summary = matches!(config.mode, Mode::Summary(_));
        if !config.kernel_tracks() {
            KernelStore::None
        } else if mode == AttachMode::TpBtf && local_ok && config.max_sockets.is_none() && !summary
        {
            KernelStore::SocketLocal
        } else {
            KernelStore::Map(config.max_sockets.unwrap_or(DEFAULT_MAP_SOCKETS))
        }
    }

    /// Where the times are, for -v.
    pub fn describe(self) -> &'static str {
        match self {
            KernelStore::None => "here",
            KernelStore::SocketLocal => "in the kernel, with each socket",
            KernelStore::Map(_) => "in the kernel's map",
        }
    }
}

/// A loaded and attached program. Detaches when dropped.
pub struct Tracer {
    skel: TcpstatesSkel<'static>,
    /// Empty once detached.
    links: Cell<Vec<Link>>,
    mode: AttachMode,
    store: KernelStore,
    view: Arc<KernelView>,
}

impl Tracer {
    /// Checks privileges and BTF, then loads and attaches with the first
    /// mode of `config.attach` that works. The kernel wakes the reader once
    /// `wakeup_bytes` wait in the ring buffer (0: for every event).
    pub fn start(config: &Config, wakeup_bytes: u32) -> Result<Self> {
        host::check_privileges()?;
        host::check_btf(config.btf.as_deref())?;
        host::check_cgroup_filter(config.filter.cgroup.is_some())?;
        set_libbpf_log(config.verbose);
        let mut failures = Vec::new();
        for &mode in &config.attach {
            match Self::start_mode(config, mode, wakeup_bytes) {
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

    fn start_mode(config: &Config, mode: AttachMode, wakeup_bytes: u32) -> Result<Self> {
        let store = KernelStore::choose(config, mode, host::has_tracing_5_11());
        let skel = load(config, mode, store, wakeup_bytes)?;
        fill_port_set(&skel.maps.sports, &config.filter.local_ports)?;
        fill_port_set(&skel.maps.dports, &config.filter.remote_ports)?;
        for pid in &config.filter.pids {
            skel.maps
                .pids
                .update(&pid.to_ne_bytes(), &[1], MapFlags::ANY)
                .with_context(|| format!("adding pid {pid} to the filter"))?;
        }
        let links = programs!(mode, &skel.progs)
            .into_iter()
            .map(|prog| prog.attach().map_err(anyhow::Error::from))
            .collect::<Result<Vec<Link>>>()
            .with_context(|| format!("attaching the {mode} program{}", host::attach_hint(mode)))?;
        let view = Arc::new(KernelView::new(&skel, mode)?);
        Ok(Tracer {
            skel,
            links: Cell::new(links),
            mode,
            store,
            view,
        })
    }

    /// Stops new events; what is already in the ring buffer stays readable,
    /// and the counters become final.
    pub fn detach(&self) {
        drop(self.links.take());
    }

    /// The mode that attached.
    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// Where the kernel keeps each socket's time.
    pub fn store(&self) -> KernelStore {
        self.store
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
        match self.store {
            KernelStore::None => Ok(0),
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
}

impl KernelView {
    fn new(skel: &TcpstatesSkel<'_>, mode: AttachMode) -> Result<Self> {
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
        })
    }

    /// Reads the in-kernel counters.
    pub fn counters(&self) -> Result<KernelCounters> {
        let read = |which: counter| sum_percpu(&self.counters, which.0);
        Ok(KernelCounters {
            events: read(counter::COUNTER_EVENTS)?,
            ringbuf_drops: read(counter::COUNTER_RINGBUF_DROPS)?,
            map_full: read(counter::COUNTER_MAP_FULL)?,
            recursion_misses: self.recursion_misses()?,
        })
    }

    /// Summary mode's aggregates, summed over CPUs.
    pub fn summary(&self) -> Result<Summary> {
        let per_cpu = self
            .summary
            .lookup_percpu(&0u32.to_ne_bytes(), MapFlags::ANY)
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

/// Opens, configures and loads the object with only `mode`'s programs
/// enabled, keeping per-socket times in `store`. Public so tests can check
/// that a program passes the verifier on a kernel where it cannot attach.
pub fn load(
    config: &Config,
    mode: AttachMode,
    store: KernelStore,
    wakeup_bytes: u32,
) -> Result<TcpstatesSkel<'static>> {
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
    configure(&mut open, config, mode, store, wakeup_bytes)?;
    open.load()
        .with_context(|| format!("loading the {mode} program"))
}

fn configure(
    open: &mut OpenTcpstatesSkel<'_>,
    config: &Config,
    mode: AttachMode,
    store: KernelStore,
    wakeup_bytes: u32,
) -> Result<()> {
    let filter = &config.filter;
    let rodata = open
        .maps
        .rodata_data
        .as_deref_mut()
        .context("the BPF object has no read-only data section")?;
    rodata.target_family = match filter.family {
        None => 0,
        Some(Family::Ipv4) => libc::AF_INET as u16,
        Some(Family::Ipv6) => libc::AF_INET6 as u16,
    };
    rodata.target_netns = filter.netns.unwrap_or(0);
    rodata.filter_pid = !filter.pids.is_empty();
    if let Some(comm) = &filter.comm {
        rodata.filter_comm = true;
        for (dst, src) in rodata.target_comm.iter_mut().zip(comm.bytes()) {
            *dst = src as _;
        }
    }
    rodata.filter_uid = filter.uid.is_some();
    rodata.target_uid = filter.uid.unwrap_or(0);
    if let Some(cgroup) = &filter.cgroup {
        rodata.filter_cgroup = true;
        rodata.target_cgroup = cgroup.id;
        rodata.target_cgroup_level = cgroup.level as i32;
    }
    rodata.state_mask = filter.states;
    // 0 means no filter: a threshold of 0 still drops unknown times.
    rodata.min_delta_ns = filter.min_duration_ns.map_or(0, |ns| ns.max(1));
    rodata.filter_sport = !filter.local_ports.is_empty();
    rodata.filter_dport = !filter.remote_ports.is_empty();
    rodata.track_sockets = store != KernelStore::None;
    rodata.use_sk_storage = store == KernelStore::SocketLocal;
    rodata.has_task_btf = host::has_tracing_5_11();
    // The reader keeps owners from each event's task only when the kernel
    // keeps no state; otherwise the kernel sends the owner it keeps.
    rodata.collect_owner = config.collects_owners() && store == KernelStore::None;
    rodata.keep_owner = config.kernel_keeps_owners();
    rodata.wakeup_bytes = wakeup_bytes;
    let cpus = libbpf_rs::num_possible_cpus().context("counting the CPUs")?;
    let largest = record::largest(
        rodata.collect_owner,
        rodata.keep_owner && rodata.track_sockets,
    );
    let ring_bytes = config.ring_bytes_for(host::online_cpus());
    rodata.wakeup_mask = batching::wakeup_mask(ring_bytes, cpus, record::in_ring(largest));
    rodata.summary_mode = matches!(config.mode, Mode::Summary(_));
    // Summary mode sends nothing: read only what the filters look at.
    rodata.lean_reads = rodata.summary_mode && !rodata.keep_owner;

    // Summary mode sends no event: the smallest ring there is.
    let ring_bytes = if rodata.summary_mode {
        page_size()
    } else {
        ring_bytes
    };
    let maps = &mut open.maps;
    maps.events
        .set_max_entries(ring_bytes)
        .context("sizing the ring buffer")?;
    // Preallocated, so an unused map gets one entry.
    let sockets = match store {
        KernelStore::Map(sockets) => sockets,
        KernelStore::None | KernelStore::SocketLocal => 1,
    };
    maps.sockets
        .set_max_entries(sockets)
        .context("sizing the socket map")?;
    let pids = u32::try_from(filter.pids.len().max(1)).context("too many pids")?;
    maps.pids
        .set_max_entries(pids)
        .context("sizing the pid map")?;
    // Listeners' owners, for their children, only with the map.
    if !matches!(store, KernelStore::Map(_)) {
        maps.listener_owners
            .set_max_entries(1)
            .context("sizing the listener owner map")?;
    }
    // Only the kprobes use it; preallocated too.
    if mode != AttachMode::Kprobe {
        maps.listening
            .set_max_entries(1)
            .context("sizing the listener map")?;
    }
    for (map, ports) in [
        (&mut maps.sports, &filter.local_ports),
        (&mut maps.dports, &filter.remote_ports),
    ] {
        let entries = u32::try_from(ports.len().max(1)).context("too many ports")?;
        map.set_max_entries(entries).context("sizing a port map")?;
    }

    for prog in programs!(mode, &mut open.progs) {
        prog.set_autoload(true);
    }
    Ok(())
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

/// The size of a memory page (a ring buffer's smallest size).
fn page_size() -> u32 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u32::try_from(size).unwrap_or(4096)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Filter;

    #[test]
    fn the_socket_storage_where_the_kernel_has_it_and_no_bound_is_asked() {
        let mut config = Config::default();
        let choose = KernelStore::choose;
        assert_eq!(choose(&config, AttachMode::TpBtf, true), KernelStore::None);
        config.filter = Filter {
            local_ports: vec![80],
            ..Filter::default()
        };
        assert_eq!(
            choose(&config, AttachMode::TpBtf, true),
            KernelStore::SocketLocal
        );
        let map = KernelStore::Map(DEFAULT_MAP_SOCKETS);
        assert_eq!(choose(&config, AttachMode::TpBtf, false), map);
        assert_eq!(choose(&config, AttachMode::Tracepoint, true), map);
        assert_eq!(choose(&config, AttachMode::Kprobe, true), map);
        config.max_sockets = Some(9);
        assert_eq!(
            choose(&config, AttachMode::TpBtf, true),
            KernelStore::Map(9)
        );
        let summary = Config {
            mode: Mode::Summary(crate::config::SummaryOutput::default()),
            ..Config::default()
        };
        assert_eq!(choose(&summary, AttachMode::TpBtf, true), map);
    }
}
