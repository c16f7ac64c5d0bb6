//! The edge's accept loop: hyper's HTTP/1 connection with a header-read
//! timeout, a cap on open connections that keeps room for probes, and a drain
//! bounded by a deadline.
//!
//! `axum::serve` has none of these: a client sending headers at 1 byte/s, or
//! a thousand idle sockets, held their connections (and file descriptors) for
//! good, and one half-sent request held up a shutdown.
//!
//! - Each connection is a task; the loop keeps its abort handle and whether a
//!   request is in progress on it ([`Busy`]).
//! - Past `max_connections`, the oldest connection with no request in progress
//!   (idle keep-alive, or headers not complete yet) is closed to make room.
//!   When every connection is busy, up to `probe_connections` more are accepted
//!   and serve only probes ([`ProbeOnly`]); past that a connection is closed at
//!   once.
//! - On shutdown the listener closes, idle connections close, in-flight
//!   requests get `shutdown_timeout` to finish, and what is left is dropped.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};
use tower::ServiceExt;

/// Limits of the accept loop (from [`crate::EdgeConfig`]).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub probe_connections: usize,
    pub header_read_timeout: Duration,
    pub shutdown_timeout: Duration,
}

impl ConnectionLimits {
    pub fn of(config: &crate::EdgeConfig) -> Self {
        Self {
            max_connections: config.max_connections,
            probe_connections: config.probe_connections,
            header_read_timeout: Duration::from_millis(config.header_read_timeout_ms),
            shutdown_timeout: Duration::from_millis(config.shutdown_timeout_ms),
        }
    }
}

/// On a request that came on a connection past `max_connections`: only
/// probes are served on it (see [`crate::layers`]).
#[derive(Debug, Clone, Copy)]
pub struct ProbeOnly;

/// A limit that is logged once per episode (hits less than [`EPISODE_GAP`]
/// apart) and counted in `breakwater_edge_limit_hits_total` at every hit.
#[derive(Debug)]
pub(crate) struct LimitEpisode {
    limit: &'static str,
    start: Instant,
    /// Milliseconds since `start` of the last hit; `u64::MAX` before the first.
    last_hit: AtomicU64,
}

/// Hits closer than this belong to one episode, logged once.
const EPISODE_GAP: Duration = Duration::from_secs(10);

impl LimitEpisode {
    pub(crate) fn new(limit: &'static str) -> Self {
        Self { limit, start: Instant::now(), last_hit: AtomicU64::new(u64::MAX) }
    }

    pub(crate) fn hit(&self, detail: &str) {
        metrics::counter!("breakwater_edge_limit_hits_total", "limit" => self.limit).increment(1);
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        let last = self.last_hit.swap(now, Ordering::Relaxed);
        let gap = u64::try_from(EPISODE_GAP.as_millis()).unwrap_or(u64::MAX);
        if last == u64::MAX || now.saturating_sub(last) >= gap {
            tracing::warn!(limit = self.limit, detail, "edge limit reached (logged once per episode)");
        }
    }
}

/// The limits the accept loop counts.
struct Episodes {
    connections: LimitEpisode,
    probe_only: LimitEpisode,
    refused: LimitEpisode,
    accept: LimitEpisode,
    header_timeout: LimitEpisode,
}

