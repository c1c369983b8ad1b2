//! A loopback connection storm, for the benchmark and the loss tests: many
//! short connections, made and closed as fast as the machine allows.

use std::io::{self, Read};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

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
                        Ending::Graceful => read_to_end(stream),
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

/// Reads until the peer's FIN (or an error), then closes.
fn read_to_end(mut stream: TcpStream) -> io::Result<()> {
    let mut buf = [0u8; 64];
    while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
    Ok(())
}

/// Sleeps until a connection waits on `listener`, or `timeout` passes.
fn wait_readable(listener: &TcpListener, timeout: Duration) -> io::Result<()> {
    let mut fd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for a descriptor open for the call.
    let rc = unsafe { libc::poll(&mut fd, 1, timeout.as_millis() as libc::c_int) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    Ok(())
}

/// Makes close() send an RST instead of a FIN.
pub fn set_linger_zero(stream: &TcpStream) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the fd is open for the life of `stream`; the option value is a
    // valid `linger` of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
