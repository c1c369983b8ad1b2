//! The systemd journal (`-Y`): each transition as one structured entry,
//! through the journal's native protocol (a datagram per entry on
//! /run/systemd/journal/socket; an entry too large for a datagram goes in a
//! sealed memfd whose descriptor is sent instead, as sd_journal_sendv
//! does). No libsystemd: the protocol is a few lines.
//!
//! The fields are BCC tcpstates.py's `-Y` fields, so existing journal
//! queries keep working, and some of this tool's own as `TCPSTATES_*`.
//! Entries are framed here (a pure [`LineFormat`]) and sent by the writer
//! thread, so a journal that is slow to take them does not stop the reader.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::Path;

use super::LineFormat;
use super::closes::{push_cause, push_states};
use super::number::{push_hex, push_ip, push_micros, push_u64};
use crate::clock::EventClock;
use crate::close::Close;
use crate::event::{Event, Owner};
use crate::identity::Identity;

/// Where journald listens for native messages.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Names another socket, for a journal that listens elsewhere (a
/// container's mount, a test).
pub const JOURNAL_SOCKET_ENV: &str = "TCPSTATES_JOURNAL_SOCKET";

/// The journal's socket: [`JOURNAL_SOCKET`] unless [`JOURNAL_SOCKET_ENV`]
/// names another.
pub fn socket_path() -> std::path::PathBuf {
    std::env::var_os(JOURNAL_SOCKET_ENV)
        .map_or_else(|| JOURNAL_SOCKET.into(), std::path::PathBuf::from)
}

/// Frames one entry per event: a native-protocol entry after its length
/// (u32, native order), for [`JournalOut`] to send as one datagram.
#[derive(Debug, Clone)]
pub struct JournalFormat {
    /// Whether to send OBJECT_COMM: BCC leaves it out when run as root,
    /// since journald then adds it itself (from OBJECT_PID).
    object_comm: bool,
}

impl JournalFormat {
    /// Entries as a process with effective uid `euid` should send them.
    pub fn new(euid: u32) -> Self {
        Self {
            object_comm: euid != 0,
        }
    }
}

impl LineFormat for JournalFormat {
    fn header(&mut self, _out: &mut Vec<u8>) {}

    fn record(&mut self, out: &mut Vec<u8>, ev: &Event, clock: &mut EventClock) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        write_entry(out, ev, clock.unix_ns(ev.ts_ns), self.object_comm);
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }
}

impl LineFormat<Close> for JournalFormat {
    fn header(&mut self, _out: &mut Vec<u8>) {}

    fn record(&mut self, out: &mut Vec<u8>, c: &Close, clock: &mut EventClock) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        write_close_entry(out, c, clock.unix_ns(c.ts_ns));
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }
}

