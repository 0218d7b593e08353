//! The daemon's own lookups (upstream hosts for the proxy), with a small
//! TTL cache so repeated connects to one host do not each cost a round trip.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use super::upstream::addresses;
use super::{DnsError, Resolver, name, rebinding};

/// Enough for every host a set of policies names; past it the entry closest
/// to expiry goes.
const CACHE_MAX_ENTRIES: usize = 1024;

/// Bounds on how long an answer is kept: at least a second so that a burst
/// of connects shares one lookup even with TTL 0, at most an hour so that a
/// huge TTL cannot pin a stale address.
const MIN_TTL: Duration = Duration::from_secs(1);
const MAX_TTL: Duration = Duration::from_secs(3600);

/// How long "no such name / no addresses" is remembered.
const NEGATIVE_TTL: Duration = Duration::from_secs(5);

struct Entry {
    addrs: Vec<IpAddr>,
    expires: Instant,
}

#[derive(Default)]
pub(super) struct LookupCache {
    entries: Mutex<HashMap<String, Entry>>,
}

impl LookupCache {
    /// Cached addresses (possibly none: a remembered negative answer).
    fn get(&self, name: &str) -> Option<Vec<IpAddr>> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match entries.get(name) {
            Some(entry) if entry.expires > now => Some(entry.addrs.clone()),
            Some(_) => {
                entries.remove(name);
                None
            }
            None => None,
        }
    }

    fn insert(&self, name: String, addrs: Vec<IpAddr>, ttl: Duration) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if entries.len() >= CACHE_MAX_ENTRIES && !entries.contains_key(&name) {
            entries.retain(|_, entry| entry.expires > now);
            if entries.len() >= CACHE_MAX_ENTRIES {
                let soonest = entries
                    .iter()
                    .min_by_key(|(_, entry)| entry.expires)
                    .map(|(key, _)| key.clone());
                if let Some(key) = soonest {
                    entries.remove(&key);
                }
            }
        }
        entries.insert(
            name,
            Entry {
                addrs,
                expires: now + ttl,
            },
        );
    }
}

impl Resolver {
    /// The daemon's own lookups (A and AAAA, merged; static map first): used
    /// to resolve upstream hosts. IP literals and the static map are taken
    /// as they are (a policy or the operator named them); from DNS, the
    /// addresses the daemon must never connect to are left out
    /// (`rebinding`).
    pub async fn lookup_ip(&self, name: &str) -> Result<Vec<IpAddr>, DnsError> {
        if let Ok(ip) = name.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let host = name::host_name(name)?;
        if let Some(addrs) = self.policy.static_answer(&host) {
            return if addrs.is_empty() {
                Err(DnsError::NoAddresses { name: host })
            } else {
                Ok(addrs)
            };
        }
        let addrs = self.ask_dns(host.clone()).await?;
        rebinding::keep_reachable(&host, addrs, self.reach)
    }

    /// What DNS (or the cache of its answers) gives for `host`.
    async fn ask_dns(&self, host: String) -> Result<Vec<IpAddr>, DnsError> {
        let none = || DnsError::NoAddresses { name: host.clone() };
        if let Some(addrs) = self.cache.get(&host) {
            return if addrs.is_empty() {
                Err(none())
            } else {
                Ok(addrs)
            };
        }

        let qname = name::to_fqdn(&host)?;
        let (v4, v6) = tokio::join!(
            self.upstream.query(&qname, RecordType::A),
            self.upstream.query(&qname, RecordType::AAAA),
        );
        let mut addrs = Vec::new();
        let mut ttl = u32::MAX;
        let mut failure = None;
        let mut nxdomain = false;
        for reply in [v4, v6] {
            match reply {
                Ok(reply) => {
                    nxdomain |= reply.response_code() == ResponseCode::NXDomain;
                    let (found, found_ttl) = addresses(&reply, &qname);
                    if !found.is_empty() {
                        ttl = ttl.min(found_ttl);
                        addrs.extend(found);
                    }
                }
                Err(err) => failure = Some(err),
            }
        }

        if addrs.is_empty() {
            // A failed half could have held the addresses: only a clean
            // negative answer is worth remembering.
            if let Some(err) = failure.filter(|_| !nxdomain) {
                return Err(err);
            }
            self.cache.insert(host.clone(), Vec::new(), NEGATIVE_TTL);
            return Err(none());
        }
        let keep = Duration::from_secs(u64::from(ttl)).clamp(MIN_TTL, MAX_TTL);
        self.cache.insert(host, addrs.clone(), keep);
        Ok(addrs)
    }
}
