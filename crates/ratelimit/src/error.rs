//! Rate-limit faults. "Over the limit" is a decision, not an error.

use breakwater_keyspace::KeyspaceError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("ratelimit store")]
    Store(#[from] KeyspaceError),
    #[error("serving ratelimit")]
    Serve(#[from] breakwater_grpc::GrpcError),
}

impl Error {
    /// Bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Store(e) => e.metric_label(),
            Self::Serve(_) => "serve",
        }
    }
}
