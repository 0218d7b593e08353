//! The addresses the resolver told each agent for each name, until their
//! TTL runs out.
//!
//! A `tcp:` entry that names a host matches a connection to an address
//! the agent was told for that name (as Cilium's FQDN policies do), or
//! one the daemon resolves the name to. The daemon's own lookup alone is
//! not enough: a name whose answers rotate or differ per query (load
//! balancers, CDNs) can give the agent one address and the daemon, a
//! moment later, another, and the agent's connection would be refused.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use super::rebinding::{self, DnsReach};

/// Names remembered across all agents; past it, what expires first goes.
const MAX_NAMES: usize = 4096;
/// Addresses kept per agent and name: several answers' worth.
const MAX_ADDRS_PER_NAME: usize = 32;
/// A client may connect a little after its answer's TTL (it read the
/// answer, then did other work first); an answer with TTL 0 must still
/// serve the connect that follows it.
const MIN_KEEP: Duration = Duration::from_secs(30);
/// A huge TTL does not keep an address usable for long.
const MAX_KEEP: Duration = Duration::from_secs(3600);

/// (agent, name)
type Key = (String, String);
/// An address, and when it stops counting.
type Until = (IpAddr, Instant);

#[derive(Default)]
pub(super) struct Told {
    entries: Mutex<HashMap<Key, Vec<Until>>>,
}

impl Told {
    /// Remembers that `agent` was told `addrs` for `name`, for `ttl`
    /// seconds (within the bounds above). Addresses the daemon would never
    /// connect to for a name from DNS are not remembered: a `tcp:` entry
    /// must not reach this host because DNS said so.
    pub(super) fn remember(
        &self,
        agent: &str,
        name: &str,
        addrs: &[IpAddr],
        ttl: u32,
        reach: DnsReach,
        now: Instant,
    ) {
        let keep = Duration::from_secs(u64::from(ttl)).clamp(MIN_KEEP, MAX_KEEP);
        let fresh: Vec<IpAddr> = addrs
            .iter()
            .copied()
            .filter(|ip| !rebinding::off_limits_here(*ip, reach))
            .collect();
        if fresh.is_empty() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let key = (agent.to_owned(), name.to_owned());
        if entries.len() >= MAX_NAMES && !entries.contains_key(&key) {
            entries.retain(|_, addrs| {
                addrs.retain(|(_, until)| *until > now);
                !addrs.is_empty()
            });
            if entries.len() >= MAX_NAMES {
                let soonest = entries
                    .iter()
                    .min_by_key(|(_, addrs)| addrs.iter().map(|(_, until)| *until).max())
                    .map(|(key, _)| key.clone());
                if let Some(soonest) = soonest {
                    entries.remove(&soonest);
                }
            }
        }
        let known = entries.entry(key).or_default();
        known.retain(|(ip, until)| *until > now && !fresh.contains(ip));
        known.extend(fresh.into_iter().map(|ip| (ip, now + keep)));
        if known.len() > MAX_ADDRS_PER_NAME {
            // The newest answers are the ones a client is about to use.
            let surplus = known.len() - MAX_ADDRS_PER_NAME;
            known.drain(..surplus);
        }
    }

