//! A secret value that is wiped from memory when dropped and never printed.

use std::fmt;

use zeroize::Zeroizing;

/// A real credential. The bytes are zeroized on drop (clones included), and
/// `Debug`/`Display` print `Secret(***)` so a stray `{:?}` in a log line or an
/// error cannot leak it. The only way to the bytes is [`Secret::expose`], which
/// makes every use easy to find in review.
///
/// Deliberately not `Serialize`: persisting a secret must go through code that
/// encrypts it.
#[derive(Clone)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    /// Takes ownership of `value` without copying it, so no unzeroized copy
    /// is left behind by the conversion itself.
    pub fn new(value: Vec<u8>) -> Secret {
        Secret(Zeroizing::new(value))
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::Secret;

    const VALUE: &str = "test-value-0123456789abcdef";

    #[test]
    fn debug_and_display_are_redacted() {
        let secret = Secret::new(VALUE.as_bytes().to_vec());
        for shown in [
            format!("{secret:?}"),
            format!("{secret:#?}"),
            format!("{secret}"),
            format!("{:?}", Some(&secret)),
            format!("{:?}", vec![secret.clone()]),
        ] {
            assert!(!shown.contains(VALUE), "leaked in {shown:?}");
            assert!(!shown.contains("0123456789"), "leaked in {shown:?}");
            assert!(shown.contains("Secret(***)"), "unexpected form {shown:?}");
        }
    }

    #[test]
    fn expose_len_and_clone_keep_the_bytes() {
        let secret = Secret::new(VALUE.as_bytes().to_vec());
        assert_eq!(secret.expose(), VALUE.as_bytes());
        assert_eq!(secret.len(), VALUE.len());
        assert!(!secret.is_empty());
        let copy = secret.clone();
        drop(secret);
        assert_eq!(copy.expose(), VALUE.as_bytes());

        let empty = Secret::new(Vec::new());
        assert!(empty.is_empty());
        assert_eq!(empty.len(), 0);
    }
}
