//! A certificate authority made for one test, and certificates it signs,
//! written as PEM files in a temporary directory the CA owns.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use tempfile::TempDir;

/// A test CA: `ca.pem` in its directory, and [`issue`](Self::issue)d leaves.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: TempDir,
}

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl TestCa {
    /// # Panics
    /// When rcgen cannot make the CA, or the directory cannot be written.
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "Breakwater test CA");
        let issuer =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA certificate");
        let dir = tempfile::tempdir().expect("CA directory");
        std::fs::write(dir.path().join("ca.pem"), issuer.pem()).expect("write ca.pem");
        Self { issuer, dir }
    }

    /// The CA certificate (PEM).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The directory the files are in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A certificate named `name` for `names` (DNS names or IP addresses), good
    /// for servers and clients alike.
    ///
    /// # Panics
    /// When rcgen cannot sign it, or the files cannot be written.
    pub fn issue(&self, name: &str, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("leaf parameters");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf certificate");
        let leaf = Leaf {
            cert_file: self.dir.path().join(format!("{name}.pem")),
            key_file: self.dir.path().join(format!("{name}-key.pem")),
        };
        std::fs::write(&leaf.cert_file, cert.pem()).expect("write certificate");
        std::fs::write(&leaf.key_file, key.serialize_pem()).expect("write key");
        leaf
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}
