//! The privileged part: open, configure, load and attach the BPF program,
//! and read from it. Nothing else in the crate needs root.

use std::cell::Cell;
use std::fmt;
use std::fs;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, OpenObject, PrintLevel};

use crate::bpf::types::counter;
use crate::bpf::{OpenTcpstatesSkel, TcpstatesSkel, TcpstatesSkelBuilder};
use crate::durations::Decoder;
use crate::ring::RingReader;

/// Where the program attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttachMode {
    /// BTF-enabled tracepoint `inet_sock_set_state`: attached through the
    /// bpf syscall, needs no tracefs (Linux 5.5+ with BTF).
    TpBtf,
    /// Classic tracepoint `sock:inet_sock_set_state` (Linux 4.16+); needs
    /// tracefs (or debugfs) mounted to find the event id.
    Tracepoint,
    /// kprobe on `tcp_set_state`, for kernels without the tracepoint.
    Kprobe,
}

impl AttachMode {
    /// Every mode, best first: the order `auto` tries them in.
    pub const ALL: [AttachMode; 3] = [
        AttachMode::TpBtf,
        AttachMode::Tracepoint,
        AttachMode::Kprobe,
    ];

    /// The name `--attach` takes.
    pub fn name(self) -> &'static str {
        match self {
            AttachMode::TpBtf => "tp-btf",
            AttachMode::Tracepoint => "tracepoint",
            AttachMode::Kprobe => "kprobe",
        }
    }
}

impl AttachMode {
    /// The BPF programs of this mode, in the order they must attach: the
    /// kernel runs a tracepoint's programs in that order, and the tp_btf
    /// backup must run after the main program (see tcpstates.bpf.c).
    fn programs(self) -> &'static [&'static str] {
        match self {
            AttachMode::TpBtf => &["handle_tp_btf", "handle_tp_btf_missed"],
            AttachMode::Tracepoint => &["handle_tracepoint"],
            AttachMode::Kprobe => &[
                "handle_kprobe",
                "handle_listen_start",
                "handle_listen_start_ret",
                "handle_clone_ret",
            ],
        }
    }
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which attach point to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachRequest {
    /// Try each mode, best first, and keep the first that attaches.
    Auto,
    /// Only this one.
    Only(AttachMode),
    /// These, in this order: the first that attaches.
    Order(Vec<AttachMode>),
}

impl AttachRequest {
    /// The modes to try, in order.
    pub fn candidates(&self) -> Vec<AttachMode> {
        match self {
            AttachRequest::Auto => AttachMode::ALL.to_vec(),
            AttachRequest::Only(mode) => vec![*mode],
            AttachRequest::Order(modes) => modes.clone(),
        }
    }
}

/// An address family to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// AF_INET.
    Ipv4,
    /// AF_INET6.
    Ipv6,
}

impl Family {
    fn af(self) -> u16 {
        match self {
            Family::Ipv4 => libc::AF_INET as u16,
            Family::Ipv6 => libc::AF_INET6 as u16,
        }
    }
}

/// What the kernel side keeps; everything else never reaches user space.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this family (None: both).
    pub family: Option<Family>,
    /// Only sockets with one of these local ports (empty: any).
    pub local_ports: Vec<u16>,
    /// Only sockets with one of these remote ports (empty: any).
    pub remote_ports: Vec<u16>,
}

impl Filter {
    /// Whether the kernel keeps each socket's last-transition time. With a
    /// port filter it must: it drops transitions user space would need
    /// (a client's local port is still 0 at CLOSE -> SYN_SENT). Without one,
    /// user space sees every transition of the family and keeps the times
    /// itself (src/durations.rs), which costs the traced host much less.
    pub fn tracks_in_kernel(&self) -> bool {
        !self.local_ports.is_empty() || !self.remote_ports.is_empty()
    }
}

/// How to load and attach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracerOptions {
    /// What the kernel side keeps.
    pub filter: Filter,
    /// Where to attach.
    pub attach: AttachRequest,
    /// BTF of the running kernel, when it has none at /sys/kernel/btf/vmlinux.
    pub btf: Option<PathBuf>,
    /// How many sockets' last-transition times are kept at once (in the
    /// kernel with a port filter, else in user space).
    pub max_sockets: u32,
    /// Size of the ring buffer in bytes (a power of two, at least a page).
    pub ringbuf_bytes: u32,
    /// Wake the reader only once this many bytes wait in the ring buffer
    /// (0: for every event). The reader must then poll with a timeout.
    pub wakeup_bytes: u32,
    /// Show libbpf's debug log on stderr.
    pub verbose: bool,
}

