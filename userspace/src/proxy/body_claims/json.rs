//! A JSON body, read for `"_method"` keys of the top-level object, as
//! Laravel reads its JSON input. Strings are unescaped (`\u005f` is `_`);
//! a value that is not a string is claimed as unreadable.

use memchr::memchr2;

use super::{MAX_VALUE, UNREADABLE, claim, hex};

#[derive(Default)]
pub struct Json {
    /// Objects and arrays open around the current position.
    depth: usize,
    string: Option<Text>,
    /// The last token was a top-level `"_method"` string: a `:` next makes
    /// it a key.
    method_key: bool,
    /// Past a `_method` key's `:`: the next token is its value.
    awaiting_value: bool,
    claims: Vec<String>,
}

/// A string being read, and whether it is a `_method` key's value.
#[derive(Default)]
struct Text {
    bytes: Vec<u8>,
    too_long: bool,
    /// Only strings that may be a top-level key or a claim are kept.
    kept: bool,
    is_value: bool,
    escape: Escape,
}

#[derive(Default, PartialEq, Eq)]
enum Escape {
    #[default]
    None,
    /// After `\`.
    Begun,
    /// After `\u` and this many hex digits, and their value so far.
    Unicode(u8, u32),
}

impl Text {
    fn push(&mut self, bytes: &[u8]) {
        if !self.kept {
            return;
        }
        if self.bytes.len() + bytes.len() > MAX_VALUE {
            self.too_long = true;
        } else {
            self.bytes.extend_from_slice(bytes);
        }
    }
}

impl Json {
    pub fn feed(&mut self, bytes: &[u8]) {
        let mut at = 0;
        while at < bytes.len() {
            if let Some(text) = &mut self.string {
                at += read_string(text, &bytes[at..]);
                if text.escape == Escape::None && at < bytes.len() && bytes[at] == b'"' {
                    at += 1;
                    self.end_string();
                }
                continue;
            }
            let byte = bytes[at];
            at += 1;
            if matches!(byte, b' ' | b'\t' | b'\n' | b'\r') {
                continue;
            }
            let is_value = std::mem::take(&mut self.awaiting_value);
            if is_value && byte != b'"' {
                self.claims.push(UNREADABLE.to_owned());
            }
            let method_key = std::mem::take(&mut self.method_key);
            match byte {
                b'"' => {
                    self.string = Some(Text {
                        kept: is_value || self.depth == 1,
                        is_value,
                        ..Text::default()
                    });
                }
                b':' if method_key => self.awaiting_value = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => self.depth = self.depth.saturating_sub(1),
                _ => {}
            }
        }
    }

    pub fn finish(mut self) -> Vec<String> {
        if let Some(text) = self.string.take()
            && text.is_value
        {
            self.claims.push(UNREADABLE.to_owned());
        }
        if self.awaiting_value {
            self.claims.push(UNREADABLE.to_owned());
        }
        self.claims
    }

    fn end_string(&mut self) {
        let Some(text) = self.string.take() else {
            return;
        };
        if text.is_value {
            self.claims.push(claim(&text.bytes, !text.too_long));
        } else {
            self.method_key = self.depth == 1 && !text.too_long && text.bytes == b"_method";
        }
    }
}

/// Reads a string's bytes up to (not past) its closing quote; returns how
/// many bytes it took.
fn read_string(text: &mut Text, bytes: &[u8]) -> usize {
    let mut at = 0;
    while at < bytes.len() {
        match text.escape {
            Escape::None => {
                let Some(to) = memchr2(b'"', b'\\', &bytes[at..]) else {
                    text.push(&bytes[at..]);
                    return bytes.len();
                };
                text.push(&bytes[at..at + to]);
                at += to;
                if bytes[at] == b'"' {
                    return at;
                }
                at += 1;
                text.escape = Escape::Begun;
            }
            Escape::Begun => {
                let byte = bytes[at];
                at += 1;
                text.escape = Escape::None;
                let unescaped = match byte {
                    b'u' => {
                        text.escape = Escape::Unicode(0, 0);
                        continue;
                    }
                    b'b' => 0x08,
                    b'f' => 0x0c,
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    other => other,
                };
                text.push(&[unescaped]);
            }
            Escape::Unicode(digits, value) => {
                let byte = bytes[at];
                let Some(digit) = hex(byte) else {
                    // Not JSON; what follows is read as the string's.
                    text.escape = Escape::None;
                    continue;
                };
                at += 1;
                let value = value << 4 | u32::from(digit);
                if digits < 3 {
                    text.escape = Escape::Unicode(digits + 1, value);
                    continue;
                }
                text.escape = Escape::None;
                let ch = char::from_u32(value).unwrap_or(char::REPLACEMENT_CHARACTER);
                text.push(ch.encode_utf8(&mut [0; 4]).as_bytes());
            }
        }
    }
    at
}
