//! Leaf certificates and the per-host `ServerConfig` cache.
//!
//! One leaf key pair serves every leaf, so a cache miss costs one ECDSA
//! signature rather than a key generation.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, Ia5String, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, DnsName, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::{CertifiedKey, SigningKey, SingleCertAndKey};
use rustls::{RootCertStore, ServerConfig};
use zeroize::Zeroizing;

use super::CaError;
use super::store::{Paths, ca_params};

pub(super) const CACHE_CAPACITY: usize = 4096;
const LEAF_BACKDATE: Duration = Duration::from_secs(60 * 60);
const LEAF_VALIDITY: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// Well inside the 7-day validity, so a long-lived connection or a skewed
/// client clock never meets an expired leaf.
pub(super) const REMINT_AFTER: Duration = Duration::from_secs(3 * 24 * 60 * 60);
/// X.520 caps commonName at 64 characters; longer hosts rely on the SAN alone.
const MAX_COMMON_NAME: usize = 64;
const SELF_CHECK_HOST: &str = "airlock-self-check.invalid";

pub(super) struct Minter {
    provider: Arc<CryptoProvider>,
    ca_key: KeyPair,
    /// Rebuilt from the key and `ca_params()`: rcgen copies only its subject
    /// and key identifier into leaves. The chain served is the on-disk cert.
    issuer: rcgen::Certificate,
    ca_der: CertificateDer<'static>,
    leaf_key: KeyPair,
    leaf_signing: Arc<dyn SigningKey>,
    /// Off: every agent handshake is a full one (no tickets, no session
    /// cache), which is what the handshake benchmark must measure.
    resumption: bool,
    cache: Mutex<Cache>,
}

impl Minter {
    pub(super) fn new(
        provider: Arc<CryptoProvider>,
        ca_key: KeyPair,
        ca_der: CertificateDer<'static>,
        paths: &Paths,
    ) -> Result<Minter, CaError> {
        let issuer = ca_params()
            .self_signed(&ca_key)
            .map_err(|source| CaError::SignCa { source })?;
        let unusable = |source| CaError::CertUnusable {
            key_path: paths.key.clone(),
            cert_path: paths.cert.clone(),
            source,
        };
        let disk_roots = roots_of(&ca_der).map_err(unusable)?;
        let rebuilt_roots = roots_of(issuer.der()).map_err(unusable)?;
        if disk_roots.roots.first().map(|a| &a.subject_public_key_info)
            != rebuilt_roots
                .roots
                .first()
                .map(|a| &a.subject_public_key_info)
        {
            return Err(CaError::CertKeyMismatch {
                key_path: paths.key.clone(),
                cert_path: paths.cert.clone(),
            });
        }

        let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|source| CaError::GenerateKey { source })?;
        let leaf_der = Zeroizing::new(leaf_key.serialize_der());
        let leaf_signing = provider
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(leaf_der.to_vec().into()))
            .map_err(|source| CaError::LeafKey { source })?;

        let minter = Minter {
            provider,
            ca_key,
            issuer,
            ca_der,
            leaf_key,
            leaf_signing,
            resumption: true,
            cache: Mutex::new(Cache::new(CACHE_CAPACITY)),
        };
        // Same key, yet the certificate could still be unusable (expired, a
        // different subject, not a CA): find out now, not on the first agent.
        minter.self_check(disk_roots).map_err(unusable)?;
        Ok(minter)
    }

    /// Set before the first `server_config`: cached configs keep the
    /// setting they were built with.
    pub(super) fn set_resumption(&mut self, on: bool) {
        self.resumption = on;
    }

    fn self_check(&self, roots: RootCertStore) -> Result<(), rustls::Error> {
        let host = parse_host(SELF_CHECK_HOST)
            .map_err(|_| rustls::Error::General("self-check host".into()))?;
        let leaf = self
            .mint_leaf(SELF_CHECK_HOST, host)
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        let name = ServerName::try_from(SELF_CHECK_HOST)
            .map_err(|_| rustls::Error::General("self-check host".into()))?;
        verifier.verify_server_cert(&leaf, &[], &name, &[], UnixTime::now())?;
        Ok(())
    }

    pub(super) fn server_config(
        &self,
        host: &str,
        alpn: &[Vec<u8>],
        now: Instant,
    ) -> Result<Arc<ServerConfig>, CaError> {
        // Names are case-insensitive; only allocate when the caller did not
        // already lower-case.
        let host: Cow<'_, str> = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(host.to_ascii_lowercase())
        } else {
            Cow::Borrowed(host)
        };
        if let Some(config) = self.lock().get(&host, alpn, now) {
            return Ok(config);
        }
        // Signed outside the lock so a miss never stalls hits for other hosts.
        let config = self.build(&host, alpn)?;
        let mut cache = self.lock();
        // Another task may have minted the same key meanwhile: keep one Arc.
        if let Some(existing) = cache.get(&host, alpn, now) {
            return Ok(existing);
        }
        cache.insert(&host, alpn, config.clone(), now);
        Ok(config)
    }

    pub(super) fn cached_len(&self) -> usize {
        self.lock().len
    }

    #[cfg(test)]
    pub(super) fn set_capacity(&self, capacity: usize) {
        self.lock().capacity = capacity;
    }

    fn lock(&self) -> MutexGuard<'_, Cache> {
        // The cache holds no invariant a panicking holder could break halfway
        // that matters for correctness; keep serving.
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn build(&self, host: &str, alpn: &[Vec<u8>]) -> Result<Arc<ServerConfig>, CaError> {
        let san = parse_host(host)?;
        let leaf = self.mint_leaf(host, san)?;
        let certified =
            CertifiedKey::new(vec![leaf, self.ca_der.clone()], self.leaf_signing.clone());
        let config_err = |source| CaError::ServerConfig {
            host: host.to_owned(),
            source,
        };
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(config_err)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
        config.alpn_protocols = alpn.to_vec();
        if !self.resumption {
            config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
            config.send_tls13_tickets = 0;
        }
        Ok(Arc::new(config))
    }

    fn mint_leaf(&self, host: &str, san: SanType) -> Result<CertificateDer<'static>, CaError> {
        let mint_err = |source| CaError::MintLeaf {
            host: host.to_owned(),
            source,
        };
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        if host.len() <= MAX_COMMON_NAME {
            dn.push(DnType::CommonName, host);
        }
        params.distinguished_name = dn;
        params.subject_alt_names = vec![san];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        // rcgen's default serial hashes the public key, and every leaf shares
        // one key: clients (Firefox, NSS) reject repeated issuer+serial pairs.
        params.serial_number = Some(random_serial(&self.provider)?);
        let now = SystemTime::now();
        set_validity(&mut params, now - LEAF_BACKDATE, now + LEAF_VALIDITY);
        let cert = params
            .signed_by(&self.leaf_key, &self.issuer, &self.ca_key)
            .map_err(mint_err)?;
        Ok(cert.der().clone())
    }
}

