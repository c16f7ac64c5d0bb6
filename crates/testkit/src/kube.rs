//! A fake Kubernetes API server for namespaced custom resources, driven by a real
//! `kube::Client` over plain HTTP on loopback.
//!
//! It implements what the API server does for a CRD with the `status` subresource enabled:
//! create, get, list (namespaced and cluster-wide, with label and field selectors), replace,
//! JSON merge patch, delete, and get/replace/patch on `/status`. Objects are stored as JSON and
//! keyed by (group, plural, namespace, name); the version in the path is not checked. Writes
//! are checked against a CRD's structural schema only for plurals given one with
//! [`FakeApiServer::set_schema`] (pruning, defaulting, validation and `fieldValidation=Strict`,
//! see `kube/schema.rs`); other objects are stored as sent. Errors are `Status` objects with
//! the codes, reasons and messages of a real server, except an injected 429, which is plain
//! text with a `Retry-After` header, as the real server's max-inflight and
//! priority-and-fairness filters answer.
//!
//! Faults ([`Fault`]) cover what a client must survive: throttling, 5xx, latency, a reset
//! connection, and a write that was committed but whose answer was lost (a 504 or a reset
//! after the commit), so a retry meets its own earlier write.
//!
//! Size limits are the real server's defaults: a write whose body exceeds 3 MiB is refused with
//! 413 `RequestEntityTooLarge`, and one whose stored object would exceed etcd's 1.5 MiB request
//! limit fails with the 500 `etcdserver: request is too large` the API server passes on.
//!
//! TokenReview and SubjectAccessReview are answered from tokens and grants a test sets
//! ([`FakeApiServer::accept_token`], [`FakeApiServer::grant`]; see `kube/review.rs`), logged
//! as creates, and faulted like any create.
//!
//! Two core resources can be read (GET of one object): namespaces (`/api/v1/namespaces/{name}`,
//! every namespace not marked missing, with the labels [`FakeApiServer::set_namespace_labels`]
//! gave it) and ConfigMaps (`/api/v1/namespaces/{ns}/configmaps/{name}`, those
//! [`FakeApiServer::set_configmap`] stored); a missing one is a 404 `NotFound` as on a real
//! server. They are written only through those setters: any other method on them is a 405.
//!
//! Watches (`?watch=true`) of custom resources stream newline-delimited JSON events from a
//! resourceVersion, with label and field selectors, enough for `kube::runtime::watcher` (see
//! `kube/watch.rs`).
//!
//! Deliberately not supported (the request fails loudly instead): server-side apply, strategic
//! merge and JSON patch (415), other cluster-scoped resources, other core (`/api/v1`) resources
//! and lists and watches of core resources, and discovery beyond `/version` (404). Finalizers
//! are stored but not honoured:
//! DELETE removes the object at once.

mod merge_patch;
mod review;
mod schema;
mod selector;
mod watch;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use serde_json::{Map, Value, json};
use tokio::task::JoinHandle;

use self::merge_patch::merge_patch;
use self::schema::Schema;
use self::selector::{FieldSelector, LabelSelector};

/// The API server's default limit on a write's body (`MaxRequestBodyBytes`).
const MAX_REQUEST_BODY_BYTES: usize = 3 * 1024 * 1024;
/// etcd's default `--max-request-bytes`; custom resources are stored as JSON, so their JSON size
/// is what counts.
const MAX_STORED_OBJECT_BYTES: usize = 1536 * 1024;

/// What a request did, as the API server's audit log would name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    /// GET of one object (or its `/status`).
    Get,
    /// GET of a collection.
    List,
    /// GET of a collection with `watch=true`: a stream of events (see `kube/watch.rs`).
    Watch,
    /// POST to a collection.
    Create,
    /// PUT of one object (or its `/status`).
    Replace,
    /// PATCH of one object (or its `/status`).
    Patch,
    /// DELETE of one object.
    Delete,
    /// Anything else: `/version`, unknown paths, unsupported methods.
    Other,
}

/// A fault to inject with [`FakeApiServer::inject`] or [`FakeApiServer::inject_for`].
///
/// A request takes the summed delay of every matching [`Fault::Latency`] and at most one
/// other fault: the first matching one, in the order they were injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this HTTP status instead of serving the request (nothing is committed).
    ///
    /// A 429 is what the API server's max-inflight and priority-and-fairness filters send: the
    /// plain-text body `Too many requests, please try again later.` (`text/plain`) and, with
    /// `retry_after_secs`, a `Retry-After` header; no `Status` body. Other codes get a `Status`
    /// body (reason `InternalError` for 500, `ServiceUnavailable` for 503, `Timeout` for 504)
    /// and, with `retry_after_secs`, both a `Retry-After` header and
    /// `details.retryAfterSeconds`, as the server writes a `Status` that carries one.
    Status {
        /// HTTP status code.
        code: u16,
        /// Seconds the client should wait before retrying.
        retry_after_secs: Option<u32>,
    },
    /// Delay the request by this long, then serve it normally (or with another fault that
    /// also matches).
    Latency(Duration),
    /// Close the connection without answering and without serving the request: a connection
    /// reset before the server acted. Logged with status 0.
    Reset,
    /// Serve the request (a write is committed, its resourceVersion advances), then answer
    /// `code`, as [`Fault::Status`] does, instead of the result: the API server's 504
    /// `Timeout` when storage committed after the deadline, or a proxy's 502/503 after
    /// forwarding.
    CommitThenStatus {
        /// HTTP status code of the answer the client gets.
        code: u16,
    },
    /// Serve the request (a write is committed), then close the connection without answering:
    /// a connection reset after the server acted. Logged with status 0.
    CommitThenReset,
}