/// Appends the entry for the close record `c`, made at `unix_ns`: the
/// MESSAGE a person reads (`curl 127.0.0.1 41234 → 127.0.0.1 8080 client
/// normal:local-first 12.345 ms`), and a field for each part, each counter
/// present only where the kernel has it.
pub fn write_close_entry(out: &mut Vec<u8>, c: &Close, unix_ns: i128) {
    let ip = if c.laddr.is_ipv4() { "IPV4" } else { "IPV6" };
    let owner_comm = c.owner.map(|o| o.comm().into_owned());
    let mut message = Vec::with_capacity(160);
    message.extend_from_slice(owner_comm.as_deref().unwrap_or("-").as_bytes());
    message.push(b' ');
    push_ip(&mut message, c.laddr);
    message.push(b' ');
    push_u64(&mut message, c.lport.into());
    message.extend_from_slice(" → ".as_bytes());
    push_ip(&mut message, c.raddr);
    message.push(b' ');
    push_u64(&mut message, c.rport.into());
    message.push(b' ');
    message.extend_from_slice(c.role.name().as_bytes());
    message.push(b' ');
    push_cause(&mut message, c);
    if let Some(ns) = c.lifetime_ns {
        message.push(b' ');
        push_micros(&mut message, ns, 3);
        message.extend_from_slice(b" ms");
    }
    field(out, "MESSAGE", &message);
    // Failures at warning, the rest as transitions are.
    let failed = crate::close::Cause::FAILED.contains(&c.cause);
    field(out, "PRIORITY", if failed { b"4" } else { b"5" });
    field(out, "SYSLOG_IDENTIFIER", b"tcpstates");
    let mut addr = Vec::with_capacity(40);
    push_ip(&mut addr, c.laddr);
    field(out, &format!("OBJECT_{ip}_SOURCE_ADDRESS"), &addr);
    number(out, "OBJECT_TCP_SOURCE_PORT", c.lport.into());
    addr.clear();
    push_ip(&mut addr, c.raddr);
    field(out, &format!("OBJECT_{ip}_DESTINATION_ADDRESS"), &addr);
    number(out, "OBJECT_TCP_DESTINATION_PORT", c.rport.into());
    let micros = u64::try_from(unix_ns.div_euclid(1000)).unwrap_or(0);
    number(out, "TCPSTATES_REALTIME_USEC", micros);
    let mut text = Vec::with_capacity(64);
    push_hex(&mut text, c.skaddr);
    field(out, "TCPSTATES_SKADDR", &text);
    field(out, "TCPSTATES_ROLE", c.role.name().as_bytes());
    field(out, "TCPSTATES_CAUSE", c.cause.name().as_bytes());
    if c.detail != crate::close::Detail::None {
        field(out, "TCPSTATES_CAUSE_DETAIL", c.detail.name().as_bytes());
    }
    if let Some(name) = c.error_name() {
        field(out, "TCPSTATES_ERROR", name.as_bytes());
    }
    match c.lifetime_ns {
        Some(ns) => number(out, "TCPSTATES_LIFETIME_NS", ns),
        None => field(out, "TCPSTATES_LIFETIME_NS", b"unknown"),
    }
    text.clear();
    push_states(&mut text, c);
    field(out, "TCPSTATES_STATES", &text);
    for (name, value) in c.counters.named() {
        if let Some(value) = value {
            number(
                out,
                &format!("TCPSTATES_{}", name.to_ascii_uppercase()),
                value,
            );
        }
    }
    number(out, "TCPSTATES_NETNS", c.netns.into());
    number(out, "TCPSTATES_CPU_PID", c.pid.into());
    owner_fields(
        out,
        c.owner.as_ref(),
        c.cgroup.as_deref(),
        c.identity.as_deref(),
    );
}

/// Appends the entry for `ev`, which happened at `unix_ns`.
pub fn write_entry(out: &mut Vec<u8>, ev: &Event, unix_ns: i128, object_comm: bool) {
    let comm = ev.comm();
    let ip = if ev.laddr.is_ipv4() { "IPV4" } else { "IPV6" };
    // MESSAGE: `<comm> <saddr> <sport> → <daddr> <dport> <OLD> → <NEW>`.
    let mut message = Vec::with_capacity(128);
    message.extend_from_slice(comm.as_bytes());
    message.push(b' ');
    push_ip(&mut message, ev.laddr);
    message.push(b' ');
    push_u64(&mut message, ev.lport.into());
    message.extend_from_slice(" → ".as_bytes());
    push_ip(&mut message, ev.raddr);
    message.push(b' ');
    push_u64(&mut message, ev.rport.into());
    message.push(b' ');
    ev.old.text().write(&mut message);
    if ev.stuck {
        // Not a transition: `<OLD> stuck for [>]<ms> ms`.
        message.extend_from_slice(b" stuck for ");
        let (ms, at_least) = match (ev.duration_ns, ev.at_least_ns) {
            (Some(ns), _) => (ns, false),
            (None, ns) => (ns.unwrap_or(0), true),
        };
        if at_least {
            message.push(b'>');
        }
        push_u64(&mut message, ms / 1_000_000);
        message.extend_from_slice(b" ms");
    } else {
        message.extend_from_slice(" → ".as_bytes());
        ev.new.text().write(&mut message);
    }
    field(out, "MESSAGE", &message);
    if ev.stuck {
        field(out, "TCPSTATES_STUCK", b"1");
    }
    field(out, "PRIORITY", b"5");
    field(out, "SYSLOG_IDENTIFIER", b"tcpstates");
    number(out, "OBJECT_PID", ev.pid.into());
    if object_comm {
        field(out, "OBJECT_COMM", comm.as_bytes());
    }
    let mut addr = Vec::with_capacity(40);
    push_ip(&mut addr, ev.laddr);
    field(out, &format!("OBJECT_{ip}_SOURCE_ADDRESS"), &addr);
    number(out, "OBJECT_TCP_SOURCE_PORT", ev.lport.into());
    addr.clear();
    push_ip(&mut addr, ev.raddr);
    field(out, &format!("OBJECT_{ip}_DESTINATION_ADDRESS"), &addr);
    number(out, "OBJECT_TCP_DESTINATION_PORT", ev.rport.into());
    let mut state = Vec::with_capacity(16);
    ev.old.text().write(&mut state);
    field(out, "OBJECT_TCP_OLD_STATE", &state);
    state.clear();
    ev.new.text().write(&mut state);
    field(out, "OBJECT_TCP_NEW_STATE", &state);
    if let Some(ns) = ev.duration_ns {
        // BCC writes whole microseconds.
        number(out, "OBJECT_TCP_SPAN_TIME", ns / 1000);
    }
    // The kernel's event time. Not as _SOURCE_REALTIME_TIMESTAMP, as BCC
    // sends it: journald drops fields a client starts with '_' (they are
    // its own) and sets that one from the datagram's arrival.
    let micros = u64::try_from(unix_ns.div_euclid(1000)).unwrap_or(0);
    number(out, "TCPSTATES_REALTIME_USEC", micros);
    let mut hex = Vec::with_capacity(16);
    push_hex(&mut hex, ev.skaddr);
    field(out, "TCPSTATES_SKADDR", &hex);
    field(out, "TCPSTATES_COMM", comm.as_bytes());
    number(out, "TCPSTATES_NETNS", ev.netns.into());
    match (ev.duration_ns, ev.at_least_ns) {
        (Some(ns), _) => number(out, "TCPSTATES_SPAN_NS", ns),
        // In the state since before the trace: at least this long.
        (None, Some(ns)) => {
            number(out, "TCPSTATES_SPAN_NS", ns);
            field(out, "TCPSTATES_SPAN_AT_LEAST", b"1");
        }
        (None, None) => field(out, "TCPSTATES_SPAN_NS", b"unknown"),
    }
    owner_fields(
        out,
        ev.owner.as_ref(),
        ev.cgroup.as_deref(),
        ev.identity.as_deref(),
    );
}

