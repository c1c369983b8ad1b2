//! Many loopback connections held open at once, by child processes (one
//! process may hold only 20,000 descriptors here): what a busy host looks
//! like to the tracer.
//!
//! A holder is a process of the caller's own binary, started in a way the
//! caller knows to turn into [`holder_main`]. It binds a listener, says its
//! port, and then opens and closes its connections when told, line by line
//! on its stdin and stdout:
//!
//! ```text
//! holder: port 40123        (parent:) open
//! holder: open              (parent:) close   (or: burst)
//! holder: closed
//! ```
//!
//! `close` closes each connection's two ends together; `burst` closes every
//! client end, then 0.3 s later every server end: what a proxy restart or a
//! batch job's end does to a host.

use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use anyhow::{Context, Result, bail, ensure};

/// What starts each of the holder's lines: whatever else its process
/// prints (a test harness's banner) is not for the parent.
const SAYS: &str = "holder: ";

/// Connections one holder makes: two sockets (and descriptors) each, under
/// the 20,000 descriptors a process may have here.
pub const CONNECTIONS_PER_HOLDER: usize = 9_000;

/// In a burst, how long after the clients the servers close.
pub const BURST_SERVERS_AFTER: std::time::Duration = std::time::Duration::from_millis(300);

/// The holder's side: serve `connections` connections to itself on
/// loopback, as the parent says.
pub fn holder_main(connections: usize) -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding")?;
    let addr = listener.local_addr()?;
    let mut out = BufWriter::new(io::stdout().lock());
    let mut commands = io::stdin().lock().lines();
    writeln!(out, "{SAYS}port {}", addr.port())?;
    out.flush()?;
    expect(commands.next(), "open")?;
    let pairs = open(&listener, addr, connections)?;
    writeln!(out, "{SAYS}open")?;
    out.flush()?;
    match commands.next() {
        Some(Ok(line)) if line == "close" => drop(pairs),
        Some(Ok(line)) if line == "burst" => {
            let (clients, servers): (Vec<_>, Vec<_>) = pairs.into_iter().unzip();
            drop(clients);
            std::thread::sleep(BURST_SERVERS_AFTER);
            drop(servers);
        }
        other => bail!("expected close or burst from the parent, got {other:?}"),
    }
    drop(listener);
    writeln!(out, "{SAYS}closed")?;
    out.flush()?;
    Ok(())
}

fn open(listener: &TcpListener, addr: SocketAddr, n: usize) -> Result<Vec<(TcpStream, TcpStream)>> {
    let mut pairs = Vec::with_capacity(n);
    for i in 0..n {
        let client = TcpStream::connect(addr).with_context(|| format!("connection {i} of {n}"))?;
        let (server, _) = listener.accept().context("accept")?;
        pairs.push((client, server));
    }
    Ok(pairs)
}

fn expect(line: Option<io::Result<String>>, word: &str) -> Result<()> {
    match line {
        Some(Ok(line)) if line == word => Ok(()),
        other => bail!("expected {word:?} from the parent, got {other:?}"),
    }
}

/// Set for the copies of a test binary that hold connections: how many.
const HOLDER_ENV: &str = "TCPSTATES_TEST_HOLDER_CONNECTIONS";

/// What a test binary's ignored `holder` test runs: [`holder_main`] with
/// the connections its parent asked for (see [`test_holder`]).
pub fn holder_test_main() {
    let connections = std::env::var(HOLDER_ENV)
        .ok()
        .and_then(|n| n.parse().ok())
        .expect("started by a test that holds connections");
    holder_main(connections).expect("holding connections");
}

/// A holder command for [`Holders::start`]: this test binary again, asked
/// for its ignored `holder` test (which calls [`holder_test_main`]).
pub fn test_holder(connections: usize) -> Command {
    let mut command = Command::new(std::env::current_exe().expect("this test binary"));
    command
        .args(["--exact", "holder", "--ignored", "--nocapture", "-q"])
        .env(HOLDER_ENV, connections.to_string())
        .stderr(Stdio::inherit());
    command
}