/// One entry of [`FakeApiServer::request_log`]: verb, path (without query) and the status
/// code the client got (0 when the connection was closed instead).
pub type LoggedRequest = (Verb, String, u16);

#[derive(Debug)]
struct FaultRule {
    verb: Option<Verb>,
    fault: Fault,
    remaining: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ObjectKey {
    group: String,
    plural: String,
    namespace: String,
    name: String,
}

#[derive(Debug, Default)]
struct Store {
    objects: BTreeMap<ObjectKey, Value>,
    /// Kind per (group, plural), learnt from creates, for list kinds.
    kinds: HashMap<(String, String), String>,
    /// The global resourceVersion counter, like etcd's revision.
    revision: u64,
    missing_namespaces: HashSet<String>,
    faults: Vec<FaultRule>,
    log: Vec<LoggedRequest>,
    /// Structural schemas by plural, set with [`FakeApiServer::set_schema`].
    schemas: HashMap<String, Schema>,
    /// Who TokenReview and SubjectAccessReview say a caller is and may do.
    reviews: self::review::Reviews,
    /// Labels of namespaces, set with [`FakeApiServer::set_namespace_labels`].
    namespace_labels: HashMap<String, BTreeMap<String, String>>,
    /// ConfigMaps by (namespace, name), set with [`FakeApiServer::set_configmap`].
    configmaps: BTreeMap<(String, String), Value>,
    /// Every change, for watches.
    events: self::watch::Events,
}

/// A fake Kubernetes API server on `127.0.0.1:0` (plain HTTP); stops on `Drop`.
///
/// Every namespace exists unless marked with
/// [`set_missing_namespace`](Self::set_missing_namespace).
pub struct FakeApiServer {
    addr: SocketAddr,
    store: Arc<Mutex<Store>>,
    task: JoinHandle<()>,
}

impl FakeApiServer {
    /// Starts a fake API server with no objects.
    ///
    /// # Panics
    ///
    /// Panics when it cannot bind a loopback port.
    pub async fn start() -> Self {
        let (listener, addr) = crate::port::bind_loopback("fake API server").await;
        let store = Arc::new(Mutex::new(Store { revision: 1000, ..Store::default() }));
        // axum's own 2 MB body limit would answer before the API server's 3 MiB one does.
        let app = Router::new()
            .fallback(handle)
            .layer(axum::extract::DefaultBodyLimit::disable())
            .with_state(Arc::clone(&store));
        let task = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::error!(cause = %err, "fake API server stopped");
            }
        });
        Self { addr, store, task }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig pointing a process's real kube client at this server into `dir`,
    /// and returns its path (for `KUBECONFIG`).
    ///
    /// # Panics
    ///
    /// Panics when the file cannot be written or `dir` is not UTF-8.
    pub fn write_kubeconfig(&self, dir: &std::path::Path) -> String {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             users:\n- name: test\n  user: {{}}\ncontexts:\n- name: test\n  context:\n    cluster: fake\n    user: test\n\
             current-context: test\n",
            self.url()
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path.to_str().expect("utf-8 path").to_owned()
    }

    /// A real `kube::Client` for this server, configured like production (`Config::new`):
    /// default namespace `default` and kube's default retry of 429/503/504 responses, which
    /// honours `Retry-After`. Must be called inside a tokio runtime.
    ///
    /// # Panics
    ///
    /// Panics when kube cannot build a client from the config.
    pub fn client(&self) -> ::kube::Client {
        self.build_client(true)
    }

    /// Like [`client`](Self::client) but without kube's automatic retries, so an injected
    /// 429/503/504 surfaces as `kube::Error::Api` on the first attempt.
    ///
    /// # Panics
    ///
    /// Panics when kube cannot build a client from the config.
    pub fn client_without_retry(&self) -> ::kube::Client {
        self.build_client(false)
    }

    fn build_client(&self, default_retry: bool) -> ::kube::Client {
        let uri: Uri = match self.url().parse() {
            Ok(uri) => uri,
            Err(err) => panic!("fake API server URL {} is not a URI: {err}", self.url()),
        };
        let mut config = ::kube::Config::new(uri);
        "default".clone_into(&mut config.default_namespace);
        config.default_retry = default_retry;
        match ::kube::Client::try_from(config) {
            Ok(client) => client,
            Err(err) => panic!("cannot build a kube::Client for the fake API server: {err}"),
        }
    }

    /// Makes a TokenReview (`POST /apis/authentication.k8s.io/v1/tokenreviews`) of `token`
    /// answer `authenticated: true` with this user name and groups (uid `uid-<username>`).
    /// Any other token is answered `authenticated: false` with an `error`, as the API server
    /// does for a token no authenticator accepts.
    pub fn accept_token(&self, token: &str, username: &str, groups: &[&str]) {
        self.lock().reviews.accept_token(token, username, groups);
    }

    /// Forgets a token [`accept_token`](Self::accept_token) accepted (a revoked token).
    pub fn revoke_token(&self, token: &str) {
        self.lock().reviews.revoke_token(token);
    }

    /// Makes a SubjectAccessReview (`POST /apis/authorization.k8s.io/v1/subjectaccessreviews`)
    /// allow `subject` (a user name, or one of the reviewed user's groups) to `verb` `resource`
    /// of API group `group`, in every namespace; `*` matches any verb, group or resource. Any
    /// other review is answered `allowed: false`, as RBAC answers what no rule grants.
    pub fn grant(&self, subject: &str, verb: &str, group: &str, resource: &str) {
        self.lock().reviews.grant(subject, verb, group, resource);
    }

    /// Makes creates in `namespace` fail with 404 `namespaces "NAMESPACE" not found`, and so
    /// does a GET of the namespace.
    pub fn set_missing_namespace(&self, namespace: &str) {
        self.lock().missing_namespaces.insert(namespace.to_owned());
    }

    /// Sets the labels a GET of namespace `name` answers, replacing those set before; it
    /// always also has `kubernetes.io/metadata.name`, as the API server sets it.
    pub fn set_namespace_labels(&self, name: &str, labels: &[(&str, &str)]) {
        let labels = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let mut store = self.lock();
        store.revision += 1;
        store.namespace_labels.insert(name.to_owned(), labels);
    }

    /// Stores ConfigMap `namespace/name` with `data`, replacing one stored before.
    pub fn set_configmap(&self, namespace: &str, name: &str, data: &[(&str, &str)]) {
        let data: Map<String, Value> = data.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect();
        let mut store = self.lock();
        store.revision += 1;
        let object = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": uuid::Uuid::new_v4().to_string(),
                "resourceVersion": store.revision.to_string(),
                "creationTimestamp": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
            },
            "data": data,
        });
        store.configmaps.insert((namespace.to_owned(), name.to_owned()), object);
    }

    /// Removes ConfigMap `namespace/name`; a GET of it is then a 404.
    pub fn remove_configmap(&self, namespace: &str, name: &str) {
        self.lock().configmaps.remove(&(namespace.to_owned(), name.to_owned()));
    }

    /// Makes writes of this plural (any group) go through `schema`, the `openAPIV3Schema` of a
    /// CRD version, as the API server applies it: on create, replace, merge patch (to the
    /// patched object) and `/status` writes, unknown fields are pruned (without
    /// `x-kubernetes-preserve-unknown-fields`), non-nullable nulls dropped, defaults filled in,
    /// and then the object is validated. A violation is a 422 `Invalid` with one
    /// `details.causes` entry per field; with the query parameter `fieldValidation=Strict`
    /// an unknown field is a 400 `BadRequest` naming it instead. See `kube/schema.rs` for
    /// the keywords supported. Objects already stored are not re-checked.
    ///
    /// # Panics
    ///
    /// Panics when the schema is malformed (not an object, an unknown `type`, a `pattern`
    /// that is not a regular expression): a broken test setup, not a request to answer.
    pub fn set_schema(&self, plural: &str, schema: Value) {
        match Schema::compile(&schema) {
            Ok(compiled) => {
                self.lock().schemas.insert(plural.to_owned(), compiled);
            }
            Err(err) => panic!("invalid schema for {plural}: {err}"),
        }
    }

    /// Applies `fault` to the next `times` resource requests of any verb. Requests to
    /// `/version` and unknown paths are never faulted.
    pub fn inject(&self, fault: Fault, times: usize) {
        self.lock().faults.push(FaultRule { verb: None, fault, remaining: times });
    }

    /// Applies `fault` to the next `times` requests with this verb.
    pub fn inject_for(&self, verb: Verb, fault: Fault, times: usize) {
        self.lock().faults.push(FaultRule { verb: Some(verb), fault, remaining: times });
    }

    /// Removes every pending fault.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Every stored object of this plural (any group), ordered by namespace and name.
    pub fn objects(&self, plural: &str) -> Vec<Value> {
        let store = self.lock();
        store.objects.iter().filter(|(key, _)| key.plural == plural).map(|(_, object)| object.clone()).collect()
    }

    /// One stored object of this plural (any group).
    pub fn get(&self, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        let store = self.lock();
        store
            .objects
            .iter()
            .find(|(key, _)| key.plural == plural && key.namespace == namespace && key.name == name)
            .map(|(_, object)| object.clone())
    }

    /// Every request so far, in arrival order of completion, faulted ones included.
    pub fn request_log(&self) -> Vec<LoggedRequest> {
        self.lock().log.clone()
    }

    /// How many requests with this verb were served, faulted ones included.
    pub fn count(&self, verb: Verb) -> usize {
        self.lock().log.iter().filter(|(logged, _, _)| *logged == verb).count()
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Where a request path points.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Version,
    /// `/apis/{group}/{version}/namespaces/{ns}/{plural}`, or without `namespaces/{ns}` for a
    /// cluster-wide list.
    Collection {
        group: String,
        version: String,
        namespace: Option<String>,
        plural: String,
    },
    /// `/apis/{group}/{version}/namespaces/{ns}/{plural}/{name}[/status]`.
    Object {
        key: ObjectKey,
        version: String,
        status: bool,
    },
    /// `POST /apis/authentication.k8s.io/v1/tokenreviews` or
    /// `/apis/authorization.k8s.io/v1/subjectaccessreviews`: answered, never stored.
    Review(self::review::Kind),
    /// `/api/v1/namespaces/{name}`: read-only.
    Namespace(String),
    /// `/api/v1/namespaces/{ns}/configmaps/{name}`: read-only.
    ConfigMap {
        namespace: String,
        name: String,
    },
    Unknown,
}

