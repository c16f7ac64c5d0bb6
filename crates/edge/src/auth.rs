//! Who is posting: a request's bearer token, checked against static tokens
//! read from files or by Kubernetes (TokenReview, then SubjectAccessReview),
//! becomes an [`Identity`], the rate-limit sender of what it posts.
//!
//! The decision knows nothing of HTTP beyond [`bearer_token`]: an
//! [`Authenticator`] takes the token and answers an [`Identity`] or an
//! [`AuthError`], which the edge maps to 401, 403 or 503 and a gRPC ingest
//! service could map to `Unauthenticated`, `PermissionDenied` or `Unavailable`.
//!
//! A token is never logged, and never kept: static tokens and cache keys are
//! SHA-256 digests, compared in constant time.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use http::HeaderMap;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::config::{AuthConfig, KubernetesAuthConfig};

/// Longest sender the ratelimit service takes (its `MAX_SENDER_LEN`).
const MAX_SENDER_BYTES: usize = 256;

/// An authenticated caller: `token:<name>` for a static token, the
/// Kubernetes user name (`system:serviceaccount:<ns>:<name>`) otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity(String);

impl Identity {
    pub fn name(&self) -> &str {
        &self.0
    }

    /// The rate-limit key: the name, or `sha256:<hex>` of a name longer than
    /// ratelimit accepts, so every caller keeps a bucket of its own.
    pub fn sender(&self) -> String {
        if self.0.len() <= MAX_SENDER_BYTES {
            return self.0.clone();
        }
        format!("sha256:{}", hex::encode(Sha256::digest(self.0.as_bytes())))
    }
}

/// Why a request was not let through; nothing it carried was recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header (401).
    #[error("an Authorization: Bearer token is required")]
    Missing,
    /// A token nobody issued, or an expired one (401).
    #[error("the bearer token is not valid")]
    Invalid,
    /// A valid token whose identity may not post signals (403).
    #[error("{identity} may not {verb} {resource}")]
    Forbidden { identity: String, verb: String, resource: String },
    /// The token could not be reviewed (503, retryable); the cause is for the log.
    #[error("the bearer token could not be checked")]
    Unavailable(String),
}

impl AuthError {
    /// A bounded metric label.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Invalid => "invalid",
            Self::Forbidden { .. } => "forbidden",
            Self::Unavailable(_) => "unavailable",
        }
    }
}

/// Why an [`Authenticator`] cannot be built; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("edge.auth.token_files: cannot read {path}: {cause}")]
    Read { path: PathBuf, cause: std::io::Error },
    #[error("edge.auth.token_files: {path} holds no token")]
    Empty { path: PathBuf },
    #[error("edge.auth.token_files: {path} holds no token file")]
    EmptyDirectory { path: PathBuf },
    #[error(
        "edge.auth.token_files: two tokens are named {name:?} ({first} and {second}); each file name must be unique"
    )]
    DuplicateName { name: String, first: PathBuf, second: PathBuf },
    #[error("edge.auth.token_files: {first} and {second} hold the same token; give each caller its own")]
    DuplicateToken { first: PathBuf, second: PathBuf },
}

/// The `Authorization: Bearer <token>` of a request, if it has one.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    bearer_of(headers.get(http::header::AUTHORIZATION)?.to_str().ok()?)
}

