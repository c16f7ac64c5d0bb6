//! Starting components: each one alone on its listener, or all five in one
//! process (`breakwater up`), where the edge calls the other four directly,
//! with no socket between them. Both run the same components, clients and
//! layers; only the transport differs.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use breakwater_crd_writer::{CrdWriter, RemediationSink};
use breakwater_edge::classify::Namespaces;
use breakwater_edge::config::ClassificationConfig;
use breakwater_edge::{AuthConfig, AuthMode, Authenticator, NamespaceSource};
use breakwater_embedded::EmbeddedStore;
use breakwater_grpc::{ComponentHealth, InProcess, Incoming};
use breakwater_keyspace::{Keyspace, KeyspaceError, RedisConfig, StoreKind};
use breakwater_signal::{Clock, SystemClock};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::Config;

/// A shutdown trigger whose futures resolve once [`Shutdown::trigger`] is called.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Sender<bool>);

impl Default for Shutdown {
    fn default() -> Self {
        Self(watch::channel(false).0)
    }
}

impl Shutdown {
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }

    /// Resolves when triggered.
    pub fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.0.subscribe();
        async move {
            let _ = rx.wait_for(|stopped| *stopped).await;
        }
    }
}

/// One of the four gRPC components (the edge calls them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    RateLimit,
    Dedup,
    Storm,
    CrdWriter,
}

impl Component {
    pub fn name(self) -> &'static str {
        match self {
            Self::RateLimit => "ratelimit",
            Self::Dedup => "dedup",
            Self::Storm => "storm",
            Self::CrdWriter => "crd-writer",
        }
    }
}

/// Opens the state directory (`Config::state_dir`) when dedup or storm keeps
/// its state in the embedded store; `None` otherwise.
///
/// # Errors
/// When the directory is in use by another process, or cannot be opened.
pub fn open_embedded(config: &Config, clock: Arc<dyn Clock>) -> anyhow::Result<Option<EmbeddedStore>> {
    if config.dedup.store != StoreKind::Embedded && config.storm.store != StoreKind::Embedded {
        return Ok(None);
    }
    Ok(Some(EmbeddedStore::open(&config.state_dir(), clock)?))
}

/// Runs one gRPC component until `shutdown` resolves. `sink` replaces the
/// crd-writer sink of `config` (tests pass a fake API server's client).
/// Dedup and storm on the embedded store open the state directory.
///
/// # Errors
/// When the component cannot start or its transport fails.
pub async fn run_component(
    component: Component,
    config: &Config,
    clock: Arc<dyn Clock>,
    sink: Option<Arc<dyn RemediationSink>>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let embedded = match component {
        Component::Dedup | Component::Storm => open_embedded(config, clock.clone())?,
        // Given a state directory, crd-writer journals its pending counts there.
        Component::CrdWriter if config.embedded.dir.is_some() => {
            Some(EmbeddedStore::open(&config.state_dir(), clock.clone())?)
        }
        Component::RateLimit | Component::CrdWriter => None,
    };
    let reflection = config.listen.grpc_reflection;
    let incoming = match config.tls.tonic()? {
        Some(tls) => Incoming::Tls(listener, Box::new(tls), reflection),
        None => Incoming::Tcp(listener, reflection),
    };
    run_component_with(component, config, clock, sink, embedded.as_ref(), incoming, shutdown).await
}

