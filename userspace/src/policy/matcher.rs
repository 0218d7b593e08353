//! Decisions: given what the proxy or resolver saw, what does the policy say.

use std::{borrow::Cow, net::IpAddr, sync::Arc};

use super::host::Host;
use super::model::{AllowRule, DenyRule, Policy, RateLimit, RuleId, TcpTarget};
use super::path_patterns::{Readings, readings};

/// What a TLS connection is, by its SNI and port, before any byte of it
/// is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Passthrough {
    /// Tunnelled uninspected.
    Tunnel,
    /// The name is passed through on other ports, and no rule allows it
    /// on this one: refused, as the client (one that pins certificates)
    /// would refuse Airlock's.
    OtherPortsOnly,
    /// Intercepted, or refused, as any other host.
    Intercept,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpDecision {
    Allow(Allowed),
    Deny(Denied),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    pub rule: RuleId,
    /// `rules[0] api.github.com`.
    pub rule_label: Arc<str>,
    /// Secret names whose placeholders may be swapped on this request.
    pub credentials: Arc<[String]>,
    pub rate_limit: Option<RateLimit>,
    /// The rule's rate-limit bucket, within its agent's.
    pub limit_key: u64,
    pub approval: bool,
    /// Some rule of this policy binds secrets to this host (this one or
    /// another, for other paths): the upstream may have been sent them,
    /// and may give them back. Other agents' policies may bind secrets to
    /// it too; [`super::PolicyStore::holds_secrets`] answers for them all.
    pub binds_secrets_to_host: bool,
}

impl Allowed {
    /// What a request may still do when it also falls under `claimed`, the
    /// rule of a method it claims (an override header, a `_method`): a
    /// server that honours the claim acts as that method, so the request
    /// gets no more than either rule gives. It waits for a human if
    /// either rule says so, and may carry only the secrets both bind. The
    /// rule and rate limit stay the request's own; the claimed rule's rate
    /// limit is charged apart.
    pub fn narrow_to(&mut self, claimed: &Allowed) {
        self.approval |= claimed.approval;
        if self
            .credentials
            .iter()
            .any(|name| !claimed.credentials.contains(name))
        {
            self.credentials = self
                .credentials
                .iter()
                .filter(|name| claimed.credentials.contains(name))
                .cloned()
                .collect();
        }
        self.binds_secrets_to_host |= claimed.binds_secrets_to_host;
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// Set when a deny rule matched.
    pub rule_label: Option<Arc<str>>,
    pub reason: DenyReason,
}

/// Why a request was denied, from least to most specific: the derived order
/// is what picks the reason reported when several rules name the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DenyReason {
    NoRuleForHost,
    MethodNotAllowed,
    PathNotAllowed,
    DenyRule,
}

impl DenyReason {
    /// Bounded label for the 403 body, audit and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            DenyReason::DenyRule => "deny_rule",
            DenyReason::NoRuleForHost => "no_rule_for_host",
            DenyReason::MethodNotAllowed => "method_not_allowed",
            DenyReason::PathNotAllowed => "path_not_allowed",
        }
    }
}

/// A `tcp:` entry that let a connection through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpMatch {
    /// `tcp[0] github.com:22`.
    pub label: String,
    /// What the entry names, to find it again in a later version of the
    /// policy, wherever it stands there.
    target: TcpTarget,
    port: u16,
}

impl Policy {
    /// Deny rules first, then allow rules in order (the first match wins and
    /// brings its credentials, rate limit and approval), else deny.
    pub fn decide_http(&self, host: &str, port: u16, method: &str, path: &str) -> HttpDecision {
        let Some(host) = Host::parse(host) else {
            return deny(None, DenyReason::NoRuleForHost);
        };
        let raw_path = path.split_once('?').map_or(path, |(before, _)| before);
        let path = read_path(raw_path);

        if let Some(rule) = self
            .deny
            .iter()
            .find(|rule| deny_matches(rule, &host, port, method, path.as_ref()))
        {
            return deny(Some(rule.label.clone()), DenyReason::DenyRule);
        }

        let mut reason = DenyReason::NoRuleForHost;
        for (index, rule) in self.rules.iter().enumerate() {
            if rule.port != port || !rule.host.matches(&host) {
                continue;
            }
            reason = reason.max(DenyReason::MethodNotAllowed);
            if !allow_method(rule, method) {
                continue;
            }
            reason = reason.max(DenyReason::PathNotAllowed);
            // A path that is not canonical can match no path rule: what the
            // upstream would make of "/a/../b" is not ours to guess.
            let Some(path) = &path else {
                continue;
            };
            if rule.paths.as_ref().is_none_or(|paths| paths.allow(path)) {
                return HttpDecision::Allow(Allowed {
                    rule: RuleId(index),
                    rule_label: rule.label.clone(),
                    credentials: rule.credentials.clone(),
                    rate_limit: rule.rate_limit,
                    limit_key: rule.limit_key,
                    approval: rule.approval,
                    binds_secrets_to_host: !rule.credentials.is_empty()
                        || self.rules.iter().any(|other| {
                            !other.credentials.is_empty()
                                && other.port == port
                                && other.host.matches(&host)
                        }),
                });
            }
        }
        deny(None, reason)
    }

