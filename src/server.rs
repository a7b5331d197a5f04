//! The HTTP server: our own accept loop over hyper, serving the poem app.
//!
//! poem's `Server` has no header read timeout, no connection cap and retries
//! a failing `accept` at once (a full core spins once descriptors run out), so
//! connections are served here with hyper directly:
//! - a cap on open connections (`limits.max_connections`, lowered at start to
//!   fit the descriptor limit; the admin listener has its own small one, so a
//!   flood on the public port cannot lock admins out); a connection past it is
//!   answered 503 and closed at once, without a task;
//! - `accept` errors (EMFILE, ENFILE, ENOBUFS) back off from 5 ms to 1 s;
//! - `limits.header_timeout_ms`: a new connection's first request must
//!   arrive within it, and so must every HTTP/1.1 request head (hyper's header
//!   timeout, which also bounds the wait for the next keep-alive request) and
//!   a TLS handshake;
//! - `limits.idle_timeout_ms`: a connection with no request in flight for that
//!   long is closed, whatever else it sends (HTTP/2 PINGs, a stream's headers
//!   a byte at a time); a request in flight is never cut by it;
//! - TLS with rustls, certificate and key reloaded when their files change;
//! - a listener role on every request, so `/admin/*` can be kept to the
//!   admin listener.
//!
//! Body deadlines and authentication before the body live in the app's
//! outer layer (`api::Outer`), which sees the route.

use std::{
    convert::Infallible,
    future::Future,
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime},
};

use arc_swap::ArcSwap;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use poem::{
    endpoint::BoxEndpoint,
    http::uri::Scheme,
    web::{LocalAddr, RemoteAddr},
    Addr, Endpoint, Request, Response,
};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::{watch, OwnedSemaphorePermit, Semaphore},
};
use tokio_rustls::rustls;

use crate::metrics::Metrics;

/// Which listener a request arrived on; every request carries one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `listen`: everything, or everything but `/admin/*` when an admin
    /// listener is configured.
    Public,
    /// `admin_listen`.
    Admin,
}

/// Connection discipline, from `limits`.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// The most connections a listener may be configured for.
pub const MAX_CONNECTIONS: usize = 1 << 20;

/// How long connections get to finish their requests at shutdown.
const GRACE: Duration = Duration::from_secs(30);

/// Descriptors kept free for everything but client connections: the
/// database pool, probes, the overrides file, the certificate files.
const RESERVED_FDS: u64 = 128;

/// The process's soft limit on open file descriptors.
pub fn descriptor_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    (ok && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// `configured`, lowered so that connections cannot use up the descriptors
/// (then `accept` would fail and nothing else could open a file either).
pub fn connection_cap(configured: usize, fd_limit: Option<u64>) -> usize {
    let Some(limit) = fd_limit else {
        return configured;
    };
    let reserve = RESERVED_FDS.min(limit / 4);
    let fit = limit.saturating_sub(reserve).max(1);
    configured.min(usize::try_from(fit).unwrap_or(usize::MAX))
}

/// A rustls server config that follows its certificate and key files.
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<rustls::ServerConfig>,
    seen: std::sync::Mutex<Fingerprint>,
}

type Fingerprint = Option<[(u64, SystemTime, u64); 2]>;

fn fingerprint(cert: &Path, key: &Path) -> Fingerprint {
    let one = |p: &Path| {
        let m = std::fs::metadata(p).ok()?;
        #[cfg(unix)]
        let ino = std::os::unix::fs::MetadataExt::ino(&m);
        #[cfg(not(unix))]
        let ino = 0;
        Some((m.len(), m.modified().ok()?, ino))
    };
    Some([one(cert)?, one(key)?])
}

/// Why a certificate or key could not be used. Names the file, quotes
/// nothing of it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls.cert_path {0}: {1}")]
    Cert(PathBuf, String),
    #[error("tls.key_path {0}: {1}")]
    Key(PathBuf, String),
    #[error("tls: the certificate and key do not go together: {0}")]
    Pair(String),
}