/// [`run_component`] with the state directory already open (`up` shares
/// one between dedup and storm), taking calls from `incoming`.
async fn run_component_with(
    component: Component,
    config: &Config,
    clock: Arc<dyn Clock>,
    sink: Option<Arc<dyn RemediationSink>>,
    embedded: Option<&EmbeddedStore>,
    incoming: Incoming,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let health = ComponentHealth::new(component.name());
    match component {
        Component::RateLimit => {
            let store = breakwater_ratelimit::store_from_config(&config.ratelimit, health.clone())?;
            let grpc = breakwater_ratelimit::RateLimitGrpc::new(store, clock, &config.ratelimit);
            let serve = async { Ok(breakwater_ratelimit::run(grpc, health.clone(), incoming, shutdown).await?) };
            let redis = config.ratelimit.store == StoreKind::Redis;
            with_budget_watch(&config.ratelimit.redis, redis, breakwater_ratelimit::KEYSPACE, &health, serve).await?;
        }
        Component::Dedup => {
            let store = breakwater_dedup::store_from_config(&config.dedup, embedded)?;
            let window = config.dedup.window();
            // For one window after it starts, dedup may not know incidents opened while it
            // was down (edges named them per fallback window, and a restarted edge no longer
            // remembers that it fell back): new incidents are looked up first. A resolved
            // incident's CR records the resolution, so its next firing still gets a new CR.
            // The embedded store (`up`) restores its state, and its edge cannot answer
            // without it (one process), so it starts certain. Uncertainty after a Redis
            // outage is tracked by DedupGrpc.
            let starts_uncertain = config.dedup.store != StoreKind::Embedded;
            let grpc = breakwater_dedup::DedupGrpc::new(store, clock, health.clone(), window, starts_uncertain);
            let serve = async { Ok(breakwater_dedup::run(grpc, health.clone(), incoming, shutdown).await?) };
            let redis = config.dedup.store == StoreKind::Redis;
            with_budget_watch(&config.dedup.redis, redis, breakwater_dedup::KEYSPACE, &health, serve).await?;
        }
        Component::Storm => {
            let store = breakwater_storm::store_from_config(&config.storm, embedded)?;
            let grpc = breakwater_storm::StormGrpc::new(store, clock, health.clone(), config.storm.rules());
            let serve = async { Ok(breakwater_storm::run(grpc, health.clone(), incoming, shutdown).await?) };
            let redis = config.storm.store == StoreKind::Redis;
            with_budget_watch(&config.storm.redis, redis, breakwater_storm::KEYSPACE, &health, serve).await?;
        }
        Component::CrdWriter => {
            let sink = match sink {
                Some(sink) => sink,
                None => breakwater_crd_writer::sink_from_config(&config.crd_writer).await?,
            };
            let mut writer = CrdWriter::new(config.crd_writer.clone(), sink)
                .with_clock(clock)
                .with_cooldown(config.dedup.cooldown());
            if let Some(embedded) = embedded {
                writer = writer.with_journal(embedded.namespace("crd-writer")?);
            }
            breakwater_crd_writer::run(writer, incoming, shutdown).await?;
        }
    }
    Ok(())
}

/// Refuses to start a service whose Redis user cannot write its own keyspace
/// (say, it was given another service's user). An unreachable Redis is no
/// reason not to start: the service starts degraded and recovers by itself.
async fn probe_keyspace(keyspace: &Keyspace, component: &str) -> anyhow::Result<()> {
    match keyspace.probe_write().await {
        Err(e @ KeyspaceError::Permission { .. }) => Err(anyhow::Error::new(e).context(format!(
            "{component} may not write its own keys {}* with the Redis user of {component}.redis.url: \
             it looks like another service's user; give {component} its own user (see deploy/redis/)",
            keyspace.prefix()
        ))),
        // Credentials Redis refuses will not start working by themselves: say so now rather
        // than degrade with a pool timeout.
        Err(e @ KeyspaceError::Authentication(_)) => Err(anyhow::Error::new(e).context(format!(
            "{component} cannot log in to its Redis: check the user of {component}.redis.url and its password \
             (in the URL or {component}.redis.password_file)"
        ))),
        _ => Ok(()),
    }
}

/// Runs `serve` with the drift guard of its keyspace alongside when it is
/// Redis-backed (after the start-up write probe), and stops the guard after.
async fn with_budget_watch(
    redis: &RedisConfig,
    enabled: bool,
    keyspace: &'static str,
    health: &Arc<ComponentHealth>,
    serve: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let stop = Shutdown::default();
    let watch = watch_budget(redis, enabled, keyspace, health, &stop).await?;
    let served = serve.await;
    stop_watch(stop, watch).await;
    served
}

