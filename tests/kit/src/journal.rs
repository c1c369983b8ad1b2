//! The systemd journal the tests read back: the host's journald when one
//! listens (a test never starts a second), else one started for the test
//! and stopped by its pid; and a field's value as `journalctl -o json`
//! gives it.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Where journald listens for native-protocol entries.
pub const JOURNAL: &str = "/run/systemd/journal/socket";

/// A journald to test against: the host's when one listens, else one
/// started here (and stopped by its pid when dropped).
pub struct Journald {
    started: Option<Child>,
}

/// Whether a journald listens at [`JOURNAL`].
pub fn journal_listens() -> bool {
    UnixDatagram::unbound()
        .and_then(|s| s.connect(JOURNAL))
        .is_ok()
}

impl Journald {
    /// The host's journald, or one started here.
    pub fn get() -> Journald {
        if journal_listens() {
            return Journald { started: None };
        }
        let binary = "/lib/systemd/systemd-journald";
        assert!(
            Path::new(binary).exists(),
            "{binary} is missing: apt-get install systemd"
        );
        std::fs::create_dir_all("/run/systemd/journal").unwrap();
        let child = Command::new(binary)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let journald = Journald {
            started: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !journal_listens() {
            assert!(
                Instant::now() < deadline,
                "journald did not start listening"
            );
            sleep(Duration::from_millis(20));
        }
        journald
    }
}

impl Drop for Journald {
    fn drop(&mut self) {
        if let Some(child) = &mut self.started {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A journal field's value from `journalctl -o json`: a string, or an
/// array of bytes for a value that is not printable text.
pub fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Array(bytes) => Some(
            String::from_utf8_lossy(
                &bytes
                    .iter()
                    .map(|b| b.as_u64().unwrap() as u8)
                    .collect::<Vec<u8>>(),
            )
            .into_owned(),
        ),
        _ => None,
    }
}

/// The entries `journalctl -o json` has from SYSLOG_IDENTIFIER=tcpstates
/// since `since_secs` (Unix time).
pub fn tcpstates_entries(since_secs: u64) -> Vec<Value> {
    let out = Command::new("journalctl")
        .args(["-o", "json", "--no-pager", "SYSLOG_IDENTIFIER=tcpstates"])
        .arg(format!("--since=@{since_secs}"))
        .output()
        .expect("journalctl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("a JSON entry"))
        .collect()
}