    /// Whether the method can change what this policy decides for `host`:
    /// a deny rule or an allow rule for it names methods. Where none does,
    /// a method claimed besides the request's own changes nothing.
    pub fn decides_by_method(&self, host: &str, port: u16) -> bool {
        let Some(host) = Host::parse(host) else {
            return false;
        };
        self.deny.iter().any(|rule| {
            rule.methods.is_some()
                && rule.port.is_none_or(|p| p == port)
                && rule.host.matches(&host)
        }) || self
            .rules
            .iter()
            .any(|rule| rule.methods.is_some() && rule.port == port && rule.host.matches(&host))
    }

    /// CIDR entries match `dst` directly; name entries match when `dst` is
    /// among `resolved(name)`, unless a deny rule refuses the name
    /// outright: deny rules come first.
    pub fn tcp_match(
        &self,
        dst: IpAddr,
        port: u16,
        resolved: &dyn Fn(&str) -> Vec<IpAddr>,
    ) -> Option<TcpMatch> {
        // A v4-mapped v6 destination reaches the v4 host: compare it as v4.
        let dst = dst.to_canonical();
        self.tcp
            .iter()
            .filter(|entry| entry.port == port)
            .find(|entry| match &entry.target {
                TcpTarget::Net(net) => net.contains(&dst),
                TcpTarget::Name(name) => {
                    Host::parse(name).is_some_and(|host| self.whole_host_deny(&host).is_none())
                        && resolved(name)
                            .into_iter()
                            .any(|ip| ip.to_canonical() == dst)
                }
            })
            .map(|entry| TcpMatch {
                label: entry.label.clone(),
                target: entry.target.clone(),
                port: entry.port,
            })
    }

    /// Whether this version of the policy still has the `tcp:` entry that
    /// `matched` came from: the same target and port.
    pub fn keeps_tcp(&self, matched: &TcpMatch) -> bool {
        self.tcp
            .iter()
            .any(|entry| entry.port == matched.port && entry.target == matched.target)
    }

    /// What becomes of a TLS connection with this SNI to this port: a
    /// tunnel where an entry names the host and port and no deny rule
    /// refuses that port outright.
    pub fn passthrough(&self, sni: &str, port: u16) -> Passthrough {
        let Some(host @ Host::Name(_)) = Host::parse(sni) else {
            return Passthrough::Intercept;
        };
        let mut listed = self
            .passthrough
            .iter()
            .filter(|entry| entry.host.matches(&host))
            .peekable();
        if listed.peek().is_none()
            || self
                .deny
                .iter()
                .any(|rule| rule.refuses_port(port) && rule.host.matches(&host))
        {
            return Passthrough::Intercept;
        }
        if listed.any(|entry| entry.port == port) {
            return Passthrough::Tunnel;
        }
        // Intercepted where a rule allows the host on this port, as
        // requests; otherwise there is nothing the connection may carry.
        match self
            .rules
            .iter()
            .any(|rule| rule.port == port && rule.host.matches(&host))
        {
            true => Passthrough::Intercept,
            false => Passthrough::OtherPortsOnly,
        }
    }

    /// Whether the agent may resolve `name`: no deny rule refuses the
    /// whole host, and an allow rule, a `tcp:` entry or a passthrough
    /// pattern names it. Deny rules alone never make a name resolvable.
    pub fn names_host(&self, name: &str) -> bool {
        let Some(host) = Host::parse(name) else {
            return false;
        };
        let Host::Name(plain) = &host else {
            // Addresses are not looked up.
            return false;
        };
        if self.whole_host_deny(&host).is_some() {
            return false;
        }
        self.rules.iter().any(|rule| rule.host.matches(&host))
            || self
                .tcp
                .iter()
                .any(|entry| matches!(&entry.target, TcpTarget::Name(n) if n == plain))
            || self
                .passthrough
                .iter()
                .any(|entry| entry.host.matches(&host))
    }

    /// The label of the deny rule that refuses `name` outright (no port,
    /// method or path narrows it), if one does: what a connection to it is
    /// refused by, before any request.
    pub fn whole_host_denial(&self, name: &str) -> Option<Arc<str>> {
        let host = Host::parse(name)?;
        self.whole_host_deny(&host).map(|rule| rule.label.clone())
    }