    /// What `agent` was told for `name` and may still use at `now`.
    pub(super) fn addresses(&self, agent: &str, name: &str, now: Instant) -> Vec<IpAddr> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(&(agent.to_owned(), name.to_owned()))
            .map(|addrs| {
                addrs
                    .iter()
                    .filter(|(_, until)| *until > now)
                    .map(|(ip, _)| *ip)
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::IpAddr,
        time::{Duration, Instant},
    };

    use super::{DnsReach, MAX_ADDRS_PER_NAME, MAX_NAMES, MIN_KEEP, Told};

    const ANY: DnsReach = DnsReach::WithPrivate;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn an_answer_counts_for_its_agent_and_name_until_its_ttl_ends() {
        let told = Told::default();
        let t0 = Instant::now();
        told.remember(
            "a",
            "git.test",
            &[ip("198.51.100.1"), ip("2001:db8::1")],
            120,
            ANY,
            t0,
        );
        assert_eq!(
            told.addresses("a", "git.test", t0 + Duration::from_secs(119)),
            vec![ip("198.51.100.1"), ip("2001:db8::1")]
        );
        assert!(
            told.addresses("a", "git.test", t0 + Duration::from_secs(120))
                .is_empty()
        );
        // Another agent, or another name, was told nothing.
        assert!(told.addresses("b", "git.test", t0).is_empty());
        assert!(told.addresses("a", "other.test", t0).is_empty());
    }

    #[test]
    fn answers_that_rotate_accumulate_and_a_short_ttl_still_serves_the_connect() {
        let told = Told::default();
        let t0 = Instant::now();
        told.remember("a", "lb.test", &[ip("198.51.100.1")], 0, ANY, t0);
        told.remember(
            "a",
            "lb.test",
            &[ip("198.51.100.2")],
            0,
            ANY,
            t0 + Duration::from_secs(5),
        );
        assert_eq!(
            told.addresses("a", "lb.test", t0 + Duration::from_secs(6)),
            vec![ip("198.51.100.1"), ip("198.51.100.2")]
        );
        // Told again: the address counts from the newer answer.
        told.remember(
            "a",
            "lb.test",
            &[ip("198.51.100.1")],
            0,
            ANY,
            t0 + Duration::from_secs(20),
        );
        assert_eq!(
            told.addresses("a", "lb.test", t0 + MIN_KEEP + Duration::from_secs(10)),
            vec![ip("198.51.100.1")]
        );
    }

    #[test]
    fn this_host_and_the_link_are_never_remembered() {
        let told = Told::default();
        let t0 = Instant::now();
        told.remember(
            "a",
            "rebind.test",
            &[
                ip("127.0.0.1"),
                ip("169.254.169.254"),
                ip("::ffff:127.0.0.1"),
            ],
            300,
            ANY,
            t0,
        );
        assert!(told.addresses("a", "rebind.test", t0).is_empty());
        told.remember(
            "a",
            "mixed.test",
            &[ip("127.0.0.1"), ip("198.51.100.9")],
            300,
            ANY,
            t0,
        );
        assert_eq!(
            told.addresses("a", "mixed.test", t0),
            vec![ip("198.51.100.9")]
        );
    }

    #[test]
    fn public_only_keeps_private_networks_out_too() {
        let told = Told::default();
        let t0 = Instant::now();
        let answer = [ip("10.1.2.3"), ip("198.51.100.9")];
        told.remember("a", "corp.test", &answer, 300, DnsReach::PublicOnly, t0);
        assert_eq!(
            told.addresses("a", "corp.test", t0),
            vec![ip("198.51.100.9")]
        );
        told.remember("a", "corp2.test", &answer, 300, ANY, t0);
        assert_eq!(told.addresses("a", "corp2.test", t0), answer.to_vec());
    }

    #[test]
    fn memory_is_bounded() {
        let told = Told::default();
        let t0 = Instant::now();
        for i in 0..MAX_NAMES + 10 {
            told.remember(
                "a",
                &format!("n{i}.test"),
                &[ip("198.51.100.1")],
                60,
                ANY,
                t0,
            );
        }
        let names = told.entries.lock().expect("lock").len();
        assert_eq!(names, MAX_NAMES);
        let many: Vec<IpAddr> = (0..=255u8)
            .map(|i| IpAddr::from([198, 51, 100, i]))
            .collect();
        told.remember("a", "big.test", &many, 60, ANY, t0);
        let kept = told.addresses("a", "big.test", t0);
        assert_eq!(kept.len(), MAX_ADDRS_PER_NAME);
        assert_eq!(kept.last(), Some(&ip("198.51.100.255")), "the newest stay");
    }
}
