//! The policy file as written: serde types that mirror the YAML one to one.
//!
//! Every struct rejects unknown keys, so a typo such as `methds:` is an error
//! rather than a silently ignored (and therefore wider) rule. Values are kept
//! as the user wrote them; `compile.rs` validates them and reports every
//! problem at once.

use std::collections::HashSet;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, MapAccess, Visitor};

/// Keys accepted at the top level of a policy file. Kept beside the structs
/// so the unknown-key walker (locate.rs) can list every typo in one pass; a
/// test checks these lists against serde's own.
pub(super) const TOP_KEYS: &[&str] = &[
    "version",
    "agent",
    "env",
    "rules",
    "deny",
    "tcp",
    "passthrough",
];
pub(super) const RULE_KEYS: &[&str] = &[
    "host",
    "port",
    "methods",
    "paths",
    "credentials",
    "rate_limit",
    "approval",
];
pub(super) const DENY_KEYS: &[&str] = &["host", "port", "methods", "paths"];
pub(super) const CREDENTIAL_KEYS: &[&str] = &["secret"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PolicyFile {
    /// Optional; only `1` is accepted (checked in compile.rs so the error can
    /// say which versions exist).
    pub version: Option<u32>,
    pub agent: String,
    /// Environment the agent sees, in file order.
    pub env: Option<EnvMap>,
    /// `None` and an empty list both mean "no rules" (an explicit `rules:`
    /// with nothing under it is null in YAML).
    pub rules: Option<Vec<RuleSpec>>,
    pub deny: Option<Vec<DenySpec>>,
    pub tcp: Option<Vec<String>>,
    pub passthrough: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RuleSpec {
    /// `name`, `*.suffix` or an IP literal, optionally with `:port`.
    pub host: String,
    /// Alternative to `host: name:port`; default 443.
    pub port: Option<u16>,
    /// Default: any method.
    pub methods: Option<Vec<String>>,
    /// Default: any path.
    pub paths: Option<Vec<String>>,
    pub credentials: Option<Vec<CredentialSpec>>,
    /// `N/second|minute|hour|day`.
    pub rate_limit: Option<String>,
    /// Default: false.
    pub approval: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DenySpec {
    pub host: String,
    /// Default: every port, so that a deny rule cannot be sidestepped by
    /// reaching the same host on another port.
    pub port: Option<u16>,
    pub methods: Option<Vec<String>>,
    pub paths: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CredentialSpec {
    pub secret: String,
}

/// `env:` as an ordered list. A duplicated variable name is a parse error at
/// the second occurrence, since only one of the two values could ever win.
#[derive(Debug, Default)]
pub(super) struct EnvMap(pub Vec<(String, String)>);

impl<'de> Deserialize<'de> for EnvMap {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(EnvVisitor)
    }
}

struct EnvVisitor;

impl<'de> Visitor<'de> for EnvVisitor {
    type Value = EnvMap;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map of environment variable names to strings")
    }

    fn visit_unit<E: de::Error>(self) -> Result<EnvMap, E> {
        Ok(EnvMap::default())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<EnvMap, A::Error> {
        let mut seen = HashSet::new();
        let mut entries = Vec::new();
        while let Some(name) = map.next_key_seed(UniqueKey { seen: &mut seen })? {
            let value: String = map.next_value()?;
            entries.push((name, value));
        }
        Ok(EnvMap(entries))
    }
}

/// Fails inside the key's own visitor (not after it returns), so the parser
/// attaches the duplicate key's line and column rather than the map's.
struct UniqueKey<'a> {
    seen: &'a mut HashSet<String>,
}

impl<'de> DeserializeSeed<'de> for UniqueKey<'_> {
    type Value = String;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for UniqueKey<'_> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an environment variable name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<String, E> {
        if !self.seen.insert(name.to_owned()) {
            return Err(E::custom(format_args!(
                "environment variable `{name}` is set twice"
            )));
        }
        Ok(name.to_owned())
    }
}
