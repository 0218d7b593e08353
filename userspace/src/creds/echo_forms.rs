//! The forms in which an upstream may give a secret back. An upstream that
//! reflects a request rarely does so byte for byte: a URL comes back
//! percent-encoded (Airlock itself percent-encodes a query credential), a
//! header inside a JSON document comes back with its quotes and
//! backslashes escaped, and some encoders escape more (`\/`, `\u003c`).
//! The scrubber looks for each of these forms, as the encoders of the
//! common web stacks write them, and puts the placeholder back for any of
//! them (a placeholder is made of characters no encoder changes).
//!
//! Encoders are applied whole, one at a time, rather than every mix of
//! them: a mix (part of a secret encoded one way, part another) does not
//! come out of one serializer. The one mix kept is Airlock's own query
//! encoding applied twice, which a URL inside another URL gets.

use zeroize::Zeroizing;

use crate::secret::Secret;

#[derive(Clone, Copy)]
enum Case {
    Upper,
    Lower,
}

impl Case {
    fn digit(self, nibble: u8) -> u8 {
        let digits = match self {
            Case::Upper => b"0123456789ABCDEF",
            Case::Lower => b"0123456789abcdef",
        };
        digits[usize::from(nibble & 0xf)]
    }
}

#[derive(Clone, Copy)]
enum Encoder {
    /// `%XX` for every byte but the unreserved ones and `keep`; a space as
    /// `+` when `plus` (form encoding); `~` too when `tilde`, as encoders
    /// older than RFC 3986 do.
    Percent {
        keep: &'static [u8],
        case: Case,
        plus: bool,
        tilde: bool,
    },
    /// A JSON string's contents: `"` and `\` escaped, control characters
    /// as `\n` or `\u00XX`, `/` as `\/` when `slash`, the bytes of
    /// `unicode` as `\u00XX`, and, when `ascii`, every character past
    /// ASCII as `\uXXXX` (two of them, a surrogate pair, past U+FFFF).
    Json {
        slash: bool,
        unicode: &'static [u8],
        ascii: bool,
        case: Case,
    },
}

/// The encoders of the common stacks, each once.
const ENCODERS: [Encoder; 14] = [
    // Airlock's own query encoding; Python quote(safe=''), Go
    // PathEscape, curl --data-urlencode.
    Encoder::Percent {
        keep: b"",
        case: Case::Upper,
        plus: false,
        tilde: false,
    },
    Encoder::Percent {
        keep: b"",
        case: Case::Lower,
        plus: false,
        tilde: false,
    },
    // Python quote() with its default safe='/'.
    Encoder::Percent {
        keep: b"/",
        case: Case::Upper,
        plus: false,
        tilde: false,
    },
    // JavaScript encodeURIComponent.
    Encoder::Percent {
        keep: b"!'()*",
        case: Case::Upper,
        plus: false,
        tilde: false,
    },
    // JavaScript encodeURI, which leaves a URL's delimiters alone.
    Encoder::Percent {
        keep: b"!#$&'()*+,/:;=?@",
        case: Case::Upper,
        plus: false,
        tilde: false,
    },
    // Form encoding: Python quote_plus, Go QueryEscape.
    Encoder::Percent {
        keep: b"",
        case: Case::Upper,
        plus: true,
        tilde: false,
    },
    // Java URLEncoder.
    Encoder::Percent {
        keep: b"*",
        case: Case::Upper,
        plus: true,
        tilde: true,
    },
    // PHP urlencode and http_build_query.
    Encoder::Percent {
        keep: b"",
        case: Case::Upper,
        plus: true,
        tilde: true,
    },
    // .NET HttpUtility.UrlEncode.
    Encoder::Percent {
        keep: b"!()*",
        case: Case::Lower,
        plus: true,
        tilde: true,
    },
    // JavaScript JSON.stringify, serde_json, Jackson.
    Encoder::Json {
        slash: false,
        unicode: b"",
        ascii: false,
        case: Case::Lower,
    },
    // Python json (ensure_ascii by default).
    Encoder::Json {
        slash: false,
        unicode: b"",
        ascii: true,
        case: Case::Lower,
    },
    // PHP json_encode.
    Encoder::Json {
        slash: true,
        unicode: b"",
        ascii: true,
        case: Case::Lower,
    },
    // Go encoding/json, Rails: HTML-safe.
    Encoder::Json {
        slash: false,
        unicode: b"<>&",
        ascii: false,
        case: Case::Lower,
    },
    // .NET System.Text.Json's default encoder.
    Encoder::Json {
        slash: false,
        unicode: b"\"&'+<>`",
        ascii: true,
        case: Case::Upper,
    },
];

