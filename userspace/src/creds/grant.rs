//! Secrets whose tokens Airlock fetches itself: `oauth2_client_credentials`
//! and `github_app`.
//!
//! The stored value of such a secret is not what goes upstream. It is a
//! small YAML (or JSON) mapping that says how to obtain a short-lived token:
//! a client id and secret and the token endpoint, or a GitHub App's private
//! key and installation. The agent's placeholder is swapped for the token,
//! never for the stored value, so the client secret or the private key
//! leaves the host only toward the token endpoint, over verified TLS.
//!
//! This module only knows the two exchanges: what to send and how to read
//! the answer. Caching and single-flight live in [`super::tokens`].

mod github_app;
mod oauth2;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use zeroize::Zeroizing;

pub use github_app::AppInstallation;
pub use oauth2::ClientCredentials;

use crate::secret::Secret;
use crate::vault::SecretKind;

/// The longest token accepted from a token endpoint.
const TOKEN_MAX: usize = 8 * 1024;

/// How to obtain the token of one stored secret.
pub enum Grant {
    Oauth2(ClientCredentials),
    GithubApp(AppInstallation),
}

impl fmt::Debug for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Grant::Oauth2(_) => f.write_str("Grant::Oauth2(***)"),
            Grant::GithubApp(_) => f.write_str("Grant::GithubApp(***)"),
        }
    }
}

impl Grant {
    /// Whether secrets of `kind` are tokens Airlock fetches.
    pub fn is_fetched(kind: SecretKind) -> bool {
        matches!(
            kind,
            SecretKind::Oauth2ClientCredentials | SecretKind::GithubApp
        )
    }

    /// The grant a stored value describes. `Ok(None)` for kinds that are
    /// swapped as they are stored.
    pub fn parse(kind: SecretKind, value: &Secret) -> Result<Option<Grant>, GrantProblem> {
        Ok(match kind {
            SecretKind::Oauth2ClientCredentials => {
                Some(Grant::Oauth2(ClientCredentials::parse(value)?))
            }
            SecretKind::GithubApp => Some(Grant::GithubApp(AppInstallation::parse(value)?)),
            _ => None,
        })
    }

    /// The request that asks for a token, at `now` (a GitHub App's JWT is
    /// dated). Its URI is absolute: `https://host/path`.
    pub fn token_request(&self, now: SystemTime) -> Result<Request<Bytes>, TokenError> {
        match self {
            Grant::Oauth2(c) => Ok(c.token_request()),
            Grant::GithubApp(a) => a.token_request(now),
        }
    }

    /// The token in the endpoint's answer, and how long it lives from
    /// `now`.
    pub fn read_answer(
        &self,
        status: StatusCode,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Token, TokenError> {
        if !status.is_success() {
            return Err(TokenError::Refused {
                status: status.as_u16(),
                code: error_code(body),
            });
        }
        match self {
            Grant::Oauth2(_) => oauth2::read_answer(body),
            Grant::GithubApp(_) => github_app::read_answer(body, now),
        }
    }

    /// Values an upstream could echo besides the stored value as a whole:
    /// the OAuth2 client secret (which travels to the token endpoint), and
    /// the form encoding of it that goes inside a Basic value, where
    /// that differs.
    pub fn echoable_parts(&self) -> Vec<Secret> {
        match self {
            Grant::Oauth2(c) => {
                let secret = c.client_secret.expose();
                let mut encoded = Zeroizing::new(Vec::with_capacity(secret.len() * 3));
                form_encode(&mut encoded, secret);
                let mut parts = vec![c.client_secret.clone()];
                if encoded.as_slice() != secret {
                    parts.push(Secret::new(std::mem::take(&mut *encoded)));
                }
                parts
            }
            Grant::GithubApp(_) => Vec::new(),
        }
    }

    /// The host (in lower case, without a trailing dot) and port the token
    /// is asked for at: a host that has been sent the secret, whose answers
    /// to an agent are scrubbed like those of a host a rule binds it to.
    pub fn token_endpoint(&self) -> Option<(String, u16)> {
        let url = match self {
            Grant::Oauth2(c) => &c.token_url,
            Grant::GithubApp(a) => &a.token_url,
        };
        // The proxy names hosts without an IPv6 literal's brackets.
        let host = url.host()?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        Some((host, url.port_u16().unwrap_or(443)))
    }
}

/// A fetched token and how long it is good for.
#[derive(Debug)]
pub struct Token {
    pub value: Secret,
    pub lifetime: Duration,
}

/// Why no token was obtained. Never carries the answer's text: an endpoint
/// might quote what it was sent.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    #[error("the token endpoint answered {status}{}", code.as_ref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Refused { status: u16, code: Option<String> },
    #[error("the token endpoint's answer holds no usable token: {what}")]
    BadAnswer { what: &'static str },
    #[error("cannot reach the token endpoint: {reason}")]
    Unreachable { reason: String },
    #[error("the token endpoint did not answer within {}s", .0.as_secs())]
    Timeout(Duration),
    #[error("cannot sign the GitHub App's token request")]
    Signing,
    #[error(
        "the stored value no longer describes a grant; store it again with `airlock secret set`"
    )]
    BadStoredValue,
}