fn parse_target(path: &str) -> Target {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let owned = |s: &str| s.to_owned();
    match segments.as_slice() {
        ["version"] => Target::Version,
        ["apis", "authentication.k8s.io", _, "tokenreviews"] => Target::Review(self::review::Kind::Token),
        ["apis", "authorization.k8s.io", _, "subjectaccessreviews"] => Target::Review(self::review::Kind::Access),
        ["api", "v1", "namespaces", name] => Target::Namespace(owned(name)),
        ["api", "v1", "namespaces", namespace, "configmaps", name] => {
            Target::ConfigMap { namespace: owned(namespace), name: owned(name) }
        }
        ["apis", group, version, plural] => {
            Target::Collection { group: owned(group), version: owned(version), namespace: None, plural: owned(plural) }
        }
        ["apis", group, version, "namespaces", namespace, plural] => Target::Collection {
            group: owned(group),
            version: owned(version),
            namespace: Some(owned(namespace)),
            plural: owned(plural),
        },
        ["apis", group, version, "namespaces", namespace, plural, name, rest @ ..]
            if rest.is_empty() || rest == ["status"] =>
        {
            Target::Object {
                key: ObjectKey {
                    group: owned(group),
                    plural: owned(plural),
                    namespace: owned(namespace),
                    name: owned(name),
                },
                version: owned(version),
                status: !rest.is_empty(),
            }
        }
        _ => Target::Unknown,
    }
}