/// Counts a request in progress on a connection while it lives.
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn enter(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Open {
    /// Accept order, to close the oldest idle connection first.
    seq: u64,
    busy: Arc<AtomicUsize>,
    abort: AbortHandle,
}

/// hyper's limits, past which it answers 431 itself (with no body).
const HYPER_MAX_HEADERS: usize = 4 * crate::layers::HEADER_FIELDS_LIMIT;
const HYPER_MAX_BUF: usize = 16 * crate::layers::HEADER_BYTES_LIMIT;

/// After a failed accept (out of file descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `router` on `listener` until `shutdown` resolves, then drains
/// within `limits.shutdown_timeout`.
pub async fn serve(
    router: Router,
    listener: TcpListener,
    limits: ConnectionLimits,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let episodes = Arc::new(Episodes {
        connections: LimitEpisode::new("connections"),
        probe_only: LimitEpisode::new("probe_only"),
        refused: LimitEpisode::new("refused"),
        accept: LimitEpisode::new("accept"),
        header_timeout: LimitEpisode::new("header_timeout"),
    });
    let (drain, draining) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut open: HashMap<tokio::task::Id, Open> = HashMap::new();
    let mut seq = 0_u64;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(done) = tasks.join_next_with_id() => {
                let id = match done { Ok((id, ())) => id, Err(e) => e.id() };
                open.remove(&id);
            }
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        episodes.accept.hit(&e.to_string());
                        // Out of file descriptors (max_connections above `ulimit -n`): free one
                        // and accept again once its task is dropped, so the queue keeps moving.
                        if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) && close_oldest_idle(&mut open) {
                            tokio::task::yield_now().await;
                        } else {
                            tokio::time::sleep(ACCEPT_BACKOFF).await;
                        }
                        continue;
                    }
                };
                let probe_only = if open.len() < limits.max_connections {
                    false
                } else if close_oldest_idle(&mut open) {
                    episodes.connections.hit("closed the oldest idle connection to make room");
                    false
                } else if open.len() < limits.max_connections + limits.probe_connections {
                    episodes.probe_only.hit("every connection is busy; this one serves probes only");
                    true
                } else {
                    episodes.refused.hit("every connection is busy and the probe reserve is full");
                    continue;
                };
                let busy = Arc::new(AtomicUsize::new(0));
                let connection = Connection {
                    peer,
                    router: router.clone(),
                    busy: busy.clone(),
                    probe_only,
                    header_read_timeout: limits.header_read_timeout,
                    episodes: episodes.clone(),
                    tls: tls.clone(),
                };
                let abort = tasks.spawn(connection.run(tcp, draining.clone()));
                seq += 1;
                open.insert(abort.id(), Open { seq, busy, abort });
            }
        }
    }
    drop(listener);
    drain.send_replace(true);
    let drained =
        tokio::time::timeout(limits.shutdown_timeout, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            connections = tasks.len(),
            timeout_ms = u64::try_from(limits.shutdown_timeout.as_millis()).unwrap_or(u64::MAX),
            "requests still in progress at the shutdown deadline; closing their connections"
        );
        tasks.shutdown().await;
    }
}

/// Closes the oldest connection with no request in progress; false when all are busy.
fn close_oldest_idle(open: &mut HashMap<tokio::task::Id, Open>) -> bool {
    let oldest =
        open.iter().filter(|(_, c)| c.busy.load(Ordering::SeqCst) == 0).min_by_key(|(_, c)| c.seq).map(|(id, _)| *id);
    match oldest.and_then(|id| open.remove(&id)) {
        Some(connection) => {
            connection.abort.abort();
            true
        }
        None => false,
    }
}

struct Connection {
    peer: SocketAddr,
    router: Router,
    busy: Arc<AtomicUsize>,
    probe_only: bool,
    header_read_timeout: Duration,
    episodes: Arc<Episodes>,
    /// `[tls]`: the connection is TLS first.
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Connection {
    async fn run(self, tcp: TcpStream, draining: watch::Receiver<bool>) {
        // Small responses: without TCP_NODELAY, Nagle and the client's delayed ACK
        // add up to 40 ms to a response written in more than one piece.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(cause = %e, "cannot set TCP_NODELAY");
        }
        match self.tls.clone() {
            None => self.serve(tcp, draining).await,
            // The handshake counts against the header timeout: a client that never
            // finishes it holds its connection no longer than a slow header would.
            Some(acceptor) => match tokio::time::timeout(self.header_read_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => self.serve(tls, draining).await,
                Ok(Err(e)) => tracing::debug!(cause = %e, peer = %self.peer, "TLS handshake failed"),
                Err(_) => self.episodes.header_timeout.hit("a TLS handshake did not finish in time"),
            },
        }
    }