impl Default for TracerOptions {
    fn default() -> Self {
        Self {
            filter: Filter::default(),
            attach: AttachRequest::Auto,
            btf: None,
            max_sockets: 65536,
            ringbuf_bytes: 4 << 20,
            wakeup_bytes: 0,
            verbose: false,
        }
    }
}

/// The in-kernel counters, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Transitions that passed the filters (sent or dropped).
    pub events: u64,
    /// Events lost because the ring buffer was full.
    pub ringbuf_drops: u64,
    /// Sockets the kernel's per-socket map had no room for.
    pub map_full: u64,
    /// Transitions the kernel did not run the program for, because it was
    /// already running on that CPU (a softirq interrupted it, and changed
    /// another socket's state). Counted by the kernel (Linux 5.12+).
    pub recursion_misses: u64,
}

/// A loaded and attached program. Detaches when dropped.
pub struct Tracer {
    skel: TcpstatesSkel<'static>,
    tracks_sockets: bool,
    max_sockets: u32,
    /// Empty once detached.
    links: Cell<Vec<Link>>,
    mode: AttachMode,
}

const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

impl Tracer {
    /// Checks privileges and BTF, then loads and attaches with the first
    /// mode of `opts.attach` that works.
    pub fn start(opts: &TracerOptions) -> Result<Self> {
        check_privileges()?;
        if opts.btf.is_none() && !Path::new(KERNEL_BTF).exists() {
            bail!("this kernel has no BTF at {KERNEL_BTF}: pass --btf FILE");
        }
        set_libbpf_log(opts.verbose);
        let mut failures = Vec::new();
        for mode in opts.attach.candidates() {
            match Self::start_mode(opts, mode) {
                Ok(tracer) => return Ok(tracer),
                Err(err) => {
                    if opts.verbose {
                        eprintln!("tcpstates: {mode} did not attach: {err:#}");
                    }
                    failures.push(format!("{mode}: {err:#}"));
                }
            }
        }
        let hint = if opts.verbose {
            ""
        } else {
            " (-v shows libbpf's log)"
        };
        Err(anyhow!("could not attach: {}{hint}", failures.join("; ")))
    }

    fn start_mode(opts: &TracerOptions, mode: AttachMode) -> Result<Self> {
        let skel = load(opts, mode)?;
        fill_port_set(&skel.maps.sports, &opts.filter.local_ports)?;
        fill_port_set(&skel.maps.dports, &opts.filter.remote_ports)?;
        let links = mode
            .programs()
            .iter()
            .map(|name| {
                program(skel.object(), name)?
                    .attach()
                    .map_err(anyhow::Error::from)
            })
            .collect::<Result<Vec<Link>>>()
            .with_context(|| format!("attaching the {mode} program{}", attach_hint(mode)))?;
        Ok(Tracer {
            skel,
            tracks_sockets: opts.filter.tracks_in_kernel(),
            max_sockets: opts.max_sockets,
            links: Cell::new(links),
            mode,
        })
    }

    /// Stops new events; what is already in the ring buffer stays readable,
    /// and the counters become final.
    pub fn detach(&self) {
        drop(self.links.take());
    }

    /// Whether the kernel keeps each socket's last-transition time (see
    /// [`Filter::tracks_in_kernel`]).
    pub fn tracks_sockets(&self) -> bool {
        self.tracks_sockets
    }

    /// A decoder for this program's records: it keeps the per-socket times
    /// when the kernel does not. One per reader, fed every record in order.
    pub fn decoder(&self) -> Decoder {
        Decoder::new(self.tracks_sockets, self.max_sockets)
    }

    /// The mode that attached.
    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// A reader of the ring buffer the events come through.
    pub fn ring_reader(&self) -> Result<RingReader<'_>> {
        let events = &self.skel.maps.events;
        RingReader::new(events.as_fd(), events.max_entries()).context("mapping the ring buffer")
    }

    /// Reads the in-kernel counters.
    pub fn counters(&self) -> Result<Counters> {
        let read = |which: counter| sum_percpu(&self.skel.maps.counters, which.0);
        Ok(Counters {
            events: read(counter::COUNTER_EVENTS)?,
            ringbuf_drops: read(counter::COUNTER_RINGBUF_DROPS)?,
            map_full: read(counter::COUNTER_MAP_FULL)?,
            recursion_misses: self.recursion_misses()?,
        })
    }

    /// Sockets whose last transition time the kernel's map holds now (none
    /// unless the filter `tracks_in_kernel`). Walks the map: for -v, not for
    /// every read of the counters.
    pub fn sockets_tracked(&self) -> u64 {
        self.skel.maps.sockets.keys().count() as u64
    }

    /// Transitions no program handled: the main program's recursion misses,
    /// less those the tp_btf backup program handled.
    fn recursion_misses(&self) -> Result<u64> {
        let object = self.skel.object();
        let misses = |name: &str| recursion_misses(&program(object, name)?);
        Ok(match self.mode {
            // The backup's own misses are transitions the main program
            // handled: only the main one's count, less what the backup
            // caught, is lost.
            AttachMode::TpBtf => misses("handle_tp_btf")?.saturating_sub(sum_percpu(
                &self.skel.maps.counters,
                counter::COUNTER_NESTED.0,
            )?),
            mode => mode
                .programs()
                .iter()
                .map(|name| misses(name))
                .sum::<Result<u64>>()?,
        })
    }
}

