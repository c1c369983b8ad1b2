//! The snapshot from the kernel's socket diagnostics (`NETLINK_SOCK_DIAG`,
//! what `ss` uses), for kernels without socket iterators (before 5.9, or a
//! kernel described by `--btf`): each namespace's TCP sockets dumped by a
//! netlink socket opened in it, their holders from `/proc/*/fd`.
//!
//! A dump names a socket by its namespace and addresses (and inode), never
//! by its address in memory, and carries no time: the kernel side
//! (`diag_take` in `src/bpf/snapshot.bpf.h`) finds a socket's entry by the
//! same names at its first transition, and orders the two with a mark.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use super::Found;
use crate::event::{Owner, TcpState};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDRLEN: usize = 16;
/// `struct inet_diag_msg`: family, state, timer, retrans; the socket id
/// (ports, two 16-byte addresses, interface, cookie); expires, queues, uid,
/// inode.
const DIAG_MSG_LEN: usize = 72;
/// The timer inet_diag reports for a TIME_WAIT socket (whose state it gives
/// as the state its full socket ended in: FIN_WAIT2 for one).
const TIMER_TIME_WAIT: u8 = 3;

/// The full sockets' states asked for: all but CLOSE (not hashed),
/// TIME_WAIT and SYN_RECV (asking for it brings the request sockets, which
/// no traced transition makes or frees; a full socket in SYN_RECV, a Fast
/// Open child, is left out with them, and counted from its next
/// transition).
const STATES: u32 =
    (1 << 1) | (1 << 2) | (1 << 4) | (1 << 5) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 11);

/// A NETLINK_SOCK_DIAG socket of the namespace of the thread that opens it.
pub fn open() -> Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("opening a socket diagnostics socket");
    }
    // SAFETY: a new descriptor, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Every TCP socket of the namespace `netns` that `sock` (opened there)
/// belongs to, IPv4 then IPv6, each handed to `each` without a holder.
pub fn dump(sock: &OwnedFd, netns: u32, mut each: impl FnMut(Found)) -> Result<()> {
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        request(sock, family)?;
        receive(sock, |msg| {
            if let Some(found) = decode(msg, netns) {
                each(found);
            }
        })
        .with_context(|| {
            format!(
                "dumping the {} TCP sockets",
                if family == libc::AF_INET as u8 {
                    "IPv4"
                } else {
                    "IPv6"
                }
            )
        })?;
    }
    Ok(())
}

/// Sends the dump request for `family`'s TCP sockets.
fn request(sock: &OwnedFd, family: u8) -> Result<()> {
    let mut msg = Vec::with_capacity(NLMSG_HDRLEN + 56);
    let len = (NLMSG_HDRLEN + 56) as u32;
    msg.extend_from_slice(&len.to_ne_bytes());
    msg.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    // struct inet_diag_req_v2: family, protocol, extensions, pad, states,
    // then a socket id of zeros (48 bytes: no match on it).
    msg.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, 0, 0]);
    msg.extend_from_slice(&STATES.to_ne_bytes());
    msg.resize(len as usize, 0);
    // SAFETY: sends `msg.len()` bytes from a live buffer on an open socket
    // (the kernel's address: a zeroed sockaddr_nl).
    let sent = unsafe {
        let mut to: libc::sockaddr_nl = std::mem::zeroed();
        to.nl_family = libc::AF_NETLINK as u16;
        libc::sendto(
            sock.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            std::ptr::from_ref(&to).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error()).context("asking for the sockets");
    }
    Ok(())
}

/// Reads the dump's answers to its end, handing each socket's message
/// (after its netlink header) to `each`.
fn receive(sock: &OwnedFd, mut each: impl FnMut(&[u8])) -> Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        // SAFETY: reads at most `buf.len()` bytes into a live buffer.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err).context("reading the sockets");
        }
        let mut rest = &buf[..n as usize];
        while rest.len() >= NLMSG_HDRLEN {
            let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap_or_default()) as usize;
            let kind = u16::from_ne_bytes(rest[4..6].try_into().unwrap_or_default());
            if len < NLMSG_HDRLEN || len > rest.len() {
                bail!("a malformed netlink message ({len} bytes)");
            }
            let body = &rest[NLMSG_HDRLEN..len];
            match kind {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let code = body
                        .get(..4)
                        .map_or(0, |b| i32::from_ne_bytes(b.try_into().unwrap_or_default()));
                    if code == 0 {
                        return Ok(());
                    }
                    return Err(io::Error::from_raw_os_error(-code))
                        .context("the kernel refused the dump");
                }
                SOCK_DIAG_BY_FAMILY => each(body),
                _ => {}
            }
            rest = &rest[len.next_multiple_of(4).min(rest.len())..];
        }
    }
}

