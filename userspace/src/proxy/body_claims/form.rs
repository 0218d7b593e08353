//! A form body (`a=1&_method=DELETE`), read as PHP and Rack read one:
//! pairs split at `&` (and at `;`, as Rack did), names and values
//! percent-decoded with `+` as a space.

use memchr::memchr2;

use super::{MAX_VALUE, NameIs, UNREADABLE, claim, hex, names_method};

/// Longest name kept: past it, a name cannot be `_method`.
const MAX_NAME: usize = 32;

#[derive(Default)]
pub struct Form {
    /// The pair's name so far, decoded, leading spaces dropped.
    name: Vec<u8>,
    name_too_long: bool,
    /// Past the pair's `=`.
    in_value: bool,
    /// The value so far, when the name is `_method`.
    value: Option<Vec<u8>>,
    /// A value no framework reads a method from, skipped to its end.
    skipping: bool,
    /// An escape begun (`%`, `%4`) in an earlier piece.
    escape: Vec<u8>,
    claims: Vec<String>,
}

impl Form {
    pub fn feed(&mut self, bytes: &[u8]) {
        let mut at = 0;
        while at < bytes.len() {
            if self.skipping {
                match memchr2(b'&', b';', &bytes[at..]) {
                    Some(to) => at += to,
                    None => return,
                }
            }
            let byte = bytes[at];
            at += 1;
            match byte {
                b'&' | b';' => self.end_pair(),
                b'=' if !self.in_value => self.end_name(),
                _ => self.raw(byte),
            }
        }
    }

    pub fn finish(mut self) -> Vec<String> {
        self.end_pair();
        self.claims
    }

    /// One byte as written, through the percent-decoder. An escape that
    /// is not one (`%zz`) stands as written, as both frameworks read it.
    fn raw(&mut self, byte: u8) {
        if !self.escape.is_empty() {
            if hex(byte).is_some() {
                self.escape.push(byte);
                if let [b'%', high, low] = self.escape[..] {
                    self.escape.clear();
                    if let (Some(high), Some(low)) = (hex(high), hex(low)) {
                        self.decoded(high << 4 | low);
                    }
                }
                return;
            }
            self.flush_escape();
        }
        match byte {
            b'%' => self.escape.push(byte),
            b'+' => self.decoded(b' '),
            _ => self.decoded(byte),
        }
    }

    fn flush_escape(&mut self) {
        for byte in std::mem::take(&mut self.escape) {
            self.decoded(byte);
        }
    }

    fn decoded(&mut self, byte: u8) {
        if self.in_value {
            if let Some(value) = &mut self.value
                && value.len() <= MAX_VALUE
            {
                value.push(byte);
            }
        } else if self.name.len() >= MAX_NAME {
            self.name_too_long = true;
        } else if !(self.name.is_empty() && byte == b' ') {
            self.name.push(byte);
        }
    }

    fn end_name(&mut self) {
        self.flush_escape();
        self.in_value = true;
        match (!self.name_too_long)
            .then(|| names_method(&self.name))
            .flatten()
        {
            Some(NameIs::Method) => self.value = Some(Vec::new()),
            Some(NameIs::MethodArray) => {
                self.claims.push(UNREADABLE.to_owned());
                self.skipping = true;
            }
            None => self.skipping = true,
        }
    }

    fn end_pair(&mut self) {
        self.flush_escape();
        if let Some(value) = self.value.take() {
            self.claims.push(claim(&value, value.len() <= MAX_VALUE));
        }
        self.name.clear();
        self.name_too_long = false;
        self.in_value = false;
        self.skipping = false;
    }
}
