//! Swapping placeholders for real secrets in a request head.
//!
//! Only the head is rewritten: header values (including the `user:pass` inside
//! a `Basic` Authorization / Proxy-Authorization value) and the URI's query.
//! The body is never inspected. Bodies stream and can be arbitrarily large, so
//! rewriting them would mean buffering or a second streaming rewriter on the
//! upload path; and a placeholder left in a body is forwarded as-is, which
//! leaks nothing because a placeholder is not a secret. The proxy therefore
//! must not swap placeholders in bodies, and does not.
//!
//! An `aws_sigv4` placeholder is the exception: it is not pasted over, since
//! SigV4 never sends the secret key. The swap only checks where it stands
//! and hands the real key back for re-signing ([`super::sigv4`]).
//! `oauth2_client_credentials` and `github_app` placeholders are swapped for
//! a token fetched with the stored value ([`super::tokens`]), never for the
//! stored value itself.
//!
//! Matching is on raw bytes: placeholders are made of unreserved URI
//! characters (`[A-Za-z0-9._~-]`), which never need percent-encoding, so the
//! query is searched exactly as it appears on the wire.

use std::cmp::Reverse;
use std::collections::BTreeSet;
use std::fmt;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::general_purpose::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use http::header::{AUTHORIZATION, PROXY_AUTHORIZATION};
use http::uri::PathAndQuery;
use http::{HeaderName, HeaderValue, Uri};
use zeroize::Zeroizing;

use super::grant::Grant;
use super::sigv4::{ALGORITHM, AwsKey, SigV4Error};
use crate::secret::Secret;
use crate::vault::SecretKind;

/// Shortest placeholder accepted; also the width of the lookup key.
pub const PLACEHOLDER_MIN_LEN: usize = 8;
/// Longest placeholder accepted.
pub const PLACEHOLDER_MAX_LEN: usize = 200;

/// Clients differ on whether they pad the base64 of Basic credentials, so
/// both forms are accepted on the way in; the re-encoded value is padded.
const BASIC_DECODER: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Whether `placeholder` has the shape the swap can find: 8..=200 characters
/// of `[A-Za-z0-9._~-]`. The vault should reject other placeholders when it
/// loads; [`CredentialSet::new`] ignores them for matching.
pub fn is_valid_placeholder(placeholder: &str) -> bool {
    (PLACEHOLDER_MIN_LEN..=PLACEHOLDER_MAX_LEN).contains(&placeholder.len())
        && placeholder.bytes().all(is_unreserved)
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// One secret as the proxy sees it.
#[derive(Debug, Clone)]
pub struct Credential {
    pub name: String,
    pub kind: SecretKind,
    pub placeholder: String,
    /// A `header` secret bound to one header: swapped there only.
    pub header: Option<HeaderName>,
    pub value: Secret,
}

impl Credential {
    /// The values an upstream could echo: an `aws_sigv4` secret's parts
    /// travel (or are used) apart, an OAuth2 client secret travels to its
    /// token endpoint, the others whole. A grant's stored document (a
    /// token URL, a client id and secret, a private key) never leaves the
    /// host whole, so only the parts it sends are looked for: as forms,
    /// documents thousands of bytes long, holding spaces and newlines,
    /// would make every end that begins as one does a possible secret
    /// cut short. (Fetched tokens are added by
    /// [`super::TokenCache::scrub_pairs`].)
    pub fn scrub_values(kind: SecretKind, value: &Secret) -> Vec<Secret> {
        if let Ok(Some(grant)) = Grant::parse(kind, value) {
            return grant.echoable_parts();
        }
        let mut values = vec![value.clone()];
        if kind == SecretKind::AwsSigv4
            && let Some(key) = AwsKey::parse(value)
        {
            values.extend(key.parts().cloned());
        }
        values
    }
}

/// What [`CredentialSet::swap`] did to a request head.
#[derive(Debug, Default)]
pub struct Swapped {
    /// Names of the secrets used, unique and sorted.
    pub injected: Vec<String>,
    /// An `aws_sigv4` secret whose placeholder signed the request: the
    /// caller re-signs the request once it is final.
    pub resign: Option<Resign>,
    /// `(sent, agent's)` base64 of each Basic value rewritten: an upstream
    /// that echoes the Authorization header echoes the encoded secret,
    /// which the response scrubber must turn back into what the agent sent.
    pub encoded: Vec<(Secret, Vec<u8>)>,
}

/// The real key for [`super::sigv4::resign`], and the placeholder the agent signed with.
#[derive(Debug)]
pub struct Resign {
    pub key: AwsKey,
    pub placeholder: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    #[error("the request carries the placeholder of secret {secret:?}, which no rule allows here")]
    NotAllowed { secret: String },
    #[error("header {name} would not be a valid header value with the secret in place")]
    InvalidHeader { name: String },
    #[error("the request URI would not be valid with the secret in place")]
    InvalidUri,
    #[error("cannot re-sign the request for secret {secret:?}: {problem}")]
    AwsSigV4 { secret: String, problem: SigV4Error },
    #[error("no token was fetched for secret {secret:?}")]
    NoToken { secret: String },
    #[error(
        "the placeholder of secret {secret:?} stands in {place}; a {kind} secret is swapped only in {allowed}"
    )]
    Misplaced {
        secret: String,
        kind: &'static str,
        place: String,
        allowed: String,
    },
}