/// One `struct inet_diag_msg` as a socket found (None: too short, a
/// TIME_WAIT socket, a family not asked for).
fn decode(msg: &[u8], netns: u32) -> Option<Found> {
    if msg.len() < DIAG_MSG_LEN || msg[2] == TIMER_TIME_WAIT {
        return None;
    }
    let family = u16::from(msg[0]);
    let port = |at: usize| u16::from_be_bytes([msg[at], msg[at + 1]]);
    let addr = |at: usize| -> Option<IpAddr> {
        let bytes: [u8; 16] = msg[at..at + 16].try_into().ok()?;
        match i32::from(family) {
            libc::AF_INET => Some(IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])),
            libc::AF_INET6 => Some(IpAddr::from(bytes)),
            _ => None,
        }
    };
    let word = |at: usize| u32::from_ne_bytes(msg[at..at + 4].try_into().unwrap_or_default());
    Some(Found {
        skaddr: 0,
        ts_ns: 0,
        state: TcpState::from_raw(i32::from(msg[1])),
        netns,
        lport: port(4),
        rport: port(6),
        laddr: addr(8)?,
        raddr: addr(24)?,
        holder: None,
        seeded: false,
        since_ns: None,
        before_trace: false,
        inode: word(68),
    })
}

/// The first holder of each socket inode in `wanted`: the process of
/// lowest pid with it open (as the kernel's task walk finds it), from
/// `/proc/*/fd`, read by a few threads (each fd's link costs the kernel a
/// lookup: most of the time with many sockets).
pub fn holders(wanted: &HashSet<u32>) -> HashMap<u32, Owner> {
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4);
    let shares: Vec<Vec<u32>> = (0..threads)
        .map(|t| pids.iter().copied().skip(t).step_by(threads).collect())
        .collect();
    let found: Vec<HashMap<u32, Owner>> = std::thread::scope(|scope| {
        let readers: Vec<_> = shares
            .iter()
            .map(|share| scope.spawn(|| holders_among(share, wanted)))
            .collect();
        readers
            .into_iter()
            .map(|reader| reader.join().unwrap_or_default())
            .collect()
    });
    let mut all = HashMap::with_capacity(wanted.len());
    for share in found {
        for (inode, owner) in share {
            all.entry(inode)
                .and_modify(|first: &mut Owner| {
                    if owner.pid < first.pid {
                        *first = owner;
                    }
                })
                .or_insert(owner);
        }
    }
    all
}

/// The first holder among the processes `pids` (ascending) of each socket
/// inode in `wanted`.
fn holders_among(pids: &[u32], wanted: &HashSet<u32>) -> HashMap<u32, Owner> {
    let mut found = HashMap::new();
    let mut groups = GroupIds::new();
    let mut link = [0u8; 64];
    for &pid in pids {
        let path = format!("/proc/{pid}/fd");
        let (Ok(fds), Ok(dir)) = (std::fs::read_dir(&path), std::fs::File::open(&path)) else {
            continue;
        };
        let mut owner = None;
        for fd in fds.flatten() {
            let Some(inode) = read_link_at(&dir, &fd.file_name(), &mut link).and_then(socket_inode)
            else {
                continue;
            };
            if !wanted.contains(&inode) || found.contains_key(&inode) {
                continue;
            }
            let Some(owner) = *owner.get_or_insert_with(|| process(pid, &mut groups)) else {
                break;
            };
            found.insert(inode, owner);
        }
    }
    found
}