fn verb_for(method: &Method, target: &Target, query: &HashMap<String, String>) -> Verb {
    let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    match (target, method) {
        (Target::Collection { .. }, &Method::GET) if watch => Verb::Watch,
        (Target::Collection { .. }, &Method::GET) => Verb::List,
        (Target::Collection { namespace: Some(_), .. }, &Method::POST) => Verb::Create,
        (Target::Object { .. }, &Method::GET) => Verb::Get,
        (Target::Object { .. }, &Method::PUT) => Verb::Replace,
        (Target::Object { .. }, &Method::PATCH) => Verb::Patch,
        (Target::Object { status: false, .. }, &Method::DELETE) => Verb::Delete,
        (Target::Review(_), &Method::POST) => Verb::Create,
        (Target::Namespace(_) | Target::ConfigMap { .. }, &Method::GET) => Verb::Get,
        _ => Verb::Other,
    }
}

/// What an answer carries.
#[derive(Debug)]
enum Payload {
    Json(Value),
    /// `text/plain`, as Go's `http.Error` writes it.
    Text(&'static str),
    /// No answer: the connection is closed.
    Reset,
    /// A watch's events, as they come.
    Stream(axum::body::Body),
}

/// An answer: status code, payload and an optional `Retry-After`.
#[derive(Debug)]
struct Reply {
    code: StatusCode,
    payload: Payload,
    retry_after: Option<u32>,
}

/// An injected fault's effect on one request.
#[derive(Debug)]
enum Injected {
    /// Answer this without serving the request.
    Instead(Reply),
    /// Serve the request, then answer this instead of its result.
    AfterServing(Reply),
}

impl Reply {
    fn ok(code: StatusCode, body: Value) -> Self {
        Self { code, payload: Payload::Json(body), retry_after: None }
    }

    /// A failure `Status` object, shaped like the API server's.
    fn failure(code: u16, message: String, details: Option<Value>) -> Self {
        Self::failure_with_reason(code, reason_for(code), message, details)
    }

    fn failure_with_reason(code: u16, reason: &str, message: String, details: Option<Value>) -> Self {
        let mut body = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        });
        if let Some(details) = details {
            body["details"] = details;
        }
        let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Self { code, payload: Payload::Json(body), retry_after: None }
    }

    /// The code the client sees, 0 for a closed connection.
    fn logged_code(&self) -> u16 {
        match self.payload {
            Payload::Reset => 0,
            _ => self.code.as_u16(),
        }
    }

    fn bad_request(message: String) -> Self {
        Self::failure(400, message, None)
    }

    fn not_found(key: &ObjectKey) -> Self {
        Self::failure(404, format!("{}.{} {:?} not found", key.plural, key.group, key.name), Some(object_details(key)))
    }

    fn conflict(key: &ObjectKey) -> Self {
        Self::failure(
            409,
            format!(
                "Operation cannot be fulfilled on {}.{} {:?}: the object has been modified; \
                 please apply your changes to the latest version and try again",
                key.plural, key.group, key.name
            ),
            Some(object_details(key)),
        )
    }

    /// 409 with reason `AlreadyExists`, which a create conflict has instead of `Conflict`.
    fn already_exists(key: &ObjectKey) -> Self {
        Self::failure_with_reason(
            409,
            "AlreadyExists",
            format!("{}.{} {:?} already exists", key.plural, key.group, key.name),
            Some(object_details(key)),
        )
    }

    fn method_not_allowed(message: &str) -> Self {
        Self::failure(405, message.to_owned(), None)
    }

    fn reset() -> Self {
        Self { code: StatusCode::OK, payload: Payload::Reset, retry_after: None }
    }

    fn injected(code: u16, retry_after: Option<u32>) -> Self {
        if code == 429 {
            // The max-inflight and priority-and-fairness filters answer with Go's `http.Error`:
            // no Status, and the pause only in the header.
            return Self {
                code: StatusCode::TOO_MANY_REQUESTS,
                payload: Payload::Text("Too many requests, please try again later.\n"),
                retry_after,
            };
        }
        let message = match code {
            500 => "Internal error occurred: injected by the testkit fake API server".to_owned(),
            503 => "the server is currently unable to handle the request".to_owned(),
            504 => "the server was unable to return a response in the time allotted, but may still \
                    be processing the request"
                .to_owned(),
            _ => format!("injected fault with status {code}"),
        };
        let details = retry_after.map(|secs| json!({ "retryAfterSeconds": secs }));
        Self { retry_after, ..Self::failure(code, message, details) }
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut response = match self.payload {
            Payload::Json(body) => (self.code, axum::Json(body)).into_response(),
            Payload::Text(text) => (
                self.code,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8"), (header::X_CONTENT_TYPE_OPTIONS, "nosniff")],
                text,
            )
                .into_response(),
            // A body that fails before its first byte makes hyper close the connection
            // without writing the response head, so the client sees no answer at all.
            Payload::Reset => {
                let failing = futures::stream::once(async {
                    Err::<Bytes, _>(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "connection reset injected by the testkit fake API server",
                    ))
                });
                (self.code, axum::body::Body::from_stream(failing)).into_response()
            }
            Payload::Stream(body) => (self.code, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        };
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        410 => "Expired",
        413 => "RequestEntityTooLarge",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "",
    }
}