/// The OAuth2 `error` code of a refusal (RFC 6749 §5.2), which is a fixed
/// vocabulary; shown only when it looks like one.
fn error_code(body: &[u8]) -> Option<String> {
    let answer: serde_json::Value = serde_json::from_slice(body).ok()?;
    let code = answer.get("error")?.as_str()?;
    let plain = !code.is_empty()
        && code.len() <= 64
        && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    plain.then(|| code.to_owned())
}

/// A token as it will be spliced into a header or a query: visible ASCII,
/// no spaces, bounded.
fn checked_token(token: &str) -> Result<Secret, TokenError> {
    if token.is_empty() || token.len() > TOKEN_MAX {
        return Err(TokenError::BadAnswer {
            what: "the token is empty or too long",
        });
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenError::BadAnswer {
            what: "the token has characters a header cannot carry",
        });
    }
    Ok(Secret::new(token.as_bytes().to_vec()))
}

/// What is wrong with a stored grant. Names keys, never values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantProblem {
    /// Not YAML or JSON at all; where the parser stopped.
    NotYaml {
        line: usize,
        column: usize,
    },
    NotMapping,
    /// A key not in the list; `None` when the key itself does not look like
    /// a key and might be a misplaced value.
    UnknownKey {
        key: Option<String>,
    },
    Missing {
        key: &'static str,
    },
    NotText {
        key: &'static str,
    },
    NotHttpsUrl {
        key: &'static str,
    },
    Invalid {
        key: &'static str,
        expected: &'static str,
    },
    PrivateKey,
}

impl fmt::Display for GrantProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GrantProblem::NotYaml { line, column } => {
                write!(f, "it is not YAML or JSON (line {line}, column {column})")
            }
            GrantProblem::NotMapping => f.write_str("it is not a mapping of keys to values"),
            GrantProblem::UnknownKey { key: Some(key) } => write!(f, "unknown key {key:?}"),
            GrantProblem::UnknownKey { key: None } => {
                f.write_str("a key is not one of the known keys (not shown: it may be a value)")
            }
            GrantProblem::Missing { key } => write!(f, "the key {key} is missing"),
            GrantProblem::NotText { key } => {
                write!(f, "{key} must be a string (in quotes if YAML would read a number)")
            }
            GrantProblem::NotHttpsUrl { key } => write!(f, "{key} must be an https:// URL"),
            GrantProblem::Invalid { key, expected } => write!(f, "{key} must be {expected}"),
            GrantProblem::PrivateKey => f.write_str(
                "private_key is not an RSA private key in PEM form (BEGIN RSA PRIVATE KEY or BEGIN PRIVATE KEY)",
            ),
        }
    }
}

/// Keys whose values may be YAML numbers.
const NUMERIC_KEYS: &[&str] = &["app_id", "installation_id"];

/// The text fields of a stored grant, checked against `known` keys (of which
/// `required` must be present). Values stay zeroized.
fn fields(
    value: &Secret,
    known: &[&'static str],
    required: &[&'static str],
) -> Result<BTreeMap<&'static str, Zeroizing<String>>, GrantProblem> {
    let doc: serde_yaml::Value = serde_yaml::from_slice(value.expose()).map_err(|e| {
        let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
        GrantProblem::NotYaml { line, column }
    })?;
    let serde_yaml::Value::Mapping(map) = doc else {
        return Err(GrantProblem::NotMapping);
    };
    let mut out = BTreeMap::new();
    for (k, v) in map {
        let Some(key) = k.as_str().and_then(|k| known.iter().find(|&&n| n == k)) else {
            let shown = k
                .as_str()
                .filter(|k| {
                    (1..=40).contains(&k.len())
                        && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                })
                .map(str::to_owned);
            return Err(GrantProblem::UnknownKey { key: shown });
        };
        let text = match v {
            serde_yaml::Value::String(s) => Zeroizing::new(s),
            // Only ids may be written unquoted: YAML reads `0123` or `1e3`
            // as numbers, which would change a secret's text.
            serde_yaml::Value::Number(n) if NUMERIC_KEYS.contains(key) => {
                Zeroizing::new(n.to_string())
            }
            _ => return Err(GrantProblem::NotText { key }),
        };
        out.insert(*key, text);
    }
    if let Some(key) = required.iter().find(|k| !out.contains_key(*k)) {
        return Err(GrantProblem::Missing { key });
    }
    Ok(out)
}

/// An `https://` URL with a host.
fn https_url(text: &str, key: &'static str) -> Result<Uri, GrantProblem> {
    let uri: Uri = text
        .trim()
        .parse()
        .map_err(|_| GrantProblem::NotHttpsUrl { key })?;
    if uri.scheme_str() != Some("https") || uri.host().is_none_or(str::is_empty) {
        return Err(GrantProblem::NotHttpsUrl { key });
    }
    Ok(uri)
}

/// `application/x-www-form-urlencoded` (and RFC 6749 §2.3.1's encoding of
/// a client id and secret for Basic): unreserved characters as they are,
/// the rest as `%XX`.
fn form_encode(out: &mut Vec<u8>, text: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in text {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
        }
    }
}