/// The token of an `Authorization` value `Bearer <token>` (an HTTP header, gRPC metadata).
pub fn bearer_of(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Checks bearer tokens; cheap to share behind an `Arc`.
pub struct Authenticator(Inner);

enum Inner {
    Static(StaticTokens),
    Kubernetes(Box<KubernetesReview>),
}

impl Authenticator {
    /// Static tokens from `config.token_files`, read now.
    ///
    /// # Errors
    /// [`AuthSetupError`] when a file cannot be read, holds no token, or two
    /// tokens share a name or a value.
    pub fn from_token_files(config: &AuthConfig) -> Result<Self, AuthSetupError> {
        let tokens = load_tokens(&config.token_files)?;
        Ok(Self(Inner::Static(StaticTokens {
            paths: config.token_files.clone(),
            reload_every: Duration::from_secs(config.token_reload_secs),
            tokens: RwLock::new(Arc::new(tokens)),
            reloaded: tokio::sync::Mutex::new(Instant::now()),
        })))
    }

    /// Reviews tokens with the API server `client` talks to. Its own 429/503
    /// retries should be off (`default_retry = false`): a review that fails is
    /// answered 503 at once, and the sender retries.
    pub fn kubernetes(client: kube::Client, config: &KubernetesAuthConfig) -> Self {
        Self(Inner::Kubernetes(Box::new(KubernetesReview {
            client,
            config: config.clone(),
            cache: ReviewCache::new(config.cache_max_entries),
            inflight: Mutex::new(HashMap::new()),
        })))
    }

    /// The identity `bearer` proves.
    ///
    /// # Errors
    /// [`AuthError`]: missing, invalid, forbidden, or unavailable when the
    /// token could not be reviewed.
    pub async fn authenticate(&self, bearer: Option<&str>) -> Result<Identity, AuthError> {
        let token = bearer.ok_or(AuthError::Missing)?;
        match &self.0 {
            Inner::Static(tokens) => tokens.check(token).await,
            Inner::Kubernetes(review) => review.check(token).await,
        }
    }
}

type TokenDigest = [u8; 32];

fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// Equality whose time does not depend on where the digests differ.
fn same_digest(a: &TokenDigest, b: &TokenDigest) -> bool {
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

struct StaticToken {
    name: String,
    digest: TokenDigest,
}

struct StaticTokens {
    paths: Vec<PathBuf>,
    reload_every: Duration,
    tokens: RwLock<Arc<Vec<StaticToken>>>,
    /// When the files were last read; held by the one request that reads them again.
    reloaded: tokio::sync::Mutex<Instant>,
}

impl StaticTokens {
    async fn check(&self, token: &str) -> Result<Identity, AuthError> {
        self.reload_if_due().await;
        let presented = digest(token);
        let tokens = self.tokens.read().unwrap_or_else(PoisonError::into_inner).clone();
        // Every token is compared, so the time taken does not say which one matched.
        let mut found = None;
        for candidate in tokens.iter() {
            if same_digest(&candidate.digest, &presented) {
                found = Some(&candidate.name);
            }
        }
        found.map(|name| Identity(format!("token:{name}"))).ok_or(AuthError::Invalid)
    }

    /// Reads the files again once `reload_every` has passed; a read that fails
    /// keeps the tokens in use (a Secret being updated can be briefly absent).
    async fn reload_if_due(&self) {
        let Ok(mut reloaded) = self.reloaded.try_lock() else { return };
        if reloaded.elapsed() < self.reload_every {
            return;
        }
        *reloaded = Instant::now();
        let paths = self.paths.clone();
        match tokio::task::spawn_blocking(move || load_tokens(&paths)).await {
            Ok(Ok(tokens)) => *self.tokens.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(tokens),
            Ok(Err(e)) => {
                tracing::warn!(cause = %e, "cannot read the token files again; keeping the tokens read before")
            }
            Err(e) => tracing::warn!(cause = %e, "reading the token files failed"),
        }
    }
}

/// Every token of `paths`: a file is one token named after it, a directory
/// holds one per file (names starting with `.` are skipped: a mounted Secret
/// keeps its versions there).
fn load_tokens(paths: &[PathBuf]) -> Result<Vec<StaticToken>, AuthSetupError> {
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |cause| AuthSetupError::Read { path, cause }
    };
    let mut files: Vec<PathBuf> = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(read_err(path))?;
        if !meta.is_dir() {
            files.push(path.clone());
            continue;
        }
        let mut inside: Vec<PathBuf> = Vec::new();
        for entry in std::fs::read_dir(path).map_err(read_err(path))? {
            let entry = entry.map_err(read_err(path))?;
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let file = entry.path();
            if std::fs::metadata(&file).map_err(read_err(&file))?.is_file() {
                inside.push(file);
            }
        }
        if inside.is_empty() {
            return Err(AuthSetupError::EmptyDirectory { path: path.clone() });
        }
        inside.sort();
        files.extend(inside);
    }
    let mut tokens: Vec<(StaticToken, PathBuf)> = Vec::with_capacity(files.len());
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(read_err(&file))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(AuthSetupError::Empty { path: file });
        }
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let digest = digest(token);
        for (other, other_path) in &tokens {
            if other.name == name {
                return Err(AuthSetupError::DuplicateName { name, first: other_path.clone(), second: file });
            }
            if same_digest(&other.digest, &digest) {
                return Err(AuthSetupError::DuplicateToken { first: other_path.clone(), second: file });
            }
        }
        tokens.push((StaticToken { name, digest }, file));
    }
    Ok(tokens.into_iter().map(|(token, _)| token).collect())
}

/// What a review concluded about a token.
#[derive(Debug, Clone)]
enum Verdict {
    Allowed(Identity),
    Invalid,
    Forbidden(String),
}

struct KubernetesReview {
    client: kube::Client,
    config: KubernetesAuthConfig,
    cache: ReviewCache,
    /// Reviews in progress, by token digest.
    inflight: Mutex<HashMap<TokenDigest, Inflight>>,
}

/// The answer of a review in progress, shared by every request with the same token.
type Inflight = Arc<tokio::sync::OnceCell<Result<Verdict, AuthError>>>;

impl KubernetesReview {
    async fn check(&self, token: &str) -> Result<Identity, AuthError> {
        let key = digest(token);
        let verdict = match self.cache.get(&key, Instant::now()) {
            Some(verdict) => verdict,
            None => self.review_once(key, token).await?,
        };
        match verdict {
            Verdict::Allowed(identity) => Ok(identity),
            Verdict::Invalid => Err(AuthError::Invalid),
            Verdict::Forbidden(identity) => {
                Err(AuthError::Forbidden { identity, verb: self.config.verb.clone(), resource: self.resource_label() })
            }
        }
    }

