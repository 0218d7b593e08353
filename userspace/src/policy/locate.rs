//! Line and column of a node in the policy source.
//!
//! serde_yaml keeps no spans on success, but it does attach the position of
//! the node being visited to any error a visitor raises there. So to find a
//! node we walk the document again with a visitor that follows a key/index
//! path and raises a marker error on arrival; the error's location is the
//! node's. This reuses the real YAML parser (flow style, quoting, anchors and
//! multi-line scalars all come out right) instead of scanning text, and it
//! only runs when there is a problem to report.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::schema::{CREDENTIAL_KEYS, DENY_KEYS, RULE_KEYS, TOP_KEYS};

/// Raised on arrival; cannot come from user input because serde_yaml never
/// puts scalar contents into its own error messages.
const MARKER: &str = "\u{0}airlock-policy-locate\u{0}";

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Seg {
    /// The `nth` (0-based) occurrence of a key: a duplicated key's second
    /// occurrence is `nth == 1`.
    Key {
        name: String,
        nth: usize,
    },
    Index(usize),
}

/// Where a problem is: a path from the document root; `at_key` points at the
/// last mapping key itself rather than at its value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct NodePath {
    segs: Vec<Seg>,
    at_key: bool,
}

impl NodePath {
    pub(super) fn root() -> Self {
        Self::default()
    }

    pub(super) fn key(&self, key: &str) -> Self {
        let mut next = self.clone();
        next.segs.push(Seg::Key {
            name: key.to_owned(),
            nth: 0,
        });
        next
    }

    fn nth_key(&self, key: &str, nth: usize) -> Self {
        let mut next = self.clone();
        next.segs.push(Seg::Key {
            name: key.to_owned(),
            nth,
        });
        next
    }

    pub(super) fn index(&self, index: usize) -> Self {
        let mut next = self.clone();
        next.segs.push(Seg::Index(index));
        next
    }

    /// The key of the last segment instead of its value.
    pub(super) fn the_key(mut self) -> Self {
        self.at_key = matches!(self.segs.last(), Some(Seg::Key { .. }));
        self
    }
}

/// 1-based line and column of `path` in `text`. Falls back to the nearest
/// ancestor that can be found, then to 1:1, so that a problem is always
/// reported somewhere sensible.
pub(super) fn locate(text: &str, path: &NodePath) -> (usize, usize) {
    if let Some(found) = try_locate(text, &path.segs, path.at_key) {
        return found;
    }
    for len in (0..path.segs.len()).rev() {
        if let Some(found) = try_locate(text, &path.segs[..len], false) {
            return found;
        }
    }
    (1, 1)
}

fn try_locate(text: &str, segs: &[Seg], at_key: bool) -> Option<(usize, usize)> {
    let deserializer = serde_yaml::Deserializer::from_str(text);
    match (Locate { segs, at_key }).deserialize(deserializer) {
        Err(error) if error.to_string().contains(MARKER) => error
            .location()
            .map(|location| (location.line(), location.column())),
        _ => None,
    }
}

fn arrived<E: de::Error>() -> E {
    E::custom(MARKER)
}

struct Locate<'p> {
    segs: &'p [Seg],
    at_key: bool,
}

impl<'de> DeserializeSeed<'de> for Locate<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl Locate<'_> {
    fn leaf<E: de::Error>(&self) -> Result<(), E> {
        if self.segs.is_empty() {
            Err(arrived())
        } else {
            // The path goes deeper than a scalar: not found.
            Ok(())
        }
    }
}

impl<'de> Visitor<'de> for Locate<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML node")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.leaf()
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.leaf()
    }
    fn visit_i128<E: de::Error>(self, _: i128) -> Result<(), E> {
        self.leaf()
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.leaf()
    }
    fn visit_u128<E: de::Error>(self, _: u128) -> Result<(), E> {
        self.leaf()
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.leaf()
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.leaf()
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.leaf()
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.leaf()
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        // A `!tag`ged node: policies have none, so only its start is known.
        Err(arrived())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((first, rest)) = self.segs.split_first() else {
            return Err(arrived());
        };
        let Seg::Index(want) = first else {
            return Ok(());
        };
        for _ in 0..*want {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(());
            }
        }
        seq.next_element_seed(Locate {
            segs: rest,
            at_key: self.at_key,
        })?;
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((first, rest)) = self.segs.split_first() else {
            return Err(arrived());
        };
        let Seg::Key { name: want, nth } = first else {
            return Ok(());
        };
        let stop_on_key = self.at_key && rest.is_empty();
        let mut seen = 0;
        while let Some(found) = map.next_key_seed(KeyIs {
            want,
            stop: stop_on_key && seen == *nth,
        })? {
            if found {
                if seen == *nth {
                    return map.next_value_seed(Locate {
                        segs: rest,
                        at_key: self.at_key,
                    });
                }
                seen += 1;
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }
}