impl Tls {
    /// Loads both files; fails when they cannot be used.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Tls>, TlsError> {
        let seen = fingerprint(cert, key);
        let config = Self::read(cert, key)?;
        Ok(Arc::new(Tls {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: ArcSwap::from_pointee(config),
            seen: std::sync::Mutex::new(seen),
        }))
    }

    fn read(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, TlsError> {
        const MAX: u64 = 1024 * 1024;
        let small = |p: &Path| std::fs::metadata(p).map(|m| m.len() <= MAX).unwrap_or(true);
        if !small(cert) {
            return Err(TlsError::Cert(cert.to_owned(), "over 1 MiB".into()));
        }
        if !small(key) {
            return Err(TlsError::Key(key.to_owned(), "over 1 MiB".into()));
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect::<Result<_, _>>())
            .map_err(|e| TlsError::Cert(cert.to_owned(), pem_error(&e)))?;
        if chain.is_empty() {
            return Err(TlsError::Cert(
                cert.to_owned(),
                "no PEM certificate in the file".into(),
            ));
        }
        let private = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| TlsError::Key(key.to_owned(), pem_error(&e)))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Pair(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, private)
            .map_err(|e| TlsError::Pair(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load_full())
    }

    /// Reloads the pair when either file changed. A pair that cannot be used
    /// is logged and the one in use stays. Blocking: call off the workers.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = fingerprint(&self.cert, &self.key);
        {
            let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if now.is_none() || *seen == now {
                return Ok(false);
            }
        }
        let config = Self::read(&self.cert, &self.key)?;
        self.current.store(Arc::new(config));
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = now;
        Ok(true)
    }

    /// Checks the files every second until `stop`; a change is loaded once
    /// the files have stayed the same for a second; a failed pair is logged
    /// once per change.
    pub async fn watch(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut failed: Fingerprint = None;
        let mut previous: Fingerprint = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => return,
            }
            let tls = self.clone();
            let settled = previous;
            let result = tokio::task::spawn_blocking(move || {
                let now = fingerprint(&tls.cert, &tls.key);
                // Files still being written (a chain cut between two
                // certificates, a key without its certificate yet) change
                // between two checks: wait until they stay the same.
                if now != settled {
                    return (Ok(false), now);
                }
                (tls.reload_if_changed(), now)
            })
            .await;
            if let Ok((_, now)) = &result {
                previous = *now;
            }
            match result {
                Ok((Ok(true), _)) => {
                    failed = None;
                    tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                }
                Ok((Ok(false), _)) | Err(_) => {}
                Ok((Err(e), now)) => {
                    if failed != now {
                        tracing::error!(error = %e, "Cannot use the changed TLS files; keeping the certificate in use");
                        failed = now;
                    }
                }
            }
        }
    }
}

fn pem_error(e: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error as E;
    match e {
        E::Io(io) => format!("cannot read: {}", io.kind()),
        E::NoItemsFound => "no PEM item of the expected kind in the file".into(),
        _ => "not a valid PEM file".into(),
    }
}

/// Milliseconds since `epoch`, for stamps that fit in an atomic.
fn millis_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_millis() as u64
}

/// What a connection's watchdog reads: requests in flight and when the last
/// one ended. Kept by a guard in the service, so a cancelled request counts
/// as ended too.
struct ConnState {
    epoch: Instant,
    started: AtomicU64,
    in_flight: AtomicU64,
    /// When the last request ended, in ms since `epoch`.
    last_end: AtomicU64,
    /// Wakes the watchdog at the connection's first request.
    first: tokio::sync::Notify,
}

struct InFlight(Arc<ConnState>);