    /// Reviews `token` once however many requests carry it at the same time (Alertmanager
    /// sends a burst of notifications with one token): they all wait for the one answer.
    async fn review_once(&self, key: TokenDigest, token: &str) -> Result<Verdict, AuthError> {
        let cell: Inflight =
            self.inflight.lock().unwrap_or_else(PoisonError::into_inner).entry(key).or_default().clone();
        let result = cell
            .get_or_init(|| async {
                let deadline = Duration::from_millis(self.config.timeout_ms);
                let verdict = tokio::time::timeout(deadline, self.review(token)).await.map_err(|_| {
                    AuthError::Unavailable(format!("the review took longer than {} ms", self.config.timeout_ms))
                })??;
                let ttl = match verdict {
                    Verdict::Allowed(_) => self.config.cache_ttl_secs,
                    Verdict::Invalid | Verdict::Forbidden(_) => self.config.denied_cache_ttl_secs,
                };
                if ttl > 0 {
                    self.cache.insert(key, verdict.clone(), Instant::now() + Duration::from_secs(ttl));
                }
                Ok(verdict)
            })
            .await
            .clone();
        // Answered (and cached): later requests start from the cache, or a review of their own.
        let mut inflight = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        if inflight.get(&key).is_some_and(|current| Arc::ptr_eq(current, &cell)) {
            inflight.remove(&key);
        }
        result
    }

    /// `remediationrequests.remediation.kubernaut.io[ in namespace X]`, for the 403 detail.
    fn resource_label(&self) -> String {
        let c = &self.config;
        let mut label = if c.group.is_empty() { c.resource.clone() } else { format!("{}.{}", c.resource, c.group) };
        if !c.namespace.is_empty() {
            label.push_str(&format!(" in namespace {}", c.namespace));
        }
        label
    }

    /// TokenReview, then (for an authenticated token) SubjectAccessReview.
    async fn review(&self, token: &str) -> Result<Verdict, AuthError> {
        let request = TokenReview {
            spec: TokenReviewSpec { token: token.to_owned(), audiences: None },
            ..TokenReview::default()
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &request)
            .await
            .map_err(|e| api_failure("tokenreview", &e))?;
        record_review("tokenreview", "ok");
        let status = reviewed.status.unwrap_or_default();
        let user = match (status.authenticated, status.user) {
            (Some(true), Some(user)) if user.username.as_deref().is_some_and(|u| !u.is_empty()) => user,
            _ => return Ok(Verdict::Invalid),
        };
        let username = user.username.clone().unwrap_or_default();
        let c = &self.config;
        let request = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username,
                groups: user.groups,
                uid: user.uid,
                extra: user.extra,
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(c.verb.clone()),
                    group: Some(c.group.clone()),
                    resource: Some(c.resource.clone()),
                    namespace: (!c.namespace.is_empty()).then(|| c.namespace.clone()),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let reviewed = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &request)
            .await
            .map_err(|e| api_failure("subjectaccessreview", &e))?;
        record_review("subjectaccessreview", "ok");
        let identity = Identity(username);
        Ok(if reviewed.status.is_some_and(|s| s.allowed) {
            Verdict::Allowed(identity)
        } else {
            Verdict::Forbidden(identity.0)
        })
    }
}

fn record_review(kind: &'static str, result: &'static str) {
    metrics::counter!("breakwater_auth_kubernetes_reviews_total", "kind" => kind, "result" => result).increment(1);
}

/// A review call that failed: the API server is unreachable or refused the
/// edge (it lacks `create` on `<kind>s`). The sender is told to retry.
fn api_failure(kind: &'static str, error: &kube::Error) -> AuthError {
    record_review(kind, "error");
    let hint = match error {
        kube::Error::Api(status) if status.code == 401 || status.code == 403 => {
            " (the edge's own account may not create them: see deploy/kustomize/base/auth-delegator-role.yaml)"
        }
        _ => "",
    };
    // kube's errors quote the API server's status, never the request body (the token).
    AuthError::Unavailable(format!("creating a {kind} failed: {error}{hint}"))
}

struct Cached {
    verdict: Verdict,
    expires: Instant,
}

/// Review verdicts by token digest, each until it expires; at most `max`.
struct ReviewCache {
    entries: Mutex<HashMap<TokenDigest, Cached>>,
    max: usize,
}

impl ReviewCache {
    fn new(max: usize) -> Self {
        Self { entries: Mutex::new(HashMap::new()), max: max.max(1) }
    }

    fn get(&self, key: &TokenDigest, now: Instant) -> Option<Verdict> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        match entries.get(key) {
            Some(cached) if cached.expires > now => Some(cached.verdict.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Stores `verdict`; when full, expired entries go first, then the one
    /// closest to expiring.
    fn insert(&self, key: TokenDigest, verdict: Verdict, expires: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= self.max && !entries.contains_key(&key) {
            let now = Instant::now();
            entries.retain(|_, cached| cached.expires > now);
            if entries.len() >= self.max
                && let Some(first) = entries.iter().min_by_key(|(_, cached)| cached.expires).map(|(k, _)| *k)
            {
                entries.remove(&first);
            }
        }
        entries.insert(key, Cached { verdict, expires });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

#[cfg(test)]
mod tests;
