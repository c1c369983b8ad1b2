//! `--metrics`: the in-kernel summary over HTTP, for Prometheus. The
//! exposition is prometheus-client's (the Prometheus project's Rust client):
//! OpenMetrics when the scraper asks for it, else the classic text format
//! 0.0.4; the server is hyper's HTTP/1 on a one-thread tokio runtime, on a
//! thread of its own. Every scrape reads the kernel's maps afresh.
//!
//! A scraper cannot hurt the tracer: the server runs apart from it and
//! never blocks it; each connection has a deadline for its TLS handshake
//! and its request's headers, and a lifetime. At most [`MAX_CONNECTIONS`]
//! are open at once, so its memory is bounded; when all are taken, the
//! connection that has waited longest without a request in progress (one
//! that never sent one first) is closed to make room for the new one, so
//! that no number of idle or slow connections locks out a scrape.
//!
//! `--web.config.file` adds TLS, client certificates and basic auth
//! ([`crate::web`]).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ACCEPT, ALLOW, AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet, prometheus_text, text};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::AbortHandle;

use crate::cause::{Cause, Role};
use crate::census::Census;
use crate::config::AttachMode;
use crate::state::TcpState;
use crate::summary::{ByLabel, SLOTS, STATES, Summary, slot_range_us, state_name};
use crate::tracer::KernelView;
use crate::web::WebConfig;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 512;
/// Connections the kernel queues for accept(): room for thousands of
/// clients reconnecting at once without dropping a scraper's SYN.
const BACKLOG: libc::c_int = 4096;
/// How long a connection may take for its TLS handshake, and then for a
/// request's headers.
const HEADER_DEADLINE: Duration = Duration::from_secs(10);
/// How long a connection may stay open at all.
const LIFETIME: Duration = Duration::from_secs(120);
/// Basic-auth logins checked with bcrypt at once (each costs tens of
/// milliseconds of CPU); more are answered 503 until one ends. A login
/// that succeeded is remembered and needs none.
const LOGINS_CHECKED: usize = 2;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A bound metrics address, not yet served.
pub struct Endpoint {
    listener: std::net::TcpListener,
}

impl Endpoint {
    /// Binds `addr` (before tracing starts, so that a bad address or a
    /// port in use ends the run at once).
    pub fn bind(addr: SocketAddr) -> Result<Self> {
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
        // SAFETY: listen() on a socket this function owns, already
        // listening: it only sets the accept queue's length.
        if unsafe { libc::listen(listener.as_raw_fd(), BACKLOG) } != 0 {
            return Err(std::io::Error::last_os_error()).context("setting up the metrics socket");
        }
        listener
            .set_nonblocking(true)
            .context("setting up the metrics socket")?;
        Ok(Self { listener })
    }

    /// The address bound (with the port the kernel chose for port 0).
    pub fn addr(&self) -> Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Serves the kernel's counts from now on, on a thread of its own,
    /// until the process ends; with TLS and basic auth if `web` says so.
    pub fn serve(
        self,
        view: Arc<KernelView>,
        mode: AttachMode,
        web: Option<WebConfig>,
    ) -> Result<()> {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Exposition { view, mode }));
        let served = Arc::new(Served {
            registry,
            web,
            logins: Arc::new(tokio::sync::Semaphore::new(LOGINS_CHECKED)),
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .max_blocking_threads(LOGINS_CHECKED)
            .build()
            .context("starting the metrics server")?;
        let listener = self.listener;
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || runtime.block_on(accept(listener, served)))
            .context("starting the metrics server")?;
        Ok(())
    }
}

/// What every connection is served with.
struct Served {
    registry: Registry,
    web: Option<WebConfig>,
    logins: Arc<tokio::sync::Semaphore>,
}

/// Where a connection is, for choosing which one makes room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    /// Connected, no request answered yet (handshaking, or sending its
    /// first request's headers, or nothing at all).
    Fresh,
    /// Between requests (a scraper's kept-alive connection).
    Idle,
    /// A request is being answered: never closed to make room.
    Busy,
}

struct Connection {
    stage: Stage,
    since: Instant,
    abort: AbortHandle,
}

/// The open connections.
#[derive(Default)]
struct Open {
    next_id: u64,
    connections: HashMap<u64, Connection>,
}

