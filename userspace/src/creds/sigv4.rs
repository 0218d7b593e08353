//! AWS Signature Version 4, re-signed with the real key.
//!
//! An agent holding an `aws_sigv4` secret is given its placeholder as the
//! access key id (and any string as the secret key). Its SDK signs each
//! request with those; the signature is worthless, and the real secret key
//! must not be pasted into the request, since SigV4 never sends it. So
//! Airlock recomputes the signature over the request as it will forward it,
//! with the real key, and puts the real access key id in `Credential=`. The
//! agent's own choices stand: its date, region, service and the headers it
//! signed.
//!
//! Canonicalisation follows botocore, the reference the tests check against:
//! S3 paths are signed as sent, other services' paths are normalised and
//! encoded a second time; query parameters are decoded, re-encoded and sorted.
//! Presigned URLs (the signature in the query) and chunk-signed uploads
//! (`STREAMING-AWS4-HMAC-SHA256-PAYLOAD`) are refused: the first would put
//! the re-signed URL in the agent's hands, the second needs every chunk
//! re-signed.

use std::fmt::Write as _;

use http::header::{AUTHORIZATION, HOST};
use http::uri::Authority;
use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use ring::{digest, hmac};
use zeroize::Zeroizing;

use crate::secret::Secret;

pub(super) const ALGORITHM: &str = "AWS4-HMAC-SHA256";
const CONTENT_SHA256: HeaderName = HeaderName::from_static("x-amz-content-sha256");
const SECURITY_TOKEN: HeaderName = HeaderName::from_static("x-amz-security-token");
const AMZ_DATE: HeaderName = HeaderName::from_static("x-amz-date");

/// The real credentials of an `aws_sigv4` secret, stored as
/// `ACCESS_KEY_ID:SECRET_ACCESS_KEY` or `ACCESS_KEY_ID:SECRET_ACCESS_KEY:SESSION_TOKEN`.
#[derive(Debug, Clone)]
pub struct AwsKey {
    pub access_key_id: Secret,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
}

impl AwsKey {
    /// None when the value is not two or three non-empty fields of
    /// printable ASCII without spaces.
    pub fn parse(value: &Secret) -> Option<AwsKey> {
        let bytes = value.expose();
        if !bytes.iter().all(|b| b.is_ascii_graphic()) {
            return None;
        }
        let mut fields = bytes.split(|&b| b == b':');
        let id = fields.next().filter(|f| !f.is_empty())?;
        let secret = fields.next().filter(|f| !f.is_empty())?;
        let token = match fields.next() {
            Some([]) => return None,
            other => other,
        };
        if fields.next().is_some() {
            return None;
        }
        Some(AwsKey {
            access_key_id: Secret::new(id.to_vec()),
            secret_access_key: Secret::new(secret.to_vec()),
            session_token: token.map(|t| Secret::new(t.to_vec())),
        })
    }

    /// Each part an upstream could echo back, for the scrubber.
    pub fn parts(&self) -> impl Iterator<Item = &Secret> {
        [&self.access_key_id, &self.secret_access_key]
            .into_iter()
            .chain(self.session_token.as_ref())
    }
}

/// Why a request carrying an `aws_sigv4` placeholder cannot be re-signed.
/// Each is answered with a 403 whose reason is [`SigV4Error::reason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SigV4Error {
    #[error(
        "the placeholder of an aws_sigv4 secret must be the access key id of an \
         AWS4-HMAC-SHA256 Authorization header (presigned URLs are not supported)"
    )]
    Misplaced,
    #[error("the AWS4-HMAC-SHA256 Authorization header or its X-Amz-Date cannot be read")]
    Malformed,
    #[error("chunk-signed uploads (STREAMING-* x-amz-content-sha256) are not supported")]
    Streaming,
    #[error("the stored value is not ACCESS_KEY_ID:SECRET_ACCESS_KEY[:SESSION_TOKEN]")]
    BadSecret,
    #[error("the signed request would not be valid HTTP")]
    Invalid,
}

impl SigV4Error {
    pub fn reason(self) -> &'static str {
        match self {
            SigV4Error::Misplaced => "aws_sigv4_placeholder_misplaced",
            SigV4Error::Malformed => "aws_sigv4_malformed",
            SigV4Error::Streaming => "aws_sigv4_streaming_unsupported",
            SigV4Error::BadSecret => "aws_sigv4_bad_secret",
            SigV4Error::Invalid => "aws_sigv4_invalid_request",
        }
    }
}

/// What the agent's Authorization header says, besides its worthless signature.
#[derive(Debug, PartialEq, Eq)]
struct AgentAuth {
    date: String,
    region: String,
    service: String,
    signed_headers: Vec<String>,
}