/// The parent's side: holder processes and the ports they listen on.
pub struct Holders {
    holders: Vec<Holder>,
}

struct Holder {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    port: u16,
}

impl Holder {
    fn say(&mut self, word: &str) -> Result<()> {
        writeln!(self.stdin, "{word}")?;
        self.stdin.flush()?;
        Ok(())
    }

    fn hear(&mut self) -> Result<String> {
        loop {
            let mut line = String::new();
            let n = self.stdout.read_line(&mut line)?;
            ensure!(n > 0, "a holder exited early");
            if let Some(said) = line.trim_end().strip_prefix(SAYS) {
                return Ok(said.to_owned());
            }
        }
    }
}

impl Holders {
    /// Starts enough holders for `sockets` sockets (two per connection);
    /// `command(connections)` must start a process that runs
    /// [`holder_main`] with that many connections. Each listens, none has
    /// connected yet.
    pub fn start(sockets: usize, command: impl Fn(usize) -> Command) -> Result<Self> {
        let mut connections = sockets.div_ceil(2);
        let mut shares = Vec::new();
        while connections > 0 {
            let mine = connections.min(CONNECTIONS_PER_HOLDER);
            connections -= mine;
            shares.push(mine);
        }
        Self::start_shares(&shares, command)
    }

    /// Starts `holders` holders of `connections` connections each.
    pub fn start_each(
        holders: usize,
        connections: usize,
        command: impl Fn(usize) -> Command,
    ) -> Result<Self> {
        ensure!(
            connections <= CONNECTIONS_PER_HOLDER,
            "a holder holds at most {CONNECTIONS_PER_HOLDER} connections"
        );
        Self::start_shares(&vec![connections; holders], command)
    }

    fn start_shares(shares: &[usize], command: impl Fn(usize) -> Command) -> Result<Self> {
        let mut holders = Vec::new();
        for &mine in shares {
            let mut child = command(mine)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .context("starting a holder")?;
            let stdin = child.stdin.take().context("no stdin")?;
            let stdout = BufReader::new(child.stdout.take().context("no stdout")?);
            let mut holder = Holder {
                child,
                stdin,
                stdout,
                port: 0,
            };
            let said = holder.hear()?;
            holder.port = said
                .strip_prefix("port ")
                .and_then(|p| p.parse().ok())
                .with_context(|| format!("a holder said {said:?}"))?;
            holders.push(holder);
        }
        Ok(Holders { holders })
    }

    /// The ports the holders listen on.
    pub fn ports(&self) -> Vec<u16> {
        self.holders.iter().map(|h| h.port).collect()
    }

    /// Every holder opens its connections; returns once all are open.
    pub fn open(&mut self) -> Result<()> {
        self.each("open", "open")
    }

    /// Every holder closes its connections and its listener.
    pub fn close(&mut self) -> Result<()> {
        self.end("close")
    }

    /// Every holder closes all its connections' client ends at once, then,
    /// [`BURST_SERVERS_AFTER`] later, their server ends and its listener.
    pub fn burst(&mut self) -> Result<()> {
        self.end("burst")
    }

    fn end(&mut self, word: &str) -> Result<()> {
        self.each(word, "closed")?;
        for holder in &mut self.holders {
            holder.child.wait()?;
        }
        Ok(())
    }

    /// Says `word` to all, then waits for each to answer `answer`: the
    /// holders work at once.
    fn each(&mut self, word: &str, answer: &str) -> Result<()> {
        for holder in &mut self.holders {
            holder.say(word)?;
        }
        for holder in &mut self.holders {
            let said = holder.hear()?;
            ensure!(said == answer, "a holder said {said:?}, not {answer:?}");
        }
        Ok(())
    }
}

impl Drop for Holders {
    fn drop(&mut self) {
        for holder in &mut self.holders {
            let _ = holder.child.kill();
            let _ = holder.child.wait();
        }
    }
}
