//! Host names and patterns: parsing from the policy, normalising what the
//! proxy sees (SNI, Host header, DNS question), and matching one to the other.

use std::{
    borrow::Cow,
    net::{IpAddr, Ipv6Addr},
};

/// A host as the policy names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum HostPattern {
    Exact(String),
    /// `*.suffix`: one or more labels below `suffix`, never `suffix` itself.
    Wildcard(String),
    Ip(IpAddr),
}

/// A host as seen on the wire, after normalisation. Borrowed when the wire
/// form is already normal, as it almost always is: this runs per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Host<'a> {
    Name(Cow<'a, str>),
    Ip(IpAddr),
}

impl HostPattern {
    /// Parses a host without port. Names are lower-cased and a trailing dot
    /// dropped, since DNS names compare case-insensitively and `a.com.` is
    /// `a.com`.
    pub(super) fn parse(text: &str) -> Result<Self, &'static str> {
        if text.is_empty() {
            return Err("empty host");
        }
        if let Some(ip) = parse_ip_literal(text) {
            return Ok(HostPattern::Ip(ip));
        }
        let lower = text.to_ascii_lowercase();
        let name = lower.strip_suffix('.').unwrap_or(&lower);
        if let Some(suffix) = name.strip_prefix("*.") {
            if suffix.contains('*') {
                return Err("only the leftmost label may be '*'");
            }
            if parse_ip_literal(suffix).is_some() {
                return Err("an IP address cannot have a wildcard");
            }
            check_dns_name(suffix)?;
            return Ok(HostPattern::Wildcard(suffix.to_owned()));
        }
        if name == "*" {
            return Err("'*' alone would allow every host");
        }
        if name.contains('*') {
            return Err("'*' is only allowed as the whole leftmost label, as in \"*.example.com\"");
        }
        check_dns_name(name)?;
        Ok(HostPattern::Exact(name.to_owned()))
    }

    pub(super) fn matches(&self, host: &Host) -> bool {
        match (self, host) {
            (HostPattern::Exact(want), Host::Name(name)) => want == name.as_ref(),
            (HostPattern::Wildcard(suffix), Host::Name(name)) => {
                // Needs a non-empty label before ".suffix"; `name` holds only
                // valid labels, so "x." + suffix cannot be faked with dots.
                name.len() > suffix.len() + 1
                    && name.ends_with(suffix.as_str())
                    && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
            }
            (HostPattern::Ip(want), Host::Ip(ip)) => want == ip,
            _ => false,
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(name) => f.write_str(name),
            HostPattern::Wildcard(suffix) => write!(f, "*.{suffix}"),
            HostPattern::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            HostPattern::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

impl<'a> Host<'a> {
    /// Normalises a host from the wire; `None` when it is not a valid DNS
    /// name or IP literal, which the caller treats as "matches nothing".
    /// Validating here is what keeps a Host header like `evil/x.example.com`
    /// from satisfying `*.example.com`.
    pub(super) fn parse(text: &'a str) -> Option<Self> {
        if let Some(ip) = parse_ip_literal(text) {
            return Some(Host::Ip(ip));
        }
        let name = text.strip_suffix('.').unwrap_or(text);
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(name.to_ascii_lowercase())
        } else {
            Cow::Borrowed(name)
        };
        check_dns_name(&name).ok()?;
        Some(Host::Name(name))
    }
}

/// `1.2.3.4`, `::1` or `[::1]`; a v4-mapped v6 address becomes v4 so it
/// compares equal to the address it stands for.
pub(super) fn parse_ip_literal(text: &str) -> Option<IpAddr> {
    let inner = text
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'));
    match inner {
        Some(v6) => v6
            .parse::<Ipv6Addr>()
            .ok()
            .map(|ip| IpAddr::V6(ip).to_canonical()),
        None => text.parse::<IpAddr>().ok().map(|ip| ip.to_canonical()),
    }
}

/// Splits `host[:port]`, `[v6]:port` or a bare v6 address. A bare address
/// with several colons is taken whole: `2001:db8::1:443` cannot be split
/// unambiguously, and brackets are the way to add a port.
pub(super) fn split_host_port(text: &str) -> Result<(&str, Option<u16>), &'static str> {
    if text.starts_with('[') {
        let Some(end) = text.find(']') else {
            return Err("unclosed '['");
        };
        let (host, after) = text.split_at(end + 1);
        return match after {
            "" => Ok((host, None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((host, Some(parse_port(port)?))),
                None => Err("unexpected text after ']'"),
            },
        };
    }
    match text.matches(':').count() {
        0 => Ok((text, None)),
        1 => {
            let (host, port) = text.split_once(':').ok_or("unexpected ':'")?;
            Ok((host, Some(parse_port(port)?)))
        }
        _ => Ok((text, None)),
    }
}

pub(super) fn parse_port(text: &str) -> Result<u16, &'static str> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err("port must be a number from 1 to 65535");
    }
    match text.parse::<u16>() {
        Ok(0) | Err(_) => Err("port must be a number from 1 to 65535"),
        Ok(port) => Ok(port),
    }
}

/// Letters, digits, '-' and '_' in labels of 1 to 63 characters, 253 in
/// all. '_' is accepted because real service names use it. The last label
/// must not be all digits, so that `999.1.1.1` is rejected instead of being
/// taken for a name.
pub(super) fn check_dns_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty host");
    }
    if name.len() > 253 {
        return Err("longer than 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label");
        }
        if label.len() > 63 {
            return Err("a label is longer than 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err("only a-z, 0-9, '-' and '_' are allowed (use the xn-- form for IDNs)");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label cannot start or end with '-'");
        }
    }
    if name
        .rsplit('.')
        .next()
        .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("neither a valid IP address nor a DNS name");
    }
    Ok(())
}
