use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

use super::mint::REMINT_AFTER;
use super::{Ca, CaError, bundle};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn ca_der(ca: &Ca) -> CertificateDer<'static> {
    rustls_pemfile::certs(&mut ca.cert_pem().as_bytes())
        .next()
        .expect("a certificate")
        .expect("valid PEM")
}

fn client_trusting(ca: &Ca, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca_der(ca)).expect("CA accepted as a root");
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// Runs a full handshake in memory; returns the client side on success.
fn handshake(
    client_config: Arc<ClientConfig>,
    server_config: Arc<ServerConfig>,
    sni: &str,
) -> Result<ClientConnection, rustls::Error> {
    let name = ServerName::try_from(sni.to_owned()).expect("valid server name");
    let mut client = ClientConnection::new(client_config, name)?;
    let mut server = ServerConnection::new(server_config)?;
    for _ in 0..16 {
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).expect("write to Vec");
        }
        let mut rd = wire.as_slice();
        while !rd.is_empty() {
            server.read_tls(&mut rd).expect("read from slice");
            server.process_new_packets()?;
        }
        wire.clear();
        while server.wants_write() {
            server.write_tls(&mut wire).expect("write to Vec");
        }
        let mut rd = wire.as_slice();
        while !rd.is_empty() {
            client.read_tls(&mut rd).expect("read from slice");
            client.process_new_packets()?;
        }
        if !client.is_handshaking() && !server.is_handshaking() {
            return Ok(client);
        }
    }
    panic!("handshake did not complete");
}

/// The PEM label of a PKCS#8 key, spelled so that no committed line looks
/// like key material to a secret scanner.
const PKCS8_LABEL: &str = concat!("PRIVATE", " ", "KEY");

fn pem_header(label: &str) -> String {
    format!("-----BEGIN {label}-----")
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("stat").permissions().mode() & 0o7777
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn create_then_reload_keeps_the_same_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(dir.path()).unwrap();
    let ca_dir = dir.path().join("ca");
    assert_eq!(ca.cert_path(), ca_dir.join("ca.crt"));
    assert_eq!(ca.bundle_path(), ca_dir.join("bundle.pem"));
    assert_eq!(mode(&ca_dir.join("ca.key")), 0o600);
    assert_eq!(mode(&ca_dir.join("ca.crt")), 0o644);
    assert_eq!(mode(&ca_dir), 0o755);
    let key_pem = fs::read_to_string(ca_dir.join("ca.key")).unwrap();
    assert!(key_pem.starts_with(&pem_header(PKCS8_LABEL)));
    let key = KeyPair::from_pem(&key_pem).unwrap();
    assert_eq!(key.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);

    let cert_before = fs::read(ca.cert_path()).unwrap();
    drop(ca);
    let again = Ca::load_or_create(dir.path()).unwrap();
    assert_eq!(fs::read(again.cert_path()).unwrap(), cert_before);
    assert_eq!(again.cert_pem().as_bytes(), cert_before.as_slice());
    assert_eq!(fs::read_to_string(ca_dir.join("ca.key")).unwrap(), key_pem);
}

#[test]
fn ca_certificate_has_the_expected_subject_and_usages() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(dir.path()).unwrap();
    let der = ca_der(&ca);
    assert!(contains(&der, b"Airlock Local CA"));
    // basicConstraints: critical, cA TRUE, pathLenConstraint 0.
    assert!(contains(
        &der,
        &[
            0x55, 0x1d, 0x13, 0x01, 0x01, 0xff, 0x04, 0x08, 0x30, 0x06, 0x01, 0x01, 0xff, 0x02,
            0x01, 0x00
        ]
    ));
    // keyUsage: critical, exactly keyCertSign (bit 5) and cRLSign (bit 6).
    let prefix = [0x55, 0x1d, 0x0f, 0x01, 0x01, 0xff, 0x04];
    let at = der
        .windows(prefix.len())
        .position(|w| w == prefix)
        .expect("critical keyUsage extension")
        + prefix.len();
    let bit_string = &der[at + 1..];
    assert_eq!(bit_string[0], 0x03, "BIT STRING");
    let (len, unused) = (usize::from(bit_string[1]), usize::from(bit_string[2]));
    let bits = &bit_string[3..2 + len];
    let set: Vec<usize> = (0..bits.len() * 8 - unused)
        .filter(|i| bits[i / 8] & (0x80 >> (i % 8)) != 0)
        .collect();
    assert_eq!(set, [5, 6]);
}

