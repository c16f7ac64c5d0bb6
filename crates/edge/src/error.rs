//! Every HTTP error of the edge, rendered as RFC 7807 in one place.
//!
//! Handlers and layers return [`EdgeError`]; its `IntoResponse` only records a
//! [`Problem`] in the response extensions. [`render_problems`] (a layer inside
//! request-id) turns it into the `application/problem+json` body with the
//! request id and path, and logs server-side causes once.

use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use breakwater_limiter::Quota;
use serde::Serialize;

const TYPE_PREFIX: &str = "https://kubernaut.io/errors/";

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// The payload cannot be used; the detail says why.
    #[error("{0}")]
    BadRequest(String),
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    #[error("the charset must be utf-8")]
    UnsupportedCharset,
    #[error("Content-Encoding must be gzip or identity")]
    UnsupportedEncoding,
    #[error("request body exceeds {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("decoded request body exceeds {limit} bytes")]
    DecodedTooLarge { limit: usize },
    #[error(
        "the alerts would take more than {limit} bytes once each has its copy of the common labels and annotations; send fewer alerts per webhook (Alertmanager max_alerts)"
    )]
    ExpansionTooLarge { limit: usize },
    #[error("request body not received in time")]
    BodyTimeout,
    #[error("request headers exceed {limit} bytes or {count} fields")]
    HeadersTooLarge { limit: usize, count: usize },
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("request target too long")]
    UriTooLong,
    #[error("no such endpoint")]
    NotFound,
    /// `status` is 503 (what Alertmanager retries) or 429, per route (`edge.rate_limited_status`).
    #[error("the sender is over its rate limit: nothing was recorded, retry after the Retry-After header's seconds")]
    RateLimited { retry_after: Duration, status: u16, quota: Option<Quota> },
    #[error("too many requests in flight")]
    Overloaded,
    #[error("too many bytes of signals in flight")]
    OverBudget,
    #[error("request timed out")]
    Timeout,
    /// A RemediationRequest could not be written: the one fault that is the
    /// sender's problem (Alertmanager retries 5xx).
    #[error("remediation requests could not be written, retry later")]
    CannotPersist { retry_after: Duration, cause: String },
    #[error("internal error")]
    Internal(String),
    /// No bearer token, or one that is not valid (401 with `WWW-Authenticate: Bearer`).
    #[error("{0}")]
    Unauthorized(crate::auth::AuthError),
    /// A valid token whose identity may not post signals (403).
    #[error("{0}")]
    Forbidden(crate::auth::AuthError),
    /// The token could not be checked (the API server failed or is slow): 503,
    /// which the sender retries, never 401, which it would not.
    #[error("the bearer token could not be checked, retry later")]
    AuthUnavailable { cause: String },
}

impl From<crate::auth::AuthError> for EdgeError {
    fn from(e: crate::auth::AuthError) -> Self {
        use crate::auth::AuthError;
        match e {
            AuthError::Missing | AuthError::Invalid => Self::Unauthorized(e),
            AuthError::Forbidden { .. } => Self::Forbidden(e),
            AuthError::Unavailable(cause) => Self::AuthUnavailable { cause },
        }
    }
}

/// The cause table: HTTP status, problem type suffix, title.
impl EdgeError {
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "validation-error", "Bad Request"),
            Self::UnsupportedMediaType | Self::UnsupportedCharset | Self::UnsupportedEncoding => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type", "Unsupported Media Type")
            }
            Self::PayloadTooLarge { .. } | Self::DecodedTooLarge { .. } | Self::ExpansionTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large", "Payload Too Large")
            }
            Self::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, "request-timeout", "Request Timeout"),
            Self::HeadersTooLarge { .. } => {
                (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "headers-too-large", "Request Header Fields Too Large")
            }
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed", "Method Not Allowed"),
            Self::NotFound => (StatusCode::NOT_FOUND, "not-found", "Not Found"),
            Self::UriTooLong => (StatusCode::URI_TOO_LONG, "uri-too-long", "URI Too Long"),
            Self::RateLimited { status: 429, .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "rate-limited", "Too Many Requests")
            }
            Self::RateLimited { .. } => (StatusCode::SERVICE_UNAVAILABLE, "rate-limited", "Service Unavailable"),
            Self::Overloaded | Self::OverBudget | Self::CannotPersist { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "service-unavailable", "Service Unavailable")
            }
            Self::Timeout => (StatusCode::GATEWAY_TIMEOUT, "timeout", "Gateway Timeout"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal-error", "Internal Server Error"),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            Self::AuthUnavailable { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "service-unavailable", "Service Unavailable")
            }
        }
    }

    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } | Self::CannotPersist { retry_after, .. } => Some(*retry_after),
            Self::Overloaded | Self::OverBudget => Some(Duration::from_secs(1)),
            Self::AuthUnavailable { .. } => Some(Duration::from_secs(5)),
            _ => None,
        }
    }

    /// What the server log needs and the client must not see.
    pub(crate) fn cause(&self) -> Option<&str> {
        match self {
            Self::CannotPersist { cause, .. } | Self::Internal(cause) | Self::AuthUnavailable { cause } => Some(cause),
            _ => None,
        }
    }
}