fn object_details(key: &ObjectKey) -> Value {
    json!({ "name": key.name, "group": key.group, "kind": key.plural })
}

async fn handle(
    State(store): State<Arc<Mutex<Store>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let path = uri.path().to_owned();
    let target = parse_target(&path);
    let lock = || store.lock().unwrap_or_else(PoisonError::into_inner);
    let query = match Query::<HashMap<String, String>>::try_from_uri(&uri) {
        Ok(Query(query)) => query,
        Err(err) => {
            let reply = Reply::bad_request(format!("invalid query string: {err}"));
            lock().log.push((Verb::Other, path, reply.code.as_u16()));
            return reply;
        }
    };
    let verb = verb_for(&method, &target, &query);

    let mut lost = None;
    if verb != Verb::Other {
        let (latency, injected) = lock().take_faults(verb);
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        match injected {
            Some(Injected::Instead(reply)) => {
                lock().log.push((verb, path, reply.logged_code()));
                return reply;
            }
            Some(Injected::AfterServing(reply)) => lost = Some(reply),
            None => {}
        }
    }
    if let (Verb::Watch, Target::Collection { group, namespace, plural, .. }) = (verb, &target) {
        let reply = watch_reply(&store, group, namespace.as_deref(), plural, &query);
        lock().log.push((verb, path, reply.logged_code()));
        return reply;
    }
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mut store = lock();
    let served = store.serve(verb, target, &query, content_type, &body);
    // The answer is lost whatever it was, as when the connection or a deadline fails after
    // the commit.
    let reply = lost.unwrap_or(served);
    store.log.push((verb, path, reply.logged_code()));
    reply
}

/// A watch of a collection (see `kube/watch.rs`), or the API server's refusal of its query.
fn watch_reply(
    store: &Arc<Mutex<Store>>,
    group: &str,
    namespace: Option<&str>,
    plural: &str,
    query: &HashMap<String, String>,
) -> Reply {
    let selection =
        match watch::Selection::parse(group.to_owned(), namespace.map(str::to_owned), plural.to_owned(), query) {
            Ok(selection) => selection,
            Err(message) => return Reply::bad_request(message),
        };
    let since = match query.get("resourceVersion").map(String::as_str) {
        None | Some("" | "0") => None,
        Some(rv) => match rv.parse::<u64>() {
            Ok(rv) => Some(rv),
            Err(_) => return Reply::bad_request(format!("invalid resource version: {rv:?}")),
        },
    };
    let timeout = query.get("timeoutSeconds").and_then(|s| s.parse::<u64>().ok()).map(Duration::from_secs);
    let body = watch::stream(Arc::clone(store), selection, since, timeout);
    Reply { code: StatusCode::OK, payload: Payload::Stream(body), retry_after: None }
}

impl Store {
    /// Consumes matching faults: the summed latency, and the first matching other fault.
    fn take_faults(&mut self, verb: Verb) -> (Duration, Option<Injected>) {
        let mut latency = Duration::ZERO;
        let mut injected = None;
        for rule in &mut self.faults {
            if rule.remaining == 0 || rule.verb.is_some_and(|only| only != verb) {
                continue;
            }
            match rule.fault {
                Fault::Latency(delay) => latency += delay,
                // One answer per request: later faults wait for the next one.
                _ if injected.is_some() => continue,
                Fault::Status { code, retry_after_secs } => {
                    injected = Some(Injected::Instead(Reply::injected(code, retry_after_secs)));
                }
                Fault::Reset => injected = Some(Injected::Instead(Reply::reset())),
                Fault::CommitThenStatus { code } => {
                    injected = Some(Injected::AfterServing(Reply::injected(code, None)));
                }
                Fault::CommitThenReset => injected = Some(Injected::AfterServing(Reply::reset())),
            }
            rule.remaining -= 1;
        }
        self.faults.retain(|rule| rule.remaining > 0);
        (latency, injected)
    }

