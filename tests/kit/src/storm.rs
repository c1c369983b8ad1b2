//! A loopback connection storm, for the benchmark and the loss tests: many
//! short connections, made and closed as fast as the machine allows.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::net::{read_to_eof, set_linger_zero, wait_readable};

/// How each connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The server closes first, the client reads the FIN and closes: 10
    /// transitions per connection (5 per side). The TIME_WAIT stays on the
    /// server side, so the clients' ports are free again at once and the
    /// storm's rate does not depend on how many ports are left.
    Graceful,
    /// The client closes with SO_LINGER 0 (an RST): 6 transitions.
    Reset,
}

impl Ending {
    /// TCP state transitions one connection makes, both sides together.
    pub fn transitions(self) -> u64 {
        match self {
            Ending::Graceful => 10,
            Ending::Reset => 6,
        }
    }
}

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Storm {
    /// Connections to make.
    pub connections: usize,
    /// Client threads, and as many server threads.
    pub concurrency: usize,
    /// How each connection ends.
    pub ending: Ending,
}

/// Makes `storm.connections` connections to `listener` (which must be on
/// loopback) and returns how long they took, from the first connect to the
/// last server-side close.
pub fn run(listener: &TcpListener, storm: &Storm) -> io::Result<Duration> {
    let target = listener.local_addr()?;
    let concurrency = storm.concurrency.max(1);
    let clients_left = AtomicUsize::new(concurrency);
    // Servers accept without blocking, so they can stop once the clients are
    // done and the queue is empty, however many connections reached them (a
    // reset can kill one before it is accepted).
    listener.set_nonblocking(true)?;
    let start = Instant::now();
    let result = thread::scope(|scope| -> io::Result<()> {
        let mut servers = Vec::new();
        for _ in 0..concurrency {
            servers.push(scope.spawn(|| serve(listener, &clients_left)));
        }
        let mut clients = Vec::new();
        for i in 0..concurrency {
            let count =
                storm.connections / concurrency + usize::from(i < storm.connections % concurrency);
            let clients_left = &clients_left;
            clients.push(scope.spawn(move || -> io::Result<()> {
                let result = (0..count).try_for_each(|_| {
                    let stream = TcpStream::connect(target)?;
                    match storm.ending {
                        Ending::Graceful => {
                            read_to_eof(&stream, None);
                            Ok(())
                        }
                        Ending::Reset => set_linger_zero(&stream),
                    }
                });
                clients_left.fetch_sub(1, Ordering::Release);
                result
            }));
        }
        for handle in clients.into_iter().chain(servers) {
            handle
                .join()
                .map_err(|_| io::Error::other("a storm thread panicked"))??;
        }
        Ok(())
    });
    listener.set_nonblocking(false)?;
    result?;
    Ok(start.elapsed())
}

/// Accepts and closes connections until the clients are done and nothing
/// waits.
fn serve(listener: &TcpListener, clients_left: &AtomicUsize) -> io::Result<()> {
    loop {
        match listener.accept() {
            // Graceful: close at once. Reset: the client's RST may come
            // first; either way the socket is done.
            Ok((stream, _)) => drop(stream),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                if clients_left.load(Ordering::Acquire) == 0 {
                    return Ok(());
                }
                wait_readable(listener, Duration::from_millis(10))?;
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
}
