//! The one way the tests run a tracer binary: started guarded (killed and
//! reaped if a test fails half way, so no tracer stays attached behind it),
//! its stdout lines and all its stderr read as they come (a tracer whose
//! pipe is full would stop), attached once it says so, stopped with a
//! signal into its exit code, lines and stderr.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::process::{self, Ended, Guarded};

/// What ours prints on stderr once attached.
pub const ATTACHED: &str = "Tracing tcpstates ... Hit Ctrl-C to end";

/// A running tracer and what it printed so far.
pub struct TracerProcess {
    child: Guarded,
    lines: Option<Receiver<String>>,
    seen: Vec<String>,
    stderr: JoinHandle<String>,
    /// The metrics endpoint's address, when it serves one.
    pub metrics: Option<SocketAddr>,
}

/// How a stopped tracer ended, and all it printed.
#[derive(Debug)]
pub struct Stopped {
    /// The exit code (None: killed by a signal).
    pub code: Option<i32>,
    /// Every stdout line (none when stdout was not piped here).
    pub lines: Vec<String>,
    /// All of stderr.
    pub stderr: String,
    /// Its resource usage.
    pub ended: Ended,
}

impl TracerProcess {
    /// Starts `command` (ours) with stdout and stderr piped and stdin
    /// closed, and waits until it says on stderr that it is attached (or
    /// where it serves metrics); fails if it exits first, or says something
    /// else on that line.
    pub fn start(command: &mut Command) -> Self {
        Self::spawn(command.stdout(Stdio::piped()), true)
    }

    /// As [`TracerProcess::start`], with stdout as `command` already has it
    /// (a file, or a pipe the test reads itself: [`TracerProcess::take_stdout`]).
    pub fn start_keeping_stdout(command: &mut Command) -> Self {
        Self::spawn(command, false)
    }

    /// Starts a tracer that says nothing on stderr when attached (libbpf-tools
    /// under `stdbuf -oL`): attached once its header, starting with
    /// `header`, is out.
    pub fn start_with_header(command: &mut Command, header: &str) -> Self {
        let mut tracer = Self::launch(command.stdout(Stdio::piped()), true, None);
        match tracer.next_line(Duration::from_secs(15)) {
            Some(line) if line.starts_with(header) => tracer,
            other => {
                let stopped = tracer.stop(libc::SIGKILL);
                panic!("no header {header:?} but {other:?}: {}", stopped.stderr)
            }
        }
    }

    fn spawn(command: &mut Command, pipe_stdout: bool) -> Self {
        let (first_tx, first_rx) = mpsc::channel();
        let mut tracer = Self::launch(command, pipe_stdout, Some(first_tx));
        let first = first_rx
            .recv_timeout(Duration::from_secs(15))
            .unwrap_or_default();
        let serving = first
            .strip_prefix("Tracing tcpstates ... metrics at http://")
            .or_else(|| first.strip_prefix("Tracing tcpstates ... metrics at https://"))
            .and_then(|rest| rest.strip_suffix("/metrics; Ctrl-C to end"));
        match serving {
            Some(addr) => tracer.metrics = Some(addr.parse().expect("the metrics address")),
            None if first == ATTACHED => {}
            None => {
                let stopped = tracer.stop(libc::SIGKILL);
                panic!("the tracer said {first:?}: {}", stopped.stderr)
            }
        }
        tracer
    }

    fn launch(
        command: &mut Command,
        pipe_stdout: bool,
        first_line: Option<mpsc::Sender<String>>,
    ) -> Self {
        let mut child = Guarded::new(
            command
                .stderr(Stdio::piped())
                .stdin(Stdio::null())
                .spawn()
                .expect("starting the tracer"),
        );
        let lines = pipe_stdout.then(|| {
            let out = child.stdout.take().expect("stdout is piped");
            let (tx, rx) = mpsc::channel();
            thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            rx
        });
        let err = child.stderr.take().expect("stderr is piped");
        let stderr = thread::spawn(move || {
            let mut reader = BufReader::new(err);
            let mut text = String::new();
            // Until the line that says it is attached (-v says more first).
            if let Some(tx) = first_line {
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 {
                    text.push_str(&line);
                    if line.starts_with("Tracing tcpstates ... ") {
                        let _ = tx.send(line.trim_end().to_owned());
                        break;
                    }
                    line.clear();
                }
            }
            let _ = reader.read_to_string(&mut text);
            text
        });
        TracerProcess {
            child,
            lines,
            seen: Vec::new(),
            stderr,
            metrics: None,
        }
    }

    /// Its stdout, when the command set it to a pipe the test reads.
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// The next stdout line, if one comes within `timeout`.
    pub fn next_line(&mut self, timeout: Duration) -> Option<String> {
        let line = self.lines.as_ref()?.recv_timeout(timeout).ok()?;
        self.seen.push(line.clone());
        Some(line)
    }

    /// Waits until a stdout line satisfies `pred`, failing after `timeout`.
    pub fn wait_for(&mut self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + timeout;
        while !self.seen.iter().any(|l| pred(l)) {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.next_line(left).is_none() {
                panic!(
                    "no line {what} within {timeout:?}; got:\n{}",
                    self.seen.join("\n")
                );
            }
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (SIGSTOP, SIGCONT, ...).
    pub fn signal(&self, signal: libc::c_int) {
        process::signal(&self.child, signal);
    }

    /// Whether it has exited, without waiting.
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_some()
    }

    /// Sends `signal`, reaps it, and returns how it ended with all it printed.
    // The child is reaped by wait4 in process::reap, with its usage.
    #[allow(clippy::zombie_processes)]
    pub fn stop(mut self, signal: libc::c_int) -> Stopped {
        let child = self.child.into_inner();
        let ended = if signal == 0 {
            process::reap(&child)
        } else {
            process::stop(&child, signal)
        };
        if let Some(lines) = &self.lines {
            while let Ok(line) = lines.recv_timeout(Duration::from_secs(5)) {
                self.seen.push(line);
            }
        }
        let stderr = self.stderr.join().unwrap_or_default();
        Stopped {
            code: ended.code(),
            lines: self.seen,
            stderr,
            ended,
        }
    }

    /// Waits for it to end by itself (`--count`, `--duration`, a closed
    /// pipe) and returns how it ended.
    pub fn wait(self) -> Stopped {
        self.stop(0)
    }

    /// Ends it with SIGINT, as Ctrl-C would, and returns its stdout; fails
    /// unless it exited 0 and reported nothing lost or missed.
    pub fn interrupt_and_read(self) -> String {
        let stopped = self.stop(libc::SIGINT);
        assert_eq!(stopped.code, Some(0), "{}", stopped.stderr);
        assert!(
            !stopped.stderr.contains("lost") && !stopped.stderr.contains("missed"),
            "{}",
            stopped.stderr
        );
        let mut out = stopped.lines.join("\n");
        if !out.is_empty() {
            out.push('\n');
        }
        out
    }
}

/// Reads all of `stream` into a string (a pipe the test held).
pub fn read_all(mut stream: impl Read) -> String {
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text
}