/// Parses `AWS4-HMAC-SHA256 Credential=ID/DATE/REGION/SERVICE/aws4_request,
/// SignedHeaders=a;b, Signature=hex` and checks that ID is `placeholder`.
fn agent_auth(value: &[u8], placeholder: &str) -> Result<AgentAuth, SigV4Error> {
    let text = std::str::from_utf8(value).map_err(|_| SigV4Error::Malformed)?;
    let rest = text
        .trim()
        .strip_prefix(ALGORITHM)
        .filter(|r| r.starts_with(' '))
        .ok_or(SigV4Error::Misplaced)?;
    let mut credential = None;
    let mut signed = None;
    for field in rest.split(',') {
        let (key, value) = field.trim().split_once('=').ok_or(SigV4Error::Malformed)?;
        match key {
            "Credential" => credential = Some(value),
            "SignedHeaders" => signed = Some(value),
            "Signature" => {}
            _ => return Err(SigV4Error::Malformed),
        }
    }
    let mut scope = credential.ok_or(SigV4Error::Malformed)?.split('/');
    if scope.next() != Some(placeholder) {
        return Err(SigV4Error::Misplaced);
    }
    let mut part = || {
        scope
            .next()
            .filter(|p| !p.is_empty())
            .ok_or(SigV4Error::Malformed)
    };
    let (date, region, service, terminator) = (part()?, part()?, part()?, part()?);
    if terminator != "aws4_request" || scope.next().is_some() {
        return Err(SigV4Error::Malformed);
    }
    if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SigV4Error::Malformed);
    }
    let signed_headers = signed
        .ok_or(SigV4Error::Malformed)?
        .split(';')
        .filter(|h| !h.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    Ok(AgentAuth {
        date: date.to_owned(),
        region: region.to_owned(),
        service: service.to_owned(),
        signed_headers,
    })
}

/// The payload hash the agent declared in `x-amz-content-sha256` (S3 sends
/// one on every request), or None when the body must be hashed.
pub fn declared_payload_hash(headers: &HeaderMap) -> Result<Option<String>, SigV4Error> {
    let Some(value) = headers.get(CONTENT_SHA256) else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| SigV4Error::Malformed)?.trim();
    if text.starts_with("STREAMING-") {
        return Err(SigV4Error::Streaming);
    }
    Ok(Some(text.to_owned()))
}

/// Lower-case hex of SHA-256, the form SigV4 uses for payloads.
pub fn hex_sha256(bytes: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, bytes))
}

/// Signs `parts`, as it will be forwarded, with `key`: replaces the
/// Authorization header the agent signed with `placeholder` as its access
/// key id, and sets (or removes) `X-Amz-Security-Token` to match the key.
/// On error `parts` is unchanged.
pub fn resign(
    parts: &mut http::request::Parts,
    key: &AwsKey,
    placeholder: &str,
    payload_hash: &str,
) -> Result<(), SigV4Error> {
    let auth_value = match parts
        .headers
        .get_all(AUTHORIZATION)
        .iter()
        .collect::<Vec<_>>()[..]
    {
        [one] => one.as_bytes(),
        _ => return Err(SigV4Error::Misplaced),
    };
    let agent = agent_auth(auth_value, placeholder)?;
    let amz_date = parts
        .headers
        .get(AMZ_DATE)
        .and_then(|v| v.to_str().ok())
        .filter(|d| d.len() == 16 && d.starts_with(&agent.date))
        .ok_or(SigV4Error::Malformed)?
        .to_owned();

    // What is signed must be what is sent: without a Host header the host
    // travels in the URI (HTTP/2's :authority), where the default port is
    // left out as an SDK would have written it.
    let uri = match parts.headers.contains_key(HOST) {
        true => None,
        false => Some(without_default_port(&parts.uri)?),
    };
    let mut headers = parts.headers.clone();
    headers.remove(AUTHORIZATION);
    headers.remove(SECURITY_TOKEN);
    if let Some(token) = &key.session_token {
        let mut value =
            HeaderValue::from_bytes(token.expose()).map_err(|_| SigV4Error::BadSecret)?;
        value.set_sensitive(true);
        headers.insert(SECURITY_TOKEN, value);
    }
    let host = match &uri {
        Some(uri) => uri.authority().map(Authority::as_str).unwrap_or_default(),
        None => "",
    };

    // The agent's list, less what is no longer there, plus what the real
    // key adds; `host` is always signed.
    let mut signed: Vec<&str> = agent
        .signed_headers
        .iter()
        .map(String::as_str)
        .filter(|h| *h == "host" || (*h != "x-amz-security-token" && headers.contains_key(*h)))
        .chain(["host"])
        .chain(key.session_token.as_ref().map(|_| "x-amz-security-token"))
        .collect();
    signed.sort_unstable();
    signed.dedup();

    let target = uri.as_ref().unwrap_or(&parts.uri);
    let canonical = canonical_request(
        parts.method.as_str(),
        target,
        &agent.service,
        &headers,
        host,
        &signed,
        payload_hash,
    )?;
    let scope = format!(
        "{}/{}/{}/aws4_request",
        agent.date, agent.region, agent.service
    );
    let to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex_sha256(canonical.as_bytes())
    );
    let signature = sign(key, &agent, &to_sign);

    let mut authorization = Zeroizing::new(Vec::with_capacity(256));
    authorization.extend_from_slice(ALGORITHM.as_bytes());
    authorization.extend_from_slice(b" Credential=");
    authorization.extend_from_slice(key.access_key_id.expose());
    authorization.extend_from_slice(format!("/{scope}, SignedHeaders=").as_bytes());
    authorization.extend_from_slice(signed.join(";").as_bytes());
    authorization.extend_from_slice(b", Signature=");
    authorization.extend_from_slice(signature.as_bytes());
    let mut value = HeaderValue::from_bytes(&authorization).map_err(|_| SigV4Error::BadSecret)?;
    value.set_sensitive(true);
    headers.insert(AUTHORIZATION, value);

    parts.headers = headers;
    if let Some(uri) = uri {
        parts.uri = uri;
    }
    Ok(())
}

