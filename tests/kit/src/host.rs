//! The host's state that root tests depend on: root itself (with a lock
//! that serialises tests touching global state), tracefs, kprobes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};

/// Set to 1 to skip the root tests on purpose (they fail without root otherwise).
pub const OPT_OUT: &str = "TCPSTATES_SKIP_ROOT_TESTS";

/// Returns the serialising guard when the test can run as root; `None` only
/// when the run opted out explicitly. Fails loudly otherwise.
pub fn root() -> Option<MutexGuard<'static, ()>> {
    static LOCK: Mutex<()> = Mutex::new(());
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        if std::env::var(OPT_OUT).as_deref() == Ok("1") {
            eprintln!("root test skipped: {OPT_OUT}=1");
            return None;
        }
        panic!(
            "this test loads BPF programs and needs root; run it as root, or set {OPT_OUT}=1 to skip the root tests explicitly"
        );
    }
    Some(LOCK.lock().unwrap_or_else(|e| e.into_inner()))
}

/// The host's cgroup2 mount; fails loudly without one (the tests that
/// make groups need it).
pub fn cgroup2_mount() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("reading /proc/self/mounts");
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .expect("this test needs a cgroup2 mount")
}

/// Where tracefs is mounted on a current system.
pub const TRACEFS: &str = "/sys/kernel/tracing";
/// Where debugfs shows tracefs again, when debugfs is mounted.
const DEBUG_TRACING: &str = "/sys/kernel/debug/tracing";

/// Whether tracefs is mounted (its events are visible).
pub fn tracefs_mounted() -> bool {
    Path::new(TRACEFS).join("events").is_dir()
}

/// Whether this kernel can create kprobes (the perf PMU exists).
pub fn kernel_has_kprobes() -> bool {
    Path::new("/sys/bus/event_source/devices/kprobe").exists()
}

/// tracefs mounted or not, as a test needs it, while this lives; the host's
/// state comes back when it is dropped, also when the test panics.
pub struct Tracefs {
    was_mounted: bool,
}

impl Tracefs {
    /// Mounts tracefs, or unmounts it (with debugfs's view of it).
    pub fn set(mounted: bool) -> Self {
        let guard = Tracefs {
            was_mounted: tracefs_mounted(),
        };
        set_tracefs(mounted).unwrap_or_else(|err| panic!("{err}"));
        guard
    }
}

impl Drop for Tracefs {
    fn drop(&mut self) {
        if let Err(err) = set_tracefs(self.was_mounted) {
            // Not a second panic while unwinding: say it instead.
            eprintln!("could not restore tracefs: {err}");
        }
    }
}

/// Brings tracefs into the state asked for.
pub fn set_tracefs(mounted: bool) -> Result<(), String> {
    if mounted == tracefs_mounted() {
        return Ok(());
    }
    if mounted {
        run("mount", &["-t", "tracefs", "nodev", TRACEFS])?;
    } else {
        // debugfs's tracing folder would mount tracefs again behind the test.
        if is_mount_point(DEBUG_TRACING) {
            run("umount", &[DEBUG_TRACING])?;
        }
        if is_mount_point(TRACEFS) {
            run("umount", &[TRACEFS])?;
        }
    }
    if tracefs_mounted() == mounted {
        Ok(())
    } else {
        Err(format!(
            "tracefs is still {}mounted",
            if mounted { "not " } else { "" }
        ))
    }
}

/// Whether `path` is listed in /proc/self/mounts.
fn is_mount_point(path: &str) -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .is_ok_and(|mounts| mounts.lines().any(|l| l.split(' ').nth(1) == Some(path)))
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Raises this process's open-file limit to its hard limit.
pub fn raise_file_limit() -> libc::rlim_t {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    limit.rlim_cur
}