/// Two counters and a clock read per request. The watchdog is woken only
/// by a connection's first request (which ends the header deadline); after
/// that it reads the counters when its own deadline comes, so a request
/// costs it nothing.
impl InFlight {
    fn start(state: &Arc<ConnState>) -> Self {
        if state.started.fetch_add(1, Ordering::Relaxed) == 0 {
            state.first.notify_one();
        }
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let s = &self.0;
        s.last_end.store(millis_since(s.epoch), Ordering::Relaxed);
        // Release: a watchdog that sees the request ended sees its end time.
        s.in_flight.fetch_sub(1, Ordering::Release);
    }
}

/// Keeps `imroute_connections_open` right on every path out, panics included.
struct OpenGauge(prometheus::IntGauge);

impl OpenGauge {
    fn new(gauge: &prometheus::IntGauge) -> Self {
        gauge.inc();
        OpenGauge(gauge.clone())
    }
}

impl Drop for OpenGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

type App = Arc<BoxEndpoint<'static, Response>>;

struct Shared {
    app: App,
    limits: ConnLimits,
    tls: Option<Arc<Tls>>,
    metrics: Arc<Metrics>,
    epoch: Instant,
}

/// Connections the admin listener takes at once, apart from the public cap.
const ADMIN_CONNECTIONS: usize = 64;

/// A bound listener and its role.
pub struct Bound {
    pub listener: TcpListener,
    pub role: Role,
    /// Client networks allowed to connect at all; empty: any. Others are
    /// closed right after `accept`, before they take a slot or a handshake.
    pub allow: Vec<ipnet::IpNet>,
}

/// Serves `app` on every listener until `shutdown` completes, then stops
/// accepting and gives open connections up to 30 s to finish.
pub async fn serve<E>(
    app: E,
    listeners: Vec<Bound>,
    limits: ConnLimits,
    tls: Option<Arc<Tls>>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()>
where
    E: Endpoint + 'static,
{
    let shared = Arc::new(Shared {
        app: Arc::new(poem::EndpointExt::boxed(
            poem::EndpointExt::map_to_response(app),
        )),
        limits,
        tls: tls.clone(),
        metrics,
        epoch: Instant::now(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut loops = Vec::new();
    let mut pools = Vec::new();
    for bound in listeners {
        let permits = match bound.role {
            Role::Public => limits.max_connections,
            Role::Admin => ADMIN_CONNECTIONS.min(limits.max_connections),
        }
        .clamp(1, MAX_CONNECTIONS);
        let slots = Arc::new(Semaphore::new(permits));
        pools.push((slots.clone(), permits as u32));
        loops.push(tokio::spawn(accept_loop(
            bound,
            slots,
            shared.clone(),
            stop_rx.clone(),
        )));
    }
    let reloader = tls.map(|tls| tokio::spawn(tls.watch(stop_rx.clone())));
    shutdown.await;
    let _ = stop_tx.send(true);
    for l in loops {
        let _ = l.await;
    }
    if let Some(r) = reloader {
        let _ = r.await;
    }
    // Every open connection holds a permit: all back means all closed.
    let all_back = futures_util::future::join_all(
        pools
            .iter()
            .map(|(slots, permits)| slots.acquire_many(*permits)),
    );
    if tokio::time::timeout(GRACE + Duration::from_secs(1), all_back)
        .await
        .is_err()
    {
        tracing::warn!("Connections still open after the shutdown grace period; closing them");
    }
    Ok(())
}

/// `accept` errors that concern one connection only: go on at once.
fn per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

async fn accept_loop(
    bound: Bound,
    slots: Arc<Semaphore>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    const FIRST: Duration = Duration::from_millis(5);
    const MOST: Duration = Duration::from_secs(1);
    let Bound {
        listener,
        role,
        allow,
    } = bound;
    let local = listener.local_addr().ok();
    let mut backoff = FIRST;
    let mut last_warning: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.changed() => return,
        };
        match accepted {
            Ok((stream, remote)) => {
                backoff = FIRST;
                if !allow.is_empty()
                    && !allow
                        .iter()
                        .any(|n| n.contains(&remote.ip().to_canonical()))
                {
                    shared
                        .metrics
                        .connections_closed
                        .with_label_values(&["not_allowed"])
                        .inc();
                    continue;
                }
                match slots.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let shared = shared.clone();
                        let stop = stop.clone();
                        let local = local.unwrap_or(remote);
                        tokio::spawn(connection(
                            stream, local, remote, role, shared, permit, stop,
                        ));
                    }
                    Err(_) => over_limit(stream, &shared),
                }
            }
            Err(e) if per_connection(&e) => {}
            Err(e) => {
                // Out of descriptors or buffers: wait for some to come back
                // instead of retrying at once.
                if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    tracing::warn!(error = %e, retry_ms = backoff.as_millis() as u64, "Cannot accept connections; backing off");
                    last_warning = Some(Instant::now());
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(MOST);
            }
        }
    }
}