    fn serve(
        &mut self,
        verb: Verb,
        target: Target,
        query: &HashMap<String, String>,
        content_type: &str,
        body: &[u8],
    ) -> Reply {
        let strict = query.get("fieldValidation").is_some_and(|mode| mode == "Strict");
        if matches!(verb, Verb::Create | Verb::Replace | Verb::Patch) && body.len() > MAX_REQUEST_BODY_BYTES {
            return Reply::failure(413, format!("Request entity too large: limit is {MAX_REQUEST_BODY_BYTES}"), None);
        }
        match (verb, target) {
            (Verb::Other, Target::Version) => Reply::ok(StatusCode::OK, version_info()),
            (Verb::Create, Target::Review(kind)) => self.reviews.review(kind, body),
            (Verb::Other, Target::Unknown) => Reply::failure(
                404,
                "the server could not find the requested resource (the testkit fake API server \
                 serves only /version, namespaced custom resources under /apis, and GET of \
                 namespaces and ConfigMaps)"
                    .to_owned(),
                None,
            ),
            (Verb::Get, Target::Namespace(name)) => self.namespace(&name),
            (Verb::Get, Target::ConfigMap { namespace, name }) => {
                match self.configmaps.get(&(namespace, name.clone())) {
                    Some(object) => Reply::ok(StatusCode::OK, object.clone()),
                    None => Reply::failure(
                        404,
                        format!("configmaps {name:?} not found"),
                        Some(json!({ "name": name, "kind": "configmaps" })),
                    ),
                }
            }
            (Verb::Other, Target::Namespace(_) | Target::ConfigMap { .. }) => Reply::method_not_allowed(
                "the testkit fake API server serves namespaces and ConfigMaps read-only; set them with \
                 set_namespace_labels and set_configmap",
            ),
            (Verb::List, Target::Collection { group, version, namespace, plural }) => {
                self.list(&group, &version, namespace.as_deref(), &plural, query)
            }
            (Verb::Create, Target::Collection { group, version, namespace: Some(namespace), plural }) => {
                let key = ObjectKey { group, plural, namespace, name: String::new() };
                self.create(key, &version, body, strict)
            }
            (Verb::Get, Target::Object { key, .. }) => match self.objects.get(&key) {
                Some(object) => Reply::ok(StatusCode::OK, object.clone()),
                None => Reply::not_found(&key),
            },
            (Verb::Replace, Target::Object { key, status, version }) => {
                self.replace(&key, Update { version: &version, status, strict }, body)
            }
            (Verb::Patch, Target::Object { key, status, version }) => {
                self.patch(&key, Update { version: &version, status, strict }, content_type, body)
            }
            (Verb::Delete, Target::Object { key, .. }) => match self.objects.remove(&key) {
                Some(mut object) => {
                    self.revision += 1;
                    object["metadata"]["resourceVersion"] = json!(self.revision.to_string());
                    self.events.record(self.revision, &key, "DELETED", &object);
                    Reply::ok(StatusCode::OK, object)
                }
                None => Reply::not_found(&key),
            },
            _ => Reply::method_not_allowed("the testkit fake API server does not support this method here"),
        }
    }

