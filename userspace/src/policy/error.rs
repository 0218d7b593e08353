//! What `parse_policy` and `load_dir` report: every problem of a file, each
//! with the file, line and column it refers to and, where one helps, a hint.

use std::fmt;
use std::path::PathBuf;

use crate::nearest_key::closest;

/// One problem in one policy file. `line`/`column` are 1-based; both are 0
/// for problems about the file as a whole (unreadable, duplicate directory
/// entry), which `Display` then prints as `path: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub path: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.path.display(), self.message)?;
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.path.display(),
                self.line,
                self.column,
                self.message
            )?;
        }
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyError {}

/// All problems of one file, in source order; never empty when returned as
/// an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl PolicyErrors {
    pub fn iter(&self) -> std::slice::Iter<'_, PolicyError> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

impl<'a> IntoIterator for &'a PolicyErrors {
    type Item = &'a PolicyError;
    type IntoIter = std::slice::Iter<'a, PolicyError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// The problems validation can find. Turned into `PolicyError` (message from
/// `Display`, plus `hint()`) once its position in the file is known.
#[derive(Debug, thiserror::Error)]
pub(super) enum Problem {
    #[error("{message}")]
    Yaml { message: String },
    #[error("the policy file is empty")]
    Empty,
    #[error("{0}")]
    Untrusted(crate::file_trust::Untrusted),
    #[error("unknown key `{key}`")]
    UnknownKey {
        key: String,
        valid: &'static [&'static str],
    },
    #[error("key `{key}` is given twice")]
    DuplicateKey { key: String },
    #[error("unsupported policy version {found}")]
    Version { found: u32 },
    #[error("`agent` must not be empty")]
    AgentEmpty,
    #[error("invalid agent name `{name}`")]
    AgentName { name: String },
    #[error("agent `{agent}` is already defined by {other}; this file is ignored")]
    DuplicateAgent { agent: String, other: PathBuf },
    #[error("invalid environment variable name `{name}`")]
    EnvName { name: String },
    #[error("malformed placeholder reference in `{var}`")]
    PlaceholderSyntax { var: String },
    #[error(
        "`{var}` holds the placeholder of secret `{secret}`, but no rule's credentials name it"
    )]
    UnusedPlaceholder { var: String, secret: String },
    #[error("invalid secret name `{name}`")]
    SecretName { name: String },
    #[error("invalid host `{host}`: {reason}")]
    Host { host: String, reason: &'static str },
    #[error("port 0 is not a usable port")]
    PortZero,
    #[error("port given twice: `{host}` and `port: {port}`")]
    PortTwice { host: String, port: u16 },
    #[error("invalid HTTP method `{method}`")]
    Method { method: String },
    #[error("`{key}` is an empty list, so this rule can never match")]
    EmptyList { key: &'static str },
    #[error("path pattern `{pattern}` must start with '/'")]
    PathNotAbsolute { pattern: String },
    #[error("invalid path pattern `{pattern}`: {reason}")]
    PathGlob { pattern: String, reason: String },
    #[error("invalid rate_limit `{value}`: {reason}")]
    RateLimit { value: String, reason: &'static str },
    #[error("invalid tcp entry `{entry}`: {reason}")]
    Tcp { entry: String, reason: &'static str },
    #[error("invalid passthrough entry `{entry}`: {reason}")]
    Passthrough { entry: String, reason: &'static str },
    #[error("cannot read {what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
}

impl Problem {
    pub(super) fn hint(&self) -> Option<String> {
        let hint = match self {
            Problem::Yaml { .. } | Problem::Io { .. } | Problem::Untrusted(_) => return None,
            Problem::UnknownKey { key, valid } => {
                let list = valid.join(", ");
                match closest(key, valid) {
                    Some(guess) => format!("did you mean `{guess}`? valid keys here: {list}"),
                    None => format!("valid keys here: {list}"),
                }
            }
            Problem::Empty => "a policy needs at least `agent: NAME`".to_owned(),
            Problem::DuplicateKey { .. } => {
                "only one of the two would take effect; merge them".to_owned()
            }
            Problem::Version { .. } => "the only policy version is 1".to_owned(),
            Problem::AgentEmpty | Problem::AgentName { .. } => {
                "use 1 to 63 characters from a-z, 0-9, '-' and '_', starting with a letter or digit"
                    .to_owned()
            }
            Problem::DuplicateAgent { .. } => {
                "each agent has exactly one policy file; rename the agent or remove one file"
                    .to_owned()
            }
            Problem::EnvName { .. } => {
                "use letters, digits and '_', not starting with a digit".to_owned()
            }
            Problem::PlaceholderSyntax { .. } => {
                "the whole value must be \"{{ placeholder: SECRET-NAME }}\"".to_owned()
            }
            Problem::UnusedPlaceholder { secret, .. } => format!(
                "add `credentials: [{{secret: {secret}}}]` to the rule for the host that takes it"
            ),
            Problem::SecretName { .. } => {
                "use a-z, 0-9, '.', '-' and '_', starting with a letter or digit".to_owned()
            }
            Problem::Host { .. } => {
                "write a DNS name, \"*.example.com\" or an IP address, optionally with \":port\""
                    .to_owned()
            }
            Problem::PortZero => "use a port from 1 to 65535".to_owned(),
            Problem::PortTwice { .. } => "keep only one of the two".to_owned(),
            Problem::Method { method } => {
                let upper = method.to_ascii_uppercase();
                if upper != *method && is_method_token(&upper) {
                    format!("methods are upper-case: `{upper}`")
                } else {
                    "use an HTTP method such as GET, HEAD, POST, PUT, PATCH or DELETE".to_owned()
                }
            }
            Problem::EmptyList { key } => format!("leave `{key}` out to allow any"),
            Problem::PathNotAbsolute { pattern } => format!("write `/{pattern}`"),
            Problem::PathGlob { .. } => {
                "`*` matches within one path segment, `**` across segments".to_owned()
            }
            Problem::RateLimit { .. } => {
                "write N/second, N/minute, N/hour or N/day with N >= 1, e.g. 30/minute".to_owned()
            }
            Problem::Tcp { .. } => {
                "write \"host:port\", \"10.0.0.0/8:port\" or \"[2001:db8::/32]:port\"".to_owned()
            }
            Problem::Passthrough { .. } => {
                "write a host name or \"*.example.com\", with \":port\" for a port other than 443"
                    .to_owned()
            }
        };
        Some(hint)
    }
}

/// Upper-case letters first, then letters, digits, '-' and '_': what real
/// HTTP methods look like (a stricter subset of RFC 9110 tokens).
pub(super) fn is_method_token(method: &str) -> bool {
    let bytes = method.as_bytes();
    matches!(bytes.first(), Some(b'A'..=b'Z'))
        && bytes.len() <= 32
        && bytes
            .iter()
            .all(|b| matches!(b, b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_with_and_without_position() {
        let at = PolicyError {
            path: "p.yaml".into(),
            line: 7,
            column: 5,
            message: "bad".into(),
            hint: Some("fix it".into()),
        };
        assert_eq!(at.to_string(), "p.yaml:7:5: bad (hint: fix it)");
        let whole = PolicyError {
            line: 0,
            column: 0,
            hint: None,
            ..at.clone()
        };
        assert_eq!(whole.to_string(), "p.yaml: bad");
        assert_eq!(
            PolicyErrors(vec![at.clone(), whole]).to_string(),
            "p.yaml:7:5: bad (hint: fix it)\np.yaml: bad"
        );
    }
}