/// A connection past the cap: a short 503 when it is plain HTTP (one write
/// that never waits), then closed.
fn over_limit(stream: TcpStream, shared: &Shared) {
    shared
        .metrics
        .connections_closed
        .with_label_values(&["over_limit"])
        .inc();
    if shared.tls.is_none() {
        const BODY: &str = r#"{"status":503,"code":"too_many_connections","msg":"the server has too many open connections; retry shortly"}"#;
        let answer = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json; charset=utf-8\r\n\
             x-content-type-options: nosniff\r\nretry-after: 1\r\nconnection: close\r\n\
             content-length: {}\r\n\r\n{BODY}",
            BODY.len()
        );
        let _ = stream.try_write(answer.as_bytes());
    }
    drop(stream);
}

async fn connection(
    stream: TcpStream,
    local: SocketAddr,
    remote: SocketAddr,
    role: Role,
    shared: Arc<Shared>,
    _permit: OwnedSemaphorePermit,
    stop: watch::Receiver<bool>,
) {
    let _open = OpenGauge::new(&shared.metrics.connections_open);
    let _ = stream.set_nodelay(true);
    let ends = Ends {
        local,
        remote,
        role,
    };
    match &shared.tls {
        None => serve_io(SmallWrites(stream), Scheme::HTTP, ends, &shared, stop).await,
        Some(tls) => {
            let handshake = tls.acceptor().accept(stream);
            match tokio::time::timeout(shared.limits.header_timeout, handshake).await {
                Ok(Ok(tls_stream)) => {
                    serve_io(tls_stream, Scheme::HTTPS, ends, &shared, stop).await
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, %remote, "TLS handshake failed");
                }
                Err(_) => shared
                    .metrics
                    .connections_closed
                    .with_label_values(&["tls_handshake"])
                    .inc(),
            }
        }
    }
}

/// A connection's two addresses and the listener's role.
#[derive(Clone, Copy)]
struct Ends {
    local: SocketAddr,
    remote: SocketAddr,
    role: Role,
}