    fn whole_host_deny(&self, host: &Host) -> Option<&DenyRule> {
        self.deny
            .iter()
            .find(|rule| rule.is_whole_host() && rule.host.matches(host))
    }

    /// Secret names referenced by any rule's credentials, sorted, unique.
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        self.secrets.iter().map(String::as_str)
    }

    /// Whether `rule`'s credentials name `secret`; false for an unknown rule.
    #[cfg(test)]
    pub fn rule_allows_secret(&self, rule: RuleId, secret: &str) -> bool {
        self.rules
            .get(rule.0)
            .is_some_and(|rule| rule.credentials.iter().any(|name| name == secret))
    }
}

fn deny(rule_label: Option<Arc<str>>, reason: DenyReason) -> HttpDecision {
    HttpDecision::Deny(Denied { rule_label, reason })
}

/// Allow rules compare methods exactly: `get` is not `GET` to an HTTP
/// server, and an allow list should not widen.
fn allow_method(rule: &AllowRule, method: &str) -> bool {
    rule.methods
        .as_ref()
        .is_none_or(|methods| methods.iter().any(|m| m == method))
}

/// Deny rules compare methods ignoring case and treat a non-canonical path
/// as matching their path patterns: some servers fold `delete` to DELETE or
/// resolve `..`, and a deny rule must not be sidestepped that way.
fn deny_matches(
    rule: &DenyRule,
    host: &Host,
    port: u16,
    method: &str,
    path: Option<&Readings<'_>>,
) -> bool {
    rule.port.is_none_or(|p| p == port)
        && rule.host.matches(host)
        && rule
            .methods
            .as_ref()
            .is_none_or(|methods| methods.iter().any(|m| m.eq_ignore_ascii_case(method)))
        && rule.paths.as_ref().is_none_or(|paths| match path {
            Some(path) => paths.deny(path),
            None => true,
        })
}

/// The path as written, canonical: [`read_path`]'s first reading.
#[cfg(test)]
pub(super) fn canonical_path(path: &str) -> Option<Cow<'_, str>> {
    read_path(path).map(|readings| readings.written)
}

/// The path as an upstream server would interpret it, or `None` when that
/// is ambiguous. Percent-encoded unreserved characters (RFC 3986 2.3) are
/// decoded, since `/%61dmin` *is* `/admin` to the server; other escapes such
/// as `%2F` stay as they are (npm's scoped packages use them). Dot segments,
/// empty inner segments and backslashes make the path ambiguous: servers
/// differ on whether they collapse them. So do the ones that appear once
/// `%2F` and `%5C` are read as separators (nginx decodes them before it
/// resolves `..`) or `;parameters` are dropped from a segment (Tomcat and
/// Jetty read `..;` as `..`). The second reading is the path as those
/// servers read it, when that differs (see `path_patterns`).
fn read_path(path: &str) -> Option<Readings<'_>> {
    if !path.starts_with('/') {
        return None;
    }
    // Most paths have nothing to decode: check them where they lie.
    let written = if path.contains(['%', '\\']) {
        Cow::Owned(decode_unreserved(path)?)
    } else {
        Cow::Borrowed(path)
    };
    if has_dot_or_empty_inner_segment(written[1..].split('/')) {
        return None;
    }
    let read = readings(&written);
    if read.iter().any(|read| {
        read.strip_prefix('/')
            .is_none_or(|rest| has_dot_or_empty_inner_segment(rest.split('/')))
    }) {
        return None;
    }
    Some(Readings { written, read })
}

fn has_dot_or_empty_inner_segment<'a>(segments: impl Iterator<Item = &'a str>) -> bool {
    let mut segments = segments.peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if segment == "." || segment == ".." || (segment.is_empty() && !last) {
            return true;
        }
    }
    false
}

/// Decodes the escapes of unreserved characters; `None` on a backslash or
/// a broken escape.
fn decode_unreserved(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = path.get(i + 1..i + 3)?;
                let value = u8::from_str_radix(hex, 16).ok()?;
                if value.is_ascii_alphanumeric() || matches!(value, b'-' | b'.' | b'_' | b'~') {
                    out.push(char::from(value));
                } else {
                    // In upper case, as rules' globs are compiled.
                    out.push('%');
                    out.push_str(&hex.to_ascii_uppercase());
                }
                i += 3;
            }
            b'\\' => return None,
            _ => {
                // Copy the run up to the next byte of interest (keeps UTF-8
                // sequences whole).
                let end = bytes[i..]
                    .iter()
                    .position(|b| matches!(b, b'%' | b'\\'))
                    .map_or(bytes.len(), |offset| i + offset);
                out.push_str(&path[i..end]);
                i = end;
            }
        }
    }
    Some(out)
}