impl Open {
    /// Closes the connection that has waited longest without a request in
    /// progress, fresh ones first; false if every one is busy.
    fn make_room(&mut self) -> bool {
        let victim = self
            .connections
            .iter()
            .filter(|(_, c)| c.stage != Stage::Busy)
            .min_by_key(|(_, c)| (c.stage, c.since))
            .map(|(id, _)| *id);
        match victim.and_then(|id| self.connections.remove(&id)) {
            Some(connection) => {
                connection.abort.abort();
                true
            }
            None => false,
        }
    }

    fn set(&mut self, id: u64, stage: Stage) {
        if let Some(connection) = self.connections.get_mut(&id) {
            connection.stage = stage;
            connection.since = Instant::now();
        }
    }
}

type Table = Arc<Mutex<Open>>;

fn lock(table: &Table) -> std::sync::MutexGuard<'_, Open> {
    table.lock().unwrap_or_else(|e| e.into_inner())
}

/// Takes a connection out of the table when its task ends (or is aborted).
struct Leaves(u64, Table);

impl Drop for Leaves {
    fn drop(&mut self) {
        lock(&self.1).connections.remove(&self.0);
    }
}

async fn accept(listener: std::net::TcpListener, served: Arc<Served>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("tcpstates: metrics server: {err}");
            return;
        }
    };
    let table: Table = Arc::default();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // Out of descriptors, say: wait for some to close.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        admit(stream, &served, &table);
        // Serve before accepting more: a flood of connections would
        // otherwise be accepted (and each make room) faster than any of
        // them is read, and a scraper's request be closed unread.
        tokio::task::yield_now().await;
    }
}

/// Serves a connection just accepted, making room for it if need be.
fn admit(stream: tokio::net::TcpStream, served: &Arc<Served>, table: &Table) {
    let mut open = lock(table);
    if open.connections.len() >= MAX_CONNECTIONS && !open.make_room() {
        return;
    }
    let id = open.next_id;
    open.next_id += 1;
    // The task cannot run before it is in the table: this thread runs
    // it, after the accept loop's next await.
    let task = tokio::spawn(connection(
        stream,
        id,
        Arc::clone(served),
        Arc::clone(table),
    ));
    open.connections.insert(
        id,
        Connection {
            stage: Stage::Fresh,
            since: Instant::now(),
            abort: task.abort_handle(),
        },
    );
}

async fn connection(stream: tokio::net::TcpStream, id: u64, served: Arc<Served>, table: Table) {
    let _leaves = Leaves(id, Arc::clone(&table));
    let tls = served.web.as_ref().and_then(|web| web.tls.clone());
    match tls.map(tokio_rustls::TlsAcceptor::from) {
        Some(tls) => {
            let Ok(Ok(stream)) = tokio::time::timeout(HEADER_DEADLINE, tls.accept(stream)).await
            else {
                return;
            };
            http(stream, id, served, table).await;
        }
        None => http(stream, id, served, table).await,
    }
}

/// HTTP/1.1 on a connection, until it closes, fails or lives too long.
async fn http<S>(stream: S, id: u64, served: Arc<Served>, table: Table)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request: Request<Incoming>| {
        let served = Arc::clone(&served);
        let table = Arc::clone(&table);
        async move {
            let response = match login(&request, &served).await {
                Ok(()) => {
                    lock(&table).set(id, Stage::Busy);
                    respond(&request, &served.registry)
                }
                Err(refused) => refused,
            };
            lock(&table).set(id, Stage::Idle);
            Ok::<_, Infallible>(with_headers(response, served.web.as_ref()))
        }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_DEADLINE)
        .serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout(LIFETIME, connection).await;
}

/// Basic auth, when the web configuration names users: Ok to answer the
/// request, else the refusal to send.
async fn login(request: &Request<Incoming>, served: &Served) -> Result<(), Response<Full<Bytes>>> {
    let Some(users) = served.web.as_ref().and_then(|web| web.users.clone()) else {
        return Ok(());
    };
    let login = users.login(
        request
            .headers()
            .get(AUTHORIZATION)
            .map(HeaderValue::as_bytes),
    );
    let allowed = match login {
        None => false,
        Some(login) if users.remembers(&login) => true,
        Some(login) => {
            let Ok(permit) = Arc::clone(&served.logins).try_acquire_owned() else {
                return Err(plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many logins being checked; try again\n",
                ));
            };
            tokio::task::spawn_blocking(move || {
                let allowed = users.verify(&login);
                drop(permit);
                allowed
            })
            .await
            .unwrap_or(false)
        }
    };
    if allowed {
        return Ok(());
    }
    let mut refused = plain(StatusCode::UNAUTHORIZED, "unauthorized\n");
    refused.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"tcpstates\""),
    );
    Err(refused)
}