/// The loaded program called `name`.
fn program<'obj>(
    object: &'obj libbpf_rs::Object,
    name: &str,
) -> Result<libbpf_rs::ProgramMut<'obj>> {
    object
        .progs_mut()
        .find(|prog| prog.name() == name)
        .with_context(|| format!("the BPF object has no program {name}"))
}

/// How often the kernel skipped `prog` because it was already running on
/// that CPU (Linux 5.12+; 0 before).
fn recursion_misses(prog: &libbpf_rs::ProgramMut<'_>) -> Result<u64> {
    let mut info = libbpf_rs::libbpf_sys::bpf_prog_info::default();
    let mut len = std::mem::size_of_val(&info) as u32;
    // SAFETY: the fd is the loaded program's, open while `prog` lives;
    // `info` is a zeroed bpf_prog_info of `len` bytes, which the kernel fills
    // (no pointer in it is set, so it writes nowhere else).
    let rc = unsafe {
        libbpf_rs::libbpf_sys::bpf_prog_get_info_by_fd(
            prog.as_fd().as_raw_fd(),
            &mut info,
            &mut len,
        )
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
/// enabled. Public so tests can check that a program passes the verifier
/// on a kernel where it cannot attach.
pub fn load(opts: &TracerOptions, mode: AttachMode) -> Result<TcpstatesSkel<'static>> {
    // The skeleton borrows its object storage for as long as it lives. Each
    // attempt gets its own: a failed one leaks this small allocation (its
    // object is closed), which happens at most once per attach mode.
    let storage: &'static mut MaybeUninit<OpenObject> = Box::leak(Box::new(MaybeUninit::uninit()));
    let mut builder = TcpstatesSkelBuilder::default();
    if let Some(btf) = &opts.btf {
        builder
            .obj_builder
            .btf_custom_path(btf)
            .with_context(|| format!("using BTF file {}", btf.display()))?;
    }
    let mut open = builder.open(storage).context("opening the BPF object")?;
    configure(&mut open, opts, mode)?;
    open.load()
        .with_context(|| format!("loading the {mode} program"))
}

fn configure(
    open: &mut OpenTcpstatesSkel<'_>,
    opts: &TracerOptions,
    mode: AttachMode,
) -> Result<()> {
    let filter = &opts.filter;
    let rodata = open
        .maps
        .rodata_data
        .as_deref_mut()
        .context("the BPF object has no read-only data section")?;
    rodata.target_family = filter.family.map_or(0, Family::af);
    rodata.filter_sport = !filter.local_ports.is_empty();
    rodata.filter_dport = !filter.remote_ports.is_empty();
    rodata.wakeup_bytes = opts.wakeup_bytes;
    let cpus = libbpf_rs::num_possible_cpus().context("counting the CPUs")?;
    rodata.wakeup_mask = wakeup_mask(opts.ringbuf_bytes, cpus);
    rodata.track_sockets = filter.tracks_in_kernel();
    // The helper types its result with the kernel's own BTF: a kernel
    // described by a --btf file has none to give.
    rodata.has_task_btf = Path::new(KERNEL_BTF).exists()
        && kernel_release().is_some_and(|version| version >= (5, 11));

    let maps = &mut open.maps;
    maps.events
        .set_max_entries(opts.ringbuf_bytes)
        .context("sizing the ring buffer")?;
    // Preallocated, so an unused map gets one entry.
    let sockets = if filter.tracks_in_kernel() {
        opts.max_sockets
    } else {
        1
    };
    maps.sockets
        .set_max_entries(sockets)
        .context("sizing the socket map")?;
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

    let wanted = mode.programs();
    for mut prog in open.open_object_mut().progs_mut() {
        if wanted.iter().any(|name| prog.name() == *name) {
            prog.set_autoload(true);
        }
    }
    Ok(())
}

/// With batched wakeups, each CPU looks at how much waits in the ring every
/// mask+1 events: at most 32, and few enough that the events between two
/// looks, on every CPU at once, take at most a sixteenth of the ring.
fn wakeup_mask(ringbuf_bytes: u32, cpus: usize) -> u32 {
    let record = (std::mem::size_of::<crate::bpf::types::event>() + 8) as u64;
    let fits = u64::from(ringbuf_bytes) / 16 / (record * cpus.max(1) as u64);
    let every = if fits == 0 { 1 } else { 1 << fits.ilog2() };
    every.min(32) - 1
}

/// The running kernel's major and minor version, from uname.
fn kernel_release() -> Option<(u32, u32)> {
    // SAFETY: uname fills the struct we own; all-zero bytes are a valid
    // utsname.
    let name = unsafe {
        let mut name: libc::utsname = std::mem::zeroed();
        (libc::uname(&mut name) == 0).then_some(name)
    }?;
    let release: Vec<u8> = name
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    parse_release(&String::from_utf8_lossy(&release))
}

/// "6.18.44-fc" -> (6, 18).
fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Reads slot `key` of a per-CPU array of u64 counters, summed over CPUs.
pub(crate) fn sum_percpu(map: &dyn MapCore, key: u32) -> Result<u64> {
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

/// What commonly stops `mode` from attaching on this host, if it applies.
fn attach_hint(mode: AttachMode) -> &'static str {
    match mode {
        AttachMode::Tracepoint
            if !Path::new("/sys/kernel/tracing/events").exists()
                && !Path::new("/sys/kernel/debug/tracing/events").exists() =>
        {
            " (tracefs is not mounted: mount -t tracefs nodev /sys/kernel/tracing)"
        }
        AttachMode::Kprobe if !Path::new("/sys/bus/event_source/devices/kprobe").exists() => {
            " (this kernel has no kprobes: CONFIG_KPROBES is off)"
        }
        _ => "",
    }
}

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Says plainly what is missing, instead of an EPERM from deep in libbpf.
fn check_privileges() -> Result<()> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let caps = effective_caps(&status).context("no CapEff line in /proc/self/status")?;
    if has_bpf_caps(caps) {
        Ok(())
    } else {
        bail!("needs root, or CAP_BPF and CAP_PERFMON (Linux 5.8+), or CAP_SYS_ADMIN")
    }
}

