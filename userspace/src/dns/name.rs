//! Which names the resolver is willing to look at, in the form policies use.

use hickory_proto::rr::Name;

use super::DnsError;

/// Longest name in text form without the trailing dot: 255 octets on the
/// wire (RFC 1035 2.3.4) leave room for 253 characters.
const MAX_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// Host-name bytes only. Anything else cannot be a name an operator wrote
/// in a policy, and accepting escaped bytes (`\.`, `\000`) would make the
/// policy match depend on how they happen to be escaped.
fn host_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// The query name as policies see it: lower-case, no trailing dot.
/// `Err` carries a printable form for the audit record when the name is
/// not one the resolver will look up (root, too long, unusual bytes).
pub(super) fn query_name(name: &Name) -> Result<String, String> {
    let mut text = String::with_capacity(name.len());
    for label in name.iter() {
        if label.is_empty() || label.len() > MAX_LABEL_LEN || !label.iter().all(|&b| host_byte(b)) {
            return Err(printable(name));
        }
        if !text.is_empty() {
            text.push('.');
        }
        text.extend(label.iter().map(|&b| char::from(b.to_ascii_lowercase())));
    }
    if text.is_empty() || text.len() > MAX_NAME_LEN {
        return Err(printable(name));
    }
    Ok(text)
}

fn printable(name: &Name) -> String {
    let text = name.to_lowercase().to_ascii();
    match text.strip_suffix('.') {
        Some(stripped) if !stripped.is_empty() => stripped.to_string(),
        _ => text,
    }
}

/// A host name given by the daemon itself (`lookup_ip`), checked the same
/// way as agents' query names.
pub(super) fn host_name(host: &str) -> Result<String, DnsError> {
    let invalid = || DnsError::InvalidName {
        name: host.chars().take(MAX_NAME_LEN + 2).collect(),
    };
    let trimmed = host.strip_suffix('.').unwrap_or(host);
    if trimmed.is_empty() || trimmed.len() > MAX_NAME_LEN {
        return Err(invalid());
    }
    let usable = trimmed
        .split('.')
        .all(|l| !l.is_empty() && l.len() <= MAX_LABEL_LEN && l.bytes().all(host_byte));
    if !usable {
        return Err(invalid());
    }
    Ok(trimmed.to_ascii_lowercase())
}

/// The wire form of a name that `query_name` or `host_name` accepted.
pub(super) fn to_fqdn(text: &str) -> Result<Name, DnsError> {
    let mut name = Name::from_ascii(text).map_err(|_| DnsError::InvalidName {
        name: text.to_string(),
    })?;
    name.set_fqdn(true);
    Ok(name)
}
