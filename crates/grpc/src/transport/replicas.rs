//! The replicas of one split-mode component, as one [`tower::Service`]: every
//! address its URLs resolve to gets a lazy tonic channel, calls go round-robin
//! over them, and a call that a replica certainly did not take (the connection
//! was refused, the stream refused) goes to the next one. A call marked
//! [`Idempotent`] is also retried when its replica failed after taking it.
//!
//! Addresses come from a comma-separated URL list; a host name counts for every
//! address it resolves to (a headless Service lists one per ready pod), looked
//! up again every `resolve_every`.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use tokio::time::Instant;
use tonic::body::Body;
use tonic::transport::{Channel, ClientTlsConfig};
use tower::{BoxError, ServiceExt as _};

use crate::GrpcError;

/// Marks a call (in its request extensions) that may be sent again when the
/// replica that took it failed before answering: the component applies it
/// once however often it arrives (it is a read, or it sets absolute values).
#[derive(Clone, Copy, Debug)]
pub struct Idempotent;

/// How often names are looked up again while none resolved to an address.
const EMPTY_RESOLVE_EVERY: Duration = Duration::from_millis(500);

/// How long a replica that refused a connection is tried only after the others.
const SKIP_FOR: Duration = Duration::from_secs(2);

/// One URL of the list: where to look its addresses up.
#[derive(Clone, Debug)]
struct Target {
    scheme: String,
    host: String,
    port: u16,
}

impl Target {
    fn parse(url: &str) -> Result<Self, GrpcError> {
        let invalid = || GrpcError::Endpoint(url.to_owned());
        let uri: http::Uri = url.parse().map_err(|_| invalid())?;
        let scheme = uri.scheme_str().filter(|s| matches!(*s, "http" | "https")).ok_or_else(invalid)?;
        let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(invalid)?;
        let port = uri.port_u16().unwrap_or(if scheme == "https" { 443 } else { 80 });
        Ok(Self { scheme: scheme.to_owned(), host: host.trim_matches(['[', ']']).to_owned(), port })
    }

    /// Its addresses now; an IP literal without a lookup.
    async fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, self.port)]);
        }
        let mut found: Vec<SocketAddr> = tokio::net::lookup_host((self.host.as_str(), self.port)).await?.collect();
        found.sort_unstable();
        found.dedup();
        Ok(found)
    }
}

struct Replica {
    /// Index of the target it was resolved from.
    target: usize,
    addr: SocketAddr,
    channel: Channel,
    /// Tried after the others until then: it refused a connection.
    skip_until: Option<Instant>,
}

#[derive(Default)]
struct State {
    replicas: Vec<Replica>,
    resolved_at: Option<Instant>,
    resolving: bool,
    /// Whether the last lookup failed (logged once per failing streak).
    failing: bool,
}

/// The replicas of one component; cheap to clone (one shared state).
#[derive(Clone)]
pub(crate) struct Replicas {
    inner: Arc<Inner>,
}

struct Inner {
    component: &'static str,
    targets: Vec<Target>,
    connect_timeout: Duration,
    resolve_every: Duration,
    /// For `https://` targets; each replica's certificate must name the target's host.
    tls: Option<ClientTlsConfig>,
    state: Mutex<State>,
    next: AtomicUsize,
}