/// The sender's quota as `RateLimit-Limit` (its bucket size, in signals), `RateLimit-Remaining`
/// (whole signals it may send now) and `RateLimit-Reset` (seconds until the bucket is full
/// again): the three fields of draft-ietf-httpapi-ratelimit-headers up to -06, which
/// clients and proxies read today. With overrides, the bucket closest to running out.
pub fn insert_rate_limit_headers(headers: &mut HeaderMap, quota: &Quota) {
    let reset_secs = quota.reset_ms.div_ceil(1000);
    for (name, value) in [
        ("ratelimit-limit", u64::from(quota.limit)),
        ("ratelimit-remaining", quota.remaining),
        ("ratelimit-reset", reset_secs),
    ] {
        headers.insert(name, HeaderValue::from(value));
    }
}

/// RFC 7807 body.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    pub instance: String,
    #[serde(rename = "request_id", skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// Server-side cause travelling to [`render_problems`] to be logged once.
#[derive(Debug, Clone)]
struct Cause(String);

impl IntoResponse for EdgeError {
    fn into_response(self) -> Response {
        let (status, suffix, title) = self.parts();
        let problem = Problem {
            kind: format!("{TYPE_PREFIX}{suffix}"),
            title,
            status: status.as_u16(),
            detail: self.to_string(),
            instance: String::new(),
            request_id: None,
        };
        let mut response = status.into_response();
        if let Some(after) = self.retry_after() {
            let secs = after.as_millis().div_ceil(1000).max(1);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if let Self::RateLimited { quota: Some(quota), .. } = &self {
            insert_rate_limit_headers(response.headers_mut(), quota);
        }
        if matches!(self, Self::UnsupportedMediaType | Self::UnsupportedCharset) {
            response.headers_mut().insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        }
        // RFC 6750: how to authenticate, and whether the token offered was the problem.
        match &self {
            Self::Unauthorized(crate::auth::AuthError::Invalid) => {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"breakwater\", error=\"invalid_token\""),
                );
            }
            Self::Unauthorized(_) => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"breakwater\""));
            }
            _ => {}
        }
        if matches!(self, Self::UnsupportedEncoding) {
            response.headers_mut().insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip, identity"));
        }
        // The rest of the body was never read: the connection cannot carry another request.
        if matches!(self, Self::BodyTimeout | Self::PayloadTooLarge { .. }) {
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(cause) = self.cause() {
            response.extensions_mut().insert(Cause(cause.to_owned()));
        }
        response.extensions_mut().insert(problem);
        response
    }
}

/// Renders [`Problem`]s with the request id and path; must run inside the
/// request-id layer so the id is on the request.
pub async fn render_problems(request: Request, next: Next) -> Response {
    let request_id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let path = request.uri().path().to_owned();
    let mut response = next.run(request).await;
    let Some(mut problem) = response.extensions_mut().remove::<Problem>() else {
        return response;
    };
    if let Some(Cause(cause)) = response.extensions_mut().remove::<Cause>() {
        let cause = breakwater_telemetry::redact(&cause);
        tracing::error!(request_id = request_id.as_deref().unwrap_or(""), status = problem.status, %cause, "request failed");
    }
    // Details can quote the payload: secrets and annotation bodies never go back out (reference §1.4).
    if let std::borrow::Cow::Owned(redacted) = breakwater_telemetry::redact(&problem.detail) {
        problem.detail = redacted;
    }
    problem.instance = path;
    problem.request_id = request_id;
    let (mut parts, _) = response.into_parts();
    let body = serde_json::to_vec(&problem).unwrap_or_default();
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// The whole answer, RFC 7807 body included, that replaces one hyper wrote
/// itself for a request it could not parse (`head` is that answer's head):
/// 400, 414 or 431. `None` for any other status, which is left as it is.
pub(crate) fn below_router_answer(head: &[u8]) -> Option<Vec<u8>> {
    let code = head.get(9..12).and_then(|c| std::str::from_utf8(c).ok())?;
    let error = match code {
        "400" => EdgeError::BadRequest("the request line or a header is malformed".into()),
        "414" => EdgeError::UriTooLong,
        "431" => EdgeError::HeadersTooLarge {
            limit: crate::layers::HEADER_BYTES_LIMIT,
            count: crate::layers::HEADER_FIELDS_LIMIT,
        },
        _ => return None,
    };
    let (status, suffix, title) = error.parts();
    let problem = Problem {
        kind: format!("{TYPE_PREFIX}{suffix}"),
        title,
        status: status.as_u16(),
        detail: error.to_string(),
        instance: String::new(),
        request_id: None,
    };
    let body = serde_json::to_vec(&problem).ok()?;
    let mut answer = format!(
        "HTTP/1.1 {} {title}\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n",
        status.as_u16(),
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(&body);
    Some(answer)
}
