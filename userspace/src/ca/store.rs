//! The CA's files on disk: load them, or create them on first start.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use zeroize::Zeroizing;

use super::CaError;
use super::mint::{random_serial, set_validity};

pub(super) const CA_COMMON_NAME: &str = "Airlock Local CA";
const CA_BACKDATE: Duration = Duration::from_secs(24 * 60 * 60);
const CA_VALIDITY: Duration = Duration::from_secs(3652 * 24 * 60 * 60);

const KEY_MODE: u32 = 0o600;
const CERT_MODE: u32 = 0o644;
// Agents (non-root) must reach ca/ca.crt, so the state directory is traversable
// but not listable, and the CA directory is world-readable; the key file itself
// stays 0600.
const STATE_DIR_MODE: u32 = 0o711;
const CA_DIR_MODE: u32 = 0o755;

pub(super) struct Paths {
    pub(super) key: PathBuf,
    pub(super) cert: PathBuf,
    pub(super) bundle: PathBuf,
}

pub(super) struct Stored {
    pub(super) paths: Paths,
    pub(super) key: KeyPair,
    pub(super) cert_der: CertificateDer<'static>,
    pub(super) cert_pem: String,
}

/// The CA's subject and extensions, without validity or serial. Used both to
/// create the CA and to rebuild the issuer when loading it, so both must stay
/// byte-identical in the subject they produce.
pub(super) fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

pub(super) fn load_or_create(
    state_dir: &Path,
    provider: &CryptoProvider,
) -> Result<Stored, CaError> {
    let dir = state_dir.join("ca");
    let paths = Paths {
        key: dir.join("ca.key"),
        cert: dir.join("ca.crt"),
        bundle: dir.join("bundle.pem"),
    };
    ensure_dir(state_dir, STATE_DIR_MODE)?;
    ensure_dir(&dir, CA_DIR_MODE)?;

    match read_key(&paths.key)? {
        Some(key_pem) => load(paths, &key_pem),
        None => create(paths, provider),
    }
}

fn load(paths: Paths, key_pem: &str) -> Result<Stored, CaError> {
    let key = KeyPair::from_pem(key_pem).map_err(|source| CaError::ParseKey {
        path: paths.key.clone(),
        source,
    })?;
    let cert_pem = match fs::read_to_string(&paths.cert) {
        Ok(pem) => pem,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(CaError::CertMissing {
                key_path: paths.key,
                cert_path: paths.cert,
            });
        }
        Err(source) => {
            return Err(CaError::ReadCert {
                path: paths.cert,
                source,
            });
        }
    };
    let cert_der = first_certificate(&paths.cert, &cert_pem)?;
    Ok(Stored {
        paths,
        key,
        cert_der,
        cert_pem,
    })
}

fn create(paths: Paths, provider: &CryptoProvider) -> Result<Stored, CaError> {
    // A certificate without its key may be one agents already trust; replacing
    // it silently would break them in a way that is hard to trace.
    if paths.cert.symlink_metadata().is_ok() {
        return Err(CaError::KeyMissing {
            key_path: paths.key,
            cert_path: paths.cert,
        });
    }
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|source| CaError::GenerateKey { source })?;
    let mut params = ca_params();
    let not_before = SystemTime::now() - CA_BACKDATE;
    set_validity(&mut params, not_before, not_before + CA_VALIDITY);
    params.serial_number = Some(random_serial(provider)?);
    let cert = params
        .self_signed(&key)
        .map_err(|source| CaError::SignCa { source })?;

    // Key first, with O_EXCL: if two daemons race, one fails here instead of
    // both writing different CAs.
    let key_pem = Zeroizing::new(key.serialize_pem());
    write_new_key(&paths.key, key_pem.as_bytes())?;
    let cert_pem = cert.pem();
    write_atomic(&paths.cert, cert_pem.as_bytes(), CERT_MODE)?;
    tracing::info!(cert = %paths.cert.display(), "created Airlock CA");
    Ok(Stored {
        paths,
        key,
        cert_der: cert.der().clone(),
        cert_pem,
    })
}

fn ensure_dir(path: &Path, mode: u32) -> Result<(), CaError> {
    let err = |source| CaError::CreateDir {
        path: path.to_path_buf(),
        source,
    };
    match DirBuilder::new().recursive(false).mode(mode).create(path) {
        // The umask may have stripped bits the mode needs (agents must read ca.crt).
        Ok(()) => fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(err),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // Missing parents (e.g. /var/lib on a minimal image) get default modes.
            DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(path)
                .map_err(err)?;
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(err)
        }
        Err(e) => Err(err(e)),
    }
}

/// Reads the key, or `None` if there is none. Refuses a key others could read:
/// anyone holding it can impersonate every host to every agent.
fn read_key(path: &Path) -> Result<Option<Zeroizing<String>>, CaError> {
    let err = |source| CaError::ReadKey {
        path: path.to_path_buf(),
        source,
    };
    // O_NOFOLLOW: a symlink planted in the state directory must not redirect
    // a root daemon to some other file.
    let mut file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(e)),
    };
    let meta = file.metadata().map_err(err)?;
    if !meta.is_file() {
        return Err(CaError::KeyNotAFile {
            path: path.to_path_buf(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode != KEY_MODE {
        return Err(CaError::KeyPermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    // Sized up front so the buffer never reallocates and leaves key copies behind.
    let capacity = usize::try_from(meta.len()).unwrap_or(0).saturating_add(1);
    let mut pem = Zeroizing::new(String::with_capacity(capacity));
    file.read_to_string(&mut pem).map_err(err)?;
    Ok(Some(pem))
}

fn first_certificate(path: &Path, pem: &str) -> Result<CertificateDer<'static>, CaError> {
    match rustls_pemfile::certs(&mut pem.as_bytes()).next() {
        Some(Ok(der)) => Ok(der),
        Some(Err(source)) => Err(CaError::ReadCert {
            path: path.to_path_buf(),
            source,
        }),
        None => Err(CaError::NoCertificate {
            path: path.to_path_buf(),
        }),
    }
}

fn write_new_key(path: &Path, pem: &[u8]) -> Result<(), CaError> {
    let err = |source| CaError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(KEY_MODE)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(err)?;
    let result = (|| {
        // The umask can only remove bits, but a 0400 key would then be
        // refused on the next start; set the exact mode.
        file.set_permissions(fs::Permissions::from_mode(KEY_MODE))?;
        file.write_all(pem)?;
        file.sync_all()?;
        crate::atomic_file::sync_parent(path)
    })();
    if let Err(e) = result {
        // A half-written key would block every later start; remove it.
        let _ = fs::remove_file(path);
        return Err(err(e));
    }
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file and a rename, so readers
/// (agents loading their CA file) never see a partial file.
pub(super) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CaError> {
    crate::atomic_file::write(path, bytes, mode).map_err(|source| CaError::Write {
        path: path.to_path_buf(),
        source,
    })
}