    async fn serve<S>(self, io: S, mut draining: watch::Receiver<bool>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Self { peer, router, busy, probe_only, header_read_timeout, episodes, tls: _ } = self;
        let tcp = EdgeSocket::new(io);
        let (total_read, calls) = (tcp.read_total.clone(), tcp.calls.clone());
        // Bytes read when the last request ended: more at a header timeout means
        // a request was half-sent (slowloris), not an idle keep-alive.
        let (read, read_at_rest) = (tcp.read_total.clone(), Arc::new(AtomicU64::new(0)));
        let at_rest = read_at_rest.clone();
        let service = hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
            let busy = Busy::enter(&busy);
            calls.fetch_add(1, Ordering::SeqCst);
            let (read, at_rest) = (read.clone(), at_rest.clone());
            request.extensions_mut().insert(ConnectInfo(peer));
            if probe_only {
                request.extensions_mut().insert(ProbeOnly);
            }
            let router = router.clone();
            async move {
                let _busy = busy;
                let response = router.oneshot(request).await;
                at_rest.store(read.load(Ordering::Relaxed), Ordering::Relaxed);
                response
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        // The header timer starts when hyper waits for a request (connected, or
        // the previous answer sent), so it also closes idle keep-alive connections.
        builder.timer(TokioTimer::new()).header_read_timeout(header_read_timeout);
        // Above the edge's own header limits, so most oversized requests reach
        // the router and get a 431 with an RFC 7807 body.
        builder.max_headers(HYPER_MAX_HEADERS).max_buf_size(HYPER_MAX_BUF);
        let connection = builder.serve_connection(TokioIo::new(tcp), service);
        tokio::pin!(connection);
        let served = tokio::select! {
            served = connection.as_mut() => served,
            () = async { drop(draining.wait_for(|draining| *draining).await) } => {
                // Closes the connection now if idle, else after the request in progress.
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        match served {
            Ok(()) => {}
            Err(e) if e.is_timeout() && total_read.load(Ordering::Relaxed) > read_at_rest.load(Ordering::Relaxed) => {
                episodes.header_timeout.hit("a request's headers did not arrive in time");
            }
            // An idle keep-alive connection closed: the normal end of one.
            Err(e) if e.is_timeout() => {}
            Err(e) => tracing::debug!(cause = %e, %peer, "connection ended with an error"),
        }
    }
}

/// The client's socket as hyper sees it. It counts the bytes read (to tell a
/// half-sent request from an idle connection), and gives hyper's own error
/// answers (400 for a bad request line or header, 414, 431 past hyper's
/// limits), which have no body, an RFC 7807 body: hyper offers no hook for
/// them, and they are the only answers written when every request the
/// service was called for has been answered.
struct EdgeSocket<S> {
    inner: S,
    read_total: Arc<AtomicU64>,
    /// Requests the service was called for.
    calls: Arc<AtomicU64>,
    /// Final answers whose head was written.
    answered: u64,
    /// The replacement answer, still to be written.
    pending: Vec<u8>,
}

impl<S: tokio::io::AsyncWrite + Unpin> EdgeSocket<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            read_total: Arc::new(AtomicU64::new(0)),
            calls: Arc::new(AtomicU64::new(0)),
            answered: 0,
            pending: Vec::new(),
        }
    }

    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let Self { inner, pending, .. } = self;
        while !pending.is_empty() {
            match Pin::new(&mut *inner).poll_write(cx, pending) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => drop(pending.drain(..n)),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> tokio::io::AsyncRead for EdgeSocket<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len().saturating_sub(before);
        self.read_total.fetch_add(read as u64, Ordering::Relaxed);
        polled
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for EdgeSocket<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        if let Poll::Ready(Err(e)) = self.poll_pending(cx) {
            return Poll::Ready(Err(e));
        }
        if !self.pending.is_empty() {
            return Poll::Pending;
        }
        // hyper writes each head at the start of a write (see `is_write_vectored`).
        if buf.starts_with(b"HTTP/1.1 ") && !buf.starts_with(b"HTTP/1.1 1") {
            if self.answered == self.calls.load(Ordering::SeqCst)
                && let Some(answer) = crate::error::below_router_answer(buf)
            {
                // hyper's own error answer (head only, connection closing): ours instead.
                self.pending = answer;
                if let Poll::Ready(Err(e)) = self.poll_pending(cx) {
                    return Poll::Ready(Err(e));
                }
                return Poll::Ready(Ok(buf.len()));
            }
            self.answered += 1;
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    /// Not vectored: hyper then writes each answer from one buffer, its head
    /// first, which is what `poll_write` recognises.
    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.poll_pending(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut self.inner).poll_flush(cx),
            other => other,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.poll_pending(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut self.inner).poll_shutdown(cx),
            other => other,
        }
    }
}
