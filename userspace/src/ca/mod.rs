//! Airlock's local certificate authority.
//!
//! The proxy terminates agents' TLS with leaf certificates issued here. The CA
//! certificate is what agents are told to trust (`airlock ca path`, the trust
//! env vars of `airlock run`); its key never leaves `<state_dir>/ca/ca.key`.
//!
//! Layout under `<state_dir>/ca/` (directory 0755 so agents can read the cert):
//! - `ca.key`     PKCS#8 PEM, ECDSA P-256, 0600, root-only
//! - `ca.crt`     PEM, 0644
//! - `bundle.pem` system roots followed by the Airlock CA, 0644
//! - `bundle.jks` the same, as a Java trust store, 0644

mod bundle;
mod java_trust;
mod mint;
mod store;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;

use self::mint::Minter;

/// Everything that can go wrong while loading, creating or using the CA.
/// Variants name the files involved; none carries key material.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot create CA directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read CA key {path}: {source}")]
    ReadKey {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CA key {path} is not a regular file")]
    KeyNotAFile { path: PathBuf },
    #[error(
        "CA key {path} has mode {mode:04o}, it must be 0600; fix it with `chmod 600 {path}`",
        path = path.display()
    )]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("CA key {path} is not a usable PKCS#8 PEM private key: {source}")]
    ParseKey { path: PathBuf, source: rcgen::Error },
    #[error(
        "CA key {key_path} exists but its certificate {cert_path} is missing; restore the \
         certificate, or remove the key to create a new CA (agents trusting the old CA must \
         then be given the new one)"
    )]
    CertMissing {
        key_path: PathBuf,
        cert_path: PathBuf,
    },
    #[error(
        "CA certificate {cert_path} exists but its key {key_path} is missing; restore the key, \
         or remove the certificate to create a new CA (agents trusting the old CA must then be \
         given the new one)"
    )]
    KeyMissing {
        key_path: PathBuf,
        cert_path: PathBuf,
    },
    #[error("cannot read CA certificate {path}: {source}")]
    ReadCert {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no PEM certificate found in {path}")]
    NoCertificate { path: PathBuf },
    #[error(
        "CA certificate {cert_path} does not belong to key {key_path}; restore the matching \
         pair, or remove both to create a new CA (agents trusting the old CA must then be given \
         the new one)"
    )]
    CertKeyMismatch {
        key_path: PathBuf,
        cert_path: PathBuf,
    },
    #[error(
        "CA certificate {cert_path} (key {key_path}) cannot verify the certificates this CA \
         issues: {source}"
    )]
    CertUnusable {
        key_path: PathBuf,
        cert_path: PathBuf,
        source: rustls::Error,
    },
    #[error("the system random number generator failed")]
    Random,
    #[error("cannot generate a key pair: {source}")]
    GenerateKey { source: rcgen::Error },
    #[error("cannot sign the CA certificate: {source}")]
    SignCa { source: rcgen::Error },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read system roots {path}: {source}")]
    ReadSystemRoots {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{host:?} is neither a DNS name nor an IP address")]
    InvalidHost { host: String },
    #[error("cannot issue a certificate for {host}: {source}")]
    MintLeaf { host: String, source: rcgen::Error },
    #[error("cannot load the leaf signing key into rustls: {source}")]
    LeafKey { source: rustls::Error },
    #[error("cannot build a TLS server configuration for {host}: {source}")]
    ServerConfig { host: String, source: rustls::Error },
}

/// The trust bundle as a Java trust store (JKS), in the CA directory.
pub const JAVA_TRUST_STORE: &str = "bundle.jks";

/// The loaded CA: issues leaf certificates and caches one `ServerConfig` per
/// (host, ALPN list). Shared across tasks behind an `Arc`.
pub struct Ca {
    cert_path: PathBuf,
    bundle_path: PathBuf,
    cert_pem: String,
    minter: Minter,
}

// The proxy shares one `Ca` across tokio tasks.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Ca>();
};

impl Ca {
    /// Loads the CA from `<state_dir>/ca/`, creating it on first start.
    ///
    /// An existing key is never replaced: a missing or foreign certificate
    /// next to it is an error, because agents may already trust that CA.
    pub fn load_or_create(state_dir: &Path) -> Result<Ca, CaError> {
        // One explicit provider for everything this CA builds: no reliance on
        // a process-wide default having been installed.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let stored = store::load_or_create(state_dir, &provider)?;
        let minter = Minter::new(provider, stored.key, stored.cert_der, &stored.paths)?;
        Ok(Ca {
            cert_path: stored.paths.cert,
            bundle_path: stored.paths.bundle,
            cert_pem: stored.cert_pem,
            minter,
        })
    }

    /// Whether agents may resume TLS sessions with Airlock's leaves.
    pub fn with_session_resumption(mut self, on: bool) -> Ca {
        self.minter.set_resumption(on);
        self
    }

    /// The CA certificate agents must trust.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// Where [`Ca::write_trust_bundle`] writes the system roots plus this CA.
    #[cfg(test)]
    pub fn bundle_path(&self) -> &Path {
        &self.bundle_path
    }

    /// The CA certificate, PEM encoded.
    #[cfg(test)]
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Writes `bundle.pem`: the host's system roots followed by this CA, for
    /// clients that take one CA file replacing (not extending) their roots
    /// (`SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE`, `CURL_CA_BUNDLE`, `GIT_SSL_CAINFO`,
    /// `GRPC_DEFAULT_SSL_ROOTS_FILE_PATH`),
    /// and the same as a Java trust store beside it ([`JAVA_TRUST_STORE`]).
    pub fn write_trust_bundle(&self) -> Result<PathBuf, CaError> {
        let bundle = bundle::write(
            &self.bundle_path,
            &self.cert_pem,
            bundle::SYSTEM_ROOT_FILES.iter().map(Path::new),
        )?;
        java_trust::write(&self.bundle_path.with_file_name(JAVA_TRUST_STORE), &bundle)?;
        Ok(self.bundle_path.clone())
    }

    /// A server configuration presenting a leaf for `host` (a DNS name or an
    /// IP literal) chained to this CA, offering `alpn` in the given order.
    /// Cached: repeated calls return the same `Arc` until the leaf is re-minted.
    pub fn server_config(
        &self,
        host: &str,
        alpn: &[Vec<u8>],
    ) -> Result<Arc<ServerConfig>, CaError> {
        self.minter
            .server_config(host, alpn, std::time::Instant::now())
    }
}

impl fmt::Debug for Ca {
    // Hand-written so that no key material can reach a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("cert_path", &self.cert_path)
            .field("bundle_path", &self.bundle_path)
            .field("cached_configs", &self.minter.cached_len())
            .finish_non_exhaustive()
    }
}
