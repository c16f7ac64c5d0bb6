//! The dedup service: tells a new incident from a repeat of an open one.
//!
//! # Layout
//! - [`window`] — the pure decision, `DedupWindow::decide(record, status, now)`.
//! - [`store`] — [`DedupStore`], batch-shaped, with [`MemoryDedupStore`] (the embedded
//!   default) and [`RedisDedupStore`] (one Lua script per batch, fixed-size records).
//! - [`grpc`] — [`DedupGrpc`], the thin `breakwater.v1.DedupService` face.
//! - [`config`] — [`DedupConfig`].
//!
//! Entry point: [`run`].

// Library code must not panic on input: failures are typed errors. Tests may
// unwrap (`.clippy.toml` allows it there).
#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod config;
pub mod error;
pub mod grpc;
pub mod store;
pub mod window;

use std::future::Future;
use std::sync::Arc;

use breakwater_grpc::ComponentHealth;
use breakwater_proto::v1::dedup_service_server::DedupServiceServer;
use tokio::net::TcpListener;

pub use config::{DedupConfig, StoreKind};
pub use error::{Error, Result};
pub use grpc::DedupGrpc;
pub use store::{Bind, DedupStore, MemoryDedupStore, RedisDedupStore, WindowRef};
pub use window::{Binding, Decision, DedupWindow, Placement, Query, Record, Status, Verdict};

/// The store `config` asks for. Builds lazily: nothing connects yet.
///
/// # Errors
/// [`Error::Store`] when the Redis settings are unusable.
pub fn store_from_config(config: &DedupConfig) -> Result<Arc<dyn DedupStore>> {
    let window = DedupWindow::new(config.window());
    Ok(match config.store {
        StoreKind::Memory => Arc::new(MemoryDedupStore::new(window)),
        StoreKind::Redis => {
            let keyspace = breakwater_keyspace::Keyspace::from_config(&config.redis, KEYSPACE)?;
            Arc::new(RedisDedupStore::new(keyspace, window))
        }
    })
}

/// Serves the dedup gRPC service on `listener` until `shutdown` resolves.
///
/// # Errors
/// When the transport fails.
pub async fn run(
    grpc: DedupGrpc,
    health: Arc<ComponentHealth>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    breakwater_grpc::serve_with_status(DedupServiceServer::new(grpc), health, listener, shutdown).await?;
    Ok(())
}

/// The component part of this service's key prefix (`bw:dedup:`).
pub const KEYSPACE: &str = "dedup";
