//! The ratelimit service: may this sender push these signals now?
//!
//! # Layout
//! - [`limiter`] — the pure decision, [`decide_all`]: a token bucket per sender (and per
//!   namespace with an override) that admits or refuses a webhook whole; [`Limits`] says
//!   which buckets a webhook is charged to (the default, or an override by sender or namespace).
//! - [`store`] — [`RateLimitStore`], with [`MemoryRateLimitStore`] (the embedded default)
//!   and [`RedisRateLimitStore`] (one Lua script, one round trip per webhook, a small
//!   string per sender that expires once its bucket is full again).
//! - [`grpc`] — [`RateLimitGrpc`], the thin `breakwater.v1.RateLimitService` face.
//! - [`config`] — [`RateLimitConfig`], with a documented default on every knob.
//!
//! Entry point: [`run`].

// Library code must not panic on input: failures are typed errors. Tests may
// unwrap (`.clippy.toml` allows it there).
#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod config;
pub mod error;
pub mod grpc;
/// The pure decision and its in-process store, shared with the edge.
pub use breakwater_limiter as limiter;
pub mod store;

use std::future::Future;
use std::sync::Arc;

use breakwater_grpc::{ComponentHealth, Incoming};
use breakwater_proto::v1::rate_limit_service_server::RateLimitServiceServer;

pub use config::{Override, RateLimitConfig, StoreKind};
pub use error::{Error, Result};
pub use grpc::RateLimitGrpc;
pub use limiter::{BucketState, Charge, Decision, Limits, Quota, TokenBucket, decide_all};
pub use store::{FallbackRateLimitStore, MemoryRateLimitStore, RateLimitStore, RedisRateLimitStore};

/// The store `config` asks for. Builds lazily: nothing connects yet.
///
/// # Errors
/// [`Error::Store`] when the Redis settings are unusable, or for
/// `store = "embedded"`, which validation refuses first.
pub fn store_from_config(config: &RateLimitConfig, health: Arc<ComponentHealth>) -> Result<Arc<dyn RateLimitStore>> {
    Ok(match config.store {
        StoreKind::Memory => Arc::new(MemoryRateLimitStore::new()),
        StoreKind::Embedded => {
            return Err(breakwater_keyspace::KeyspaceError::Config(config::EMBEDDED_REFUSED.to_owned()).into());
        }
        StoreKind::Redis => {
            let keyspace = breakwater_keyspace::Keyspace::from_config(&config.redis, KEYSPACE)?;
            let redis = Arc::new(RedisRateLimitStore::new(keyspace));
            Arc::new(FallbackRateLimitStore::new(redis, MemoryRateLimitStore::new(), health))
        }
    })
}

/// The component part of this service's key prefix (`bw:rl:`).
pub const KEYSPACE: &str = "rl";

/// Serves the ratelimit gRPC service on `incoming` (a TCP listener, or in
/// process for `breakwater up`) until `shutdown` resolves.
///
/// # Errors
/// When the transport fails.
pub async fn run(
    grpc: RateLimitGrpc,
    health: Arc<ComponentHealth>,
    incoming: impl Into<Incoming>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let grpc = Arc::new(grpc);
    let incoming = incoming.into().with_local(|| breakwater_grpc::LocalService::RateLimit(grpc.clone()));
    let server = RateLimitServiceServer::from_arc(grpc)
        .max_decoding_message_size(breakwater_grpc::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(breakwater_grpc::MAX_MESSAGE_BYTES);
    breakwater_grpc::serve_with_status(server, health, incoming, shutdown).await?;
    Ok(())
}