/// The owner, its cgroup path and its unit, container and pod, each field
/// present only when known.
fn owner_fields(
    out: &mut Vec<u8>,
    owner: Option<&Owner>,
    cgroup: Option<&str>,
    identity: Option<&Identity>,
) {
    if let Some(owner) = owner {
        number(out, "TCPSTATES_OWNER_PID", owner.pid.into());
        field(out, "TCPSTATES_OWNER_COMM", owner.comm().as_bytes());
        number(out, "TCPSTATES_OWNER_UID", owner.uid.into());
    }
    if let Some(path) = cgroup {
        field(out, "TCPSTATES_CGROUP", path.as_bytes());
    }
    if let Some(id) = identity {
        identity_fields(out, id);
    }
}

/// The owner's unit, container and pod, each field present only when known.
fn identity_fields(out: &mut Vec<u8>, id: &Identity) {
    let mut text = |name: &str, value: Option<&str>| {
        if let Some(value) = value {
            field(out, name, value.as_bytes());
        }
    };
    text("TCPSTATES_UNIT", id.unit.as_deref());
    text(
        "TCPSTATES_USER_UNIT",
        id.user_unit.as_ref().map(|(_, u)| u.as_str()),
    );
    if let Some(c) = &id.container {
        text("TCPSTATES_CONTAINER_RUNTIME", Some(c.runtime.name()));
        text("TCPSTATES_CONTAINER_ID", Some(&c.id));
        text("TCPSTATES_CONTAINER_NAME", c.name.as_deref());
    }
    if let Some(p) = &id.pod {
        text("TCPSTATES_POD_UID", Some(&p.uid));
        text("TCPSTATES_POD_NAMESPACE", p.namespace.as_deref());
        text("TCPSTATES_POD_NAME", p.name.as_deref());
        text("TCPSTATES_POD_CONTAINER", p.container.as_deref());
    }
}

fn number(out: &mut Vec<u8>, name: &str, value: u64) {
    out.extend_from_slice(name.as_bytes());
    out.push(b'=');
    push_u64(out, value);
    out.push(b'\n');
}

/// One field: `NAME=value\n`, or, for a value with a newline, the binary
/// form `NAME\n`, its length as a little-endian u64, the value, `\n`.
fn field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    if value.contains(&b'\n') {
        out.push(b'\n');
        out.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        out.push(b'=');
    }
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// Sends framed entries to journald, one datagram each.
pub struct JournalOut {
    socket: UnixDatagram,
}