/// Starts the drift guard of a Redis-backed keyspace: its memory settings
/// against its budget, now and every `budget_check_secs`, into `health`.
async fn watch_budget(
    redis: &RedisConfig,
    enabled: bool,
    keyspace: &'static str,
    health: &Arc<ComponentHealth>,
    stop: &Shutdown,
) -> anyhow::Result<Option<JoinHandle<()>>> {
    if !enabled {
        return Ok(None);
    }
    let keyspace_handle = Keyspace::from_config(redis, keyspace)?;
    probe_keyspace(&keyspace_handle, health.component()).await?;
    let (health, stop) = (health.clone(), stop.wait());
    let (budget, interval) = (redis.memory_budget_bytes, Duration::from_secs(redis.budget_check_secs));
    let component = health.component();
    Ok(Some(tokio::spawn(async move {
        keyspace_handle.watch_budget(component, budget, interval, |problem| health.set("budget", problem), stop).await;
    })))
}

async fn stop_watch(stop: Shutdown, watch: Option<JoinHandle<()>>) {
    stop.trigger();
    if let Some(watch) = watch {
        let _ = watch.await;
    }
}

/// Builds the edge's state for `config`, calling the components at
/// `edge.components.*` (clients connect lazily).
///
/// # Errors
/// When a component URL is invalid, or `edge.auth` cannot be set up.
pub async fn edge_state(config: &Config, clock: Arc<dyn Clock>) -> anyhow::Result<breakwater_edge::EdgeState> {
    let auth = edge_authenticator(&config.edge.auth).await?;
    let namespaces = edge_namespaces(&config.edge.classification).await?;
    let timeout = Duration::from_millis(config.edge.component_timeout_ms);
    let components = breakwater_edge::Components::connect_lazy(&config.edge.components, timeout)?;
    edge_state_over(config, clock, components, auth, namespaces)
}

fn edge_state_over(
    config: &Config,
    clock: Arc<dyn Clock>,
    components: breakwater_edge::Components,
    auth: Option<Authenticator>,
    namespaces: Namespaces,
) -> anyhow::Result<breakwater_edge::EdgeState> {
    let metrics = breakwater_telemetry::metrics_handle();
    // The same [ratelimit] limits, overrides included, rule the edge's in-process limiter when
    // ratelimit is unreachable.
    let limits = config.ratelimit.limits();
    let state = breakwater_edge::EdgeState::new(config.edge.clone(), components, clock, metrics, limits, namespaces)?;
    Ok(match auth {
        Some(auth) => state.with_auth(auth),
        None => state,
    })
}

/// The authenticator `edge.auth` asks for; `None` when the mode is unset or
/// `none`. Static tokens are read now; the Kubernetes client is built from
/// `edge.auth.kubernetes.kubeconfig`, else `KUBECONFIG` or the pod's account.
///
/// # Errors
/// When a token file cannot be used, or no usable kubeconfig is found.
pub async fn edge_authenticator(auth: &AuthConfig) -> anyhow::Result<Option<Authenticator>> {
    let kubernetes = match auth.mode {
        None | Some(AuthMode::None) => return Ok(None),
        Some(AuthMode::Static) => return Ok(Some(Authenticator::from_token_files(auth)?)),
        Some(AuthMode::Kubernetes) => &auth.kubernetes,
    };
    // A review that fails is answered 503 at once and the sender retries; kube's own retries
    // would only hold the webhook.
    let client = edge_kube_client(
        kubernetes.kubeconfig.as_deref(),
        "edge.auth.kubernetes.kubeconfig",
        "edge.auth.mode = \"kubernetes\"",
    )
    .await?;
    Ok(Some(Authenticator::kubernetes(client, kubernetes)))
}

/// Where the edge reads a namespace's environment (`edge.classification.namespace_source`):
/// the `environments` table, or the API server through a client built from
/// `edge.classification.kubeconfig`, else `KUBECONFIG` or the pod's account.
///
/// # Errors
/// When no usable kubeconfig is found.
pub async fn edge_namespaces(classification: &ClassificationConfig) -> anyhow::Result<Namespaces> {
    Ok(match classification.namespace_source {
        NamespaceSource::Table => Namespaces::table(classification),
        NamespaceSource::Kubernetes => {
            // A lookup that fails falls back to the next source at once; kube's retries
            // would only hold the webhook.
            let client = edge_kube_client(
                classification.kubeconfig.as_deref(),
                "edge.classification.kubeconfig",
                "edge.classification.namespace_source = \"kubernetes\"",
            )
            .await?;
            Namespaces::kubernetes(client, classification)
        }
    })
}