#[test]
fn minted_leaf_verifies_for_its_host_only() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(dir.path()).unwrap();
    let alpn = [b"h2".to_vec(), b"http/1.1".to_vec()];
    let server = ca.server_config("api.example.test", &alpn).unwrap();

    let client = handshake(
        client_trusting(&ca, &[b"h2"]),
        server.clone(),
        "api.example.test",
    )
    .expect("handshake with the right name succeeds");
    assert_eq!(client.alpn_protocol(), Some(&b"h2"[..]));
    let chain = client.peer_certificates().expect("server sent a chain");
    assert_eq!(chain.len(), 2, "chain is [leaf, ca]");
    assert_eq!(chain[1], ca_der(&ca));

    let err = handshake(client_trusting(&ca, &[]), server, "other.test")
        .expect_err("a leaf for api.example.test must not pass for other.test");
    assert!(
        matches!(err, rustls::Error::InvalidCertificate(_)),
        "unexpected error: {err:?}"
    );
}

#[test]
fn leaf_is_not_trusted_without_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(dir.path()).unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let other = Ca::load_or_create(other_dir.path()).unwrap();
    let server = ca.server_config("api.example.test", &[]).unwrap();
    let err = handshake(client_trusting(&other, &[]), server, "api.example.test")
        .expect_err("a different CA must not verify this leaf");
    assert!(
        matches!(err, rustls::Error::InvalidCertificate(_)),
        "{err:?}"
    );
}

#[test]
fn ip_literal_gets_an_ip_san() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(dir.path()).unwrap();
    let server = ca.server_config("127.0.0.1", &[]).unwrap();
    handshake(client_trusting(&ca, &[]), server.clone(), "127.0.0.1").expect("IP leaf verifies");
    let err = handshake(client_trusting(&ca, &[]), server, "127.0.0.2")
        .expect_err("the IP SAN names one address");
    assert!(
        matches!(err, rustls::Error::InvalidCertificate(_)),
        "{err:?}"
    );

    let v6 = ca.server_config("[::1]", &[]).unwrap();
    handshake(client_trusting(&ca, &[]), v6, "::1").expect("bracketed IPv6 leaf verifies");
}

#[test]
fn invalid_host_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(dir.path()).unwrap();
    for host in ["", "bad host", "exa mple.com", "-\u{e9}.test"] {
        let err = ca.server_config(host, &[]).unwrap_err();
        assert!(
            matches!(err, CaError::InvalidHost { .. }),
            "{host:?}: {err:?}"
        );
    }
}

#[test]
fn cache_returns_the_same_config_until_remint() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(dir.path()).unwrap();
    let h2 = [b"h2".to_vec()];
    let h1 = [b"http/1.1".to_vec()];
    let first = ca.server_config("api.example.test", &h2).unwrap();
    let second = ca.server_config("api.example.test", &h2).unwrap();
    assert!(Arc::ptr_eq(&first, &second));
    let upper = ca.server_config("API.Example.TEST", &h2).unwrap();
    assert!(
        Arc::ptr_eq(&first, &upper),
        "host names are case-insensitive"
    );

    let other_alpn = ca.server_config("api.example.test", &h1).unwrap();
    assert!(!Arc::ptr_eq(&first, &other_alpn));
    assert_eq!(other_alpn.alpn_protocols, h1);
    assert_eq!(ca.minter.cached_len(), 2);

    let now = Instant::now();
    let soon = ca
        .minter
        .server_config("api.example.test", &h2, now + Duration::from_secs(3600))
        .unwrap();
    assert!(Arc::ptr_eq(&first, &soon));
    let later = ca
        .minter
        .server_config(
            "api.example.test",
            &h2,
            now + REMINT_AFTER + Duration::from_secs(1),
        )
        .unwrap();
    assert!(!Arc::ptr_eq(&first, &later), "stale leaf is re-minted");
    assert_eq!(ca.minter.cached_len(), 2, "re-mint replaces, not adds");
}

#[test]
fn cache_is_bounded_and_evicts_the_oldest() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(dir.path()).unwrap();
    ca.minter.set_capacity(2);
    let t0 = Instant::now();
    let at = |secs| t0 + Duration::from_secs(secs);
    let a = ca.minter.server_config("a.test", &[], at(0)).unwrap();
    let b = ca.minter.server_config("b.test", &[], at(1)).unwrap();
    ca.minter.server_config("c.test", &[], at(2)).unwrap();
    assert_eq!(ca.minter.cached_len(), 2);
    let b_again = ca.minter.server_config("b.test", &[], at(3)).unwrap();
    assert!(Arc::ptr_eq(&b, &b_again), "b survived");
    let a_again = ca.minter.server_config("a.test", &[], at(4)).unwrap();
    assert!(!Arc::ptr_eq(&a, &a_again), "a, the oldest, was evicted");
    assert_eq!(ca.minter.cached_len(), 2);
}

