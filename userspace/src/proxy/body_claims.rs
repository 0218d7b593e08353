//! The methods a POST's body claims. Rails (Rack's MethodOverride) reads
//! a `_method` field from a form body, Laravel and Symfony from a form or
//! multipart body, and Laravel from a JSON body's top level too: to them a
//! POST that says DELETE there is a DELETE. Where the policy decides by
//! method, each such claim must pass it as the request's own method does.
//!
//! The body is read as it streams (`checked`): nothing is held but its
//! last piece, and the upstream gets the body's end only once the whole
//! body has been read and found to claim nothing the policy refuses. A
//! server that routes on the claim reads the body whole first, so it never
//! acts on the rest.
//!
//! The readers err toward finding a claim: field names are read as PHP
//! reads them (leading spaces dropped, ` ` and `.` as `_`), and a value
//! they cannot read (too long, not a string) is claimed as
//! [`UNREADABLE`], which no rule names.

mod checked;
mod coded;
mod form;
mod json;
mod multipart;

use http::{HeaderMap, HeaderValue, Method, header};

pub use checked::{Check, Judged};

use crate::creds::Coding;
use coded::{BodyCoding, Decoding};

/// What a value that cannot be read as a method is claimed as.
pub const UNREADABLE: &str = "(unreadable)";
/// Longest value read as a method; no method a rule names is longer.
pub const MAX_VALUE: usize = 64;

/// How the body is read for claims, from its Content-Type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyKind {
    /// `application/x-www-form-urlencoded`, or no Content-Type at all:
    /// Rack reads such a POST as a form.
    Form,
    /// `multipart/*`, with its boundary.
    Multipart(Vec<u8>),
    /// A type naming JSON (`/json`, `+json`), as Laravel tells one.
    Json,
    /// Each reading of a body sent with several Content-Type headers:
    /// servers differ on which one counts.
    Several(Vec<BodyKind>),
    /// A body in a content coding Airlock decodes, read once decoded.
    Coded(Coding, Box<BodyKind>),
    /// A body in a coding Airlock does not decode: if it has a byte, it
    /// claims [`UNREADABLE`].
    Unreadable,
}

impl BodyKind {
    /// How a request's body may claim a method, or `None` when no
    /// framework reads one from it: only a POST is overridden.
    pub fn of(method: &Method, headers: &HeaderMap) -> Option<BodyKind> {
        if !method.as_str().eq_ignore_ascii_case("POST") {
            return None;
        }
        let kind = BodyKind::of_types(headers)?;
        Some(match BodyCoding::of(headers) {
            BodyCoding::Plain => kind,
            BodyCoding::Decodes(coding) => BodyKind::Coded(coding, Box::new(kind)),
            BodyCoding::Unreadable => BodyKind::Unreadable,
        })
    }

    fn of_types(headers: &HeaderMap) -> Option<BodyKind> {
        let mut types = headers.get_all(header::CONTENT_TYPE).iter();
        let Some(first) = types.next() else {
            return Some(BodyKind::Form);
        };
        let mut kinds: Vec<BodyKind> = Vec::new();
        for value in std::iter::once(first).chain(types) {
            if let Some(kind) = BodyKind::of_type(value)
                && !kinds.contains(&kind)
            {
                kinds.push(kind);
            }
        }
        match kinds.len() {
            0 => None,
            1 => kinds.pop(),
            _ => Some(BodyKind::Several(kinds)),
        }
    }

    fn of_type(value: &HeaderValue) -> Option<BodyKind> {
        // A type that is not text is read as a form: the reading that
        // finds the most.
        let Ok(text) = value.to_str() else {
            return Some(BodyKind::Form);
        };
        let lower = text.to_ascii_lowercase();
        let essence = lower.split(';').next().unwrap_or("").trim();
        if essence.starts_with("multipart/") {
            return multipart::boundary(text).map(BodyKind::Multipart);
        }
        if lower.contains("/json") || lower.contains("+json") {
            return Some(BodyKind::Json);
        }
        (essence.is_empty() || essence == "application/x-www-form-urlencoded")
            .then_some(BodyKind::Form)
    }
}

