//! The in-memory model of the vault: entries, their kinds, and what `list` shows.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::VaultError;
use crate::secret::Secret;

/// How Airlock uses a secret when it swaps a placeholder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum SecretKind {
    /// `Authorization: Bearer <value>` (the default: most APIs use it).
    #[default]
    #[serde(rename = "bearer")]
    Bearer,
    #[serde(rename = "header")]
    Header,
    #[serde(rename = "basic")]
    Basic,
    #[serde(rename = "query")]
    Query,
    #[serde(rename = "oauth2_client_credentials")]
    Oauth2ClientCredentials,
    #[serde(rename = "aws_sigv4")]
    AwsSigv4,
    #[serde(rename = "github_app")]
    GithubApp,
}

impl SecretKind {
    pub const ALL: [SecretKind; 7] = [
        SecretKind::Bearer,
        SecretKind::Header,
        SecretKind::Basic,
        SecretKind::Query,
        SecretKind::Oauth2ClientCredentials,
        SecretKind::AwsSigv4,
        SecretKind::GithubApp,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SecretKind::Bearer => "bearer",
            SecretKind::Header => "header",
            SecretKind::Basic => "basic",
            SecretKind::Query => "query",
            SecretKind::Oauth2ClientCredentials => "oauth2_client_credentials",
            SecretKind::AwsSigv4 => "aws_sigv4",
            SecretKind::GithubApp => "github_app",
        }
    }
}

impl fmt::Display for SecretKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SecretKind {
    type Err = VaultError;

    fn from_str(s: &str) -> Result<SecretKind, VaultError> {
        SecretKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| VaultError::UnknownKind { kind: s.to_owned() })
    }
}

/// One decrypted secret. `Debug` is safe to print: `Secret` redacts itself.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub kind: SecretKind,
    pub placeholder: String,
    /// For a `header` secret: the one header (lower case) it is swapped
    /// into. None: any request header.
    pub header: Option<String>,
    /// Starts at 1 and goes up by one on every `set` over an existing entry
    /// and every `rotate`.
    pub version: u32,
    pub current: Secret,
    /// The value before the last `rotate`, accepted until `previous_valid_until`.
    pub previous: Option<Secret>,
    /// Unix seconds; the previous value is valid while `now < previous_valid_until`.
    pub previous_valid_until: Option<u64>,
}

impl Entry {
    /// The values a caller should accept at `now_unix`: the current one, plus
    /// the previous one while its grace period lasts. Current always comes first.
    pub fn valid_values(&self, now_unix: u64) -> impl Iterator<Item = &Secret> {
        let in_grace = self
            .previous_valid_until
            .is_some_and(|until| now_unix < until);
        std::iter::once(&self.current).chain(self.previous.as_ref().filter(|_| in_grace))
    }
}

/// What `list` shows about a secret: everything but the values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretInfo {
    pub name: String,
    pub kind: SecretKind,
    pub placeholder: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    pub version: u32,
    pub previous_valid_until: Option<u64>,
    /// Unix seconds of the last `set` or `rotate`.
    pub updated: u64,
}

/// An entry plus the bookkeeping that is stored but not part of `Entry`.
#[derive(Debug, Clone)]
pub(super) struct Record {
    pub(super) entry: Entry,
    pub(super) created: u64,
    pub(super) updated: u64,
}

impl Record {
    pub(super) fn info(&self) -> SecretInfo {
        SecretInfo {
            name: self.entry.name.clone(),
            kind: self.entry.kind,
            placeholder: self.entry.placeholder.clone(),
            header: self.entry.header.clone(),
            version: self.entry.version,
            previous_valid_until: self.entry.previous_valid_until,
            updated: self.updated,
        }
    }
}

/// A fully decrypted and validated vault. Only ever built whole: a file that
/// fails any check produces an error, never a partial `VaultContents`.
#[derive(Debug, Clone, Default)]
pub struct VaultContents {
    // BTreeMap keeps `list` and the on-disk order sorted by name.
    pub(super) records: BTreeMap<String, Record>,
}

impl VaultContents {
    #[cfg(test)]
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.records.get(name).map(|record| &record.entry)
    }

    /// Entries sorted by name.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.records.values().map(|record| &record.entry)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.records.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub(super) fn infos(&self) -> Vec<SecretInfo> {
        self.records.values().map(Record::info).collect()
    }

    /// The name of another entry that already uses `placeholder`, if any.
    pub(super) fn placeholder_owner(&self, placeholder: &str, except: &str) -> Option<&str> {
        self.records
            .values()
            .find(|r| r.entry.name != except && r.entry.placeholder == placeholder)
            .map(|r| r.entry.name.as_str())
    }

    /// Drops previous values whose grace period is over, so an old credential
    /// does not outlive its grace in the file.
    pub(super) fn prune_expired(&mut self, now: u64) {
        for record in self.records.values_mut() {
            let expired = record
                .entry
                .previous_valid_until
                .is_none_or(|until| now >= until);
            if expired {
                record.entry.previous = None;
                record.entry.previous_valid_until = None;
            }
        }
    }
}