fn roots_of(der: &CertificateDer<'_>) -> Result<RootCertStore, rustls::Error> {
    let mut roots = RootCertStore::empty();
    roots.add(der.clone())?;
    Ok(roots)
}

fn parse_host(host: &str) -> Result<SanType, CaError> {
    let invalid = || CaError::InvalidHost {
        host: host.to_owned(),
    };
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    DnsName::try_from(host).map_err(|_| invalid())?;
    let name = Ia5String::try_from(host).map_err(|_| invalid())?;
    Ok(SanType::DnsName(name))
}

/// rcgen takes `time::OffsetDateTime`; offsetting its epoch value by a std
/// `Duration` avoids a direct `time` dependency that would have to track rcgen's.
pub(super) fn set_validity(
    params: &mut CertificateParams,
    not_before: SystemTime,
    not_after: SystemTime,
) {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let since_epoch = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    params.not_before = epoch + since_epoch(not_before);
    params.not_after = epoch + since_epoch(not_after);
}

pub(super) fn random_serial(provider: &CryptoProvider) -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    provider
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| CaError::Random)?;
    // A positive INTEGER of fixed length: clear the sign bit, set the next.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// Bounded map from (host, ALPN list) to a config. Keyed by host first so a
/// hit can be looked up with borrowed `&str`/`&[Vec<u8>]`, without allocating.
struct Cache {
    by_host: HashMap<String, Vec<Entry>>,
    len: usize,
    capacity: usize,
}

struct Entry {
    alpn: Vec<Vec<u8>>,
    config: Arc<ServerConfig>,
    minted_at: Instant,
}

impl Cache {
    fn new(capacity: usize) -> Cache {
        Cache {
            by_host: HashMap::new(),
            len: 0,
            capacity,
        }
    }

    fn get(&self, host: &str, alpn: &[Vec<u8>], now: Instant) -> Option<Arc<ServerConfig>> {
        self.by_host
            .get(host)?
            .iter()
            .find(|e| e.alpn == alpn && now.saturating_duration_since(e.minted_at) < REMINT_AFTER)
            .map(|e| e.config.clone())
    }

    fn insert(&mut self, host: &str, alpn: &[Vec<u8>], config: Arc<ServerConfig>, now: Instant) {
        if let Some(entry) = self
            .by_host
            .get_mut(host)
            .and_then(|entries| entries.iter_mut().find(|e| e.alpn == alpn))
        {
            entry.config = config;
            entry.minted_at = now;
            return;
        }
        while self.len >= self.capacity.max(1) {
            if !self.evict_oldest() {
                break;
            }
        }
        self.by_host
            .entry(host.to_owned())
            .or_default()
            .push(Entry {
                alpn: alpn.to_vec(),
                config,
                minted_at: now,
            });
        self.len += 1;
    }

    /// Linear, but only on a miss with a full cache, next to a signature
    /// that costs far more.
    fn evict_oldest(&mut self) -> bool {
        let oldest = self
            .by_host
            .iter()
            .flat_map(|(host, entries)| {
                entries
                    .iter()
                    .enumerate()
                    .map(move |(i, e)| (e.minted_at, host, i))
            })
            .min_by_key(|(minted_at, _, _)| *minted_at)
            .map(|(_, host, i)| (host.clone(), i));
        let Some((host, i)) = oldest else {
            return false;
        };
        if let Some(entries) = self.by_host.get_mut(&host) {
            entries.swap_remove(i);
            if entries.is_empty() {
                self.by_host.remove(&host);
            }
            self.len -= 1;
        }
        true
    }
}
