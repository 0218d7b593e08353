//! A multipart body, read for a part named `_method`: each delimiter is
//! followed by the part's headers, whose `Content-Disposition` names it,
//! and a part so named is read to the next delimiter as its value.

use memchr::memmem;

use super::{MAX_VALUE, NameIs, UNREADABLE, claim, hex, names_method};

/// Longest run of part headers read; a longer one is claimed as
/// unreadable.
const MAX_HEADERS: usize = 16 * 1024;
/// Longest boundary read (RFC 2046 allows 70 characters). Each piece is
/// searched for the delimiter along with the delimiter's length of bytes
/// before it, so a longer one, sent a byte at a time, would cost the
/// daemon its length in work per byte; its body is claimed as unreadable.
const MAX_BOUNDARY: usize = 256;

pub struct Multipart {
    /// `--` and the boundary.
    delimiter: Vec<u8>,
    /// Bytes not yet placed: at most a delimiter's length while seeking.
    window: Vec<u8>,
    at: Place,
    /// How much of the window the search for the headers' end has
    /// covered, so that headers sent a byte at a time are searched once.
    searched: usize,
    claims: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    /// In the preamble or in a part read for nothing: looking for the next
    /// delimiter.
    Seeking,
    /// Past a delimiter, in the part's headers.
    Headers,
    /// In the value of a part named `_method`.
    Value,
}

/// The boundary a multipart Content-Type names, quoted or not.
pub fn boundary(content_type: &str) -> Option<Vec<u8>> {
    content_type.split(';').skip(1).find_map(|param| {
        let (key, value) = param.split_once('=')?;
        if !key.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        (!value.is_empty()).then(|| value.as_bytes().to_vec())
    })
}

impl Multipart {
    pub fn new(boundary: &[u8]) -> Multipart {
        let mut delimiter = b"--".to_vec();
        delimiter.extend_from_slice(boundary);
        let unreadable = boundary.len() > MAX_BOUNDARY;
        Multipart {
            delimiter,
            window: Vec::new(),
            at: Place::Seeking,
            searched: 0,
            claims: if unreadable {
                vec![UNREADABLE.to_owned()]
            } else {
                Vec::new()
            },
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        if self.delimiter.len() > MAX_BOUNDARY + 2 {
            return;
        }
        self.window.extend_from_slice(bytes);
        self.advance();
    }

    pub fn finish(mut self) -> Vec<String> {
        if self.at == Place::Value {
            // A last part with no closing delimiter: read as it stands.
            let value = trim_line_end(&self.window);
            self.claims.push(claim(value, value.len() <= MAX_VALUE));
        }
        self.claims
    }

    fn advance(&mut self) {
        loop {
            match self.at {
                Place::Seeking => {
                    let Some(at) = memmem::find(&self.window, &self.delimiter) else {
                        let keep = self.delimiter.len() - 1;
                        if self.window.len() > keep {
                            self.window.drain(..self.window.len() - keep);
                        }
                        return;
                    };
                    self.window.drain(..at + self.delimiter.len());
                    self.at = Place::Headers;
                    self.searched = 0;
                }
                Place::Headers => {
                    // The end is three bytes long: search again from just
                    // before where the last search stopped.
                    let from = self.searched.saturating_sub(2);
                    let Some(end) = headers_end(&self.window[from..]).map(|end| from + end) else {
                        self.searched = self.window.len();
                        if self.window.len() > MAX_HEADERS {
                            self.claims.push(UNREADABLE.to_owned());
                            self.at = Place::Seeking;
                            continue;
                        }
                        return;
                    };
                    let names = part_names(&self.window[..end]);
                    self.window.drain(..end);
                    self.at = Place::Seeking;
                    for name in names {
                        match names_method(&name) {
                            Some(NameIs::Method) => self.at = Place::Value,
                            Some(NameIs::MethodArray) => self.claims.push(UNREADABLE.to_owned()),
                            None => {}
                        }
                    }
                }
                Place::Value => {
                    let Some(at) = memmem::find(&self.window, &self.delimiter) else {
                        if self.window.len() > MAX_VALUE + self.delimiter.len() + 2 {
                            self.claims.push(UNREADABLE.to_owned());
                            self.at = Place::Seeking;
                            continue;
                        }
                        return;
                    };
                    let value = trim_line_end(&self.window[..at]);
                    self.claims.push(claim(value, value.len() <= MAX_VALUE));
                    self.window.drain(..at + self.delimiter.len());
                    self.at = Place::Headers;
                    self.searched = 0;
                }
            }
        }
    }
}

/// Where the part's headers end: past the first empty line.
fn headers_end(window: &[u8]) -> Option<usize> {
    let crlf = memmem::find(window, b"\n\r\n").map(|at| at + 3);
    let lf = memmem::find(window, b"\n\n").map(|at| at + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The value without the line end that comes before a delimiter.
fn trim_line_end(value: &[u8]) -> &[u8] {
    let value = value.strip_suffix(b"\n").unwrap_or(value);
    value.strip_suffix(b"\r").unwrap_or(value)
}

/// Every name the part's `Content-Disposition` headers give it: `name`,
/// quoted or not, and `name*` (RFC 5987, percent-encoded).
fn part_names(headers: &[u8]) -> Vec<Vec<u8>> {
    let mut names = Vec::new();
    for line in headers.split(|&b| b == b'\n') {
        let Some((field, value)) = split_once(line, b':') else {
            continue;
        };
        if !field
            .trim_ascii()
            .eq_ignore_ascii_case(b"content-disposition")
        {
            continue;
        }
        for param in value.split(|&b| b == b';').skip(1) {
            let Some((key, value)) = split_once(param, b'=') else {
                continue;
            };
            let key = key.trim_ascii();
            let value = value.trim_ascii();
            if key.eq_ignore_ascii_case(b"name") {
                let unquoted = value
                    .strip_prefix(b"\"")
                    .and_then(|v| v.strip_suffix(b"\""))
                    .unwrap_or(value);
                names.push(unquoted.to_vec());
            } else if key.eq_ignore_ascii_case(b"name*") {
                let encoded = value.rsplit(|&b| b == b'\'').next().unwrap_or(value);
                names.push(percent_decoded(encoded));
            }
        }
    }
    names
}

fn split_once(bytes: &[u8], at: u8) -> Option<(&[u8], &[u8])> {
    let i = bytes.iter().position(|&b| b == at)?;
    Some((&bytes[..i], &bytes[i + 1..]))
}

fn percent_decoded(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(high), Some(low)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(high << 4 | low);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}