    /// Namespace `name` as the API server answers it: every namespace exists unless marked
    /// missing.
    fn namespace(&self, name: &str) -> Reply {
        if self.missing_namespaces.contains(name) {
            return Reply::failure(
                404,
                format!("namespaces {name:?} not found"),
                Some(json!({ "name": name, "kind": "namespaces" })),
            );
        }
        let mut labels: Map<String, Value> = Map::new();
        labels.insert("kubernetes.io/metadata.name".to_owned(), json!(name));
        for (key, value) in self.namespace_labels.get(name).into_iter().flatten() {
            labels.insert(key.clone(), json!(value));
        }
        Reply::ok(
            StatusCode::OK,
            json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": { "name": name, "labels": labels, "resourceVersion": self.revision.to_string() },
                "spec": { "finalizers": ["kubernetes"] },
                "status": { "phase": "Active" },
            }),
        )
    }

    fn list(
        &self,
        group: &str,
        version: &str,
        namespace: Option<&str>,
        plural: &str,
        query: &HashMap<String, String>,
    ) -> Reply {
        let labels = match LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str)) {
            Ok(selector) => selector,
            Err(err) => return Reply::bad_request(format!("unable to parse labelSelector: {err}")),
        };
        let fields = match FieldSelector::parse(query.get("fieldSelector").map_or("", String::as_str)) {
            Ok(selector) => selector,
            Err(err) => return Reply::bad_request(err),
        };
        let items: Vec<Value> = self
            .objects
            .iter()
            .filter(|(key, _)| key.group == group && key.plural == plural)
            .filter(|(key, _)| namespace.is_none_or(|ns| key.namespace == ns))
            .filter(|(key, _)| fields.matches(&key.name, &key.namespace))
            .filter(|(_, object)| labels.matches(&labels_of(object)))
            .map(|(_, object)| object.clone())
            .collect();
        let kind =
            self.kinds.get(&(group.to_owned(), plural.to_owned())).cloned().unwrap_or_else(|| guess_kind(plural));
        Reply::ok(
            StatusCode::OK,
            json!({
                "apiVersion": format!("{group}/{version}"),
                "kind": format!("{kind}List"),
                "metadata": { "resourceVersion": self.revision.to_string() },
                "items": items,
            }),
        )
    }

    fn create(&mut self, mut key: ObjectKey, version: &str, body: &[u8], strict: bool) -> Reply {
        if self.missing_namespaces.contains(&key.namespace) {
            return Reply::failure(
                404,
                format!("namespaces {:?} not found", key.namespace),
                Some(json!({ "name": key.namespace, "kind": "namespaces" })),
            );
        }
        let mut object = match parse_object(body) {
            Ok(object) => object,
            Err(reply) => return reply,
        };
        let expected_api_version = format!("{}/{version}", key.group);
        if object["apiVersion"] != expected_api_version.as_str() {
            return Reply::bad_request(format!(
                "the API version in the data ({}) does not match the expected API version ({expected_api_version})",
                object["apiVersion"]
            ));
        }
        let Some(kind) = object["kind"].as_str().filter(|kind| !kind.is_empty()).map(str::to_owned) else {
            return Reply::bad_request("Object 'Kind' is missing in the request body".to_owned());
        };
        if !object["metadata"].is_object() {
            object["metadata"] = json!({});
        }
        let metadata = &object["metadata"];
        if metadata["namespace"].as_str().is_some_and(|ns| ns != key.namespace) {
            return Reply::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request".to_owned(),
            );
        }
        if metadata.get("resourceVersion").is_some_and(|rv| !rv.is_null()) {
            return Reply::failure(500, "resourceVersion should not be set on objects to be created".to_owned(), None);
        }
        key.name = match (metadata["name"].as_str(), metadata["generateName"].as_str()) {
            (Some(name), _) if !name.is_empty() => name.to_owned(),
            (_, Some(prefix)) if !prefix.is_empty() => {
                format!("{prefix}{}", &uuid::Uuid::new_v4().simple().to_string()[..5])
            }
            _ => {
                return Reply::failure(
                    422,
                    format!(
                        "{kind}.{} \"\" is invalid: metadata.name: Required value: name or generateName is required",
                        key.group
                    ),
                    Some(json!({ "group": key.group, "kind": kind })),
                );
            }
        };
        if self.objects.contains_key(&key) {
            return Reply::already_exists(&key);
        }
        // With the status subresource enabled, the API server drops `.status` on create.
        if let Some(fields) = object.as_object_mut() {
            fields.remove("status");
        }
        if let Some(reply) = self.check_schema(&key, &kind, version, &mut object, strict) {
            return reply;
        }
        self.revision += 1;
        let metadata = &mut object["metadata"];
        metadata["name"] = json!(key.name);
        metadata["namespace"] = json!(key.namespace);
        metadata["uid"] = json!(uuid::Uuid::new_v4().to_string());
        metadata["resourceVersion"] = json!(self.revision.to_string());
        metadata["generation"] = json!(1);
        metadata["creationTimestamp"] = json!(jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
        if let Some(reply) = too_large_to_store(&object) {
            return reply;
        }
        self.kinds.insert((key.group.clone(), key.plural.clone()), kind);
        self.events.record(self.revision, &key, "ADDED", &object);
        self.objects.insert(key, object.clone());
        Reply::ok(StatusCode::CREATED, object)
    }

    fn replace(&mut self, key: &ObjectKey, update: Update<'_>, body: &[u8]) -> Reply {
        let Some(stored) = self.objects.get(key).cloned() else {
            return Reply::not_found(key);
        };
        let candidate = match parse_object(body) {
            Ok(candidate) => candidate,
            Err(reply) => return reply,
        };
        if let Some(name) = candidate["metadata"]["name"].as_str()
            && name != key.name
        {
            return Reply::bad_request(format!(
                "the name of the object ({name}) does not match the name on the URL ({})",
                key.name
            ));
        }
        match candidate["metadata"]["resourceVersion"].as_str() {
            // Custom resources do not allow unconditional updates.
            None | Some("") => Reply::failure(
                422,
                format!(
                    "{}.{} {:?} is invalid: metadata.resourceVersion: Invalid value: 0x0: must be specified for an update",
                    key.plural, key.group, key.name
                ),
                Some(object_details(key)),
            ),
            Some(rv) if rv != resource_version_of(&stored) => Reply::conflict(key),
            Some(_) => self.commit(key, &stored, candidate, update),
        }
    }

    fn patch(&mut self, key: &ObjectKey, update: Update<'_>, content_type: &str, body: &[u8]) -> Reply {
        let media_type = content_type.split(';').next().unwrap_or("").trim();
        if media_type != "application/merge-patch+json" {
            return Reply::failure(
                415,
                format!(
                    "the body of the request was in an unknown format ({media_type}) - accepted media types \
                     include: application/merge-patch+json (the testkit fake API server supports only \
                     JSON merge patch)"
                ),
                None,
            );
        }
        let Some(stored) = self.objects.get(key).cloned() else {
            return Reply::not_found(key);
        };
        let patch = match parse_object(body) {
            Ok(patch) => patch,
            Err(reply) => return reply,
        };
        if let Some(rv) = patch["metadata"]["resourceVersion"].as_str()
            && rv != resource_version_of(&stored)
        {
            return Reply::conflict(key);
        }
        let mut candidate = stored.clone();
        merge_patch(&mut candidate, &patch);
        self.commit(key, &stored, candidate, update)
    }

    /// Stores an update the way the API server does for a CRD with a status subresource: the
    /// main resource ignores `.status`, `/status` changes only `.status`, server-owned metadata
    /// is kept, `generation` counts spec changes, and a no-op keeps the resourceVersion.
    fn commit(&mut self, key: &ObjectKey, stored: &Value, candidate: Value, update: Update<'_>) -> Reply {
        let mut next = if update.status {
            let mut next = stored.clone();
            set_or_remove(&mut next, "status", candidate.get("status"));
            next
        } else {
            let mut next = candidate;
            set_or_remove(&mut next, "status", stored.get("status"));
            next
        };
        for field in ["apiVersion", "kind"] {
            set_or_remove(&mut next, field, stored.get(field));
        }
        if !next["metadata"].is_object() {
            next["metadata"] = json!({});
        }
        for field in ["name", "namespace", "uid", "creationTimestamp", "generation", "resourceVersion"] {
            set_or_remove(&mut next["metadata"], field, stored["metadata"].get(field));
        }
        // Pruned and defaulted before the no-op check, so a write of only unknown fields
        // changes nothing, as on a real server.
        let kind = stored["kind"].as_str().unwrap_or_default().to_owned();
        if let Some(reply) = self.check_schema(key, &kind, update.version, &mut next, update.strict) {
            return reply;
        }
        if next == *stored {
            return Reply::ok(StatusCode::OK, next);
        }
        if without_metadata_and_status(&next) != without_metadata_and_status(stored) {
            let generation = stored["metadata"]["generation"].as_i64().unwrap_or(0);
            next["metadata"]["generation"] = json!(generation + 1);
        }
        self.revision += 1;
        next["metadata"]["resourceVersion"] = json!(self.revision.to_string());
        if let Some(reply) = too_large_to_store(&next) {
            return reply;
        }
        self.events.record(self.revision, key, "MODIFIED", &next);
        self.objects.insert(key.clone(), next.clone());
        Reply::ok(StatusCode::OK, next)
    }
    /// Applies the plural's schema, if any, to `object`: `None` to go on with the pruned and
    /// defaulted object, or the API server's refusal.
    fn check_schema(
        &self,
        key: &ObjectKey,
        kind: &str,
        version: &str,
        object: &mut Value,
        strict: bool,
    ) -> Option<Reply> {
        let schema = self.schemas.get(&key.plural)?;
        let outcome = schema.apply(object);
        // Strict decoding fails before validation runs, so unknown fields win over invalid ones.
        if strict && !outcome.unknown.is_empty() {
            let fields: Vec<String> = outcome.unknown.iter().map(|field| format!("unknown field {field:?}")).collect();
            return Some(Reply::bad_request(format!(
                "{kind} in version {version:?} cannot be handled as a {kind}: strict decoding error: {}",
                fields.join(", ")
            )));
        }
        if outcome.errors.is_empty() {
            return None;
        }
        let listed: Vec<String> = outcome.errors.iter().map(schema::FieldError::full).collect();
        // The API server's `errors.NewInvalid` lists several errors in brackets.
        let errors = match listed.as_slice() {
            [one] => one.clone(),
            _ => format!("[{}]", listed.join(", ")),
        };
        let causes: Vec<Value> = outcome
            .errors
            .iter()
            .map(|error| json!({ "reason": error.reason, "message": error.body, "field": error.field }))
            .collect();
        Some(Reply::failure(
            422,
            format!("{kind}.{} {:?} is invalid: {errors}", key.group, key.name),
            Some(json!({ "name": key.name, "group": key.group, "kind": kind, "causes": causes })),
        ))
    }
}

