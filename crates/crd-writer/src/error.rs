//! Failures of the crd-writer as a whole (one write's failure is a `WriteResult`, not an error).

use crate::sink::SinkError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),
    /// No kubeconfig or in-cluster account could be found; the cause as [`kube_cause`] tells it.
    #[error("kubernetes configuration: {0}")]
    KubeConfig(String),
    /// The Kubernetes configuration could not make a client; the cause as [`kube_cause`] tells it.
    #[error("kubernetes client: {0}")]
    KubeClient(String),
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

/// What went wrong with a kubeconfig, without what it holds: a parser's message quotes the
/// lines around the error (a token line, say), and a URL can carry a user and password. Kept:
/// the first line, up to the parser's message, with the line and column it names; quoted
/// text and URL userinfo are dropped.
pub fn kube_cause(error: &dyn std::error::Error) -> String {
    let text = error.to_string();
    let first = text.lines().next().unwrap_or_default();
    if let Some(at) = first.find("failed to parse kubeconfig") {
        let location = first[at..]
            .find("line ")
            .map(|l| &first[at + l..])
            .and_then(|rest| rest.split(':').next())
            .map(|loc| format!(" at {loc}"))
            .unwrap_or_default();
        return format!("{}the kubeconfig does not parse as YAML{location} (its text is not shown)", &first[..at]);
    }
    scrub(first)
}

/// `text` without quoted parts and without the userinfo of any URL.
fn scrub(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut quoted = false;
    for c in text.chars() {
        if matches!(c, '"' | '`') {
            if !quoted {
                out.push_str("\"…\"");
            }
            quoted = !quoted;
        } else if !quoted {
            out.push(c);
        }
    }
    let mut clean = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(start) = rest.find("://") {
        let (before, after) = rest.split_at(start + 3);
        clean.push_str(before);
        let end = after.find(char::is_whitespace).unwrap_or(after.len());
        let (url, tail) = after.split_at(end);
        match url.rfind('@') {
            Some(at) => {
                clean.push_str("***");
                clean.push_str(&url[at..]);
            }
            None => clean.push_str(url),
        }
        rest = tail;
    }
    clean.push_str(rest);
    clean
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kubeconfig_cause_keeps_no_secret() {
        let yaml = "failed to infer config: kubeconfig: (failed to parse kubeconfig YAML: error: line 8 column 4: \
                    did not find expected key\n7 |     token: s3cret\n8 |    bad: [";
        let cause = kube_cause(&std::io::Error::other(yaml));
        assert_eq!(
            cause,
            "failed to infer config: kubeconfig: (the kubeconfig does not parse as YAML at line 8 column 4 (its text is not shown)"
        );
        let url = "invalid server https://admin:s3cret@host:6443 and \"s3cret\" quoted";
        assert_eq!(kube_cause(&std::io::Error::other(url)), "invalid server https://***@host:6443 and \"…\" quoted");
    }
}