fn effective_caps(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

fn has_bpf_caps(caps: u64) -> bool {
    let has = |cap: u32| caps & (1 << cap) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))
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

    #[test]
    fn wakeup_looks() {
        assert_eq!(wakeup_mask(4 << 20, 2), 31);
        assert_eq!(wakeup_mask(4 << 20, 512), 3);
        assert_eq!(wakeup_mask(64 << 10, 2), 15);
        assert_eq!(wakeup_mask(4096, 2), 0);
        assert_eq!(wakeup_mask(4096, 1), 1);
    }

    #[test]
    fn kernel_releases() {
        assert_eq!(parse_release("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(parse_release("5.10.0-32-amd64"), Some((5, 10)));
        assert_eq!(parse_release("4.18.0-553.el8_10.x86_64"), Some((4, 18)));
        assert_eq!(parse_release("7.2"), Some((7, 2)));
        assert_eq!(parse_release("garbage"), None);
        assert_eq!(parse_release("6"), None);
    }

    #[test]
    fn capability_checks() {
        let status = "Name:\tx\nCapEff:\t000001fffeffffff\n";
        assert_eq!(effective_caps(status), Some(0x1fffeffffff));
        assert!(has_bpf_caps(0x1fffeffffff));
        assert!(has_bpf_caps(1 << CAP_SYS_ADMIN));
        assert!(has_bpf_caps((1 << CAP_BPF) | (1 << CAP_PERFMON)));
        assert!(!has_bpf_caps(1 << CAP_BPF));
        assert!(!has_bpf_caps(0));
        assert_eq!(effective_caps("Name:\tx\n"), None);
    }

    #[test]
    fn auto_tries_best_first() {
        assert_eq!(
            AttachRequest::Auto.candidates(),
            [
                AttachMode::TpBtf,
                AttachMode::Tracepoint,
                AttachMode::Kprobe
            ]
        );
        assert_eq!(
            AttachRequest::Only(AttachMode::Kprobe).candidates(),
            [AttachMode::Kprobe]
        );
        let order = vec![AttachMode::Kprobe, AttachMode::TpBtf];
        assert_eq!(AttachRequest::Order(order.clone()).candidates(), order);
    }
}
