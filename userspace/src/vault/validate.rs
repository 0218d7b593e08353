//! Rules for names, placeholders and values, applied on every write and again
//! on every load (a file that breaks them is not trusted).

use super::{SecretKind, ValueProblem, VaultError};
use crate::creds::{AwsKey, Grant};
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

/// The one header a `header` secret is swapped into, lower-cased. Only
/// that kind names a header, and only a header a request may carry to an
/// origin (not `host`, nor a hop-by-hop one, which Airlock strips).
pub fn header(name: &str, kind: SecretKind, header: &str) -> Result<String, VaultError> {
    let refused = |problem: &'static str| VaultError::InvalidHeader {
        name: name.to_owned(),
        header: header.to_owned(),
        problem,
    };
    if kind != SecretKind::Header {
        return Err(refused(
            "only a secret of kind `header` is bound to a header",
        ));
    }
    let parsed = http::HeaderName::from_bytes(header.as_bytes())
        .map_err(|_| refused("not a valid header name"))?;
    const NOT_FORWARDED: [&str; 9] = [
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    ];
    if NOT_FORWARDED.contains(&parsed.as_str()) {
        return Err(refused("Airlock does not forward it as sent"));
    }
    Ok(parsed.as_str().to_owned())
}

pub fn default_placeholder(name: &str) -> String {
    format!("airlock-ph-{name}")
}

/// NUL is always refused, and so are CR and LF in values spliced into HTTP
/// headers: there a CR/LF would let a stored value inject headers or split
/// the request. The values of fetched-token kinds are YAML documents that
/// never go into a request themselves (a PEM key spans lines).
pub fn value(name: &str, kind: SecretKind, value: &Secret) -> Result<(), VaultError> {
    let bytes = value.expose();
    let multi_line = Grant::is_fetched(kind);
    let problem = if bytes.is_empty() {
        Some(ValueProblem::Empty)
    } else if bytes.len() > VALUE_MAX {
        Some(ValueProblem::TooLong { len: bytes.len() })
    } else if bytes
        .iter()
        .any(|b| *b == b'\0' || (!multi_line && matches!(b, b'\r' | b'\n')))
    {
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
/// is the key pair (and token) that requests are re-signed with; an
/// `oauth2_client_credentials` or `github_app` secret describes how to
/// fetch a token. Checked when a value is stored, not when the vault loads,
/// so that one entry a later version reads differently cannot make the
/// whole vault unusable.
pub fn value_for_kind(name: &str, kind: SecretKind, value: &Secret) -> Result<(), VaultError> {
    let problem = match kind {
        SecretKind::AwsSigv4 if AwsKey::parse(value).is_none() => Some(ValueProblem::NotAwsKey),
        _ => Grant::parse(kind, value)
            .err()
            .map(|problem| ValueProblem::Grant { kind, problem }),
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(VaultError::InvalidValue {
            name: name.to_owned(),
            problem,
        }),
    }
}