/// Where a placeholder stands in a request head.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Place {
    /// `Authorization` or `Proxy-Authorization`, as written or inside the
    /// base64 of a Basic value.
    Authorization,
    Header(HeaderName),
    Query,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Authorization => f.write_str("the Authorization header"),
            Place::Header(name) => write!(f, "header {name}"),
            Place::Query => f.write_str("the query"),
        }
    }
}

/// Where a kind's placeholder is swapped; anywhere else the request is
/// refused. A bearer token planted in a query parameter or a header that
/// an API stores (a message text, a title) would leave the host as data
/// the API keeps and may show to others; each kind goes only where that
/// kind of credential is read.
fn swapped_in(cred: &Credential, place: &Place) -> Result<(), String> {
    let authorization = || "the Authorization header (as written or inside a Basic value)".into();
    match (cred.kind, &cred.header) {
        (
            SecretKind::Bearer
            | SecretKind::Basic
            | SecretKind::Oauth2ClientCredentials
            | SecretKind::GithubApp,
            _,
        ) if *place != Place::Authorization => Err(authorization()),
        (SecretKind::Header, None) if *place == Place::Query => Err("request headers".into()),
        (SecretKind::Header, Some(header)) => match place {
            Place::Header(name) if name == header => Ok(()),
            Place::Authorization if header == AUTHORIZATION => Ok(()),
            _ => Err(format!("header {header}")),
        },
        (SecretKind::Query, _) if *place != Place::Query => Err("the query".into()),
        // aws_sigv4 is placed by its own rules: see `resign_plan`.
        _ => Ok(()),
    }
}

/// Tokens fetched for this request, by secret name: what the placeholders of
/// `oauth2_client_credentials` and `github_app` secrets are swapped for.
pub type Tokens = [(String, Secret)];

/// All credentials of one vault load, indexed for placeholder search.
pub struct CredentialSet {
    creds: Vec<Credential>,
    /// Credentials keyed by the first [`PLACEHOLDER_MIN_LEN`] bytes of their
    /// placeholder, sorted by key; each list longest placeholder first so the
    /// first full match at a position is the longest one.
    index: Vec<(u64, Vec<usize>)>,
    /// First bytes of indexed placeholders: most positions are rejected here.
    first: [bool; 256],
    /// Where fetched-token secrets are sent to get their tokens.
    token_endpoints: Vec<(String, u16)>,
}