#[test]
fn leaves_have_distinct_serials() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(dir.path()).unwrap();
    let leaf = |host: &str| {
        let server = ca.server_config(host, &[]).unwrap();
        let client = handshake(client_trusting(&ca, &[]), server, host).unwrap();
        client.peer_certificates().unwrap()[0].to_vec()
    };
    // The serial is the INTEGER right after the TBSCertificate's version;
    // with one shared leaf key, rcgen's default would make it identical for
    // every host.
    let serial = |der: &[u8]| {
        let version = [0xa0, 0x03, 0x02, 0x01, 0x02];
        let at = der
            .windows(version.len())
            .position(|w| w == version)
            .expect("v3 version field")
            + version.len();
        assert_eq!(der[at..at + 2], [0x02, 0x10], "16-byte serial");
        der[at + 2..at + 18].to_vec()
    };
    assert_ne!(serial(&leaf("a.test")), serial(&leaf("b.test")));
}

#[test]
fn key_with_loose_mode_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    Ca::load_or_create(dir.path()).unwrap();
    let key = dir.path().join("ca/ca.key");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let err = Ca::load_or_create(dir.path()).unwrap_err();
    assert!(
        matches!(err, CaError::KeyPermissions { mode: 0o644, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("chmod 600 {}", key.display())),
        "{msg}"
    );
}

#[test]
fn key_without_cert_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    Ca::load_or_create(dir.path()).unwrap();
    let key = dir.path().join("ca/ca.key");
    let cert = dir.path().join("ca/ca.crt");
    let key_before = fs::read(&key).unwrap();
    fs::remove_file(&cert).unwrap();
    let err = Ca::load_or_create(dir.path()).unwrap_err();
    assert!(matches!(err, CaError::CertMissing { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&key.display().to_string()), "{msg}");
    assert!(msg.contains(&cert.display().to_string()), "{msg}");
    assert!(!cert.exists(), "no certificate was regenerated");
    assert_eq!(fs::read(&key).unwrap(), key_before, "key untouched");
}

#[test]
fn cert_without_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    Ca::load_or_create(dir.path()).unwrap();
    let cert = dir.path().join("ca/ca.crt");
    let cert_before = fs::read(&cert).unwrap();
    fs::remove_file(dir.path().join("ca/ca.key")).unwrap();
    let err = Ca::load_or_create(dir.path()).unwrap_err();
    assert!(matches!(err, CaError::KeyMissing { .. }), "{err:?}");
    assert_eq!(fs::read(&cert).unwrap(), cert_before);
    assert!(!dir.path().join("ca/ca.key").exists());
}

#[test]
fn cert_of_another_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    Ca::load_or_create(dir.path()).unwrap();
    Ca::load_or_create(other.path()).unwrap();
    let cert = dir.path().join("ca/ca.crt");
    fs::copy(other.path().join("ca/ca.crt"), &cert).unwrap();
    let err = Ca::load_or_create(dir.path()).unwrap_err();
    assert!(matches!(err, CaError::CertKeyMismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&cert.display().to_string()), "{msg}");
    assert!(msg.contains("ca.key"), "{msg}");
}

#[test]
fn cert_with_same_key_but_other_subject_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    Ca::load_or_create(dir.path()).unwrap();
    let key =
        KeyPair::from_pem(&fs::read_to_string(dir.path().join("ca/ca.key")).unwrap()).unwrap();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "Someone Else CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    fs::write(dir.path().join("ca/ca.crt"), cert.pem()).unwrap();
    let err = Ca::load_or_create(dir.path()).unwrap_err();
    assert!(matches!(err, CaError::CertUnusable { .. }), "{err:?}");
}

#[test]
fn garbage_key_is_refused_without_echoing_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    fs::create_dir_all(&ca_dir).unwrap();
    let key = ca_dir.join("ca.key");
    // PEM framing around bytes that are no key at all.
    fs::write(
        &key,
        format!(
            "{}\nc2VjcmV0LWJ5dGVz\n-----END {PKCS8_LABEL}-----\n",
            pem_header(PKCS8_LABEL)
        ),
    )
    .unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    let err = Ca::load_or_create(dir.path()).unwrap_err();
    assert!(matches!(err, CaError::ParseKey { .. }), "{err:?}");
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("c2VjcmV0LWJ5dGVz"), "{shown}");
}

#[test]
fn debug_output_has_no_key_material() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(dir.path()).unwrap();
    let key_pem = fs::read_to_string(dir.path().join("ca/ca.key")).unwrap();
    let body: String = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let shown = format!("{ca:?}");
    assert!(shown.contains("ca.crt"));
    assert!(!shown.contains(&body[..20]), "{shown}");
}

