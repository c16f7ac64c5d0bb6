//! Storm faults. A storm is a decision, not an error.

use breakwater_keyspace::KeyspaceError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("storm store")]
    Store(#[from] KeyspaceError),
    #[error("storm's embedded store")]
    Embedded(#[from] breakwater_embedded::EmbeddedError),
    /// `storm.store = "embedded"` without an open state directory to use.
    #[error("storm.store = \"embedded\" needs a state directory, and none was opened")]
    NoStateDirectory,
    #[error("serving storm")]
    Serve(#[from] breakwater_grpc::GrpcError),
}

impl Error {
    /// Bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Store(e) => e.metric_label(),
            Self::Embedded(_) => "embedded",
            Self::NoStateDirectory => "config",
            Self::Serve(_) => "serve",
        }
    }
}