/// How an update is asked for: the version in its path, whether it is a `/status` write, and
/// whether unknown fields are refused (`fieldValidation=Strict`).
#[derive(Debug, Clone, Copy)]
struct Update<'a> {
    version: &'a str,
    status: bool,
    strict: bool,
}

/// etcd's refusal of an object over its request limit, as the API server passes it on: not a
/// Status error of its own, so a 500 without a reason.
fn too_large_to_store(object: &Value) -> Option<Reply> {
    let size = serde_json::to_vec(object).map_or(0, |bytes| bytes.len());
    (size > MAX_STORED_OBJECT_BYTES)
        .then(|| Reply::failure_with_reason(500, "", "etcdserver: request is too large".to_owned(), None))
}

fn parse_object(body: &[u8]) -> Result<Value, Reply> {
    match serde_json::from_slice::<Value>(body) {
        Ok(object @ Value::Object(_)) => Ok(object),
        Ok(other) => Err(Reply::bad_request(format!("expected a JSON object, got {other}"))),
        Err(err) => Err(Reply::bad_request(format!("the request body is not valid JSON: {err}"))),
    }
}

fn set_or_remove(object: &mut Value, field: &str, value: Option<&Value>) {
    let Some(fields) = object.as_object_mut() else {
        return;
    };
    match value {
        Some(value) if !value.is_null() => {
            fields.insert(field.to_owned(), value.clone());
        }
        _ => {
            fields.remove(field);
        }
    }
}

fn without_metadata_and_status(object: &Value) -> Map<String, Value> {
    let mut fields = object.as_object().cloned().unwrap_or_default();
    fields.remove("metadata");
    fields.remove("status");
    fields
}

fn resource_version_of(object: &Value) -> &str {
    object["metadata"]["resourceVersion"].as_str().unwrap_or("")
}

fn labels_of(object: &Value) -> BTreeMap<String, String> {
    object["metadata"]["labels"]
        .as_object()
        .map(|labels| labels.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect())
        .unwrap_or_default()
}

/// A kind for a plural never created (so never seen): `widgets` → `Widget`.
fn guess_kind(plural: &str) -> String {
    let singular = plural.strip_suffix('s').unwrap_or(plural);
    let mut chars = singular.chars();
    chars.next().map(|first| first.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
}

fn version_info() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-breakwater-testkit",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

#[cfg(test)]
mod tests;