#[test]
fn bundle_holds_system_roots_then_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(dir.path()).unwrap();
    let fake_system = dir.path().join("system.pem");
    // No trailing newline: the CA must still start on its own line.
    fs::write(
        &fake_system,
        "-----BEGIN CERTIFICATE-----\nU1lTVEVN\n-----END CERTIFICATE-----",
    )
    .unwrap();
    let missing = dir.path().join("missing.pem");
    bundle::write(
        ca.bundle_path(),
        ca.cert_pem(),
        [missing.as_path(), fake_system.as_path()],
    )
    .unwrap();
    let written = fs::read_to_string(ca.bundle_path()).unwrap();
    assert!(written.starts_with(
        "-----BEGIN CERTIFICATE-----\nU1lTVEVN\n-----END CERTIFICATE-----\n-----BEGIN"
    ));
    assert!(written.ends_with(ca.cert_pem()));
    assert_eq!(mode(ca.bundle_path()), 0o644);

    // Nothing found: the CA alone.
    bundle::write(ca.bundle_path(), ca.cert_pem(), [missing.as_path()]).unwrap();
    assert_eq!(fs::read_to_string(ca.bundle_path()).unwrap(), ca.cert_pem());
}

#[test]
fn bundle_uses_the_host_system_roots() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(dir.path()).unwrap();
    let path = ca.write_trust_bundle().unwrap();
    assert_eq!(path, ca.bundle_path());
    let written = fs::read(&path).unwrap();
    assert!(written.ends_with(ca.cert_pem().as_bytes()));
    // And the Java trust store beside it (its content: `java_trust`).
    let store = path.with_file_name(super::JAVA_TRUST_STORE);
    assert!(
        fs::read(&store)
            .unwrap()
            .starts_with(&[0xFE, 0xED, 0xFE, 0xED])
    );
    assert_eq!(mode(&store), 0o644);
    let system = bundle::SYSTEM_ROOT_FILES
        .iter()
        .find_map(|p| fs::read(p).ok());
    match system {
        Some(system) => {
            assert!(written.starts_with(&system));
            let count = |b: &[u8]| {
                rustls_pemfile::certs(&mut &b[..])
                    .filter_map(Result::ok)
                    .count()
            };
            assert_eq!(count(&written), count(&system) + 1);
        }
        None => assert_eq!(written, ca.cert_pem().as_bytes()),
    }
    // No temporary files left behind by the atomic write.
    let leftovers: Vec<_> = fs::read_dir(dir.path().join("ca"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp."))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn upstream_client_config_trusts_extra_ca_files() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(dir.path()).unwrap();
    let server = ca
        .server_config("upstream.test", &[b"h2".to_vec()])
        .unwrap();
    let client =
        crate::upstream_tls::client_config(&[ca.cert_path().to_path_buf()], &[b"h2".to_vec()])
            .unwrap();
    let conn = handshake(client, server.clone(), "upstream.test").expect("extra CA trusted");
    assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));

    let without = crate::upstream_tls::client_config(&[], &[]).unwrap();
    let err = handshake(without, server, "upstream.test")
        .expect_err("the Airlock CA is not trusted unless named");
    assert!(
        matches!(err, rustls::Error::InvalidCertificate(_)),
        "{err:?}"
    );
}

#[test]
fn mint_timing() {
    // Not an assertion: shows the cost of a cache miss next to a hit.
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(dir.path()).unwrap();
    let n: u32 = 50;
    let start = Instant::now();
    for i in 0..n {
        ca.server_config(&format!("host{i}.example.test"), &[])
            .unwrap();
    }
    let miss = start.elapsed() / n;
    let start = Instant::now();
    for _ in 0..n {
        ca.server_config("host0.example.test", &[]).unwrap();
    }
    let hit = start.elapsed() / n;
    eprintln!("server_config: cache miss {miss:?} per mint, cache hit {hit:?}");
}

#[test]
fn session_resumption_follows_the_setting() {
    for on in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path())
            .unwrap()
            .with_session_resumption(on);
        let client = client_trusting(&ca, &[]);
        let server = ca.server_config("api.example.test", &[]).unwrap();
        let first = handshake(client.clone(), server.clone(), "api.example.test").unwrap();
        assert_eq!(first.handshake_kind(), Some(rustls::HandshakeKind::Full));
        let second = handshake(client, server, "api.example.test").unwrap();
        let expected = if on {
            rustls::HandshakeKind::Resumed
        } else {
            rustls::HandshakeKind::Full
        };
        assert_eq!(second.handshake_kind(), Some(expected), "resumption {on}");
    }
}
