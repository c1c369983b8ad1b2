//! A second network namespace, held by a thread of the test (it needs no
//! `ip` command: the kernel matrix's guests have none), and the kernel's
//! own listing of a namespace's TCP sockets by state, the one `ss -tan`
//! shows.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc::{Sender, channel};
use std::thread::JoinHandle;

type Job = Box<dyn FnOnce() + Send>;

/// A new network namespace with its loopback up, in which a thread runs
/// what it is given: sockets it makes belong to the namespace.
pub struct Namespace {
    /// The namespace's inode (what `--netns` takes).
    pub inode: u32,
    /// A path that names it while it lives (its thread's).
    pub path: PathBuf,
    jobs: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Namespace {
    /// Makes the namespace and its thread.
    pub fn new() -> io::Result<Self> {
        let (jobs, inbox) = channel::<Job>();
        let (ready, told) = channel::<io::Result<(u32, PathBuf)>>();
        let thread = std::thread::spawn(move || {
            let entered = enter_new().map(|inode| {
                // SAFETY: gettid has no preconditions.
                let tid = unsafe { libc::gettid() };
                (
                    inode,
                    PathBuf::from(format!("/proc/self/task/{tid}/ns/net")),
                )
            });
            let ok = entered.is_ok();
            let _ = ready.send(entered);
            if ok {
                for job in inbox {
                    job();
                }
            }
        });
        let (inode, path) = told
            .recv()
            .map_err(|_| io::Error::other("the namespace's thread ended"))??;
        Ok(Self {
            inode,
            path,
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Runs `f` in the namespace and returns what it returns.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (done, result) = channel();
        let job: Job = Box::new(move || {
            let _ = done.send(f());
        });
        self.jobs
            .as_ref()
            .expect("the namespace lives")
            .send(job)
            .expect("the namespace's thread takes jobs");
        result.recv().expect("the namespace's thread answers")
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Moves this thread into a new network namespace and brings its loopback
/// up; returns the namespace's inode.
fn enter_new() -> io::Result<u32> {
    // SAFETY: unshare changes only this thread's namespace (threads do not
    // share network namespaces with CLONE_NEWNET alone).
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    loopback_up()?;
    let meta = std::fs::metadata("/proc/thread-self/ns/net")?;
    Ok(std::os::unix::fs::MetadataExt::ino(&meta) as u32)
}

fn loopback_up() -> io::Result<()> {
    // SAFETY: a plain socket() call; the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: ifreq is plain data; the ioctls read the name and write the
    // flags of the interface named, in memory we own.
    let result = unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) != 0 {
            Err(io::Error::last_os_error())
        } else {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            if libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) != 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        }
    };
    // SAFETY: our own descriptor.
    unsafe { libc::close(fd) };
    result
}

/// TCP sockets by state name (as tcpstates names them) in the calling
/// thread's namespace, from the kernel's /proc listing (what `ss -tan`
/// shows), TIME_WAIT sockets left out (a TIME_WAIT socket shows the state
/// it ended in: FIN_WAIT2 for an orphan that timed out; its timer says
/// which it is).
pub fn tcp_states_here() -> BTreeMap<String, u64> {
    let mut states = BTreeMap::new();
    for table in ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"] {
        let text =
            std::fs::read_to_string(table).unwrap_or_else(|e| panic!("reading {table}: {e}"));
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(state), Some(timer)) = (fields.get(3), fields.get(5)) else {
                continue;
            };
            // tr:tm->when; tr 3 is the TIME_WAIT timer.
            if timer.starts_with("03:") {
                continue;
            }
            let name = state_name(u8::from_str_radix(state, 16).unwrap_or(0));
            *states.entry(name.to_owned()).or_insert(0) += 1;
        }
    }
    states
}

/// The same from `ss -tanoH` in the namespace at `path` (through
/// nsenter), when both commands exist (the matrix's guests have neither:
/// None there).
pub fn ss_states(path: &std::path::Path) -> Option<BTreeMap<String, u64>> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", path.display()))
        .args(["ss", "-tanoH"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let mut states = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if line.contains("timer:(timewait") {
            continue;
        }
        let Some(state) = line.split_whitespace().next() else {
            continue;
        };
        let name = match state {
            "ESTAB" => "ESTABLISHED",
            "SYN-SENT" => "SYN_SENT",
            "SYN-RECV" => "SYN_RECV",
            "FIN-WAIT-1" => "FIN_WAIT1",
            "FIN-WAIT-2" => "FIN_WAIT2",
            "TIME-WAIT" => "TIME_WAIT",
            "CLOSE-WAIT" => "CLOSE_WAIT",
            "LAST-ACK" => "LAST_ACK",
            "LISTEN" => "LISTEN",
            "CLOSING" => "CLOSING",
            other => other,
        };
        *states.entry(name.to_owned()).or_insert(0) += 1;
    }
    Some(states)
}

fn state_name(state: u8) -> &'static str {
    match state {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
}