/// Every form of `secret` the encoders above give that differs from the
/// secret itself, each once.
pub fn echo_forms(secret: &[u8]) -> Vec<Secret> {
    let mut forms: Vec<Secret> = Vec::new();
    let mut add = |mut form: Zeroizing<Vec<u8>>| {
        if form.as_slice() != secret && !forms.iter().any(|f| f.expose() == form.as_slice()) {
            forms.push(Secret::new(std::mem::take(&mut *form)));
        }
    };
    for encoder in ENCODERS {
        if let Some(form) = encoder.encode(secret) {
            add(form);
        }
    }
    // The one mix: a URL that carried the secret as Airlock sends it in a
    // query, itself encoded into another URL (a login page's return
    // address, a redirect's `next`), comes back encoded twice.
    if let Some(twice) = ENCODERS[0]
        .encode(secret)
        .and_then(|once| ENCODERS[0].encode(&once))
    {
        add(twice);
    }
    forms
}

impl Encoder {
    /// None when the encoder does not apply: `\uXXXX` escapes need text,
    /// and a secret that is not UTF-8 is not.
    fn encode(self, secret: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        // Six bytes is the longest form of one byte (`\u00XX`, or a
        // two-byte character's `\uXXXX`; a four-byte one becomes twelve):
        // the buffer never grows, so no unzeroized copy is left behind.
        let mut out = Zeroizing::new(Vec::with_capacity(secret.len() * 6));
        if let Encoder::Json {
            slash,
            unicode,
            ascii: true,
            case,
        } = self
            && !secret.is_ascii()
        {
            let text = std::str::from_utf8(secret).ok()?;
            let ascii_part = Encoder::Json {
                slash,
                unicode,
                ascii: false,
                case,
            };
            let mut units = [0u16; 2];
            let mut one = [0u8; 4];
            for c in text.chars() {
                if c.is_ascii() {
                    out.extend_from_slice(&ascii_part.encode(c.encode_utf8(&mut one).as_bytes())?);
                    continue;
                }
                for unit in c.encode_utf16(&mut units).iter() {
                    let [hi, lo] = unit.to_be_bytes();
                    out.extend_from_slice(&[
                        b'\\',
                        b'u',
                        case.digit(hi >> 4),
                        case.digit(hi),
                        case.digit(lo >> 4),
                        case.digit(lo),
                    ]);
                }
            }
            return Some(out);
        }
        for &b in secret {
            match self {
                Encoder::Percent {
                    keep,
                    case,
                    plus,
                    tilde,
                } => {
                    if b.is_ascii_alphanumeric()
                        || b"-._".contains(&b)
                        || (b == b'~' && !tilde)
                        || keep.contains(&b)
                    {
                        out.push(b);
                    } else if plus && b == b' ' {
                        out.push(b'+');
                    } else {
                        out.extend_from_slice(&[b'%', case.digit(b >> 4), case.digit(b)]);
                    }
                }
                Encoder::Json {
                    slash,
                    unicode,
                    case,
                    ..
                } => match b {
                    _ if unicode.contains(&b) || (b < 0x20 && short_escape(b).is_none()) => {
                        out.extend_from_slice(&[
                            b'\\',
                            b'u',
                            b'0',
                            b'0',
                            case.digit(b >> 4),
                            case.digit(b),
                        ]);
                    }
                    b'"' | b'\\' => out.extend_from_slice(&[b'\\', b]),
                    b'/' if slash => out.extend_from_slice(b"\\/"),
                    _ => match short_escape(b) {
                        Some(letter) => out.extend_from_slice(&[b'\\', letter]),
                        None => out.push(b),
                    },
                },
            }
        }
        Some(out)
    }
}