impl Replicas {
    /// The replicas of `component` at `urls` (comma-separated `http://host:port`).
    /// Nothing is looked up or connected until the first call.
    pub(crate) fn new(
        component: &'static str,
        urls: &str,
        connect_timeout: Duration,
        resolve_every: Duration,
        tls: Option<ClientTlsConfig>,
    ) -> Result<Self, GrpcError> {
        let targets = urls
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(Target::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if targets.is_empty() {
            return Err(GrpcError::Endpoint(urls.to_owned()));
        }
        // Checked by the configuration too; never a surprise at the first call.
        if tls.is_none() && targets.iter().any(|t| t.scheme == "https") {
            return Err(GrpcError::Endpoint(format!("{urls} (https:// needs a CA to trust)")));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                component,
                targets,
                connect_timeout,
                resolve_every,
                tls,
                state: Mutex::new(State::default()),
                next: AtomicUsize::new(0),
            }),
        })
    }

    /// Sends `request` to the next replica, and on to the others while the
    /// failure allows it (see the module doc).
    pub(crate) async fn call(self, request: http::Request<Body>) -> Result<http::Response<Body>, BoxError> {
        self.inner.refresh().await;
        let idempotent = request.extensions().get::<Idempotent>().is_some();
        let (parts, body) = request.into_parts();
        // Buffered so that it can be sent again: a unary call's body is one message.
        let body = body.collect().await.map_err(BoxError::from)?.to_bytes();
        let order = self.inner.order();
        if order.is_empty() {
            return Err(format!("no replica of {} resolved", self.inner.component).into());
        }
        let mut last_error: Option<BoxError> = None;
        let mut order = order.into_iter().peekable();
        while let Some((addr, channel)) = order.next() {
            let request = rebuild(&parts, &body);
            let answer = match channel.ready_oneshot().await {
                Ok(channel) => channel.oneshot(request).await,
                Err(e) => Err(e),
            };
            let error = match answer {
                Ok(response) => {
                    self.inner.mark(addr, None);
                    return Ok(response);
                }
                Err(error) => BoxError::from(error),
            };
            let reason = if never_sent(error.as_ref()) {
                self.inner.mark(addr, Some(Instant::now() + SKIP_FOR));
                "not_sent"
            } else if idempotent {
                "idempotent"
            } else {
                return Err(error);
            };
            if order.peek().is_some() {
                metrics::counter!("breakwater_edge_component_retries_total", "component" => self.inner.component, "reason" => reason)
                    .increment(1);
                tracing::debug!(component = self.inner.component, %addr, reason, cause = %error, "trying the next replica");
            }
            last_error = Some(error);
        }
        Err(last_error.unwrap_or_else(|| "no replica answered".into()))
    }
}

