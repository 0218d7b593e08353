//! The trust bundle: system roots plus the Airlock CA in one PEM file.
//!
//! Agents behind the proxy only ever see Airlock's leaves, but tools such as
//! curl and Python replace their whole root store with `SSL_CERT_FILE`; the
//! system roots keep them working for anything they verify themselves.

use std::fs;
use std::io;
use std::path::Path;

use super::CaError;
use super::store::write_atomic;

/// Debian/Ubuntu/Alpine/Arch first, then Fedora/RHEL.
pub(super) const SYSTEM_ROOT_FILES: [&str; 2] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

const BUNDLE_MODE: u32 = 0o644;

/// Writes `bundle` from the first readable file among `candidates` followed by
/// `ca_pem`, and returns what it wrote. A candidate that exists but cannot be
/// read is an error, not a silent fallback to a bundle without system roots.
pub(super) fn write<'a>(
    bundle: &Path,
    ca_pem: &str,
    candidates: impl IntoIterator<Item = &'a Path>,
) -> Result<Vec<u8>, CaError> {
    let mut contents = Vec::new();
    let mut found = false;
    for candidate in candidates {
        match fs::read(candidate) {
            Ok(system) => {
                contents = system;
                found = true;
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(CaError::ReadSystemRoots {
                    path: candidate.to_path_buf(),
                    source,
                });
            }
        }
    }
    if !found {
        // webpki-roots holds trust anchors, not certificates, so it cannot be
        // rendered as PEM; the bundle then trusts the Airlock CA alone.
        tracing::warn!(
            bundle = %bundle.display(),
            "no system CA bundle found; trust bundle holds only the Airlock CA"
        );
    }
    if !contents.is_empty() && !contents.ends_with(b"\n") {
        contents.push(b'\n');
    }
    contents.extend_from_slice(ca_pem.as_bytes());
    write_atomic(bundle, &contents, BUNDLE_MODE)?;
    Ok(contents)
}
