//! Rules for names, placeholders and values, applied on every write and again
//! on every load (a file that breaks them is not trusted).

use super::{SecretKind, ValueProblem, VaultError};
use crate::creds::AwsKey;
use crate::secret::Secret;

pub const NAME_MAX: usize = 64;
pub const PLACEHOLDER_MIN: usize = 8;
pub const PLACEHOLDER_MAX: usize = 200;
pub const VALUE_MAX: usize = 64 * 1024;

/// `[a-z0-9][a-z0-9_.-]{0,63}`: safe in file names, env var values, policy
/// YAML and metric labels without quoting.
pub fn name(name: &str) -> Result<(), VaultError> {
    let bytes = name.as_bytes();
    let first_ok = bytes
        .first()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let rest_ok = bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-'));
    if first_ok && rest_ok && bytes.len() <= NAME_MAX {
        Ok(())
    } else {
        Err(VaultError::InvalidName {
            name: name.to_owned(),
        })
    }
}

/// 8..=200 unreserved URI characters (RFC 3986), so the placeholder passes
/// through headers, query strings and form bodies without any escaping that
/// would stop the proxy from finding it.
pub fn placeholder(placeholder: &str) -> Result<(), VaultError> {
    let len_ok = (PLACEHOLDER_MIN..=PLACEHOLDER_MAX).contains(&placeholder.len());
    let chars_ok = placeholder
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'));
    if len_ok && chars_ok {
        Ok(())
    } else {
        Err(VaultError::InvalidPlaceholder {
            placeholder: placeholder.to_owned(),
        })
    }
}

pub fn default_placeholder(name: &str) -> String {
    format!("airlock-ph-{name}")
}

/// NUL, CR and LF are refused because values are spliced into HTTP headers:
/// a CR/LF would let a stored value inject headers or split the request.
pub fn value(name: &str, value: &Secret) -> Result<(), VaultError> {
    let bytes = value.expose();
    let problem = if bytes.is_empty() {
        Some(ValueProblem::Empty)
    } else if bytes.len() > VALUE_MAX {
        Some(ValueProblem::TooLong { len: bytes.len() })
    } else if bytes.iter().any(|b| matches!(b, b'\0' | b'\r' | b'\n')) {
        Some(ValueProblem::ForbiddenByte)
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(VaultError::InvalidValue {
            name: name.to_owned(),
            problem,
        }),
    }
}

/// What a kind needs of its value beyond [`value`]: an `aws_sigv4` secret
/// is the key pair (and token) that requests are re-signed with; the kinds
/// whose tokens Airlock would have to fetch are not taken yet.
pub fn value_for_kind(name: &str, kind: SecretKind, value: &Secret) -> Result<(), VaultError> {
    // Refused rather than stored: swapped as a static value, these would
    // send a client secret or a private key where a token belongs.
    if matches!(
        kind,
        SecretKind::Oauth2ClientCredentials | SecretKind::GithubApp
    ) {
        return Err(VaultError::KindNotSupported { kind });
    }
    if kind == SecretKind::AwsSigv4 && AwsKey::parse(value).is_none() {
        return Err(VaultError::InvalidValue {
            name: name.to_owned(),
            problem: ValueProblem::NotAwsKey,
        });
    }
    Ok(())
}