/// A client of the API server the edge asks (token reviews, namespace environments), from
/// `kubeconfig` (the value of `key`), else `KUBECONFIG`, `~/.kube/config` or the pod's
/// service account, without kube's own retries: each caller bounds its calls and has its
/// answer to a failure. `needed_by` names the setting that asks for it, for the message.
///
/// # Errors
/// When no usable kubeconfig is found.
async fn edge_kube_client(kubeconfig: Option<&Path>, key: &str, needed_by: &str) -> anyhow::Result<kube::Client> {
    // Causes go through kube_cause: a kubeconfig parser's message can quote a token line.
    let cause = |e: &dyn std::error::Error| breakwater_crd_writer::error::kube_cause(e);
    let mut kube_config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| anyhow::anyhow!("{key} {}: {}", path.display(), cause(&e)))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| anyhow::anyhow!("{key} {}: {}", path.display(), cause(&e)))?
        }
        None => kube::Config::infer().await.map_err(|e| {
            anyhow::anyhow!(
                "{needed_by} needs a kubeconfig ({key}, KUBECONFIG) or an in-cluster service account: {}",
                cause(&e)
            )
        })?,
    };
    kube_config.default_retry = false;
    let section = key.rsplit_once('.').map_or(key, |(section, _)| section);
    kube::Client::try_from(kube_config)
        .map_err(|e| anyhow::anyhow!("{section}: cannot build a Kubernetes client: {}", cause(&e)))
}

/// Serves the edge's gRPC ingest API (`breakwater.v1.IngestService`) on `listener`, with
/// `[tls]` when set, until `shutdown`, in a task of its own.
///
/// # Errors
/// When the TLS files cannot be read.
pub fn spawn_ingest(
    config: &Config,
    state: breakwater_edge::EdgeState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    let reflection = config.listen.grpc_reflection;
    let incoming = match config.tls.tonic()? {
        Some(tls) => Incoming::Tls(listener, Box::new(tls), reflection),
        None => Incoming::Tcp(listener, reflection),
    };
    Ok(tokio::spawn(async move {
        breakwater_edge::run_ingest(state, incoming, shutdown).await.context("the gRPC ingest API failed")
    }))
}

/// Waits for a starting component to hand itself over. A component that
/// hands nothing over failed to start, and its task says why.
async fn handed_over(
    component: Component,
    handoff: oneshot::Receiver<InProcess>,
    task: &mut JoinHandle<anyhow::Result<()>>,
) -> anyhow::Result<InProcess> {
    if let Ok(in_process) = handoff.await {
        return Ok(in_process);
    }
    match task.await {
        Ok(Err(e)) => Err(e),
        Ok(Ok(())) => anyhow::bail!("{} stopped before it started", component.name()),
        Err(e) => Err(anyhow::Error::new(e).context(format!("{} task", component.name()))),
    }
}

