//! What the host offers the tracer: capabilities, kernel release, BTF,
//! tracefs and kprobes. Reading these needs no privilege; the decisions
//! made from them are pure functions, unit-tested on fixed input.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::config::AttachMode;
use crate::plan::HostFacts;

/// The kernel's own BTF, which CO-RE reads unless `--btf` names a file.
pub const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Says plainly what is missing, instead of an EPERM from deep in libbpf.
pub fn check_privileges() -> Result<()> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let caps = effective_caps(&status).context("no CapEff line in /proc/self/status")?;
    match missing_caps(caps) {
        None => Ok(()),
        Some(missing) => bail!(
            "missing {missing}: needs root, or CAP_BPF and CAP_PERFMON (Linux 5.8+), \
             or CAP_SYS_ADMIN"
        ),
    }
}

/// Says what to do when the kernel has no BTF and no file was given.
pub fn check_btf(custom: Option<&Path>) -> Result<()> {
    if custom.is_none() && !has_kernel_btf() {
        bail!("this kernel has no BTF at {KERNEL_BTF}: pass --btf FILE");
    }
    Ok(())
}

/// Whether the running kernel describes itself in BTF.
pub fn has_kernel_btf() -> bool {
    Path::new(KERNEL_BTF).exists()
}

/// What the plan needs to know of this host.
pub fn facts() -> Result<HostFacts> {
    // SAFETY: sysconf has no preconditions.
    let (online, page) = unsafe {
        (
            libc::sysconf(libc::_SC_NPROCESSORS_ONLN),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let release = kernel_release();
    let at_least = |version| release.is_some_and(|r| r >= version);
    Ok(HostFacts {
        tracing_5_11: has_kernel_btf() && at_least((5, 11)),
        online_cpus: usize::try_from(online).unwrap_or(1).max(1),
        possible_cpus: libbpf_rs::num_possible_cpus().context("counting the CPUs")?,
        page_bytes: u32::try_from(page).unwrap_or(4096),
        percpu_lookup: at_least((5, 19)),
        socket_iterators: has_kernel_btf() && at_least((5, 9)),
        tcp_sockets: tcp_sockets().unwrap_or(0),
    })
}

/// TCP sockets allocated now, in every namespace (`alloc` in
/// /proc/net/sockstat, the kernel's one count of them).
fn tcp_sockets() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    parse_tcp_alloc(&text)
}

fn parse_tcp_alloc(sockstat: &str) -> Option<u64> {
    let line = sockstat.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = line.split_whitespace();
    words.find(|w| *w == "alloc")?;
    words.next()?.parse().ok()
}

/// The nice value of a stream run's threads: ahead of ordinary work, so
/// that the reader empties the ring buffer while the host is busiest (a
/// burst of closes, every CPU busy), yet below what the kernel's own
/// threads and real-time work run at.
pub const READER_NICE: libc::c_int = -10;

/// Raises this thread's priority to [`READER_NICE`] (threads started
/// after it inherit it). Needs CAP_SYS_NICE (root has it) or an
/// RLIMIT_NICE that allows it; the error says why not.
pub fn raise_priority() -> std::io::Result<()> {
    // SAFETY: gettid has no preconditions and cannot fail.
    let tid = unsafe { libc::gettid() };
    // SAFETY: setpriority takes plain integers; on Linux PRIO_PROCESS with
    // a thread id sets that thread's nice value.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, READER_NICE) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// What commonly stops `mode` from attaching on this host, if it applies.
pub fn attach_hint(mode: AttachMode) -> &'static str {
    let tracefs = Path::new("/sys/kernel/tracing/events").exists()
        || Path::new("/sys/kernel/debug/tracing/events").exists();
    let kprobes = Path::new("/sys/bus/event_source/devices/kprobe").exists();
    hint(mode, tracefs, kprobes)
}

fn hint(mode: AttachMode, tracefs: bool, kprobes: bool) -> &'static str {
    match mode {
        AttachMode::Tracepoint if !tracefs => {
            " (tracefs is not mounted: mount -t tracefs nodev /sys/kernel/tracing)"
        }
        AttachMode::Kprobe if !kprobes => " (this kernel has no kprobes: CONFIG_KPROBES is off)",
        _ => "",
    }
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

fn effective_caps(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// The capabilities a tracer lacks among CAP_BPF and CAP_PERFMON, named;
/// None when it has both, or CAP_SYS_ADMIN (which covers both).
fn missing_caps(caps: u64) -> Option<String> {
    let has = |cap: u32| caps & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) {
        return None;
    }
    let missing: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|&(cap, _)| !has(cap))
        .map(|(_, name)| name)
        .collect();
    (!missing.is_empty()).then(|| missing.join(" and "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_sockets_from_sockstat() {
        let text =
            "sockets: used 290\nTCP: inuse 7 orphan 0 tw 2 alloc 12 mem 1\nUDP: inuse 3 mem 2\n";
        assert_eq!(parse_tcp_alloc(text), Some(12));
        assert_eq!(parse_tcp_alloc("UDP: inuse 3\n"), None);
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
        assert_eq!(missing_caps(0x1fffeffffff), None);
        assert_eq!(missing_caps(1 << CAP_SYS_ADMIN), None);
        assert_eq!(missing_caps((1 << CAP_BPF) | (1 << CAP_PERFMON)), None);
        assert_eq!(missing_caps(1 << CAP_BPF).as_deref(), Some("CAP_PERFMON"));
        assert_eq!(missing_caps(1 << CAP_PERFMON).as_deref(), Some("CAP_BPF"));
        assert_eq!(missing_caps(0).as_deref(), Some("CAP_BPF and CAP_PERFMON"));
        assert_eq!(effective_caps("Name:\tx\n"), None);
    }

    #[test]
    fn hints_name_what_is_missing() {
        assert!(hint(AttachMode::Tracepoint, false, true).contains("mount -t tracefs"));
        assert_eq!(hint(AttachMode::Tracepoint, true, false), "");
        assert!(hint(AttachMode::Kprobe, true, false).contains("no kprobes"));
        assert_eq!(hint(AttachMode::Kprobe, false, true), "");
        assert_eq!(hint(AttachMode::TpBtf, false, false), "");
    }
}