/// The target of the link `name` in the folder `dir` (into `buf`; None if
/// it is gone or longer).
fn read_link_at<'a>(
    dir: &std::fs::File,
    name: &std::ffi::OsStr,
    buf: &'a mut [u8],
) -> Option<&'a [u8]> {
    let name = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(name)).ok()?;
    // SAFETY: readlinkat reads a NUL-terminated name relative to an open
    // folder and writes at most `buf.len()` bytes into a live buffer.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    let n = usize::try_from(n).ok()?;
    (n < buf.len()).then(|| &buf[..n])
}

/// The inode of a `socket:[N]` link.
fn socket_inode(link: &[u8]) -> Option<u32> {
    std::str::from_utf8(link.strip_prefix(b"socket:[")?.strip_suffix(b"]")?)
        .ok()?
        .parse()
        .ok()
}

/// Process `pid` as an owner: its name, real uid and cgroup v2 id (None:
/// it is gone).
fn process(pid: u32, groups: &mut GroupIds) -> Option<Owner> {
    let name = std::fs::read(format!("/proc/{pid}/comm")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let uid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().next()?.parse().ok())?;
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let cgroup_id = cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map_or(0, |path| groups.id(path));
    let mut comm = [0u8; 16];
    let name = name.strip_suffix(b"\n").unwrap_or(&name);
    let n = name.len().min(15);
    comm[..n].copy_from_slice(&name[..n]);
    Some(Owner {
        pid,
        uid,
        cgroup_id,
        comm,
    })
}

/// cgroup v2 ids by path (the inode of the group's folder).
struct GroupIds {
    mount: Option<PathBuf>,
    ids: HashMap<String, u64>,
}

impl GroupIds {
    fn new() -> Self {
        Self {
            mount: crate::cgroup::cgroup2_mount(),
            ids: HashMap::new(),
        }
    }

    fn id(&mut self, path: &str) -> u64 {
        let Some(mount) = &self.mount else {
            return 0;
        };
        *self.ids.entry(path.to_owned()).or_insert_with(|| {
            std::fs::metadata(mount.join(path.trim_start_matches('/'))).map_or(0, |m| m.ino())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(family: u8, state: u8, timer: u8) -> Vec<u8> {
        let mut m = vec![family, state, timer, 0];
        m.extend_from_slice(&8080u16.to_be_bytes());
        m.extend_from_slice(&40000u16.to_be_bytes());
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        if family == libc::AF_INET as u8 {
            src[..4].copy_from_slice(&[127, 0, 0, 1]);
            dst[..4].copy_from_slice(&[127, 0, 0, 2]);
        } else {
            src[15] = 1;
            dst[15] = 2;
        }
        m.extend_from_slice(&src);
        m.extend_from_slice(&dst);
        m.resize(68, 0);
        m.extend_from_slice(&4242u32.to_ne_bytes());
        m
    }

    #[test]
    fn a_message_is_a_socket_found() {
        let f = decode(&message(libc::AF_INET as u8, 8, 0), 7).unwrap();
        assert_eq!(
            (f.state, f.netns, f.lport, f.rport, f.inode),
            (TcpState::CloseWait, 7, 8080, 40000, 4242)
        );
        assert_eq!(f.laddr, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(f.raddr, IpAddr::from([127, 0, 0, 2]));
        assert_eq!(f.skaddr, 0, "the dump does not know it");
        let f = decode(&message(libc::AF_INET6 as u8, 10, 0), 7).unwrap();
        assert_eq!(f.laddr, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(f.state, TcpState::Listen);
    }

    #[test]
    fn time_wait_sockets_and_short_messages_are_not_sockets_found() {
        // A TIME_WAIT socket in its FIN_WAIT2 substate.
        assert!(decode(&message(libc::AF_INET as u8, 5, TIMER_TIME_WAIT), 7).is_none());
        assert!(decode(&message(libc::AF_INET as u8, 5, 0)[..40], 7).is_none());
        assert!(decode(&message(99, 1, 0), 7).is_none());
    }

    #[test]
    fn socket_links_name_their_inode() {
        assert_eq!(socket_inode(b"socket:[123]"), Some(123));
        assert_eq!(socket_inode(b"pipe:[123]"), None);
        assert_eq!(socket_inode(b"/dev/null"), None);
        assert_eq!(socket_inode(b"socket:[]"), None);
    }
}
