//! Command line: one subcommand per component, `up` for all of them, `crd`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use breakwater_keyspace::StoreKind;
use breakwater_signal::SystemClock;
use breakwater_telemetry::LogFormat;
use clap::{Parser, Subcommand, ValueEnum};
use tokio::net::TcpListener;

use crate::compose::{Component, Gateway, Shutdown, edge_state, run_component, spawn_ingest};
use crate::config::Config;

/// Breakwater: alert-ingestion gateway for Kubernetes remediation.
///
/// Alertmanager and Kubernetes events post signals to the edge; ratelimit,
/// dedup and storm decide; crd-writer creates one RemediationRequest per incident.
#[derive(Debug, Parser)]
#[command(name = "breakwater", version)]
pub struct Cli {
    /// TOML config file; `BREAKWATER_<SECTION>__<KEY>` variables and flags override it.
    #[arg(long, global = true, env = "BREAKWATER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format; default: pretty for `up`, json otherwise.
    #[arg(long, global = true)]
    pub log_format: Option<LogFormatArg>,
    /// Serve this gRPC component's Prometheus `/metrics` on ADDR (the edge and
    /// `up` serve `/metrics` on the edge's own port).
    #[arg(long, global = true)]
    pub metrics_listen: Option<SocketAddr>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormatArg {
    Json,
    Pretty,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run all five components in one process. With no config:
    /// RemediationRequests as YAML files under ./remediations, and dedup and
    /// storm state on disk beside them, in ./remediations/.breakwater-state
    /// (a crashed process loses none of it; a crashed machine at most ~1 s).
    Up {
        /// Where the HTTP edge listens [default: listen.edge, 127.0.0.1:8080].
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Write RemediationRequests as YAML under this directory (implies the
        /// directory sink); the state directory moves with it unless embedded.dir is set.
        #[arg(long)]
        sink_dir: Option<PathBuf>,
    },
    /// Run the HTTP edge: webhooks in, calls to the components out (edge.components).
    Edge {
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Run the dedup gRPC service (new incident or repeat?).
    Dedup {
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Run the storm gRPC service (fold bursts into one storm CR).
    Storm {
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Run the ratelimit gRPC service (per-sender token buckets).
    Ratelimit {
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Run the crd-writer gRPC service, the only writer of RemediationRequests.
    CrdWriter {
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Write RemediationRequests as YAML under this directory (implies the directory sink).
        #[arg(long)]
        sink_dir: Option<PathBuf>,
    },
    /// Print the RemediationRequest CustomResourceDefinition as YAML.
    Crd,
    /// Work with the configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print the Redis memory each keyspace needs for a load, against the
    /// configured budgets; fails when a budget is short.
    Plan(crate::plan::Load),
    /// Check the configured Redis instances: reachable, version, ACL users,
    /// maxmemory and eviction policy against the budgets, keys without a TTL,
    /// memory used; fails when a check does.
    Doctor(crate::doctor::DoctorArgs),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Load the configuration (`--config` file, then `BREAKWATER_<SECTION>__<KEY>`
    /// variables) as a component would, and print the effective configuration,
    /// passwords in URLs redacted; exit non-zero with the problem if it is invalid.
    /// Password files are not read: they are mounted only where the component runs.
    Check {
        /// Check it as `breakwater up` reads it (dedup and storm default to the embedded store).
        #[arg(long)]
        up: bool,
    },
}

/// Runs the parsed command line.
///
/// # Errors
/// Configuration, start-up and serving failures, with context.
pub async fn execute(cli: Cli) -> anyhow::Result<()> {
    if let Command::Crd = cli.command {
        print!("{}", breakwater_crd_writer::crd_yaml()?);
        return Ok(());
    }
    let env: HashMap<String, String> = std::env::vars().collect();
    if let Command::Config(ConfigCommand::Check { up }) = cli.command {
        return check_config(cli.config.as_deref(), up, &env);
    }
    let format = match (cli.log_format, &cli.command) {
        (Some(LogFormatArg::Json), _) => LogFormat::Json,
        (Some(LogFormatArg::Pretty), _) | (None, Command::Up { .. }) => LogFormat::Pretty,
        (None, _) => LogFormat::Json,
    };
    let defaults = match cli.command {
        Command::Up { .. } => Config::up_defaults(),
        _ => Config::default(),
    };
    let mut config = Config::load_over(defaults, cli.config.as_deref(), &env)?;
    let components: &[&'static str] = match &cli.command {
        Command::Up { .. } => &["edge", "ratelimit", "dedup", "storm", "crd-writer"],
        Command::Edge { .. } => &["edge"],
        Command::Ratelimit { .. } => &["ratelimit"],
        Command::Dedup { .. } => &["dedup"],
        Command::Storm { .. } => &["storm"],
        Command::CrdWriter { .. } => &["crd-writer"],
        // Tools: logs only, no spans exported.
        Command::Crd | Command::Config(_) | Command::Plan(_) | Command::Doctor(_) => &[],
    };
    let telemetry = breakwater_telemetry::init(format, "info", &config.telemetry, components, &env)?;
    for variable in crate::config::likely_env_typos(&env) {
        tracing::warn!(%variable, "variable {}", crate::config::ENV_TYPO_HINT);
    }
    if let Command::Up { sink_dir: Some(dir), .. } | Command::CrdWriter { sink_dir: Some(dir), .. } = &cli.command {
        config.crd_writer.sink = breakwater_crd_writer::SinkKind::Directory;
        config.crd_writer.directory.clone_from(dir);
    }
    let result = run(cli, config).await;
    telemetry.shutdown().await;
    result
}

/// Runs the command with telemetry installed.
async fn run(cli: Cli, config: Config) -> anyhow::Result<()> {
    match &cli.command {
        Command::Plan(load) => return plan(*load, &config),
        Command::Doctor(args) => return crate::doctor::run(&config, args).await,
        _ => {}
    }
    let shutdown = Shutdown::default();
    tokio::spawn(trigger_on_signal(shutdown.clone()));
    let (component, listen) = match cli.command {
        Command::Up { listen, .. } => return up(config, listen, shutdown).await,
        Command::Edge { listen } => {
            let listener = bind(edge_listen(&config, listen)?, "edge").await?;
            let ingest = bind_ingest(&config).await?;
            let state = edge_state(&config, Arc::new(SystemClock)).await?;
            let tls = config.tls.rustls()?;
            let ingest = match ingest {
                Some(ingest) => Some(spawn_ingest(&config, state.clone(), ingest, shutdown.wait())?),
                None => None,
            };
            breakwater_edge::run(state, listener, tls, shutdown.wait()).await?;
            return match ingest {
                Some(ingest) => ingest.await.context("ingest task")?,
                None => Ok(()),
            };
        }
        Command::Ratelimit { listen } => (Component::RateLimit, listen.unwrap_or(config.listen.ratelimit)),
        Command::Dedup { listen } => (Component::Dedup, listen.unwrap_or(config.listen.dedup)),
        Command::Storm { listen } => (Component::Storm, listen.unwrap_or(config.listen.storm)),
        Command::CrdWriter { listen, .. } => (Component::CrdWriter, listen.unwrap_or(config.listen.crd_writer)),
        // Handled above.
        Command::Crd | Command::Config(_) | Command::Plan(_) | Command::Doctor(_) => return Ok(()),
    };
    let listener = bind(listen, component.name()).await?;
    if let Some(addr) = cli.metrics_listen {
        let metrics = TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} for metrics"))?;
        println!("breakwater {} metrics on {}", component.name(), metrics.local_addr()?);
        tokio::spawn(breakwater_telemetry::serve_metrics(metrics, shutdown.wait()));
    }
    run_component(component, &config, Arc::new(SystemClock), None, listener, shutdown.wait()).await
}

async fn up(config: Config, listen: Option<SocketAddr>, shutdown: Shutdown) -> anyhow::Result<()> {
    let listener = bind(edge_listen(&config, listen)?, "edge").await?;
    let sink = match config.crd_writer.sink {
        breakwater_crd_writer::SinkKind::Directory => {
            format!("YAML files under {}", config.crd_writer.directory.display())
        }
        breakwater_crd_writer::SinkKind::Kubernetes => "the Kubernetes API".to_owned(),
    };
    let state = match (config.dedup.store, config.storm.store) {
        (StoreKind::Embedded, _) | (_, StoreKind::Embedded) => config.state_dir().display().to_string(),
        _ => "none on disk".to_owned(),
    };
    // Each step has its own deadline (the edge's drain, crd-writer's last flush);
    // the margin only guards against a step that ignores it.
    let grace = Duration::from_millis(config.edge.shutdown_timeout_ms.max(config.crd_writer.final_flush_timeout_ms))
        + STOP_MARGIN;
    let ingest = bind_ingest(&config).await?;
    let gateway = Gateway::start(config, None, listener, ingest).await?;
    let ingest = gateway.ingest_addr.map(|a| a.to_string()).unwrap_or_else(|| "off".to_owned());
    tracing::info!(edge = %gateway.edge_addr, ingest, remediations = %sink, state = %state, "breakwater up");
    let stop = shutdown.wait();
    tokio::pin!(stop);
    // Exit when asked to, or when a component dies (its error is reported by shutdown).
    while !gateway.any_finished() {
        tokio::select! {
            () = &mut stop => break,
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
    let stopped = gateway.shutdown(grace).await;
    if stopped.is_ok() {
        tracing::info!("stopped");
    }
    stopped
}

/// `breakwater config check`: the effective configuration on stdout, likely
/// misspelt variables on stderr.
fn check_config(file: Option<&std::path::Path>, up: bool, env: &HashMap<String, String>) -> anyhow::Result<()> {
    let defaults = if up { Config::up_defaults() } else { Config::default() };
    let config = Config::load_over(defaults, file, env)?;
    for variable in crate::config::likely_env_typos(env) {
        eprintln!("warning: {variable} {}", crate::config::ENV_TYPO_HINT);
    }
    let source = file.map_or_else(|| "no file".to_owned(), |f| f.display().to_string());
    println!(
        "# breakwater config check: valid ({source}, {} mode); passwords shown as ***",
        if up { "up" } else { "split" }
    );
    print!("{}", config.to_redacted_toml()?);
    Ok(())
}

/// Over the deadlines of `up`'s shutdown steps, before giving up on one.
const STOP_MARGIN: Duration = Duration::from_secs(2);

/// Prints the plan for `load`; a short budget is an error naming the fix.
fn plan(load: crate::plan::Load, config: &Config) -> anyhow::Result<()> {
    load.validate().map_err(anyhow::Error::msg)?;
    let plan = crate::plan::Plan::new(load, config, &crate::plan::MEASURED);
    print!("{}", plan.render());
    let short: Vec<String> =
        plan.short().map(|r| format!("{}.redis.memory_budget_bytes to at least {}", r.keyspace, r.needed)).collect();
    if short.is_empty() {
        return Ok(());
    }
    anyhow::bail!("budget too small for this load: raise {} (and maxmemory of that Redis)", short.join(", "))
}

/// Where the edge listens: `--listen`, else `listen.edge` (checked with the
/// configuration). An address off loopback needs `edge.auth.mode`.
fn edge_listen(config: &Config, flag: Option<SocketAddr>) -> anyhow::Result<SocketAddr> {
    let Some(addr) = flag else { return Ok(config.listen.edge) };
    config.edge.auth.check_listen(addr, "--listen").map_err(anyhow::Error::msg)?;
    Ok(addr)
}

/// The gRPC ingest API's listener, when `listen.ingest` is set.
async fn bind_ingest(config: &Config) -> anyhow::Result<Option<TcpListener>> {
    match config.listen.ingest {
        Some(addr) => Ok(Some(bind(addr, "ingest").await?)),
        None => Ok(None),
    }
}

/// Binds `addr` and prints where the component listens (tests read this line).
async fn bind(addr: SocketAddr, component: &str) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} for {component}"))?;
    println!("breakwater {component} listening on {}", listener.local_addr()?);
    Ok(listener)
}

async fn trigger_on_signal(shutdown: Shutdown) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(e) => {
                tracing::warn!(cause = %e, "cannot watch SIGTERM; only Ctrl-C stops breakwater");
                let _ = ctrl_c.await;
                shutdown.trigger();
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
    shutdown.trigger();
}
