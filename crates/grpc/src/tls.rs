//! TLS settings shared by the edge's listener, the gRPC servers and the edge's
//! gRPC clients: PEM files named in the configuration, read at start, with
//! rustls and the `ring` provider.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// A listener's TLS (`[tls]`): the edge's HTTP listener and every split-mode
/// gRPC server use it when `cert_file` is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerTls {
    /// PEM certificate chain served. Unset: plain HTTP and gRPC.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// PEM CA bundle: clients must present a certificate it signed (mutual
    /// TLS). Unset: any client may connect.
    pub client_ca_file: Option<PathBuf>,
}

/// A caller's TLS towards `https://` components (`[edge.components]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientTls {
    /// PEM CA bundle that signed the components' certificates; needed by
    /// `https://` URLs.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for components that require mutual TLS.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
}

/// A TLS file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {key} {path:?}")]
    Read {
        key: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{key} {path:?} holds no {what} in PEM")]
    Pem { key: String, path: PathBuf, what: &'static str },
    #[error("TLS set-up: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("TLS client verifier: {0}")]
    Verifier(String),
}

impl ServerTls {
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some()
    }

    /// # Errors
    /// A sentence naming the key (`section` is `tls`).
    pub fn validate(&self, section: &str) -> Result<(), String> {
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => return Err(format!("{section}.cert_file is set without {section}.key_file: set both")),
            (None, Some(_)) => return Err(format!("{section}.key_file is set without {section}.cert_file: set both")),
            _ => {}
        }
        if self.client_ca_file.is_some() && self.cert_file.is_none() {
            return Err(format!(
                "{section}.client_ca_file is set without {section}.cert_file: mutual TLS needs the server's certificate too"
            ));
        }
        Ok(())
    }

    /// tonic's server TLS, `None` when TLS is off.
    ///
    /// # Errors
    /// When a file cannot be read or holds no PEM.
    pub fn tonic(&self) -> Result<Option<ServerTlsConfig>, TlsError> {
        let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) else { return Ok(None) };
        let identity = Identity::from_pem(read("tls.cert_file", cert)?, read("tls.key_file", key)?);
        let mut config = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.client_ca_file {
            config = config.client_ca_root(Certificate::from_pem(read("tls.client_ca_file", ca)?));
        }
        Ok(Some(config))
    }

    /// rustls' server configuration (HTTP/1.1), `None` when TLS is off.
    ///
    /// # Errors
    /// When a file cannot be read, holds no PEM, or rustls refuses it.
    pub fn rustls(&self) -> Result<Option<Arc<rustls::ServerConfig>>, TlsError> {
        use rustls_pki_types::PrivateKeyDer;
        use rustls_pki_types::pem::PemObject as _;
        let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) else { return Ok(None) };
        let chain = pem_certs("tls.cert_file", cert)?;
        let key_pem = read("tls.key_file", key)?;
        let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::Pem {
            key: "tls.key_file".into(),
            path: key.clone(),
            what: "private key",
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder =
            rustls::ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
        let builder = match &self.client_ca_file {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in pem_certs("tls.client_ca_file", ca)? {
                    roots.add(c)?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| TlsError::Verifier(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key_der)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Some(Arc::new(config)))
    }
}

impl ClientTls {
    /// # Errors
    /// A sentence naming the key (`section` is `edge.components`).
    pub fn validate(&self, section: &str, any_https: bool, any_http: bool) -> Result<(), String> {
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(format!("{section}.cert_file and {section}.key_file go together: set both or neither"));
        }
        if any_https && self.ca_file.is_none() {
            return Err(format!(
                "{section} has https:// URLs but {section}.ca_file is not set: name the CA that signed the components' certificates"
            ));
        }
        if any_https && any_http {
            return Err(format!("{section} mixes http:// and https:// URLs: use https:// for every component"));
        }
        Ok(())
    }

    /// tonic's client TLS for servers named `domain`; `None` without a CA.
    ///
    /// # Errors
    /// When a file cannot be read.
    pub fn tonic(&self) -> Result<Option<ClientTlsConfig>, TlsError> {
        let Some(ca) = &self.ca_file else { return Ok(None) };
        let mut config =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("edge.components.ca_file", ca)?));
        if let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) {
            config = config.identity(Identity::from_pem(
                read("edge.components.cert_file", cert)?,
                read("edge.components.key_file", key)?,
            ));
        }
        Ok(Some(config))
    }
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { key: key.to_owned(), path: path.to_owned(), source })
}

fn pem_certs(key: &str, path: &Path) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, TlsError> {
    use rustls_pki_types::pem::PemObject as _;
    let pem = read(key, path)?;
    let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok).collect();
    if certs.is_empty() {
        return Err(TlsError::Pem { key: key.to_owned(), path: path.to_owned(), what: "certificate" });
    }
    Ok(certs)
}
