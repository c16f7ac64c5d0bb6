//! A recording reverse proxy: see what a client (e.g. Alertmanager) got back from a server.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderMap, Method, StatusCode};
use tokio::task::JoinHandle;

use crate::eventually::Deadline;

/// Largest request body the recorder accepts.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// One request forwarded by a [`WebhookRecorder`] and the answer it got.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// Request method.
    pub method: Method,
    /// Request path and query, e.g. `/api/v1/alerts?x=1`.
    pub path: String,
    /// Request headers as received (before hop-by-hop headers are dropped).
    pub request_headers: HeaderMap,
    /// Request body parsed as JSON, or `Null` when it is not JSON.
    pub request_body: serde_json::Value,
    /// Request body bytes.
    pub request_bytes: Bytes,
    /// Status returned to the client: the upstream's, or 502 when the upstream was unreachable.
    pub status: u16,
    /// Response body parsed as JSON, or `Null` when it is not JSON.
    pub response_body: serde_json::Value,
    /// Response body bytes.
    pub response_bytes: Bytes,
}

struct Shared {
    target: String,
    http: reqwest::Client,
    exchanges: Mutex<Vec<Exchange>>,
}

/// A reverse proxy on `127.0.0.1:0` that forwards every request to a target base URL and
/// returns the upstream answer unchanged, recording each [`Exchange`]. Stops on `Drop`.
///
/// Hop-by-hop headers (`connection`, `transfer-encoding`, ...) and `host` are not forwarded.
/// When the upstream cannot be reached the client gets `502 Bad Gateway` and the exchange is
/// recorded with status 502.
pub struct WebhookRecorder {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl WebhookRecorder {
    /// Starts a recorder forwarding to `target_base_url` (e.g. `http://127.0.0.1:8080`); request
    /// paths are appended to it.
    ///
    /// # Panics
    ///
    /// Panics when it cannot bind a loopback port or build an HTTP client.
    pub async fn start(target_base_url: &str) -> Self {
        let (listener, addr) = crate::port::bind_loopback("webhook recorder").await;
        let http = match reqwest::Client::builder().no_proxy().build() {
            Ok(http) => http,
            Err(err) => panic!("webhook recorder cannot build its HTTP client: {err}"),
        };
        let shared = Arc::new(Shared {
            target: target_base_url.trim_end_matches('/').to_owned(),
            http,
            exchanges: Mutex::new(Vec::new()),
        });
        let app = Router::new().fallback(forward).with_state(Arc::clone(&shared));
        let task = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::error!(cause = %err, "webhook recorder stopped");
            }
        });
        Self { addr, shared, task }
    }

    /// `http://127.0.0.1:PORT`, the address to give the client instead of the target's.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every exchange so far, in completion order.
    pub fn exchanges(&self) -> Vec<Exchange> {
        self.shared.exchanges.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Polls until at least `n` exchanges are recorded and returns all of them.
    ///
    /// # Panics
    ///
    /// Panics after `timeout`, listing the exchanges seen so far.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Exchange> {
        let deadline = Deadline::after(timeout);
        loop {
            let exchanges = self.exchanges();
            if exchanges.len() >= n {
                return exchanges;
            }
            if deadline.expired() {
                let seen: Vec<String> =
                    exchanges.iter().map(|e| format!("{} {} -> {}", e.method, e.path, e.status)).collect();
                panic!(
                    "webhook recorder saw {} of {n} expected exchanges within {timeout:?}: {seen:?}",
                    exchanges.len()
                );
            }
            deadline.tick().await;
        }
    }
}

impl Drop for WebhookRecorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or_else(|| parts.uri.path().to_owned(), ToString::to_string);
    let request_bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(bytes) => bytes,
        Err(err) => {
            return plain(StatusCode::BAD_REQUEST, format!("webhook recorder: cannot read request body: {err}"));
        }
    };
    let mut upstream_headers = parts.headers.clone();
    for name in HOP_BY_HOP.iter().chain([&header::HOST, &header::CONTENT_LENGTH]) {
        upstream_headers.remove(name);
    }
    let upstream = shared
        .http
        .request(parts.method.clone(), format!("{}{path}", shared.target))
        .headers(upstream_headers)
        .body(request_bytes.clone())
        .send()
        .await;
    let (status, headers, response_bytes) = match upstream {
        Ok(response) => {
            let status = response.status();
            let headers = response.headers().clone();
            match response.bytes().await {
                Ok(bytes) => (status, headers, bytes),
                Err(err) => bad_gateway(&shared.target, &err),
            }
        }
        Err(err) => bad_gateway(&shared.target, &err),
    };
    shared.exchanges.lock().unwrap_or_else(PoisonError::into_inner).push(Exchange {
        method: parts.method,
        path,
        request_headers: parts.headers,
        request_body: json_or_null(&request_bytes),
        request_bytes,
        status: status.as_u16(),
        response_body: json_or_null(&response_bytes),
        response_bytes: response_bytes.clone(),
    });
    let mut response = Response::new(Body::from(response_bytes));
    *response.status_mut() = status;
    let response_headers = response.headers_mut();
    for (name, value) in &headers {
        if !HOP_BY_HOP.contains(name) && name != header::CONTENT_LENGTH {
            response_headers.append(name, value.clone());
        }
    }
    response
}

/// Headers that describe one connection and must not be forwarded (RFC 9110 §7.6.1).
static HOP_BY_HOP: [HeaderName; 5] =
    [header::CONNECTION, header::TRANSFER_ENCODING, header::TE, header::TRAILER, header::UPGRADE];

fn bad_gateway(target: &str, err: &reqwest::Error) -> (StatusCode, HeaderMap, Bytes) {
    let message = format!("webhook recorder: upstream {target} unreachable: {err}");
    (StatusCode::BAD_GATEWAY, HeaderMap::new(), Bytes::from(message))
}

fn plain(status: StatusCode, message: String) -> Response {
    let mut response = Response::new(Body::from(message));
    *response.status_mut() = status;
    response
}

fn json_or_null(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests;