/// The URI with `:443` (https) or `:80` (http) dropped from its authority.
fn without_default_port(uri: &Uri) -> Result<Uri, SigV4Error> {
    let authority = uri.authority().ok_or(SigV4Error::Invalid)?;
    let default = match uri.scheme_str() {
        Some("https") => 443,
        Some("http") => 80,
        _ => return Ok(uri.clone()),
    };
    if authority.port_u16() != Some(default) {
        return Ok(uri.clone());
    }
    let host = authority.as_str().rsplit_once(':').map_or("", |(h, _)| h);
    let mut parts = uri.clone().into_parts();
    parts.authority = Some(Authority::try_from(host).map_err(|_| SigV4Error::Invalid)?);
    Uri::from_parts(parts).map_err(|_| SigV4Error::Invalid)
}

/// The canonical request of SigV4. `host` is used when `headers` has no Host.
fn canonical_request(
    method: &str,
    uri: &Uri,
    service: &str,
    headers: &HeaderMap,
    host: &str,
    signed: &[&str],
    payload_hash: &str,
) -> Result<String, SigV4Error> {
    let mut out = String::with_capacity(512);
    out.push_str(method);
    out.push('\n');
    let path = if uri.path().is_empty() {
        "/"
    } else {
        uri.path()
    };
    if service == "s3" {
        out.push_str(path);
    } else {
        encode_into(&mut out, remove_dot_segments(path).as_bytes(), true);
    }
    out.push('\n');
    out.push_str(&canonical_query(uri.query().unwrap_or("")));
    out.push('\n');
    for name in signed {
        out.push_str(name);
        out.push(':');
        let mut values = headers.get_all(*name).iter().peekable();
        if values.peek().is_none() && *name == "host" {
            out.push_str(host);
        }
        let mut first = true;
        for value in values {
            let text = value.to_str().map_err(|_| SigV4Error::Invalid)?;
            if !first {
                out.push(',');
            }
            first = false;
            let mut words = text.split_ascii_whitespace();
            if let Some(word) = words.next() {
                out.push_str(word);
            }
            for word in words {
                out.push(' ');
                out.push_str(word);
            }
        }
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&signed.join(";"));
    out.push('\n');
    out.push_str(payload_hash);
    Ok(out)
}

/// Parameters percent-decoded, then encoded the SigV4 way and sorted by
/// name, then value.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let mut n = String::new();
            let mut v = String::new();
            encode_into(&mut n, &percent_decode(name), false);
            encode_into(&mut v, &percent_decode(value), false);
            (n, v)
        })
        .collect();
    pairs.sort();
    let mut out = String::with_capacity(query.len() + 8);
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        let _ = write!(out, "{name}={value}");
    }
    out
}

/// `%XX` decoded; anything else, a malformed escape included, kept as is.
fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// RFC 3986 unreserved characters as they are, every other byte as `%XX`
/// (upper case); `/` kept when `keep_slash`.
fn encode_into(out: &mut String, bytes: &[u8], keep_slash: bool) {
    for &b in bytes {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// `.` and `..` segments resolved and empty segments dropped, keeping a
/// leading and a trailing slash, as botocore normalises non-S3 paths.
fn remove_dot_segments(path: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                kept.pop();
            }
            s => kept.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    if path.starts_with('/') {
        out.push('/');
    }
    out.push_str(&kept.join("/"));
    if path.ends_with('/') && !kept.is_empty() {
        out.push('/');
    }
    out
}

/// The hex signature of `to_sign` under the key derived from the real
/// secret for the agent's date, region and service.
fn sign(key: &AwsKey, agent: &AgentAuth, to_sign: &str) -> String {
    let mut seed = Zeroizing::new(Vec::with_capacity(4 + key.secret_access_key.len()));
    seed.extend_from_slice(b"AWS4");
    seed.extend_from_slice(key.secret_access_key.expose());
    let mut derived = hmac::Key::new(hmac::HMAC_SHA256, &seed);
    for step in [
        agent.date.as_str(),
        agent.region.as_str(),
        agent.service.as_str(),
        "aws4_request",
    ] {
        let tag = hmac::sign(&derived, step.as_bytes());
        derived = hmac::Key::new(hmac::HMAC_SHA256, tag.as_ref());
    }
    hex::encode(hmac::sign(&derived, to_sign.as_bytes()))
}

#[cfg(test)]
mod tests;