async fn serve_io<I>(
    io: I,
    scheme: Scheme,
    Ends {
        local,
        remote,
        role,
    }: Ends,
    shared: &Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = shared.limits;
    let epoch = shared.epoch;
    let state = Arc::new(ConnState {
        epoch,
        started: AtomicU64::new(0),
        in_flight: AtomicU64::new(0),
        last_end: AtomicU64::new(millis_since(epoch)),
        first: tokio::sync::Notify::new(),
    });
    let app = shared.app.clone();
    let requests = state.clone();
    let service = service_fn(move |req: hyper::Request<Incoming>| {
        let app = app.clone();
        let scheme = scheme.clone();
        let guard = InFlight::start(&requests);
        async move {
            let _guard = guard;
            let mut req: Request = (
                req,
                LocalAddr(Addr::SocketAddr(local)),
                RemoteAddr(Addr::SocketAddr(remote)),
                scheme,
            )
                .into();
            req.extensions_mut().insert(role);
            let resp: hyper::Response<_> = app.get_response(req).await.into();
            Ok::<_, Infallible>(resp)
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // Request heads past 64 KiB are 431, not buffered.
        .max_buf_size(64 * 1024)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        // Each stream may buffer a body: few streams per connection.
        .max_concurrent_streams(32)
        .max_header_list_size(64 * 1024);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    // Closes a connection whose first request does not arrive within the
    // header timeout (hyper's own clock starts only once it has detected
    // HTTP/1, and HTTP/2 has none), or that has had no request in flight for
    // the idle timeout. Bytes alone (PINGs, headers dribbled in) keep
    // nothing open; a request in flight is never cut.
    let opened = millis_since(epoch);
    let watchdog = async {
        let header = limits.header_timeout.as_millis() as u64;
        let idle = limits.idle_timeout.as_millis() as u64;
        loop {
            let now = millis_since(epoch);
            let deadline = if state.started.load(Ordering::Relaxed) == 0 {
                if now >= opened + header {
                    return "header_timeout";
                }
                opened + header
            } else if state.in_flight.load(Ordering::Acquire) > 0 {
                // A request in flight is never cut: look again later.
                now + idle
            } else {
                let deadline = state.last_end.load(Ordering::Relaxed) + idle;
                if now >= deadline {
                    return "idle_timeout";
                }
                deadline
            };
            let wait = Duration::from_millis(deadline.saturating_sub(now).max(1));
            if state.started.load(Ordering::Relaxed) == 0 {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = state.first.notified() => {}
                }
            } else {
                tokio::time::sleep(wait).await;
            }
        }
    };
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                let timeout = e
                    .downcast_ref::<hyper::Error>()
                    .is_some_and(hyper::Error::is_timeout);
                if timeout {
                    // hyper's header clock: on a connection that finished a
                    // request, mostly the wait for the next one.
                    let reason = if state.started.load(Ordering::Relaxed) == 0 {
                        "header_timeout"
                    } else {
                        "keepalive_timeout"
                    };
                    shared.metrics.connections_closed.with_label_values(&[reason]).inc();
                }
            }
            return;
        }
        reason = watchdog => {
            shared.metrics.connections_closed.with_label_values(&[reason]).inc();
            return;
        }
        _ = stop.changed() => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(GRACE, conn).await;
}

/// Most bytes of a vectored write that [`SmallWrites`] copies into one
/// buffer instead of handing the kernel several pieces.
const COALESCE: usize = 4 * 1024;

/// A plain TCP connection that sends a small vectored write (hyper's
/// response head and a short body) as one plain write: one `send` of one
/// piece costs the kernel measurably less than a `writev` of two, and most
/// answers are a few hundred bytes. Larger writes stay vectored, so a large
/// body is never copied, and nothing is kept between writes (hyper's own
/// alternative, flattening, copies every body into a per-connection buffer
/// that keeps the size of the largest answer). TLS connections do without:
/// rustls already gathers the pieces into one record.
struct SmallWrites<I>(I);