impl Inner {
    /// Looks the targets up on the first call (waiting for it) and when the
    /// last lookup is older than `resolve_every` (in the background); with no
    /// address known (a headless Service with no ready pod yet), every 500 ms
    /// at most, so the first pod to become ready is called soon.
    async fn refresh(self: &Arc<Self>) {
        let first = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let stale_after = if state.replicas.is_empty() {
                self.resolve_every.min(EMPTY_RESOLVE_EVERY)
            } else {
                self.resolve_every
            };
            match state.resolved_at {
                None => true,
                Some(at) if !state.resolving && at.elapsed() >= stale_after => {
                    state.resolving = true;
                    let inner = self.clone();
                    tokio::spawn(async move { inner.resolve().await });
                    false
                }
                Some(_) => false,
            }
        };
        if first {
            self.resolve().await;
        }
    }

    /// Looks every target up and keeps the channels of addresses still listed. A
    /// target whose lookup fails keeps its addresses: DNS trouble is no reason
    /// to stop calling replicas that answered a moment ago.
    async fn resolve(&self) {
        let mut found: Vec<Option<Vec<SocketAddr>>> = Vec::with_capacity(self.targets.len());
        let mut failure = None;
        for target in &self.targets {
            match target.resolve().await {
                Ok(addrs) if !addrs.is_empty() => found.push(Some(addrs)),
                Ok(_) => {
                    failure = Some(format!("{} has no address", target.host));
                    found.push(None);
                }
                Err(e) => {
                    failure = Some(format!("{}: {e}", target.host));
                    found.push(None);
                }
            }
        }
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut old: Vec<Replica> = std::mem::take(&mut state.replicas);
        let before: HashSet<SocketAddr> = old.iter().map(|r| r.addr).collect();
        let mut replicas = Vec::new();
        let mut seen = HashSet::new();
        for (index, addrs) in found.into_iter().enumerate() {
            let Some(addrs) = addrs else {
                replicas.extend(old.extract_if(.., |r| r.target == index));
                continue;
            };
            for addr in addrs {
                if !seen.insert(addr) {
                    continue;
                }
                match old.iter().position(|r| r.addr == addr) {
                    Some(at) => replicas.push(old.swap_remove(at)),
                    None => match self.channel(index, addr) {
                        Ok(channel) => replicas.push(Replica { target: index, addr, channel, skip_until: None }),
                        Err(e) => {
                            tracing::warn!(component = self.component, %addr, cause = %e, "replica address unusable")
                        }
                    },
                }
            }
        }
        let after: HashSet<SocketAddr> = replicas.iter().map(|r| r.addr).collect();
        if before != after || state.resolved_at.is_none() {
            let addrs: Vec<String> = replicas.iter().map(|r| r.addr.to_string()).collect();
            tracing::info!(component = self.component, replicas = ?addrs, "component replicas");
        }
        metrics::gauge!("breakwater_edge_component_replicas", "component" => self.component).set(replicas.len() as f64);
        if let Some(cause) = &failure
            && !state.failing
        {
            tracing::warn!(component = self.component, %cause, "component address lookup failed; keeping the replicas known");
        }
        state.failing = failure.is_some();
        state.replicas = replicas;
        state.resolved_at = Some(Instant::now());
        state.resolving = false;
    }

    fn channel(&self, target: usize, addr: SocketAddr) -> Result<Channel, GrpcError> {
        let Some(target) = self.targets.get(target) else { return Err(GrpcError::Endpoint(addr.to_string())) };
        let mut endpoint = crate::endpoint(&format!("{}://{addr}", target.scheme), self.connect_timeout)?;
        if let Some(tls) = self.tls.as_ref().filter(|_| target.scheme == "https") {
            // Dialled by address, verified by the name in the URL (or the IP it gives).
            endpoint = endpoint.tls_config(tls.clone().domain_name(target.host.clone()))?;
        }
        Ok(endpoint.connect_lazy())
    }

    /// This call's replicas in the order to try them: round-robin, those that
    /// recently refused a connection last.
    fn order(&self) -> Vec<(SocketAddr, Channel)> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let n = state.replicas.len();
        if n == 0 {
            return Vec::new();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let now = Instant::now();
        let (mut usable, mut skipped) = (Vec::with_capacity(n), Vec::new());
        for replica in state.replicas.iter().cycle().skip(start).take(n) {
            let entry = (replica.addr, replica.channel.clone());
            if replica.skip_until.is_some_and(|until| until > now) { skipped.push(entry) } else { usable.push(entry) }
        }
        usable.extend(skipped);
        usable
    }

    fn mark(&self, addr: SocketAddr, skip_until: Option<Instant>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(replica) = state.replicas.iter_mut().find(|r| r.addr == addr) {
            replica.skip_until = skip_until;
        }
    }
}

fn rebuild(parts: &http::request::Parts, body: &Bytes) -> http::Request<Body> {
    let mut request = http::Request::new(Body::new(http_body_util::Full::new(body.clone())));
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    *request.extensions_mut() = parts.extensions.clone();
    request
}

/// Whether `error` proves the replica never took the call: no connection was
/// made, the call never left hyper's queue, or HTTP/2 refused the stream
/// (REFUSED_STREAM, or a graceful GOAWAY that did not include it), which
/// guarantees it was not processed.
pub(crate) fn never_sent(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if error.is::<tonic::ConnectError>() {
            return true;
        }
        if let Some(h2) = error.downcast_ref::<h2::Error>()
            && (h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (h2.is_go_away() && h2.is_remote() && h2.reason() == Some(h2::Reason::NO_ERROR)))
        {
            return true;
        }
        // hyper's "connection closed" cancellation hands the request back unsent: it was still
        // queued when the connection went away (a replica closing it after its drain).
        if let Some(hyper) = error.downcast_ref::<hyper::Error>()
            && (hyper.is_closed()
                || (hyper.is_canceled()
                    && std::error::Error::source(hyper).is_some_and(|c| c.to_string() == "connection closed")))
        {
            return true;
        }
        next = error.source();
    }
    false
}