/// Reads a body piece by piece for the methods it claims.
pub enum Scanner {
    Form(form::Form),
    Json(json::Json),
    Multipart(multipart::Multipart),
    Several(Vec<Scanner>),
    Decoded(Box<Decoding>),
    /// Whether the body had a byte.
    Unreadable(bool),
}

impl Scanner {
    pub fn new(kind: BodyKind) -> Scanner {
        match kind {
            BodyKind::Form => Scanner::Form(form::Form::default()),
            BodyKind::Json => Scanner::Json(json::Json::default()),
            BodyKind::Multipart(boundary) => {
                Scanner::Multipart(multipart::Multipart::new(&boundary))
            }
            BodyKind::Several(kinds) => {
                Scanner::Several(kinds.into_iter().map(Scanner::new).collect())
            }
            BodyKind::Coded(coding, kind) => {
                Scanner::Decoded(Box::new(Decoding::new(coding, Scanner::new(*kind))))
            }
            BodyKind::Unreadable => Scanner::Unreadable(false),
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        match self {
            Scanner::Form(form) => form.feed(bytes),
            Scanner::Json(json) => json.feed(bytes),
            Scanner::Multipart(multipart) => multipart.feed(bytes),
            Scanner::Several(scanners) => {
                for scanner in scanners {
                    scanner.feed(bytes);
                }
            }
            Scanner::Decoded(decoding) => decoding.feed(bytes),
            Scanner::Unreadable(fed) => *fed |= !bytes.is_empty(),
        }
    }

    /// Every method claimed, once the whole body has been fed.
    pub fn finish(self) -> Vec<String> {
        match self {
            Scanner::Form(form) => form.finish(),
            Scanner::Json(json) => json.finish(),
            Scanner::Multipart(multipart) => multipart.finish(),
            Scanner::Several(scanners) => scanners.into_iter().flat_map(Scanner::finish).collect(),
            Scanner::Decoded(decoding) => decoding.finish(),
            Scanner::Unreadable(fed) => {
                if fed {
                    vec![UNREADABLE.to_owned()]
                } else {
                    Vec::new()
                }
            }
        }
    }
}

/// Whether a field name is `_method` as PHP registers it: leading spaces
/// dropped, the name cut at a NUL, ` ` and `.` read as `_`. A name that
/// goes on with `[` makes an array, claimed as unreadable.
pub(super) fn names_method(name: &[u8]) -> Option<NameIs> {
    let start = name.iter().position(|&b| b != b' ').unwrap_or(name.len());
    let name = &name[start..];
    let name = name.split(|&b| b == 0).next().unwrap_or(name);
    let (base, array) = match name.iter().position(|&b| b == b'[') {
        Some(at) => (&name[..at], true),
        None => (name, false),
    };
    let php = |b: &u8| match b {
        b' ' | b'.' => b'_',
        other => *other,
    };
    let is_method =
        base.len() == b"_method".len() && base.iter().map(php).eq(b"_method".iter().copied());
    match (is_method, array) {
        (false, _) => None,
        (true, false) => Some(NameIs::Method),
        (true, true) => Some(NameIs::MethodArray),
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum NameIs {
    Method,
    MethodArray,
}

/// A value read as a method: trimmed text, or [`UNREADABLE`].
fn claim(value: &[u8], whole: bool) -> String {
    match std::str::from_utf8(value) {
        Ok(text) if whole => as_claim(text.trim()).to_owned(),
        _ => UNREADABLE.to_owned(),
    }
}

/// `text` as a claimed method, if it could be one: at most [`MAX_VALUE`]
/// bytes, all of them a token's (RFC 9110), as every method's are. Else
/// [`UNREADABLE`]: a claim goes into the audit record and before the
/// human who approves the request, and there a control byte (a
/// backspace, an escape sequence) could overwrite what it is shown.
pub(super) fn as_claim(text: &str) -> &str {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if text.len() <= MAX_VALUE && text.bytes().all(token) {
        text
    } else {
        UNREADABLE
    }
}

/// The value of an ASCII hex digit.
fn hex(digit: u8) -> Option<u8> {
    (digit as char)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests;
