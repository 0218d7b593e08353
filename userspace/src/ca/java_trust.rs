//! The trust bundle again, as a Java trust store (`bundle.jks`). The JVM
//! ignores `SSL_CERT_FILE` and reads only key stores, so `airlock run`
//! points `javax.net.ssl.trustStore` here. JKS rather than PKCS#12: Java
//! reads a PKCS#12 certificate as trusted only when it carries an
//! Oracle-specific attribute, while a JKS store holds nothing but trusted
//! certificates, in a format small enough to write here.
//!
//! Layout (big-endian; `sun.security.provider.JavaKeyStore`): magic
//! `FEEDFEED`, version 2, entry count; per entry tag 2 (a trusted
//! certificate), alias and certificate type as u16-length strings, creation
//! time in milliseconds, the DER with a u32 length; then a SHA-1 over the
//! store's password (UTF-16), the words "Mighty Aphrodite" and everything
//! before it. The digest only detects damage: the store holds public
//! certificates, under the password Java's own `cacerts` uses.

use std::path::Path;

use super::CaError;
use super::store::write_atomic;

const MAGIC: u32 = 0xFEED_FEED;
const VERSION: u32 = 2;
const TRUSTED_CERT: u32 = 2;
/// The password of every JDK's `cacerts`, for `keytool -list`.
pub(super) const STORE_PASSWORD: &str = "changeit";
const KEYED_HASH_SALT: &[u8] = b"Mighty Aphrodite";
const STORE_MODE: u32 = 0o644;

/// One trusted certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    /// Lower case: JKS aliases are, and `keytool` lists them so.
    pub alias: String,
    pub created_ms: u64,
    pub der: Vec<u8>,
}

/// Writes `store` with every certificate of the PEM `bundle`. The last one
/// is Airlock's CA (`airlock-ca`); the rest are the system roots. A
/// certificate that does not parse is left out, and counted in a warning:
/// one that Java cannot read would fail the whole store, and with it every
/// TLS connection the JVM makes. Java then lacks that root; every other
/// client still has it.
pub(super) fn write(store: &Path, bundle: &[u8]) -> Result<(), CaError> {
    let mut ders = Vec::new();
    let mut unreadable = 0usize;
    for item in rustls_pemfile::certs(&mut &bundle[..]) {
        // A trust anchor rustls can take is a certificate that parses.
        match item {
            Ok(der) if rustls::RootCertStore::empty().add(der.clone()).is_ok() => {
                ders.push(der.as_ref().to_vec());
            }
            _ => unreadable += 1,
        }
    }
    if unreadable > 0 {
        tracing::warn!(
            store = %store.display(),
            unreadable,
            "certificates of the trust bundle that do not parse are left out of the Java trust store"
        );
    }
    let created_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let last = ders.len().saturating_sub(1);
    let entries: Vec<Entry> = ders
        .into_iter()
        .enumerate()
        .map(|(i, der)| Entry {
            alias: if i == last {
                "airlock-ca".to_owned()
            } else {
                format!("system-root-{i}")
            },
            created_ms,
            der,
        })
        .collect();
    write_atomic(store, &encode(&entries, STORE_PASSWORD), STORE_MODE)
}

pub(super) fn encode(entries: &[Entry], password: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.iter().map(|e| e.der.len() + 64).sum());
    out.extend_from_slice(&MAGIC.to_be_bytes());
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    for entry in entries {
        out.extend_from_slice(&TRUSTED_CERT.to_be_bytes());
        put_str(&mut out, &entry.alias);
        out.extend_from_slice(&entry.created_ms.to_be_bytes());
        put_str(&mut out, "X.509");
        out.extend_from_slice(&(entry.der.len() as u32).to_be_bytes());
        out.extend_from_slice(&entry.der);
    }
    let mut hash = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    for unit in password.encode_utf16() {
        hash.update(&unit.to_be_bytes());
    }
    hash.update(KEYED_HASH_SALT);
    hash.update(&out);
    out.extend_from_slice(hash.finish().as_ref());
    out
}

/// Java's `writeUTF`: a u16 length, then the text (aliases and the
/// certificate type are ASCII, where its modified UTF-8 is plain UTF-8).
fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made by `keytool -importcert -storetype JKS -storepass changeit` (JDK
    /// 17), two self-signed roots.
    const KEYTOOL: &[u8] = include_bytes!("testdata/keytool-two-roots.jks");

    /// The entries of a store of trusted certificates, read as Java reads
    /// them, and whether its digest holds under `password`.
    fn parse(store: &[u8], password: &str) -> (Vec<Entry>, bool) {
        let at = std::cell::Cell::new(0usize);
        let take = |n: usize| {
            let piece = &store[at.get()..at.get() + n];
            at.set(at.get() + n);
            piece
        };
        let u32_at = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap());
        assert_eq!(u32_at(take(4)), MAGIC);
        assert_eq!(u32_at(take(4)), VERSION);
        let count = u32_at(take(4));
        let mut entries = Vec::new();
        for _ in 0..count {
            assert_eq!(u32_at(take(4)), TRUSTED_CERT);
            let len = u16::from_be_bytes(take(2).try_into().unwrap()) as usize;
            let alias = String::from_utf8(take(len).to_vec()).unwrap();
            let created_ms = u64::from_be_bytes(take(8).try_into().unwrap());
            let len = u16::from_be_bytes(take(2).try_into().unwrap()) as usize;
            assert_eq!(take(len), b"X.509");
            let len = u32_at(take(4)) as usize;
            let der = take(len).to_vec();
            entries.push(Entry {
                alias,
                created_ms,
                der,
            });
        }
        let body = at.get();
        let digest = take(20).to_vec();
        assert_eq!(at.get(), store.len(), "nothing after the digest");
        let expected = encode(&entries, password);
        (entries, expected[body..] == digest[..])
    }

    #[test]
    fn the_store_is_byte_for_byte_what_keytool_writes() {
        let (entries, digest_holds) = parse(KEYTOOL, STORE_PASSWORD);
        assert!(digest_holds);
        assert_eq!(
            entries.iter().map(|e| e.alias.as_str()).collect::<Vec<_>>(),
            ["airlock-ca", "system-root-0"]
        );
        assert_eq!(encode(&entries, STORE_PASSWORD), KEYTOOL);
        // The digest is keyed: another password does not reproduce it.
        assert!(!parse(KEYTOOL, "not-changeit").1);
    }

    #[test]
    fn every_certificate_of_the_bundle_is_in_the_store_and_the_last_is_airlocks() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (rcgen_pem("a root"), rcgen_pem("Airlock"));
        let bundle = format!(
            "{a}-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n{b}"
        );
        let path = dir.path().join("bundle.jks");
        write(&path, bundle.as_bytes()).unwrap();
        let (entries, digest_holds) = parse(&std::fs::read(&path).unwrap(), STORE_PASSWORD);
        assert!(digest_holds);
        let pem_der = |pem: &str| {
            rustls_pemfile::certs(&mut pem.as_bytes())
                .next()
                .unwrap()
                .unwrap()
                .as_ref()
                .to_vec()
        };
        // The PEM block whose content is no certificate is left out: Java
        // would refuse the whole store for it.
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].der, pem_der(&a));
        assert_eq!(entries[0].alias, "system-root-0");
        assert_eq!(entries[1].der, pem_der(&b));
        assert_eq!(entries[1].alias, "airlock-ca");
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );
    }

    fn rcgen_pem(name: &str) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.self_signed(&key).unwrap().pem()
    }
}
