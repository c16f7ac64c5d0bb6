//! The storm service: folds bursts of similar new incidents into one storm CR.
//!
//! # Layout
//! - [`detector`] — the pure decision, `StormRules::decide(window, listed, now)`.
//! - [`store`] — [`StormStore`], batch-shaped, with [`MemoryStormStore`] (tests),
//!   [`EmbeddedStormStore`] (`breakwater up`: the memory store journaled to disk)
//!   and [`RedisStormStore`] (one Lua script per batch; a constant-size window record
//!   plus a capped resource set per (namespace, alertname)).
//! - [`storms`] — [`storms::Storms`]: each verdict's storm CR, the active-storm gauge,
//!   the decision metrics and the store's health, between face and store.
//! - [`grpc`] — [`StormGrpc`], the thin `breakwater.v1.StormService` face.
//! - [`config`] — [`StormConfig`].
//!
//! Entry point: [`run`].

// Library code must not panic on input: failures are typed errors. Tests may
// unwrap (`.clippy.toml` allows it there).
#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod config;
pub mod detector;
pub mod error;
pub mod grpc;
pub mod store;
pub mod storms;

use std::future::Future;
use std::sync::Arc;

use breakwater_grpc::{ComponentHealth, Incoming};
use breakwater_proto::v1::storm_service_server::StormServiceServer;

pub use config::{StoreKind, StormConfig};
pub use detector::{CountChange, Outcome, StormRules, StormType, Verdict, Window};
pub use error::{Error, Result};
pub use grpc::StormGrpc;
pub use store::{EmbeddedStormStore, MemoryStormStore, RedisStormStore, StormCount, StormQuery, StormStore};

/// The store `config` asks for. Redis builds lazily: nothing connects yet.
/// The embedded store uses the `storm` namespace of `embedded`, restoring its
/// state now.
///
/// # Errors
/// [`Error::Store`] when the Redis settings are unusable;
/// [`Error::Embedded`] when the state cannot be read;
/// [`Error::NoStateDirectory`] when the embedded store is asked for without `embedded`.
pub fn store_from_config(
    config: &StormConfig,
    embedded: Option<&breakwater_embedded::EmbeddedStore>,
) -> Result<Arc<dyn StormStore>> {
    let rules = config.rules();
    Ok(match config.store {
        StoreKind::Memory => Arc::new(MemoryStormStore::new(rules)),
        StoreKind::Embedded => {
            let embedded = embedded.ok_or(Error::NoStateDirectory)?;
            Arc::new(EmbeddedStormStore::open(embedded, rules)?)
        }
        StoreKind::Redis => {
            let keyspace = breakwater_keyspace::Keyspace::from_config(&config.redis, KEYSPACE)?;
            Arc::new(RedisStormStore::new(keyspace, rules))
        }
    })
}

/// Serves the storm gRPC service on `incoming` (a TCP listener, or in process
/// for `breakwater up`) until `shutdown` resolves.
/// Meanwhile `breakwater_storms_active` is refreshed every few seconds, so a
/// storm that ends while no alert arrives stops counting.
///
/// # Errors
/// When the transport fails.
pub async fn run(
    grpc: StormGrpc,
    health: Arc<ComponentHealth>,
    incoming: impl Into<Incoming>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let refresh = {
        let grpc = grpc.clone();
        async move {
            let mut ticker = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                ticker.tick().await;
                grpc.refresh_active_storms();
            }
        }
    };
    let grpc = Arc::new(grpc);
    let incoming = incoming.into().with_local(|| breakwater_grpc::LocalService::Storm(grpc.clone()));
    let server = StormServiceServer::from_arc(grpc)
        .max_decoding_message_size(breakwater_grpc::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(breakwater_grpc::MAX_MESSAGE_BYTES);
    let serve = breakwater_grpc::serve_with_status(server, health, incoming, shutdown);
    tokio::select! {
        served = serve => served?,
        () = refresh => {}
    }
    Ok(())
}

/// The component part of this service's key prefix (`bw:storm:`).
pub const KEYSPACE: &str = "storm";
