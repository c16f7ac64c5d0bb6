//! Failures of the crd-writer as a whole (one write's failure is a `WriteResult`, not an error).

use crate::sink::SinkError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),
    /// No kubeconfig or in-cluster account could be found.
    #[error("kubernetes configuration")]
    KubeConfig(#[source] kube::config::InferConfigError),
    /// The Kubernetes configuration could not make a client.
    #[error("kubernetes client")]
    KubeClient(#[source] kube::Error),
    #[error("grpc server")]
    Grpc(#[from] breakwater_grpc::GrpcError),
    /// A request carried more writes than `crd_writer.max_batch`.
    #[error("{len} writes in one request, at most {max} allowed")]
    BatchTooLarge { len: usize, max: usize },
    #[error("remediation sink")]
    Sink(#[from] SinkError),
    /// The journal of pending counts could not be read.
    #[error("count journal")]
    Journal(#[from] breakwater_embedded::EmbeddedError),
}
