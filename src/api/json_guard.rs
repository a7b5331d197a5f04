//! Rejects JSON objects with a repeated key. RFC 8259 leaves their meaning
//! open and parsers disagree (first wins, last wins), which lets a proxy and
//! a backend read different values from one body; an admin API should not
//! guess.

use std::{collections::HashSet, fmt};

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// The first repeated key in `body`, as an error message, or `None` when
/// there is none or the body is not valid JSON (the normal parser reports that).
pub fn duplicate_key(body: &[u8]) -> Option<String> {
    let mut de = serde_json::Deserializer::from_slice(body);
    match Walk::deserialize(&mut de) {
        Err(e) if e.is_data() => Some(e.to_string()),
        _ => None,
    }
}

struct Walk;

impl<'de> Deserialize<'de> for Walk {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(WalkVisitor)
    }
}

struct WalkVisitor;

impl<'de> Visitor<'de> for WalkVisitor {
    type Value = Walk;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Walk, E> {
        Ok(Walk)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Walk, E> {
        Ok(Walk)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Walk, E> {
        Ok(Walk)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Walk, E> {
        Ok(Walk)
    }
    fn visit_str<E>(self, _: &str) -> Result<Walk, E> {
        Ok(Walk)
    }
    fn visit_unit<E>(self) -> Result<Walk, E> {
        Ok(Walk)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Walk, A::Error> {
        while seq.next_element::<Walk>()?.is_some() {}
        Ok(Walk)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Walk, A::Error> {
        let mut keys = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if keys.contains(&key) {
                return Err(de::Error::custom(format!(
                    "duplicate field `{}`",
                    crate::model::truncate(&key)
                )));
            }
            map.next_value::<Walk>()?;
            keys.insert(key);
        }
        Ok(Walk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_repeated_keys_at_any_depth() {
        assert!(duplicate_key(br#"{"a":1,"b":2}"#).is_none());
        assert!(duplicate_key(br#"{"a":1,"a":2}"#)
            .unwrap()
            .contains("duplicate field `a`"));
        assert!(duplicate_key(br#"{"x":{"a":1,"a":2}}"#).is_some());
        assert!(duplicate_key(br#"[{"a":1},{"a":2}]"#).is_none());
        assert!(
            duplicate_key(br#"{"a":"#).is_none(),
            "malformed JSON is left to the parser"
        );
    }
}
