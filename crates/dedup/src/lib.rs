//! The dedup service: tells a new incident from a repeat of an open one.
//!
//! # Layout
//! - [`window`] — the pure decision, `DedupWindow::decide(record, status, now)`.
//! - [`store`] — [`DedupStore`], batch-shaped, with [`MemoryDedupStore`] (tests),
//!   [`EmbeddedDedupStore`] (`breakwater up`: the memory store journaled to disk) and
//!   [`RedisDedupStore`] (one Lua script per batch, fixed-size records).
//! - [`incidents`] — [`incidents::Incidents`]: where each incident is counted, whether
//!   dedup's state may miss incidents, and the store's health, between face and store.
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
pub mod incidents;
pub mod store;
pub mod window;

use std::future::Future;
use std::sync::Arc;

use breakwater_grpc::{ComponentHealth, Incoming};
use breakwater_proto::v1::dedup_service_server::DedupServiceServer;

pub use config::{DedupConfig, StoreKind};
pub use error::{Error, Result};
pub use grpc::DedupGrpc;
pub use store::{Bind, DedupStore, EmbeddedDedupStore, MemoryDedupStore, RedisDedupStore, WindowEnd, WindowRef};
pub use window::{Binding, Decision, DedupWindow, DeliveryKey, Placement, Query, Record, Status, Verdict};

/// The store `config` asks for. Redis builds lazily: nothing connects yet.
/// The embedded store uses the `dedup` namespace of `embedded`, restoring the
/// open incidents now.
///
/// # Errors
/// [`Error::Store`] when the Redis settings are unusable, when the embedded
/// state cannot be read, or when the embedded store is asked for without `embedded`.
pub fn store_from_config(
    config: &DedupConfig,
    embedded: Option<&breakwater_embedded::EmbeddedStore>,
) -> Result<Arc<dyn DedupStore>> {
    let window = DedupWindow::new(config.window()).with_copy_window(config.copy_window());
    Ok(match config.store {
        StoreKind::Memory => Arc::new(MemoryDedupStore::new(window)),
        StoreKind::Embedded => {
            let Some(embedded) = embedded else {
                let why = "dedup.store = \"embedded\" needs a state directory, and none was opened";
                return Err(breakwater_keyspace::KeyspaceError::Config(why.to_owned()).into());
            };
            let store = EmbeddedDedupStore::open(embedded, window)
                .map_err(|e| breakwater_keyspace::KeyspaceError::Unavailable(Box::new(e)))?;
            Arc::new(store)
        }
        StoreKind::Redis => {
            let keyspace = breakwater_keyspace::Keyspace::from_config(&config.redis, KEYSPACE)?;
            Arc::new(RedisDedupStore::new(keyspace, window))
        }
    })
}

/// Serves the dedup gRPC service on `incoming` (a TCP listener, or in process
/// for `breakwater up`) until `shutdown` resolves.
///
/// # Errors
/// When the transport fails.
pub async fn run(
    grpc: DedupGrpc,
    health: Arc<ComponentHealth>,
    incoming: impl Into<Incoming>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let grpc = Arc::new(grpc);
    let incoming = incoming.into().with_local(|| breakwater_grpc::LocalService::Dedup(grpc.clone()));
    let server = DedupServiceServer::from_arc(grpc)
        .max_decoding_message_size(breakwater_grpc::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(breakwater_grpc::MAX_MESSAGE_BYTES);
    breakwater_grpc::serve_with_status(server, health, incoming, shutdown).await?;
    Ok(())
}

/// The component part of this service's key prefix (`bw:dedup:`).
pub const KEYSPACE: &str = "dedup";
