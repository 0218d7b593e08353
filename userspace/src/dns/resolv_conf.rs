//! The default upstreams: the host's own nameservers.

use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::path::Path;

use tracing::warn;

use super::DnsError;

const DNS_PORT: u16 = 53;

/// The `nameserver` lines of a resolv.conf, port 53, in file order. Other
/// keywords (`search`, `options`, ...) and comments are ignored.
pub fn upstreams_from_resolv_conf(path: &Path) -> Result<Vec<SocketAddr>, DnsError> {
    let text = std::fs::read_to_string(path).map_err(|source| DnsError::ReadResolvConf {
        path: path.to_path_buf(),
        source,
    })?;
    let mut servers = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(value) = words.next() else {
            return Err(DnsError::BadNameserver {
                path: path.to_path_buf(),
                line: index + 1,
                value: String::new(),
            });
        };
        let bad = || DnsError::BadNameserver {
            path: path.to_path_buf(),
            line: index + 1,
            value: value.to_string(),
        };
        let server = match value.split_once('%') {
            None => SocketAddr::new(value.parse::<IpAddr>().map_err(|_| bad())?, DNS_PORT),
            Some((addr, zone)) => {
                let addr = addr.parse().map_err(|_| bad())?;
                // A zone given by interface name would need the interface
                // table; a numeric zone is usable as it stands.
                let Ok(scope) = zone.parse::<u32>() else {
                    warn!(
                        path = %path.display(),
                        line = index + 1,
                        nameserver = value,
                        "skipping nameserver with an interface-name zone; set dns_upstream instead"
                    );
                    continue;
                };
                SocketAddr::V6(SocketAddrV6::new(addr, DNS_PORT, 0, scope))
            }
        };
        if !servers.contains(&server) {
            servers.push(server);
        }
    }
    if servers.is_empty() {
        return Err(DnsError::NoNameservers {
            path: path.to_path_buf(),
        });
    }
    Ok(servers)
}
