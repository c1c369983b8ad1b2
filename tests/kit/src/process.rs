//! Child processes: stopped as Ctrl-C would, reaped with their resource
//! usage, guarded so that a failed test leaves none behind, run as nobody.

use std::process::Child;

/// How a stopped tracer ended.
#[derive(Debug, Clone, Copy)]
pub struct Ended {
    /// The wait status.
    pub status: libc::c_int,
    /// Its resource usage: CPU time, peak RSS.
    pub usage: libc::rusage,
}

impl Ended {
    /// The exit code, when it exited (not killed by a signal).
    pub fn code(&self) -> Option<i32> {
        libc::WIFEXITED(self.status).then(|| libc::WEXITSTATUS(self.status))
    }
}

/// Sends SIGINT to `child` and reaps it.
pub fn interrupt(child: &Child) -> Ended {
    stop(child, libc::SIGINT)
}

/// Sends `sig` to `child` and reaps it (do not wait on `child` after).
pub fn stop(child: &Child, sig: libc::c_int) -> Ended {
    signal(child, sig);
    reap(child)
}

/// Waits for `child` to exit and reaps it (do not wait on `child` after).
pub fn reap(child: &Child) -> Ended {
    let pid = child.id() as libc::pid_t;
    // SAFETY: wait4 writes only the status and rusage we own (all-zero
    // bytes are a valid rusage); the pid is our child's, not reaped before.
    unsafe {
        let mut status = 0;
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::wait4(pid, &mut status, 0, &mut usage);
        Ended { status, usage }
    }
}

/// Sends `signal` to `child`.
pub fn signal(child: &Child, signal: libc::c_int) {
    // SAFETY: kill has no memory preconditions; the pid is our child's.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    assert_eq!(rc, 0, "kill({}, {signal})", child.id());
}

/// A copy of a binary in a folder of its own that any user may enter and
/// run (the checkout may sit under /root); removed on drop.
pub struct PublicCopy {
    dir: std::path::PathBuf,
    /// The copy.
    pub bin: std::path::PathBuf,
}

impl PublicCopy {
    /// Copies `bin` (named `name` in the copy).
    pub fn of(bin: &str, name: &str) -> std::io::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("tcpstates-public-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let copy = dir.join(name);
        std::fs::copy(bin, &copy)?;
        for path in [&dir, &copy] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
        }
        Ok(Self { dir, bin: copy })
    }
}

impl Drop for PublicCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A command that runs `bin` as nobody (uid and gid 65534, no groups)
/// holding only `caps` (setpriv's names, such as "bpf"), inherited,
/// ambient and bounding.
pub fn as_nobody_with(caps: &[&str], bin: &std::path::Path) -> std::process::Command {
    let set = std::iter::once("-all".to_owned())
        .chain(caps.iter().map(|cap| format!("+{cap}")))
        .collect::<Vec<_>>()
        .join(",");
    let mut command = std::process::Command::new("setpriv");
    command
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(format!("--inh-caps={set}"))
        .arg(format!("--ambient-caps={set}"))
        .arg(format!("--bounding-set={set}"))
        .arg("--")
        .arg(bin);
    command
}

/// A child process killed (SIGKILL) and reaped when dropped, unless it
/// was taken back with [`Guarded::into_inner`]: a test that fails half
/// way leaves no tracer attached behind it (which would slow every later
/// test and benchmark on the host).
pub struct Guarded(Option<std::process::Child>);

impl Guarded {
    /// Guards `child`.
    pub fn new(child: std::process::Child) -> Self {
        Self(Some(child))
    }

    /// The child, no longer guarded.
    pub fn into_inner(mut self) -> std::process::Child {
        self.0.take().expect("guarded")
    }
}

impl std::ops::Deref for Guarded {
    type Target = std::process::Child;

    fn deref(&self) -> &Self::Target {
        self.0.as_ref().expect("guarded")
    }
}

impl std::ops::DerefMut for Guarded {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.0.as_mut().expect("guarded")
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