/// Reads a mapping key; `true` when it is `want`. With `stop`, arriving at
/// `want` raises the marker so the key's own position is reported.
struct KeyIs<'a> {
    want: &'a str,
    stop: bool,
}

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a mapping key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<bool, E> {
        if key != self.want {
            Ok(false)
        } else if self.stop {
            Err(arrived())
        } else {
            Ok(true)
        }
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(false)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(false)
    }
}

/// A key problem found by `key_problems`; `path` points at the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct KeyProblem {
    pub path: NodePath,
    pub key: String,
    pub kind: KeyProblemKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum KeyProblemKind {
    /// Not a key of this mapping; `valid` lists the ones that are.
    Unknown { valid: &'static [&'static str] },
    /// Given a second (or later) time in the same mapping.
    Duplicate,
}

/// Every unknown or repeated key in the document. serde stops at the first
/// one (and places a repeated key at its mapping's start); this walk lets a
/// file with several typos be fixed in one round. Nodes of the wrong shape
/// are skipped (serde reports those), and a YAML syntax error simply ends
/// the walk with what was found so far.
pub(super) fn key_problems(text: &str) -> Vec<KeyProblem> {
    let mut found = Vec::new();
    let deserializer = serde_yaml::Deserializer::from_str(text);
    let _ = Walk {
        shape: Shape::Top,
        path: NodePath::root(),
        found: &mut found,
    }
    .deserialize(deserializer);
    found
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Top,
    Rules,
    Rule,
    Denies,
    Deny,
    Credentials,
    Credential,
    /// Free-form (env) or scalar: nothing to check below.
    Opaque,
}

impl Shape {
    fn keys(self) -> &'static [&'static str] {
        match self {
            Shape::Top => TOP_KEYS,
            Shape::Rule => RULE_KEYS,
            Shape::Deny => DENY_KEYS,
            Shape::Credential => CREDENTIAL_KEYS,
            Shape::Rules | Shape::Denies | Shape::Credentials | Shape::Opaque => &[],
        }
    }

    fn child(self, key: &str) -> Shape {
        match (self, key) {
            (Shape::Top, "rules") => Shape::Rules,
            (Shape::Top, "deny") => Shape::Denies,
            (Shape::Rule, "credentials") => Shape::Credentials,
            _ => Shape::Opaque,
        }
    }

    fn element(self) -> Shape {
        match self {
            Shape::Rules => Shape::Rule,
            Shape::Denies => Shape::Deny,
            Shape::Credentials => Shape::Credential,
            _ => Shape::Opaque,
        }
    }
}

struct Walk<'a> {
    shape: Shape,
    path: NodePath,
    found: &'a mut Vec<KeyProblem>,
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        if self.shape == Shape::Opaque {
            return IgnoredAny::deserialize(deserializer).map(|_| ());
        }
        deserializer.deserialize_any(self)
    }
}

use serde::Deserialize as _;

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML node")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let element = self.shape.element();
        let mut index = 0;
        loop {
            let seed = Walk {
                shape: element,
                path: self.path.index(index),
                found: &mut *self.found,
            };
            if seq.next_element_seed(seed)?.is_none() {
                return Ok(());
            }
            index += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let valid = self.shape.keys();
        if valid.is_empty() {
            // A mapping where a list belongs: serde reports the shape.
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            return Ok(());
        }
        let mut seen: Vec<String> = Vec::new();
        while let Some(key) = map.next_key::<Option<String>>()? {
            let key = key.unwrap_or_default();
            let earlier = seen.iter().filter(|k| **k == key).count();
            seen.push(key.clone());
            if earlier > 0 {
                self.found.push(KeyProblem {
                    path: self.path.nth_key(&key, earlier).the_key(),
                    key,
                    kind: KeyProblemKind::Duplicate,
                });
                map.next_value::<IgnoredAny>()?;
            } else if valid.contains(&key.as_str()) {
                map.next_value_seed(Walk {
                    shape: self.shape.child(&key),
                    path: self.path.key(&key),
                    found: &mut *self.found,
                })?;
            } else {
                self.found.push(KeyProblem {
                    path: self.path.key(&key).the_key(),
                    key,
                    kind: KeyProblemKind::Unknown { valid },
                });
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}