impl fmt::Debug for CredentialSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialSet")
            .field(
                "names",
                &self.creds.iter().map(|c| &c.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// A placeholder occurrence: `cred` found at `start..end` of some text.
#[derive(Debug, Clone, Copy)]
struct Hit {
    start: usize,
    end: usize,
    cred: usize,
}

/// How one header value is rewritten.
enum HeaderEdit {
    /// Placeholders in the value as written.
    Raw(Vec<Hit>),
    /// Placeholders inside the decoded `user:pass` of a Basic value; `prefix`
    /// is the length of the scheme and the spaces after it.
    Basic {
        prefix: usize,
        decoded: Zeroizing<Vec<u8>>,
        hits: Vec<Hit>,
    },
}

/// Every placeholder found in a request head, and where.
struct Plan {
    /// `(ordinal in HeaderMap::iter order, edit)`.
    headers: Vec<(usize, HeaderEdit)>,
    query: Vec<Hit>,
    /// Credentials whose placeholder appears anywhere, including places that
    /// are not rewritten (the raw text of a Basic value that also decoded to
    /// placeholders), so refusal errs on the side of refusing.
    found: BTreeSet<usize>,
    /// `(credential, where)` of every placeholder found.
    places: Vec<(usize, Place)>,
}

impl CredentialSet {
    /// Credentials whose placeholder is not [valid](is_valid_placeholder) are
    /// kept for scrubbing but never matched. If two credentials share a
    /// placeholder, the first one owns it: a request with it is then swapped
    /// or refused as that credential, never given the other's value.
    pub fn new(creds: Vec<Credential>) -> CredentialSet {
        let mut order: Vec<usize> = (0..creds.len())
            .filter(|&i| is_valid_placeholder(&creds[i].placeholder))
            .collect();
        // Stable sort: among equal placeholders the earliest stays first.
        order.sort_by_key(|&i| Reverse(creds[i].placeholder.len()));

        let mut index: Vec<(u64, Vec<usize>)> = Vec::new();
        let mut first = [false; 256];
        let mut seen = BTreeSet::new();
        for i in order {
            let ph = creds[i].placeholder.as_bytes();
            if !seen.insert(ph) {
                continue;
            }
            first[usize::from(ph[0])] = true;
            let key = key_of(ph);
            match index.binary_search_by_key(&key, |(k, _)| *k) {
                Ok(at) => index[at].1.push(i),
                Err(at) => index.insert(at, (key, vec![i])),
            }
        }
        let mut token_endpoints: Vec<(String, u16)> = creds
            .iter()
            .filter_map(|c| Grant::parse(c.kind, &c.value).ok().flatten())
            .filter_map(|grant| grant.token_endpoint())
            .collect();
        token_endpoints.sort_unstable();
        token_endpoints.dedup();
        CredentialSet {
            creds,
            index,
            first,
            token_endpoints,
        }
    }

    /// Whether `host:port` is where a stored secret is sent for a token
    /// (`host` in lower case, as the proxy names it): that host knows the
    /// secret and may give it back, as a host a rule binds secrets to may.
    /// A trailing dot names the same host (an agent's SNI may carry one).
    pub fn is_token_endpoint(&self, host: &str, port: u16) -> bool {
        let host = host.trim_end_matches('.');
        self.token_endpoints
            .iter()
            .any(|(h, p)| *p == port && h == host)
    }

    /// Names of the secrets whose placeholder appears in the request head
    /// (header values, decoded Basic credentials, the query), unique and
    /// sorted. When one placeholder is a prefix of another, the longest match
    /// wins; a placeholder cut short matches nothing.
    pub fn placeholders_in(&self, parts: &http::request::Parts) -> Vec<String> {
        let plan = self.plan(parts);
        self.names(plan.found.iter().copied())
    }

    /// Replaces the placeholders of the `allowed` secret names with their
    /// values and returns the names injected (unique, sorted). If the head
    /// carries a placeholder of any other secret, nothing is changed and the
    /// request must be refused. Swapped header values are marked sensitive so
    /// HTTP/2 header compression never indexes them.
    ///
    /// The caller decides `allowed` from the rule that matched the upstream
    /// host, and only calls this when the upstream leg is verified TLS.
    ///
    /// The placeholders of fetched-token secrets are swapped for their entry
    /// in `tokens` ([`CredentialSet::to_fetch`] says which are needed).
    pub fn swap(
        &self,
        parts: &mut http::request::Parts,
        allowed: &[String],
        tokens: &Tokens,
    ) -> Result<Swapped, SwapError> {
        let plan = self.plan(parts);
        self.refuse_unallowed(&plan, allowed)?;
        self.refuse_misplaced(&plan)?;
        let resign = self.resign_plan(parts, &plan)?;
        let values = self.values(&plan, tokens)?;
        let signer = resign.as_ref().map(|(cred, _)| *cred);

        // Build every new value before touching `parts`, so an error leaves
        // the request exactly as it came.
        let mut injected = BTreeSet::new();
        let mut encoded_pairs = Vec::new();
        let mut new_values = Vec::with_capacity(plan.headers.len());
        let names: Vec<&HeaderName> = parts.headers.iter().map(|(n, _)| n).collect();
        let header_values: Vec<&HeaderValue> = parts.headers.iter().map(|(_, v)| v).collect();
        for (ordinal, edit) in &plan.headers {
            let new = match edit {
                // Left for the re-signing, which replaces the whole header.
                HeaderEdit::Raw(hits) if hits.iter().all(|h| Some(h.cred) == signer) => {
                    injected.extend(signer);
                    continue;
                }
                HeaderEdit::Raw(hits) => {
                    let bytes =
                        self.replace(&values, header_values[*ordinal].as_bytes(), hits, false);
                    injected.extend(hits.iter().map(|h| h.cred));
                    bytes
                }
                HeaderEdit::Basic {
                    prefix,
                    decoded,
                    hits,
                } => {
                    let plain = self.replace(&values, decoded, hits, false);
                    injected.extend(hits.iter().map(|h| h.cred));
                    let original = header_values[*ordinal].as_bytes();
                    let mut bytes = Zeroizing::new(original[..*prefix].to_vec());
                    let encoded = Zeroizing::new(STANDARD.encode(&*plain));
                    bytes.extend_from_slice(encoded.as_bytes());
                    encoded_pairs.push((
                        Secret::new(encoded.as_bytes().to_vec()),
                        original[*prefix..].trim_ascii_end().to_vec(),
                    ));
                    bytes
                }
            };
            let mut value =
                HeaderValue::from_bytes(&new).map_err(|_| SwapError::InvalidHeader {
                    name: names[*ordinal].as_str().to_owned(),
                })?;
            value.set_sensitive(true);
            new_values.push((*ordinal, value));
        }

        let new_uri = if plan.query.is_empty() {
            None
        } else {
            injected.extend(plan.query.iter().map(|h| h.cred));
            Some(self.swap_query(&values, &parts.uri, &plan.query)?)
        };

        let mut pending = new_values.into_iter().peekable();
        for (ordinal, (_, value)) in parts.headers.iter_mut().enumerate() {
            if pending.peek().is_some_and(|(at, _)| *at == ordinal)
                && let Some((_, new)) = pending.next()
            {
                *value = new;
            }
        }
        if let Some(uri) = new_uri {
            parts.uri = uri;
        }
        Ok(Swapped {
            injected: self.names(injected),
            resign: resign.map(|(_, r)| r),
            encoded: encoded_pairs,
        })
    }

    /// The secrets of fetched tokens whose placeholders the request carries,
    /// for the caller to fetch before [`CredentialSet::swap`]. Refuses, as
    /// the swap would, a request that carries a placeholder no rule allows,
    /// so no token is fetched for it.
    pub fn to_fetch(
        &self,
        parts: &http::request::Parts,
        allowed: &[String],
    ) -> Result<Vec<Credential>, SwapError> {
        let plan = self.plan(parts);
        self.refuse_unallowed(&plan, allowed)?;
        self.refuse_misplaced(&plan)?;
        Ok(plan
            .found
            .iter()
            .map(|&i| &self.creds[i])
            .filter(|c| Grant::is_fetched(c.kind))
            .cloned()
            .collect())
    }

    /// The first (by secret name) placeholder that stands where its kind
    /// is not swapped.
    fn refuse_misplaced(&self, plan: &Plan) -> Result<(), SwapError> {
        let misplaced = plan
            .places
            .iter()
            .filter_map(|(i, place)| {
                let cred = &self.creds[*i];
                swapped_in(cred, place)
                    .err()
                    .map(|allowed| (cred, place, allowed))
            })
            .min_by(|a, b| a.0.name.cmp(&b.0.name));
        match misplaced {
            Some((cred, place, allowed)) => Err(SwapError::Misplaced {
                secret: cred.name.clone(),
                kind: cred.kind.as_str(),
                place: place.to_string(),
                allowed,
            }),
            None => Ok(()),
        }
    }

    fn refuse_unallowed(&self, plan: &Plan, allowed: &[String]) -> Result<(), SwapError> {
        match plan
            .found
            .iter()
            .filter(|&&i| !allowed.contains(&self.creds[i].name))
            .min_by(|&&a, &&b| self.creds[a].name.cmp(&self.creds[b].name))
        {
            Some(&denied) => Err(SwapError::NotAllowed {
                secret: self.creds[denied].name.clone(),
            }),
            None => Ok(()),
        }
    }

    /// What each found placeholder is swapped for, by credential index: the
    /// stored value, or the fetched token.
    fn values<'a>(&'a self, plan: &Plan, tokens: &'a Tokens) -> Result<Vec<&'a Secret>, SwapError> {
        self.creds
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if !Grant::is_fetched(c.kind) {
                    return Ok(&c.value);
                }
                match tokens.iter().find(|(name, _)| *name == c.name) {
                    Some((_, token)) => Ok(token),
                    // Never the stored value: that is the client secret
                    // or the private key.
                    None if plan.found.contains(&i) => Err(SwapError::NoToken {
                        secret: c.name.clone(),
                    }),
                    None => Ok(&c.value),
                }
            })
            .collect()
    }

    /// The `aws_sigv4` secret whose placeholder signed the request, if any.
    /// Its placeholder is not pasted over: it names the key to re-sign with,
    /// and may stand only where an SDK puts its access key id (the
    /// Authorization header) or a token (`X-Amz-Security-Token`), alone.
    fn resign_plan(
        &self,
        parts: &http::request::Parts,
        plan: &Plan,
    ) -> Result<Option<(usize, Resign)>, SwapError> {
        let mut found = plan
            .found
            .iter()
            .copied()
            .filter(|&i| self.creds[i].kind == SecretKind::AwsSigv4);
        let Some(cred) = found.next() else {
            return Ok(None);
        };
        let refuse = |problem| SwapError::AwsSigV4 {
            secret: self.creds[cred].name.clone(),
            problem,
        };
        let in_basic = plan.headers.iter().any(|(_, edit)| {
            matches!(edit, HeaderEdit::Basic { hits, .. } if hits.iter().any(|h| h.cred == cred))
        });
        if found.next().is_some() || in_basic || plan.query.iter().any(|h| h.cred == cred) {
            return Err(refuse(SigV4Error::Misplaced));
        }
        for (ordinal, (name, value)) in parts.headers.iter().enumerate() {
            let hits = self.find(value.as_bytes());
            let basic = plan
                .headers
                .iter()
                .any(|(at, edit)| *at == ordinal && matches!(edit, HeaderEdit::Basic { .. }));
            let here = hits.iter().any(|h| h.cred == cred);
            let alone = hits.iter().all(|h| h.cred == cred);
            let signature = name == AUTHORIZATION
                && value
                    .as_bytes()
                    .trim_ascii_start()
                    .starts_with(ALGORITHM.as_bytes());
            let place = signature || name.as_str() == "x-amz-security-token";
            if here && !(place && alone && !basic) {
                return Err(refuse(SigV4Error::Misplaced));
            }
        }
        let key = AwsKey::parse(&self.creds[cred].value).ok_or(refuse(SigV4Error::BadSecret))?;
        Ok(Some((
            cred,
            Resign {
                key,
                placeholder: self.creds[cred].placeholder.clone(),
            },
        )))
    }

    /// `(secret, placeholder)` for every credential, for building a
    /// [`Scrubber`](super::Scrubber). The caller adds any extra values that
    /// must not reach agents, such as a rotated value still in its grace
    /// period.
    pub fn scrub_pairs(&self) -> Vec<(Secret, Vec<u8>)> {
        self.creds
            .iter()
            .flat_map(|c| {
                Credential::scrub_values(c.kind, &c.value)
                    .into_iter()
                    .map(|v| (v, c.placeholder.as_bytes().to_vec()))
            })
            .collect()
    }

    fn names(&self, creds: impl IntoIterator<Item = usize>) -> Vec<String> {
        let names: BTreeSet<&str> = creds
            .into_iter()
            .map(|i| self.creds[i].name.as_str())
            .collect();
        names.into_iter().map(str::to_owned).collect()
    }

    fn plan(&self, parts: &http::request::Parts) -> Plan {
        let mut plan = Plan {
            headers: Vec::new(),
            query: Vec::new(),
            found: BTreeSet::new(),
            places: Vec::new(),
        };
        for (ordinal, (name, value)) in parts.headers.iter().enumerate() {
            let bytes = value.as_bytes();
            let raw = self.find(bytes);
            plan.found.extend(raw.iter().map(|h| h.cred));
            let is_authorization = name == AUTHORIZATION || name == PROXY_AUTHORIZATION;
            let place = || {
                if is_authorization {
                    Place::Authorization
                } else {
                    Place::Header(name.clone())
                }
            };
            plan.places.extend(raw.iter().map(|h| (h.cred, place())));
            let basic = if is_authorization {
                self.find_in_basic(bytes)
            } else {
                None
            };
            let edit = match basic {
                Some((prefix, decoded, hits)) => {
                    plan.found.extend(hits.iter().map(|h| h.cred));
                    plan.places
                        .extend(hits.iter().map(|h| (h.cred, Place::Authorization)));
                    HeaderEdit::Basic {
                        prefix,
                        decoded,
                        hits,
                    }
                }
                None if !raw.is_empty() => HeaderEdit::Raw(raw),
                None => continue,
            };
            plan.headers.push((ordinal, edit));
        }
        if let Some(query) = parts.uri.query() {
            plan.query = self.find(query.as_bytes());
            plan.found.extend(plan.query.iter().map(|h| h.cred));
            plan.places
                .extend(plan.query.iter().map(|h| (h.cred, Place::Query)));
        }
        plan
    }

    /// For a `Basic <base64>` value whose decoded credentials contain
    /// placeholders: the length of the part before the base64, the decoded
    /// bytes, and the placeholders in them.
    fn find_in_basic(&self, value: &[u8]) -> Option<(usize, Zeroizing<Vec<u8>>, Vec<Hit>)> {
        let scheme_at = value.iter().position(|b| !b.is_ascii_whitespace())?;
        let rest = &value[scheme_at..];
        let scheme = rest.get(..5)?;
        if !scheme.eq_ignore_ascii_case(b"basic") {
            return None;
        }
        let after = &rest[5..];
        let spaces = after.iter().take_while(|b| **b == b' ').count();
        if spaces == 0 {
            return None;
        }
        let token = after[spaces..].trim_ascii_end();
        let decoded = Zeroizing::new(BASIC_DECODER.decode(token).ok()?);
        let hits = self.find(&decoded);
        if hits.is_empty() {
            return None;
        }
        Some((scheme_at + 5 + spaces, decoded, hits))
    }

    /// Leftmost-longest, non-overlapping placeholder occurrences in `text`.
    fn find(&self, text: &[u8]) -> Vec<Hit> {
        let mut hits = Vec::new();
        let mut at = 0;
        while at + PLACEHOLDER_MIN_LEN <= text.len() {
            if self.first[usize::from(text[at])]
                && let Some(hit) = self.longest_at(text, at)
            {
                at = hit.end;
                hits.push(hit);
            } else {
                at += 1;
            }
        }
        hits
    }

    fn longest_at(&self, text: &[u8], at: usize) -> Option<Hit> {
        let rest = &text[at..];
        let key = key_of(rest);
        let slot = self.index.binary_search_by_key(&key, |(k, _)| *k).ok()?;
        self.index[slot].1.iter().find_map(|&cred| {
            let ph = self.creds[cred].placeholder.as_bytes();
            rest.starts_with(ph).then_some(Hit {
                start: at,
                end: at + ph.len(),
                cred,
            })
        })
    }

    /// `text` with each hit replaced by its credential's value, percent-
    /// encoded when the text is a query so a value with `&`, `=` or spaces
    /// cannot change the query's structure.
    fn replace(
        &self,
        values: &[&Secret],
        text: &[u8],
        hits: &[Hit],
        percent_encode: bool,
    ) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(text.len() + 64));
        let mut done = 0;
        for hit in hits {
            out.extend_from_slice(&text[done..hit.start]);
            let value = values[hit.cred].expose();
            if percent_encode {
                for &b in value {
                    if is_unreserved(b) {
                        out.push(b);
                    } else {
                        out.extend_from_slice(&[
                            b'%',
                            HEX[usize::from(b >> 4)],
                            HEX[usize::from(b & 0xf)],
                        ]);
                    }
                }
            } else {
                out.extend_from_slice(value);
            }
            done = hit.end;
        }
        out.extend_from_slice(&text[done..]);
        out
    }

    fn swap_query(&self, values: &[&Secret], uri: &Uri, hits: &[Hit]) -> Result<Uri, SwapError> {
        let query = uri.query().unwrap_or_default();
        let swapped = self.replace(values, query.as_bytes(), hits, true);
        let mut path_and_query =
            Zeroizing::new(Vec::with_capacity(uri.path().len() + 1 + swapped.len()));
        path_and_query.extend_from_slice(uri.path().as_bytes());
        path_and_query.push(b'?');
        path_and_query.extend_from_slice(&swapped);
        let mut parts = uri.clone().into_parts();
        parts.path_and_query = Some(
            PathAndQuery::try_from(path_and_query.as_slice()).map_err(|_| SwapError::InvalidUri)?,
        );
        Uri::from_parts(parts).map_err(|_| SwapError::InvalidUri)
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// The first [`PLACEHOLDER_MIN_LEN`] bytes as a number; callers guarantee
/// `bytes` is at least that long.
fn key_of(bytes: &[u8]) -> u64 {
    let mut key = [0u8; PLACEHOLDER_MIN_LEN];
    let n = bytes.len().min(PLACEHOLDER_MIN_LEN);
    key[..n].copy_from_slice(&bytes[..n]);
    u64::from_le_bytes(key)
}