/// All five components in this process: what `breakwater up` runs.
pub struct Gateway {
    /// Where the HTTP edge listens.
    pub edge_addr: SocketAddr,
    /// Where the gRPC ingest API listens, when it is on (`listen.ingest`).
    pub ingest_addr: Option<SocketAddr>,
    stop_edge: Shutdown,
    stop_components: Shutdown,
    edge: JoinHandle<anyhow::Result<()>>,
    ingest: Option<JoinHandle<anyhow::Result<()>>>,
    components: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl Gateway {
    /// Starts the four components in this process (no listener of their
    /// own), then the edge on `edge_listener` (and its gRPC ingest API on
    /// `ingest_listener`, if given), calling them directly.
    ///
    /// # Errors
    /// When a component cannot be built or start.
    pub async fn start(
        config: Config,
        sink: Option<Arc<dyn RemediationSink>>,
        edge_listener: TcpListener,
        ingest_listener: Option<TcpListener>,
    ) -> anyhow::Result<Self> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        // Before any component starts: unusable token files or kubeconfig fail the start.
        let auth = edge_authenticator(&config.edge.auth).await?;
        let namespaces = edge_namespaces(&config.edge.classification).await?;
        // Opened here, not in a component's task: a directory in use fails the start.
        let embedded = open_embedded(&config, clock.clone())?;
        let (stop_edge, stop_components) = (Shutdown::default(), Shutdown::default());
        let mut components = Vec::new();
        let mut handoffs = Vec::new();
        for component in [Component::RateLimit, Component::Dedup, Component::Storm, Component::CrdWriter] {
            let (incoming, handoff) = Incoming::in_process();
            let (config, clock, sink, stop) = (config.clone(), clock.clone(), sink.clone(), stop_components.wait());
            let embedded = embedded.clone();
            components.push(tokio::spawn(async move {
                run_component_with(component, &config, clock, sink, embedded.as_ref(), incoming, stop)
                    .await
                    .with_context(|| format!("{} failed", component.name()))
            }));
            handoffs.push((component, handoff));
        }
        // All four start at once; each hands itself over once built and checked.
        let mut in_process = Vec::new();
        for ((component, handoff), task) in handoffs.into_iter().zip(&mut components) {
            match handed_over(component, handoff, task).await {
                Ok(handed) => in_process.push(handed),
                Err(e) => {
                    stop_components.trigger();
                    return Err(e);
                }
            }
        }
        let timeout = Duration::from_millis(config.edge.component_timeout_ms);
        let components_of_edge = <[InProcess; 4]>::try_from(in_process)
            .map_err(|_| anyhow::anyhow!("a component handed nothing over"))
            .and_then(|parts| breakwater_edge::Components::in_process(parts, timeout).map_err(anyhow::Error::msg));
        let state = match components_of_edge
            .and_then(|components| edge_state_over(&config, clock, components, auth, namespaces))
        {
            Ok(state) => state,
            Err(e) => {
                stop_components.trigger();
                return Err(e);
            }
        };
        let edge_addr = edge_listener.local_addr()?;
        let ingest_addr = ingest_listener.as_ref().map(TcpListener::local_addr).transpose()?;
        let ingest = match ingest_listener {
            Some(listener) => Some(spawn_ingest(&config, state.clone(), listener, stop_edge.wait())?),
            None => None,
        };
        let stop = stop_edge.wait();
        let tls = config.tls.rustls()?;
        let edge = tokio::spawn(async move { Ok(breakwater_edge::run(state, edge_listener, tls, stop).await?) });
        Ok(Self { edge_addr, ingest_addr, stop_edge, stop_components, edge, ingest, components })
    }

    /// Stops the edge (in-flight requests finish within
    /// `edge.shutdown_timeout_ms`), then always the components, so the
    /// crd-writer flushes pending counts even when the edge did not stop
    /// cleanly; each step is bounded by `grace`.
    ///
    /// # Errors
    /// The first edge or component failure, or a step running out of time.
    pub async fn shutdown(self, grace: Duration) -> anyhow::Result<()> {
        self.stop_edge.trigger();
        let edge = match tokio::time::timeout(grace, self.edge).await {
            Ok(joined) => joined.context("edge task").and_then(|served| served),
            Err(_) => Err(anyhow::anyhow!("the edge did not stop within {grace:?}")),
        };
        let edge = match self.ingest {
            Some(ingest) => match tokio::time::timeout(grace, ingest).await {
                Ok(joined) => edge.and(joined.context("ingest task").and_then(|served| served)),
                Err(_) => edge.and(Err(anyhow::anyhow!("the gRPC ingest API did not stop within {grace:?}"))),
            },
            None => edge,
        };
        self.stop_components.trigger();
        let components = tokio::time::timeout(grace, async {
            let mut first_failure = Ok(());
            for task in self.components {
                let stopped = task.await.context("component task").and_then(|stopped| stopped);
                if first_failure.is_ok() {
                    first_failure = stopped;
                }
            }
            first_failure
        })
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("components did not stop within {grace:?}")));
        edge.and(components)
    }

    /// Whether a component task ended early (it failed); for `up` to exit on.
    pub fn any_finished(&self) -> bool {
        self.edge.is_finished()
            || self.ingest.as_ref().is_some_and(JoinHandle::is_finished)
            || self.components.iter().any(JoinHandle::is_finished)
    }
}