impl<I: AsyncRead + Unpin> AsyncRead for SmallWrites<I> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for SmallWrites<I> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        let total = bufs.iter().map(|b| b.len()).sum::<usize>();
        if bufs.len() > 1 && total <= COALESCE {
            thread_local! {
                /// One worker's scratch buffer, reused: nothing per connection.
                static ONE: std::cell::RefCell<Vec<u8>> =
                    std::cell::RefCell::new(Vec::with_capacity(COALESCE));
            }
            let sent = ONE.with(|one| {
                // Taken only here and released before returning; should a
                // stream below ever write through this one, it writes as is.
                let mut one = one.try_borrow_mut().ok()?;
                one.clear();
                for b in bufs {
                    one.extend_from_slice(b);
                }
                // A partial write counts bytes of the concatenation, as a
                // vectored write would. Pending: nothing was written, and
                // hyper offers the same pieces again.
                Some(std::pin::Pin::new(&mut self.0).poll_write(cx, &one))
            });
            if let Some(sent) = sent {
                return sent;
            }
        }
        std::pin::Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream that takes at most `step` bytes per write and answers
    /// Pending every other time; it records the bytes, the plain writes and
    /// the vectored writes of more than one piece.
    struct Stingy {
        out: Vec<u8>,
        step: usize,
        polls: usize,
        plain: usize,
        vectored: usize,
    }

    impl AsyncRead for Stingy {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Stingy {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            self.polls += 1;
            if self.polls % 2 == 1 {
                return std::task::Poll::Pending;
            }
            self.plain += 1;
            let n = buf.len().min(self.step);
            self.out.extend_from_slice(&buf[..n]);
            std::task::Poll::Ready(Ok(n))
        }
        fn poll_write_vectored(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> std::task::Poll<io::Result<usize>> {
            self.polls += 1;
            if self.polls % 2 == 1 {
                return std::task::Poll::Pending;
            }
            if bufs.iter().filter(|b| !b.is_empty()).count() > 1 {
                self.vectored += 1;
            }
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.step - n);
                self.out.extend_from_slice(&b[..take]);
                n += take;
                if n == self.step {
                    break;
                }
            }
            std::task::Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// Writes `pieces` as hyper's queue does (vectored, advancing by what
    /// each write took, offering the same pieces again after Pending) and
    /// returns what the stream received and how it was called.
    fn write_all(pieces: &[Vec<u8>], step: usize) -> (Vec<u8>, usize, usize) {
        let mut io = SmallWrites(Stingy {
            out: Vec::new(),
            step,
            polls: 0,
            plain: 0,
            vectored: 0,
        });
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let (mut piece, mut at) = (0, 0);
        while piece < pieces.len() {
            let slices: Vec<io::IoSlice> = std::iter::once(&pieces[piece][at..])
                .chain(pieces[piece + 1..].iter().map(|p| &p[..]))
                .map(io::IoSlice::new)
                .collect();
            match std::pin::Pin::new(&mut io).poll_write_vectored(&mut cx, &slices) {
                std::task::Poll::Pending => continue,
                std::task::Poll::Ready(n) => {
                    let mut n = n.unwrap();
                    assert!(n > 0);
                    while n > 0 {
                        let left = pieces[piece].len() - at;
                        if n >= left {
                            n -= left;
                            piece += 1;
                            at = 0;
                        } else {
                            at += n;
                            n = 0;
                        }
                    }
                }
            }
        }
        (io.0.out, io.0.plain, io.0.vectored)
    }

    #[test]
    fn small_writes_send_every_byte_once_in_order() {
        let head: Vec<u8> = (0..200u32).map(|i| i as u8).collect();
        for body_len in [1usize, 100, COALESCE - 200, COALESCE - 199, 3 * COALESCE] {
            let body: Vec<u8> = (0..body_len).map(|i| (i * 7 % 251) as u8).collect();
            let pieces = vec![head.clone(), body.clone(), b"\r\n".to_vec()];
            let whole: Vec<u8> = pieces.concat();
            for step in [1usize, 3, 64, 1 << 20] {
                let (out, plain, vectored) = write_all(&pieces, step);
                assert_eq!(out, whole, "body {body_len}, step {step}");
                if whole.len() <= COALESCE {
                    // Small: plain writes, never several pieces at once.
                    assert_eq!(vectored, 0, "body {body_len}, step {step}");
                    assert!(plain > 0);
                } else {
                    assert!(vectored > 0, "body {body_len}, step {step}");
                }
            }
        }
    }

    #[test]
    fn the_connection_cap_fits_the_descriptor_limit() {
        assert_eq!(connection_cap(10_000, None), 10_000);
        assert_eq!(connection_cap(10_000, Some(1024)), 896);
        assert_eq!(connection_cap(100, Some(1024)), 100);
        assert_eq!(connection_cap(10_000, Some(64)), 48);
        assert_eq!(connection_cap(10_000, Some(0)), 1);
        assert!(descriptor_limit().is_none_or(|l| l > 0));
    }
}