/// JSON's two-character escapes for control characters.
fn short_escape(b: u8) -> Option<u8> {
    match b {
        0x08 => Some(b'b'),
        0x0c => Some(b'f'),
        b'\n' => Some(b'n'),
        b'\r' => Some(b'r'),
        b'\t' => Some(b't'),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forms(secret: &str) -> Vec<String> {
        echo_forms(secret.as_bytes())
            .iter()
            .map(|f| String::from_utf8(f.expose().to_vec()).expect("ascii"))
            .collect()
    }

    #[test]
    fn a_secret_no_encoder_changes_has_no_other_form() {
        assert!(forms("tok_0123456789abcdefABCDEF-x.y_z").is_empty());
    }

    /// RFC 3986 leaves `~` alone; Java's URLEncoder, PHP's urlencode and
    /// .NET's HttpUtility.UrlEncode, older, encode it (Azure's client
    /// secrets hold one).
    #[test]
    fn a_query_secret_inside_an_encoded_url_is_a_form() {
        assert!(
            forms("ab+c/d=").contains(&"ab%252Bc%252Fd%253D".to_owned()),
            "{:?}",
            forms("ab+c/d=")
        );
    }

    #[test]
    fn a_tilde_is_encoded_as_the_older_encoders_do() {
        let all = forms("Ab1~x.y z");
        for expected in [
            "Ab1%7Ex.y+z", // URLEncoder, urlencode
            "Ab1%7ex.y+z", // HttpUtility.UrlEncode
            "Ab1~x.y+z",   // quote_plus, QueryEscape
            "Ab1~x.y%20z", // Airlock's query encoding
        ] {
            assert!(
                all.contains(&expected.to_owned()),
                "{expected} not in {all:?}"
            );
        }
    }

    #[test]
    fn percent_forms_are_those_of_the_common_encoders() {
        let all = forms("a+b/c d*");
        for expected in [
            "a%2Bb%2Fc%20d%2A", // Airlock's query encoding
            "a%2bb%2fc%20d%2a", // lower case
            "a%2Bb/c%20d%2A",   // Python quote()
            "a%2Bb%2Fc%20d*",   // encodeURIComponent
            "a+b/c%20d*",       // encodeURI
            "a%2Bb%2Fc+d%2A",   // quote_plus
            "a%2Bb%2Fc+d*",     // URLEncoder
        ] {
            assert!(
                all.contains(&expected.to_owned()),
                "{expected} not in {all:?}"
            );
        }
    }

    #[test]
    fn json_forms_are_those_of_the_common_serializers() {
        let secret = "q\"b\\s/l<g>a&p'+t\n";
        let all = forms(secret);
        // What serde_json writes is one of them.
        let json = serde_json::to_string(secret).expect("json");
        assert!(all.contains(&json[1..json.len() - 1].to_owned()), "{all:?}");
        for expected in [
            r#"q\"b\\s\/l<g>a&p'+t\n"#,                             // PHP
            r#"q\"b\\s/l\u003cg\u003ea\u0026p'+t\n"#,               // Go
            r#"q\u0022b\\s/l\u003Cg\u003Ea\u0026p\u0027\u002Bt\n"#, // .NET
        ] {
            assert!(
                all.contains(&expected.to_owned()),
                "{expected} not in {all:?}"
            );
        }
        let control = forms("a\u{1}b");
        assert!(control.contains(&r"a\u0001b".to_owned()), "{control:?}");
    }

    #[test]
    fn characters_past_ascii_are_escaped_as_python_and_dotnet_do() {
        let all = forms("pässwörd-𝄞");
        // Python's json.dumps, ensure_ascii as by default.
        assert!(
            all.contains(&r"p\u00e4ssw\u00f6rd-\ud834\udd1e".to_owned()),
            "{all:?}"
        );
        assert!(
            all.contains(&r"p\u00E4ssw\u00F6rd-\uD834\uDD1E".to_owned()),
            "{all:?}"
        );
        // Percent-encoding works on the UTF-8 bytes.
        assert!(
            all.contains(&"p%C3%A4ssw%C3%B6rd-%F0%9D%84%9E".to_owned()),
            "{all:?}"
        );
        // Bytes that are not UTF-8 get the forms that need no characters.
        let raw = echo_forms(b"a\xffb/c");
        assert!(raw.iter().any(|f| f.expose() == b"a%FFb%2Fc"));
    }

    #[test]
    fn each_form_is_listed_once() {
        let all = forms("a/b");
        let mut unique = all.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(all.len(), unique.len(), "{all:?}");
        assert!(!all.contains(&"a/b".to_owned()));
    }
}
