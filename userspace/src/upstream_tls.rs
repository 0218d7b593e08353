//! TLS toward real upstreams: always verified, against the system roots plus
//! any extra CA files the daemon config names (`upstream_ca:`).
//!
//! There is deliberately no way to turn verification off: credentials are only
//! ever sent over verified TLS.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};

#[derive(Debug, thiserror::Error)]
pub enum UpstreamTlsError {
    #[error("upstream CA file {path} does not exist")]
    ExtraCaMissing { path: PathBuf },
    #[error("cannot read upstream CA file {path}: {source}")]
    ExtraCaUnreadable { path: PathBuf, source: io::Error },
    #[error("upstream CA file {path} is not valid PEM: {source}")]
    ExtraCaMalformed { path: PathBuf, source: io::Error },
    #[error("no certificate found in upstream CA file {path}")]
    ExtraCaEmpty { path: PathBuf },
    #[error("certificate #{index} in upstream CA file {path} is not a usable CA: {source}")]
    ExtraCaInvalid {
        path: PathBuf,
        index: usize,
        source: rustls::Error,
    },
    #[error("cannot build the upstream TLS configuration: {source}")]
    Config { source: rustls::Error },
}

/// A client configuration for upstream connections, offering `alpn` in order.
///
/// Roots: the system store (unparsable entries are skipped and counted), or
/// webpki-roots when the system store yields nothing, plus every certificate
/// of every file in `extra_ca_files`.
pub fn client_config(
    extra_ca_files: &[PathBuf],
    alpn: &[Vec<u8>],
) -> Result<Arc<ClientConfig>, UpstreamTlsError> {
    let mut roots = system_roots();
    for path in extra_ca_files {
        add_extra_file(&mut roots, path)?;
    }
    // One explicit provider: no reliance on a process-wide default.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| UpstreamTlsError::Config { source })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.to_vec();
    Ok(Arc::new(config))
}

fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::warn!(%error, "error while loading system root certificates");
    }
    let (added, skipped) = roots.add_parsable_certificates(native.certs);
    if skipped > 0 {
        tracing::warn!(skipped, "skipped unparsable system root certificates");
    }
    if added == 0 {
        tracing::warn!("no system root certificates found; using the bundled webpki roots");
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    } else {
        tracing::debug!(added, "loaded system root certificates");
    }
    roots
}

fn add_extra_file(roots: &mut RootCertStore, path: &Path) -> Result<(), UpstreamTlsError> {
    let pem = match fs::read(path) {
        Ok(pem) => pem,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(UpstreamTlsError::ExtraCaMissing {
                path: path.to_path_buf(),
            });
        }
        Err(source) => {
            return Err(UpstreamTlsError::ExtraCaUnreadable {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let mut count = 0;
    for (index, cert) in rustls_pemfile::certs(&mut pem.as_slice()).enumerate() {
        let cert = cert.map_err(|source| UpstreamTlsError::ExtraCaMalformed {
            path: path.to_path_buf(),
            source,
        })?;
        roots
            .add(cert)
            .map_err(|source| UpstreamTlsError::ExtraCaInvalid {
                path: path.to_path_buf(),
                index,
                source,
            })?;
        count += 1;
    }
    if count == 0 {
        return Err(UpstreamTlsError::ExtraCaEmpty {
            path: path.to_path_buf(),
        });
    }
    tracing::debug!(path = %path.display(), count, "trusting extra upstream CA file");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn missing_extra_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.pem");
        let err = client_config(std::slice::from_ref(&path), &[]).unwrap_err();
        assert!(
            matches!(err, UpstreamTlsError::ExtraCaMissing { .. }),
            "{err:?}"
        );
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn extra_file_without_certificate_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.pem");
        fs::write(&path, "just text, no PEM blocks\n").unwrap();
        let err = client_config(std::slice::from_ref(&path), &[]).unwrap_err();
        assert!(
            matches!(err, UpstreamTlsError::ExtraCaEmpty { .. }),
            "{err:?}"
        );
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn extra_file_with_a_broken_certificate_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.pem");
        fs::write(
            &path,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = client_config(std::slice::from_ref(&path), &[]).unwrap_err();
        assert!(
            matches!(err, UpstreamTlsError::ExtraCaInvalid { index: 0, .. }),
            "{err:?}"
        );
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn unreadable_extra_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        // A directory exists but cannot be read as a file, even by root.
        let path = dir.path().join("a-directory.pem");
        fs::create_dir(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        let err = client_config(std::slice::from_ref(&path), &[]).unwrap_err();
        assert!(
            matches!(err, UpstreamTlsError::ExtraCaUnreadable { .. }),
            "{err:?}"
        );
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn alpn_and_roots_are_set() {
        let config = client_config(&[], &[b"h2".to_vec(), b"http/1.1".to_vec()]).unwrap();
        assert_eq!(
            config.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }
}