impl JournalOut {
    /// Connects to the journal at `path`; fails at once when nothing
    /// listens there.
    pub fn connect(path: &Path) -> io::Result<Self> {
        let socket = UnixDatagram::unbound()?;
        socket.connect(path)?;
        Ok(Self { socket })
    }

    /// Sends one entry: as a datagram, or, too large for one, in a memfd.
    pub fn send_entry(&self, entry: &[u8]) -> io::Result<()> {
        match self.socket.send(entry) {
            Ok(_) => Ok(()),
            Err(err) if err.raw_os_error() == Some(libc::EMSGSIZE) => self.send_memfd(entry),
            Err(err) => Err(err),
        }
    }

    /// The entry in a sealed memfd, whose descriptor goes in an otherwise
    /// empty datagram (SCM_RIGHTS): journald reads the entry from it.
    fn send_memfd(&self, entry: &[u8]) -> io::Result<()> {
        // SAFETY: a C string and flags; returns a new descriptor or -1.
        let fd = unsafe {
            libc::memfd_create(
                c"tcpstates-journal".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: just created, owned by nothing else.
        let memfd = unsafe { OwnedFd::from_raw_fd(fd) };
        std::fs::File::from(memfd.try_clone()?).write_all(entry)?;
        let seals =
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
        // SAFETY: fcntl on a descriptor we own.
        if unsafe { libc::fcntl(memfd.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
            return Err(io::Error::last_os_error());
        }
        send_fd(&self.socket, &memfd)
    }
}

/// Sends `fd` over `socket` in an empty datagram.
fn send_fd(socket: &UnixDatagram, fd: &OwnedFd) -> io::Result<()> {
    let raw = fd.as_raw_fd();
    // SAFETY: CMSG_SPACE is a size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: a zeroed msghdr is valid; it points at `control`, which lives
    // until sendmsg returns and is large enough for one SCM_RIGHTS message
    // of one descriptor (CMSG_SPACE above), which CMSG_FIRSTHDR and
    // CMSG_DATA address inside it.
    let rc = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), raw);
        libc::sendmsg(socket.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Write for JournalOut {
    /// Takes whole frames (the writer thread hands over whole chunks, which
    /// hold whole frames) and sends each entry.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut rest = buf;
        while rest.len() >= 4 {
            let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let entry = rest
                .get(4..4 + len)
                .ok_or_else(|| io::Error::other("a journal entry was cut"))?;
            self.send_entry(entry)?;
            rest = &rest[4 + len..];
        }
        if !rest.is_empty() {
            return Err(io::Error::other("a journal entry was cut"));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::tests::raw_v4;

    fn fields(entry: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        let mut rest = entry;
        while !rest.is_empty() {
            let nl = rest.iter().position(|&b| b == b'\n').unwrap();
            let line = &rest[..nl];
            if let Some(eq) = line.iter().position(|&b| b == b'=') {
                out.push((
                    String::from_utf8(line[..eq].to_vec()).unwrap(),
                    line[eq + 1..].to_vec(),
                ));
                rest = &rest[nl + 1..];
            } else {
                let name = String::from_utf8(line.to_vec()).unwrap();
                let len = u64::from_le_bytes(rest[nl + 1..nl + 9].try_into().unwrap()) as usize;
                out.push((name, rest[nl + 9..nl + 9 + len].to_vec()));
                assert_eq!(rest[nl + 9 + len], b'\n');
                rest = &rest[nl + 10 + len..];
            }
        }
        out
    }

    fn get<'a>(fields: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a str> {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| std::str::from_utf8(v).unwrap())
    }

    #[test]
    fn bcc_fields_and_ours() {
        let ev = Event::from_raw(&raw_v4()).unwrap();
        let mut out = Vec::new();
        write_entry(&mut out, &ev, 1_795_996_798_123_456_789, true);
        let f = fields(&out);
        assert_eq!(
            get(&f, "MESSAGE"),
            Some("python3 127.0.0.1 48792 → 10.1.2.3 80 SYN_SENT → ESTABLISHED")
        );
        for (name, value) in [
            ("PRIORITY", "5"),
            ("SYSLOG_IDENTIFIER", "tcpstates"),
            ("OBJECT_PID", "9376"),
            ("OBJECT_COMM", "python3"),
            ("OBJECT_IPV4_SOURCE_ADDRESS", "127.0.0.1"),
            ("OBJECT_TCP_SOURCE_PORT", "48792"),
            ("OBJECT_IPV4_DESTINATION_ADDRESS", "10.1.2.3"),
            ("OBJECT_TCP_DESTINATION_PORT", "80"),
            ("OBJECT_TCP_OLD_STATE", "SYN_SENT"),
            ("OBJECT_TCP_NEW_STATE", "ESTABLISHED"),
            ("OBJECT_TCP_SPAN_TIME", "271"),
            ("TCPSTATES_REALTIME_USEC", "1795996798123456"),
            ("TCPSTATES_SKADDR", "ffff8881043b9280"),
            ("TCPSTATES_COMM", "python3"),
            ("TCPSTATES_NETNS", "0"),
            ("TCPSTATES_SPAN_NS", "271456"),
        ] {
            assert_eq!(get(&f, name), Some(value), "{name}");
        }
        assert_eq!(f.len(), 17);
    }

    #[test]
    fn the_owners_unit_container_and_pod_when_known() {
        let id = "8450f1dc0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5";
        let mut ev = Event::from_raw(&raw_v4()).unwrap();
        let mut identity = Identity::parse(&format!(
            "/kubepods/pod1b2c3d4e-5f60-4a7b-8c9d-0e1f2a3b4c5d/crio-{id}"
        ));
        identity.pod.as_mut().unwrap().name = Some("cart-0".into());
        ev.identity = Some(identity.into());
        let mut out = Vec::new();
        write_entry(&mut out, &ev, 0, true);
        let f = fields(&out);
        for (name, value) in [
            ("TCPSTATES_CONTAINER_RUNTIME", Some("crio")),
            ("TCPSTATES_CONTAINER_ID", Some(id)),
            ("TCPSTATES_CONTAINER_NAME", None),
            (
                "TCPSTATES_POD_UID",
                Some("1b2c3d4e-5f60-4a7b-8c9d-0e1f2a3b4c5d"),
            ),
            ("TCPSTATES_POD_NAME", Some("cart-0")),
            ("TCPSTATES_POD_NAMESPACE", None),
            ("TCPSTATES_UNIT", None),
        ] {
            assert_eq!(get(&f, name), value, "{name}");
        }
        ev.identity = Some(Identity::parse("/system.slice/nginx.service").into());
        let mut out = Vec::new();
        write_entry(&mut out, &ev, 0, true);
        let f = fields(&out);
        assert_eq!(get(&f, "TCPSTATES_UNIT"), Some("nginx.service"));
        assert_eq!(get(&f, "TCPSTATES_CONTAINER_ID"), None);
    }

    #[test]
    fn a_lower_bound_is_marked() {
        let mut ev = Event::from_raw(&raw_v4()).unwrap();
        ev.duration_ns = None;
        ev.at_least_ns = Some(5_000);
        let mut out = Vec::new();
        write_entry(&mut out, &ev, 0, false);
        let f = fields(&out);
        assert_eq!(get(&f, "TCPSTATES_SPAN_NS"), Some("5000"));
        assert_eq!(get(&f, "TCPSTATES_SPAN_AT_LEAST"), Some("1"));
        assert_eq!(get(&f, "OBJECT_TCP_SPAN_TIME"), None);
    }

    #[test]
    fn unknown_span_is_absent_and_root_leaves_object_comm_to_journald() {
        let mut ev = Event::from_raw(&raw_v4()).unwrap();
        ev.duration_ns = None;
        ev.laddr = "::1".parse().unwrap();
        ev.raddr = "::1".parse().unwrap();
        let mut out = Vec::new();
        write_entry(&mut out, &ev, 0, false);
        let f = fields(&out);
        assert_eq!(get(&f, "OBJECT_TCP_SPAN_TIME"), None);
        assert_eq!(get(&f, "OBJECT_COMM"), None);
        assert_eq!(get(&f, "TCPSTATES_SPAN_NS"), Some("unknown"));
        assert_eq!(get(&f, "OBJECT_IPV6_SOURCE_ADDRESS"), Some("::1"));
        assert_eq!(get(&f, "OBJECT_IPV4_SOURCE_ADDRESS"), None);
    }

    #[test]
    fn a_name_with_a_newline_takes_the_binary_form() {
        let mut ev = Event::from_raw(&raw_v4()).unwrap();
        ev.comm = [0; 16];
        ev.comm[..5].copy_from_slice(b"a\nb=c");
        let mut out = Vec::new();
        write_entry(&mut out, &ev, 0, true);
        let f = fields(&out);
        assert_eq!(get(&f, "OBJECT_COMM"), Some("a\nb=c"));
        assert!(get(&f, "MESSAGE").unwrap().starts_with("a\nb=c 127.0.0.1"));
    }

    #[test]
    fn frames_split_into_entries() {
        let (a, b) = UnixDatagram::pair().unwrap();
        let mut out = JournalOut { socket: a };
        let mut format = JournalFormat::new(1000);
        let mut clock = EventClock::with_offset(0);
        let ev = Event::from_raw(&raw_v4()).unwrap();
        let mut frames = Vec::new();
        format.record(&mut frames, &ev, &mut clock);
        format.record(&mut frames, &ev, &mut clock);
        out.write_all(&frames).unwrap();
        let mut buf = vec![0u8; 4096];
        for _ in 0..2 {
            let n = b.recv(&mut buf).unwrap();
            assert!(fields(&buf[..n]).iter().any(|(k, _)| k == "MESSAGE"));
        }
        assert!(
            out.write(&frames[..frames.len() - 1]).is_err(),
            "a cut frame"
        );
    }

    #[test]
    fn an_entry_too_large_for_a_datagram_goes_in_a_memfd() {
        let (a, b) = UnixDatagram::pair().unwrap();
        let out = JournalOut { socket: a };
        let entry = vec![b'x'; 4 << 20];
        out.send_entry(&entry).unwrap();
        // What arrives is an empty datagram with a descriptor.
        let mut buf = [0u8; 16];
        let mut control = [0u8; 64];
        // SAFETY: a zeroed msghdr pointing at our buffers, which outlive the
        // call; the descriptor received is read from the control message.
        let (n, fd) = unsafe {
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = control.len() as _;
            let n = libc::recvmsg(b.as_raw_fd(), &mut msg, 0);
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            assert!(!cmsg.is_null());
            (
                n,
                std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>()),
            )
        };
        assert_eq!(n, 0);
        // SAFETY: the descriptor was just received and is ours.
        let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        assert_eq!(file.metadata().unwrap().len(), entry.len() as u64);
    }

    #[test]
    fn a_close_record_is_one_entry_with_its_cause_and_counters() {
        let mut raw = crate::close::tests::raw_client();
        raw.present &= !crate::bpf::types::close_counters::HAS_RTT_MIN.0;
        let c = crate::close::tests::close_of(&raw);
        let mut out = Vec::new();
        write_close_entry(&mut out, &c, 1_700_000_000_000_000_000);
        let f = fields(&out);
        assert_eq!(
            get(&f, "MESSAGE"),
            Some("curl 127.0.0.1 41234 → 127.0.0.2 8080 client normal:local-first 12.345 ms")
        );
        assert_eq!(get(&f, "PRIORITY"), Some("5"));
        assert_eq!(get(&f, "TCPSTATES_CAUSE"), Some("normal"));
        assert_eq!(get(&f, "TCPSTATES_CAUSE_DETAIL"), Some("local-first"));
        assert_eq!(get(&f, "TCPSTATES_ROLE"), Some("client"));
        assert_eq!(get(&f, "TCPSTATES_LIFETIME_NS"), Some("12345000"));
        assert_eq!(get(&f, "TCPSTATES_BYTES_ACKED"), Some("1000"));
        assert_eq!(get(&f, "TCPSTATES_RTT_MIN_US"), None, "absent, not zero");
        assert_eq!(get(&f, "TCPSTATES_ERROR"), None);
        assert_eq!(
            get(&f, "TCPSTATES_STATES"),
            Some("CLOSE:- SYN_SENT:0.051 ESTABLISHED:12.203 FIN_WAIT1:0.010 FIN_WAIT2:0.020 CLOSE")
        );
        assert_eq!(get(&f, "TCPSTATES_OWNER_PID"), Some("4711"));
        raw.cause = crate::close::Cause::Refused as u8;
        raw.error = libc::ECONNREFUSED;
        let mut out = Vec::new();
        write_close_entry(&mut out, &crate::close::tests::close_of(&raw), 0);
        let f = fields(&out);
        assert_eq!(get(&f, "PRIORITY"), Some("4"), "failures are warnings");
        assert_eq!(get(&f, "TCPSTATES_ERROR"), Some("ECONNREFUSED"));
    }
}
