//! A secret as it lies inside base64 text that holds it among other bytes:
//! a Basic value (`user:secret`) or a git credential, sent once under a
//! rule and kept by the upstream in a request log, later read back by a
//! request that carries nothing. Airlock does not know the bytes around it
//! then (the user name is the agent's to choose), so the secret is looked
//! for at each of the three alignments base64 can put it at, as the
//! characters that depend on its bytes alone.

use base64::Engine as _;
use zeroize::Zeroizing;

use crate::secret::Secret;

/// Shorter runs would be matched by chance in unrelated base64 (images,
/// keys), and say little of the secret.
const SHORTEST: usize = 8;

/// Each alignment's run of `secret`, paired with `placeholder`'s run at the
/// same alignment (the agent decodes the placeholder where the secret
/// was, with the bytes at its edges garbled), in the standard and the
/// URL-safe alphabets.
pub fn base64_forms(secret: &[u8], placeholder: &[u8]) -> Vec<(Secret, Vec<u8>)> {
    let mut forms: Vec<(Secret, Vec<u8>)> = Vec::new();
    for lead in 0..3 {
        for engine in [
            &base64::engine::general_purpose::STANDARD_NO_PAD,
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ] {
            let Some(form) = run(engine, secret, lead) else {
                continue;
            };
            if form.len() < SHORTEST || forms.iter().any(|(f, _)| f.expose() == form.as_slice()) {
                continue;
            }
            let stand_in = run(engine, placeholder, lead)
                .map(|p| p.to_vec())
                .unwrap_or_default();
            forms.push((Secret::new(form.to_vec()), stand_in));
        }
    }
    forms
}

/// The characters of `base64(lead bytes ++ bytes ++ …)` that depend on
/// `bytes` alone: whole 3-byte groups, less the characters that hold bits
/// of the leading bytes (2 after one byte, 3 after two).
fn run(
    engine: &base64::engine::GeneralPurpose,
    bytes: &[u8],
    lead: usize,
) -> Option<Zeroizing<Vec<u8>>> {
    let mut input = Zeroizing::new(Vec::with_capacity(lead + bytes.len()));
    input.resize(lead, 0);
    input.extend_from_slice(bytes);
    let whole = input.len() / 3 * 3;
    let skip = [0, 2, 3][lead];
    let encoded = Zeroizing::new(engine.encode(&input[..whole]).into_bytes());
    (encoded.len() > skip).then(|| Zeroizing::new(encoded[skip..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn the_secret_is_found_whatever_precedes_it() {
        let secret = b"s3cr3t-Value-0123456789abcdef";
        let forms = base64_forms(secret, b"airlock-ph-api-token");
        for user in ["", "a", "ab", "bot", "agent-7", "x-access-token"] {
            let encoded = b64(&[user.as_bytes(), b":", secret].concat());
            assert!(
                forms.iter().any(|(form, _)| encoded
                    .as_bytes()
                    .windows(form.len())
                    .any(|w| w == form.expose())),
                "user {user:?}"
            );
        }
    }

    #[test]
    fn the_stand_in_decodes_to_the_placeholder_where_the_secret_was() {
        let (secret, placeholder) = (b"s3cr3t-Value-0123456789abcdef", b"airlock-ph-api-token");
        let encoded = b64(&[b"bot:".as_slice(), secret].concat());
        let (form, stand_in) = base64_forms(secret, placeholder)
            .into_iter()
            .find(|(form, _)| encoded.contains(std::str::from_utf8(form.expose()).expect("ascii")))
            .expect("a form of the Basic value");
        let scrubbed = encoded.replace(
            std::str::from_utf8(form.expose()).expect("ascii"),
            std::str::from_utf8(&stand_in).expect("ascii"),
        );
        let decoded = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(scrubbed.trim_end_matches('='))
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&decoded);
        assert!(text.contains("ph-api-tok"), "{text}");
        assert!(!text.contains("Value-0123"), "{text}");
    }

    #[test]
    fn short_secrets_have_no_base64_form() {
        assert!(base64_forms(b"abc", b"airlock-ph-x").is_empty());
        assert!(base64_forms(b"", b"airlock-ph-x").is_empty());
    }
}