/// The web configuration's headers on a response.
fn with_headers(
    mut response: Response<Full<Bytes>>,
    web: Option<&WebConfig>,
) -> Response<Full<Bytes>> {
    for (name, value) in web.map(|web| &web.headers[..]).unwrap_or_default() {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    response
}

/// The answer to one request: the metrics at /metrics, a pointer to them
/// at /, nothing elsewhere.
fn respond(request: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match request.uri().path() {
        "/metrics" => {
            let openmetrics = request
                .headers()
                .get(ACCEPT)
                .and_then(|accept| accept.to_str().ok())
                .is_some_and(|accept| accept.contains("application/openmetrics-text"));
            let (body, content_type) = exposition(registry, openmetrics);
            match body {
                Some(body) => {
                    let mut response = Response::new(Full::new(Bytes::from(body)));
                    response
                        .headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
                    response
                }
                None => plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "reading the kernel's counts failed\n",
                ),
            }
        }
        "/" => plain(
            StatusCode::OK,
            "tcpstates: TCP state transitions and time in each state, at /metrics\n",
        ),
        _ => plain(
            StatusCode::NOT_FOUND,
            "not found: the metrics are at /metrics\n",
        ),
    }
}

/// The exposition in the format asked for, and its content type; None if
/// the kernel's counts could not be read.
pub fn exposition(registry: &Registry, openmetrics: bool) -> (Option<String>, &'static str) {
    let mut body = String::new();
    if openmetrics {
        (
            text::encode(&mut body, registry).ok().map(|()| body),
            OPENMETRICS,
        )
    } else {
        let encoded = prometheus_text::encode(&mut body, registry);
        (encoded.ok().map(|()| body), prometheus_text::CONTENT_TYPE)
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The metrics, read from the kernel at each scrape.
#[derive(Debug)]
struct Exposition {
    view: Arc<KernelView>,
    mode: AttachMode,
}

impl Collector for Exposition {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (summary, labelled) = self.view.summaries().map_err(|_| std::fmt::Error)?;
        let counters = self.view.counters().map_err(|_| std::fmt::Error)?;
        let stuck = match (self.view.stuck_options(), self.view.stuck_now()) {
            (Some(options), Ok(Some(now))) => Some(StuckCounts {
                states: options.states,
                by_owner: options.owners > 0,
                counts: crate::stuck::by_state_and_owner(&now, options.owners),
            }),
            (_, Err(_)) => return Err(std::fmt::Error),
            _ => None,
        };
        let counts = Counts {
            summary,
            stuck,
            census: self.view.census().map_err(|_| std::fmt::Error)?,
            ring_drops: counters.ringbuf_drops,
            map_full: counters.map_full,
            recursion_misses: counters.recursion_misses,
            unjudged: counters.unjudged,
            labelled,
        };
        counts.encode(encoder, self.mode)
    }
}

/// The stuck sockets of one scrape.
#[derive(Debug, Default)]
pub struct StuckCounts {
    /// The states watched (bit n: state n): each has a series, 0 or not.
    pub states: u32,
    /// Labelled by owner name too.
    pub by_owner: bool,
    /// By state and owner name (see [`crate::stuck::by_state_and_owner`]).
    pub counts: Vec<(TcpState, Option<String>, u64)>,
}

/// One scrape's numbers.
#[derive(Debug, Default)]
pub struct Counts {
    /// The aggregates.
    pub summary: Summary,
    /// The census, when kept (the gauge is left out unless exact).
    pub census: Option<Census>,
    /// With --stuck: the stuck sockets, counted.
    pub stuck: Option<StuckCounts>,
    /// Events the ring buffer had no room for (event mode only).
    pub ring_drops: u64,
    /// Sockets the kernel's store had no room for.
    pub map_full: u64,
    /// Transitions no program handled.
    pub recursion_misses: u64,
    /// Transitions the group filters left out unjudged.
    pub unjudged: u64,
    /// With --label-by: the counts by unit or container, which the metrics
    /// then carry as a label.
    pub labelled: Option<ByLabel>,
}

impl Counts {
    /// The summaries to expose, each with its label, if labelled.
    fn series(&self) -> Vec<(Option<(&'static str, &str)>, &Summary)> {
        match &self.labelled {
            None => vec![(None, &self.summary)],
            Some(labelled) => labelled
                .values
                .iter()
                .map(|(value, s)| (Some((labelled.by.name(), value.as_str())), s))
                .collect(),
        }
    }

    /// Writes every metric (names and labels as the README documents them).
    pub fn encode(
        &self,
        mut encoder: DescriptorEncoder,
        mode: AttachMode,
    ) -> Result<(), std::fmt::Error> {
        {
            let mut metric = encoder.encode_descriptor(
                "tcpstates_build_info",
                "The tcpstates version, and the attach mode in use",
                None,
                MetricType::Gauge,
            )?;
            let labels = [
                ("version", env!("CARGO_PKG_VERSION")),
                ("attach_mode", mode.name()),
            ];
            metric.encode_family(&labels)?.encode_gauge(&1i64)?;
        }
        {
            let mut metric = encoder.encode_descriptor(
                "tcpstates_state_duration",
                "Time sockets spent in a TCP state before leaving it (when known)",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for (extra, s) in self.series() {
                for state in histogram_states(s, extra.is_some()) {
                    let name = state_name(state);
                    let labels = with(extra, [("state", name.as_str())]);
                    let buckets: Vec<(f64, u64)> = (0..SLOTS)
                        .map(|slot| (upper_bound_seconds(slot), s.slots[state][slot]))
                        .collect();
                    metric
                        .encode_family(&labels)?
                        .encode_histogram::<NoLabelSet>(
                            s.sum_ns[state] as f64 / 1e9,
                            s.timed(state),
                            &buckets,
                            None,
                        )?;
                }
            }
        }
        {
            let mut metric = encoder.encode_descriptor(
                "tcpstates_transitions",
                "TCP state transitions, by the state left and the state entered",
                None,
                MetricType::Counter,
            )?;
            for (extra, s) in self.series() {
                for old in 0..STATES {
                    for new in 0..STATES {
                        let count = s.transitions[old][new];
                        if count == 0 {
                            continue;
                        }
                        let (old, new) = (state_name(old), state_name(new));
                        let labels = with(
                            extra,
                            [("old_state", old.as_str()), ("new_state", new.as_str())],
                        );
                        metric
                            .encode_family(&labels)?
                            .encode_counter::<NoLabelSet, _, u64>(&count, None)?;
                    }
                }
            }
        }
        type PerState = fn(&Summary) -> &[u64; STATES];
        let per_state: [(&str, &str, PerState); 2] = [
            (
                "tcpstates_unknown_durations",
                "Transitions whose time in the state left is not known (a new socket, or the \
                 kernel had no room for it, or a socket older than the trace after a loss)",
                |s| &s.unknown,
            ),
            (
                "tcpstates_durations_before_trace",
                "Transitions out of a state the socket had been in since before the trace began \
                 (their time is at least the trace's age; not in tcpstates_unknown_durations)",
                |s| &s.before_trace,
            ),
        ];
        for (name, help, counts) in per_state {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (extra, s) in self.series() {
                for state in histogram_states(s, extra.is_some()) {
                    let state_label = state_name(state);
                    let labels = with(extra, [("state", state_label.as_str())]);
                    metric
                        .encode_family(&labels)?
                        .encode_counter::<NoLabelSet, _, u64>(&counts(s)[state], None)?;
                }
            }
        }
        {
            let mut metric = encoder.encode_descriptor(
                "tcpstates_connections_closed",
                "Sockets that reached CLOSE, by why they ended and how they began (see the \
                 README's close causes)",
                None,
                MetricType::Counter,
            )?;
            for (extra, s) in self.series() {
                for cause in Cause::ALL {
                    for role in Role::ALL {
                        let count = s.closed[*cause as usize][*role as usize];
                        // Every pair exists from the first scrape, for rates
                        // and alerts; a label's, only once counted.
                        if count == 0 && extra.is_some() {
                            continue;
                        }
                        let labels = with(extra, [("cause", cause.name()), ("role", role.name())]);
                        metric
                            .encode_family(&labels)?
                            .encode_counter::<NoLabelSet, _, u64>(&count, None)?;
                    }
                }
            }
        }
        {
            let mut metric = encoder.encode_descriptor(
                "tcpstates_connection_lifetime",
                "Time from connect, listen or accept to CLOSE, of the sockets that closed (when \
                 their start was seen)",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for (extra, s) in self.series() {
                if extra.is_some() && s.closes() == 0 {
                    continue;
                }
                let buckets: Vec<(f64, u64)> = (0..SLOTS)
                    .map(|slot| (upper_bound_seconds(slot), s.lifetime_slots[slot]))
                    .collect();
                let labels = with(extra, []);
                metric
                    .encode_family(&labels)?
                    .encode_histogram::<NoLabelSet>(
                        s.lifetime_sum_ns as f64 / 1e9,
                        s.lifetime_slots.iter().sum(),
                        &buckets,
                        None,
                    )?;
            }
        }
        {
            let mut metric = encoder.encode_descriptor(
                "tcpstates_unknown_lifetimes",
                "Sockets that closed whose start came before the trace",
                None,
                MetricType::Counter,
            )?;
            for (extra, s) in self.series() {
                if extra.is_some() && s.closes() == 0 {
                    continue;
                }
                let labels = with(extra, []);
                metric
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&s.lifetime_unknown, None)?;
            }
        }
        if let Some(stuck) = &self.stuck {
            let mut metric = encoder.encode_descriptor(
                "tcpstates_stuck_sockets",
                "TCP sockets in one state longer than --stuck allows, by state (and owner name \
                 with --stuck-owners)",
                None,
                MetricType::Gauge,
            )?;
            for state in (0..32).filter(|n| stuck.states & (1 << n) != 0) {
                let state = TcpState::from_raw(state);
                let name = state.to_string();
                let mine = stuck.counts.iter().filter(|(s, _, _)| *s == state);
                if !stuck.by_owner {
                    let n: u64 = mine.map(|(_, _, n)| n).sum();
                    metric
                        .encode_family(&[("state", name.as_str())])?
                        .encode_gauge(&i64::try_from(n).unwrap_or(i64::MAX))?;
                    continue;
                }
                for (_, owner, n) in mine {
                    let owner = owner.as_deref().unwrap_or("unknown");
                    metric
                        .encode_family(&[("state", name.as_str()), ("owner", owner)])?
                        .encode_gauge(&i64::try_from(*n).unwrap_or(i64::MAX))?;
                }
            }
        }
        if let Some(census) = self.census.filter(|c| c.exact) {
            let mut metric = encoder.encode_descriptor(
                "tcpstates_sockets",
                "TCP sockets in each state now, from the snapshot at start and every transition \
                 since (full sockets: not TIME_WAIT, not request sockets)",
                None,
                MetricType::Gauge,
            )?;
            for (state, n) in census.states() {
                let name = state_name(state);
                let n = i64::try_from(n).unwrap_or(i64::MAX);
                metric
                    .encode_family(&[("state", name.as_str())])?
                    .encode_gauge(&n)?;
            }
        }
        for (name, help, value) in [
            (
                "tcpstates_ring_drops",
                "Events lost because the ring buffer was full (event mode)",
                self.ring_drops,
            ),
            (
                "tcpstates_map_full",
                "Sockets the kernel's per-socket store had no room for (their times are unknown)",
                self.map_full,
            ),
            (
                "tcpstates_unjudged",
                "Transitions the group filters could not judge (their owner's cgroup was made \
                 since the table of groups was filled), left out",
                self.unjudged,
            ),
            (
                "tcpstates_recursion_misses",
                "Transitions the kernel ran no program for (it was already running on that CPU)",
                self.recursion_misses,
            ),
        ] {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            metric.encode_counter::<NoLabelSet, _, u64>(&value, None)?;
        }
        Ok(())
    }
}

/// The states with a histogram: every named one (so that each series
/// exists from the first scrape), and any other number that occurred; for
/// a label, only the states its sockets left (a label's series cost as
/// many states as it has).
fn histogram_states(s: &Summary, labelled: bool) -> impl Iterator<Item = usize> + '_ {
    (0..STATES).filter(move |&state| {
        (!labelled && (1..=TcpState::NAMED.len()).contains(&state)) || s.left(state) > 0
    })
}

/// `labels`, with the unit or container label first when there is one.
fn with<'a, const N: usize>(
    extra: Option<(&'a str, &'a str)>,
    labels: [(&'a str, &'a str); N],
) -> Vec<(&'a str, &'a str)> {
    extra.into_iter().chain(labels).collect()
}

/// A slot's `le`: the end of its range, in seconds (the slots hold whole
/// microseconds, so a time in slot i is under 2^i us); +Inf for the last.
fn upper_bound_seconds(slot: usize) -> f64 {
    match slot_range_us(slot).1 {
        Some(to) => (to + 1) as f64 / 1e6,
        None => f64::INFINITY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Fixed(std::sync::Mutex<Option<Counts>>);

    impl Collector for Fixed {
        fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            let counts = self.0.lock().unwrap().take().unwrap_or_default();
            counts.encode(encoder, AttachMode::TpBtf)
        }
    }

    fn sample() -> Counts {
        let mut summary = Summary::default();
        summary.transitions[1][8] = 4; // ESTABLISHED -> CLOSE_WAIT
        summary.slots[1][3] = 3; // 4-7 us
        summary.unknown[1] = 1;
        summary.sum_ns[1] = 15_000;
        summary.transitions[14][7] = 1; // a state the list does not name
        Counts {
            summary,
            recursion_misses: 2,
            ..Counts::default()
        }
    }

    fn exposed(openmetrics: bool) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Fixed(std::sync::Mutex::new(Some(sample())))));
        exposition(&registry, openmetrics).0.unwrap()
    }

    #[test]
    fn prometheus_text_format() {
        let text = exposed(false);
        for line in [
            "# TYPE tcpstates_state_duration_seconds histogram",
            "tcpstates_state_duration_seconds_bucket{state=\"ESTABLISHED\",le=\"4e-06\"} 0",
            "tcpstates_state_duration_seconds_bucket{state=\"ESTABLISHED\",le=\"8e-06\"} 3",
            "tcpstates_state_duration_seconds_bucket{state=\"ESTABLISHED\",le=\"+Inf\"} 3",
            "tcpstates_state_duration_seconds_sum{state=\"ESTABLISHED\"} 0.000015",
            "tcpstates_state_duration_seconds_count{state=\"ESTABLISHED\"} 3",
            "tcpstates_state_duration_seconds_count{state=\"SYN_SENT\"} 0",
            "tcpstates_state_duration_seconds_count{state=\"14\"} 0",
            "# TYPE tcpstates_transitions_total counter",
            "tcpstates_transitions_total{old_state=\"ESTABLISHED\",new_state=\"CLOSE_WAIT\"} 4",
            "tcpstates_transitions_total{old_state=\"14\",new_state=\"CLOSE\"} 1",
            "tcpstates_unknown_durations_total{state=\"ESTABLISHED\"} 1",
            "tcpstates_durations_before_trace_total{state=\"ESTABLISHED\"} 0",
            "tcpstates_recursion_misses_total 2",
            "tcpstates_ring_drops_total 0",
            "tcpstates_build_info{version=\"0.1.0\",attach_mode=\"tp-btf\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line} in\n{text}");
        }
        assert!(!text.contains("# EOF"));
        // 34 slots, the last of them +Inf.
        let buckets = text
            .lines()
            .filter(|l| l.starts_with("tcpstates_state_duration_seconds_bucket{state=\"LISTEN\""))
            .count();
        assert_eq!(buckets, SLOTS);
    }

    #[test]
    fn labelled_by_unit() {
        let mut a = Summary::default();
        a.transitions[7][2] = 2; // CLOSE -> SYN_SENT
        a.slots[2][5] = 2;
        let mut b = Summary::default();
        b.transitions[7][2] = 1;
        let counts = Counts {
            labelled: Some(ByLabel {
                by: crate::config::LabelBy::Unit,
                values: vec![("nginx.service".into(), a), ("other".into(), b)],
            }),
            ..Counts::default()
        };
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Fixed(std::sync::Mutex::new(Some(counts)))));
        let text = exposition(&registry, false).0.unwrap();
        for line in [
            "tcpstates_transitions_total{unit=\"nginx.service\",old_state=\"CLOSE\",new_state=\"SYN_SENT\"} 2",
            "tcpstates_transitions_total{unit=\"other\",old_state=\"CLOSE\",new_state=\"SYN_SENT\"} 1",
            "tcpstates_state_duration_seconds_count{unit=\"nginx.service\",state=\"CLOSE\"} 0",
            "tcpstates_unknown_durations_total{unit=\"other\",state=\"CLOSE\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line} in\n{text}");
        }
        // A label's histograms: only the states its sockets left.
        assert!(
            !text.contains("unit=\"nginx.service\",state=\"ESTABLISHED\""),
            "{text}"
        );
        assert!(!text.contains("{state="), "every series labelled: {text}");
    }

    #[test]
    fn openmetrics_when_asked() {
        let text = exposed(true);
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("# TYPE tcpstates_transitions counter\n"));
        assert!(text.contains("# UNIT tcpstates_state_duration_seconds seconds\n"));
    }
}
