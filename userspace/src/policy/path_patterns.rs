//! A rule's path globs, and the readings of a request's path they are
//! matched against. Servers differ in how they read a path before they
//! route it: some decode `%2F` and `%5C` to `/` (Flask, Django, Go's mux
//! before 1.22), some drop a segment's `;parameters` (Tomcat, Jetty,
//! Spring). So `/admin%2Fusers` and `/admin;x/users` may be
//! `/admin/users` to the upstream. A path is matched as written and as
//! such a server reads it: an allow rule must allow both readings, and a
//! deny rule refuses on either.

use std::borrow::Cow;

use globset::GlobSet;

#[derive(Debug, Clone)]
pub(super) struct PathPatterns {
    as_written: GlobSet,
    /// The same globs read as such a server reads a path, so that a rule
    /// written with `%2F` (npm's scoped packages: `/@types%2f*`) still
    /// allows the path it names.
    as_read: GlobSet,
}

/// A request's path: as written (canonical), and as servers that read
/// `%2F`, `%5C` and `;` so may read it, where that differs (at most two
/// readings; none for a path without `%` or `;`, which allocates nothing).
pub(super) struct Readings<'a> {
    pub written: Cow<'a, str>,
    pub read: Vec<String>,
}

impl PathPatterns {
    pub(super) fn new(as_written: GlobSet, as_read: GlobSet) -> PathPatterns {
        PathPatterns {
            as_written,
            as_read,
        }
    }

    /// Every reading matches: what an allow rule asks.
    pub(super) fn allow(&self, path: &Readings<'_>) -> bool {
        self.as_written.is_match(path.written.as_ref())
            && path.read.iter().all(|read| self.as_read.is_match(read))
    }

    /// Any reading matches: what a deny rule asks. A reading with one
    /// trailing `/` is also tried without it, and one without with it:
    /// Express, Spring MVC 5 and Rails route `/users/root/` where they
    /// route `/users/root`.
    pub(super) fn deny(&self, path: &Readings<'_>) -> bool {
        let matches = |globs: &GlobSet, path: &str| {
            globs.is_match(path)
                || match path.strip_suffix('/') {
                    Some(bare) => !bare.is_empty() && globs.is_match(bare),
                    None => globs.is_match(format!("{path}/")),
                }
        };
        matches(&self.as_written, path.written.as_ref())
            || path.read.iter().any(|read| matches(&self.as_read, read))
    }
}

/// `path` (a glob) as a server that drops each segment's `;parameters`
/// and decodes `%2F` and `%5C` to `/` reads it; `None` when that changes
/// nothing.
pub(super) fn as_servers_may_read(path: &str) -> Option<String> {
    if !path.contains([';', '%']) {
        return None;
    }
    let read = decode_separators(&cut_parameters(path));
    (read != path).then_some(read)
}

/// A request's `path` as servers may read it, where that differs from it:
/// parameters cut, then separators decoded (as above); and separators
/// decoded, then parameters cut, which is what a server that cuts
/// parameters (Tomcat) reads behind a proxy that decodes `%2F` and
/// normalises (nginx). The order matters: in `/x;%2F..%2Fadmin` the first
/// reading drops the whole `;…` segment, the second finds `..` in it.
pub(super) fn readings(path: &str) -> Vec<String> {
    let mut readings = Vec::new();
    if !path.contains([';', '%']) {
        return readings;
    }
    for read in [
        decode_separators(&cut_parameters(path)),
        cut_parameters(&decode_separators(path)),
    ] {
        if read != path && !readings.contains(&read) {
            readings.push(read);
        }
    }
    readings
}

fn cut_parameters(path: &str) -> String {
    path.split('/')
        .map(|segment| segment.split(';').next().unwrap_or(segment))
        .collect::<Vec<_>>()
        .join("/")
}

fn decode_separators(path: &str) -> String {
    path.replace("%2F", "/")
        .replace("%2f", "/")
        .replace("%5C", "/")
        .replace("%5c", "/")
}

/// `path` (a request's, or a glob) with each escape's hex digits in upper
/// case: `%2f` and `%2F` are the same byte to every server (RFC 3986
/// 6.2.2.1), so a rule written with one matches a path written with the
/// other.
pub(super) fn upper_escapes(path: &str) -> Cow<'_, str> {
    let bytes = path.as_bytes();
    let lower_at = |i: usize| {
        bytes[i] == b'%'
            && bytes.get(i + 1..i + 3).is_some_and(|hex| {
                hex.iter().all(u8::is_ascii_hexdigit) && hex.iter().any(u8::is_ascii_lowercase)
            })
    };
    if !(0..bytes.len()).any(lower_at) {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if lower_at(i) {
            out.push('%');
            out.push_str(&path[i + 1..i + 3].to_ascii_uppercase());
            i += 3;
        } else {
            let next = (i + 1..bytes.len())
                .find(|&j| bytes[j] == b'%')
                .unwrap_or(bytes.len());
            out.push_str(&path[i..next]);
            i = next;
        }
    }
    Cow::Owned(out)
}
