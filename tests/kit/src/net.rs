//! Single loopback connections, closed as a test asks, an HTTP server that
//! closes first, and promtool's lint of what a metrics endpoint serves.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// 127.0.0.1 or ::1.
pub fn loopback(v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::LOCALHOST)
    } else {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    }
}

/// A connected pair on loopback and its listener.
pub struct Connection {
    /// The listener the client connected to.
    pub listener: TcpListener,
    /// The connecting side.
    pub client: TcpStream,
    /// The accepted side.
    pub server: TcpStream,
    /// The listener's port.
    pub port: u16,
    /// The client's local port.
    pub client_port: u16,
}

/// A listener on a free loopback port, and that port.
pub fn listen(v6: bool) -> (TcpListener, u16) {
    let listener = TcpListener::bind(SocketAddr::new(loopback(v6), 0)).expect("bind");
    let port = listener.local_addr().expect("local address").port();
    (listener, port)
}

/// A listener, a client connected to it and the accepted server side.
pub fn connect(v6: bool) -> Connection {
    let (listener, port) = listen(v6);
    let client = TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    let client_port = client.local_addr().expect("address").port();
    Connection {
        listener,
        client,
        server,
        port,
        client_port,
    }
}

/// Reads until the peer's FIN, an error, or `timeout` of silence (None:
/// no limit, and no system call to set one, for the storm).
pub fn read_to_eof(mut stream: &TcpStream, timeout: Option<Duration>) {
    if timeout.is_some() {
        let _ = stream.set_read_timeout(timeout);
    }
    let mut buf = [0u8; 64];
    while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
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

/// Sleeps until `fd` is readable or `timeout` passes; a signal ends the
/// wait early, without an error.
pub fn wait_readable(fd: impl AsFd, timeout: Duration) -> io::Result<()> {
    let mut pollfd = libc::pollfd {
        fd: fd.as_fd().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd, for a descriptor open for the call.
    if unsafe { libc::poll(&mut pollfd, 1, millis) } < 0 {
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    Ok(())
}

/// An HTTP server on 127.0.0.1 (its port) that reads each request, answers
/// and closes: a client reading to the end (wget) closes second.
pub fn http_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    let port = listener.local_addr().expect("its address").port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut request = Vec::new();
            let mut byte = [0u8];
            while !request.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                request.push(byte[0]);
            }
            let _ = stream.write_all(b"HTTP/1.0 200 OK\r\n\r\nhello\n");
        }
    });
    port
}

/// promtool's lint of a metrics exposition (the classic text format):
/// fails the test with promtool's words unless it finds nothing to say.
pub fn promtool_lint(exposition: &str) {
    use std::process::{Command, Stdio};
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus)");
    lint.stdin
        .take()
        .expect("promtool's stdin")
        .write_all(exposition.as_bytes())
        .expect("writing to promtool");
    let lint = lint.wait_with_output().expect("promtool's verdict");
    assert!(
        lint.status.success() && lint.stdout.is_empty() && lint.stderr.is_empty(),
        "promtool: {}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
}

/// A TCP client socket of the family of `to`, made by hand so that options
/// go on before connect: its SYN is sent again at most `syn_retries` times
/// (TCP_SYNCNT: 1 gives up after about 3 s), and it does not block when
/// `nonblocking`.
pub fn client_socket(to: SocketAddr, syn_retries: u8, nonblocking: bool) -> io::Result<OwnedFd> {
    let family = if to.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let kind =
        libc::SOCK_STREAM | libc::SOCK_CLOEXEC | if nonblocking { libc::SOCK_NONBLOCK } else { 0 };
    // SAFETY: socket() takes no pointers; a valid descriptor is owned below.
    let fd = unsafe { libc::socket(family, kind, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just created and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let count = libc::c_int::from(syn_retries);
    // SAFETY: a valid descriptor and an int option of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_SYNCNT,
            (&count as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// connect() on a socket from [`client_socket`]: its error (a non-blocking
/// one says EINPROGRESS while the handshake runs).
pub fn start_connect(fd: &OwnedFd, to: SocketAddr) -> io::Result<()> {
    // SAFETY: sockaddr_storage is plain data, valid zeroed.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match to {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    // SAFETY: a valid descriptor and an address of the length passed.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&storage as *const libc::sockaddr_storage).cast(),
            len as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A listener on a free loopback port whose accept queue is full: one
/// connection completed and never accepted, with a backlog of 0. The
/// kernel drops every further SYN (no reset): a client's handshake times
/// out. Keep the returned values alive while it must stay full.
pub fn full_listener(v6: bool) -> (TcpListener, TcpStream, SocketAddr) {
    let listener = TcpListener::bind(SocketAddr::new(loopback(v6), 0)).expect("bind");
    // SAFETY: a valid listening descriptor; listen() takes no pointers.
    assert_eq!(
        unsafe { libc::listen(listener.as_raw_fd(), 0) },
        0,
        "listen(0)"
    );
    let addr = listener.local_addr().expect("address");
    let queued = TcpStream::connect(addr).expect("the connection that fills the queue");
    (listener, queued, addr)
}
