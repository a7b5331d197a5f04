//! Parsing and validating the uid batch of `POST /route/batch` in one pass over
//! the body, borrowing uids from it where they need no unescaping. Errors say
//! which uid was wrong and why.

use std::{borrow::Cow, cell::RefCell, fmt};

use poem::http::StatusCode;
use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};

use super::error::ApiError;
use crate::config::Limits;

/// A parsed batch.
pub enum Uids<'a> {
    /// Every uid as it stands in the body: no escape and no character that
    /// would need one in JSON, so it can be written back as it is.
    Plain(Vec<&'a str>),
    /// Some uid had escapes (decoded here).
    Mixed(Vec<Cow<'a, str>>),
}

/// Parses `["u1","u2",...]` under `limits`.
pub fn parse_batch<'a>(body: &'a [u8], limits: &Limits) -> Result<Vec<Cow<'a, str>>, ApiError> {
    Ok(match parse_uids(body, limits)? {
        Uids::Plain(v) => v.into_iter().map(Cow::Borrowed).collect(),
        Uids::Mixed(v) => v,
    })
}

/// Parses `["u1","u2",...]` under `limits`, telling whether every uid is
/// plain (the common case, parsed in one pass without copies).
pub fn parse_uids<'a>(body: &'a [u8], limits: &Limits) -> Result<Uids<'a>, ApiError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let what = match first {
        Some(b'[') => None,
        Some(b'{') => Some("an object"),
        Some(b'"') => Some("a string"),
        Some(b'n') => Some("null"),
        Some(b't' | b'f') => Some("a boolean"),
        Some(b'-' | b'0'..=b'9') => Some("a number"),
        Some(_) => Some("not JSON"),
        None => Some("empty"),
    };
    if let Some(what) = what {
        return Err(ApiError::bad_request(
            "invalid_body",
            format!("body must be a JSON array of strings, got {what}"),
        ));
    }
    // Validate UTF-8 once for the whole body (word-at-a-time for ASCII) instead
    // of once per string inside the parser.
    let Ok(text) = std::str::from_utf8(body) else {
        return Err(ApiError::bad_request(
            "invalid_json",
            "malformed JSON: the body is not valid UTF-8",
        ));
    };
    if let Some(uids) = parse_simple(text, limits, screened(text)) {
        return Ok(Uids::Plain(uids));
    }
    let failure = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = de
        .deserialize_seq(BatchVisitor {
            limits,
            failure: &failure,
        })
        .and_then(|v| de.end().map(|_| v));
    match parsed {
        Ok(v) => Ok(Uids::Mixed(v)),
        Err(e) => Err(failure.into_inner().unwrap_or_else(|| {
            ApiError::bad_request("invalid_json", format!("malformed JSON: {e}"))
        })),
    }
}

/// The common case in one pass: an array of valid uids without escapes. Any
/// other input (escapes, other types, an invalid uid, malformed JSON, too many
/// uids) returns `None` and goes to the full parser, which also writes the
/// error message, so both paths accept and reject exactly the same bodies.
/// With `screened`, the caller has found no byte in `text` that could start
/// a control character.
fn parse_simple<'a>(text: &'a str, limits: &Limits, screened: bool) -> Option<Vec<&'a str>> {
    let b = text.as_bytes();
    let skip_ws = |mut i: usize| {
        while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
            i += 1;
        }
        i
    };
    let mut i = skip_ws(0);
    if b.get(i) != Some(&b'[') {
        return None;
    }
    i = skip_ws(i + 1);
    // One uid per comma, plus one (a vectorised count, cheaper than growing).
    // (Commas inside uids count too: at most a quarter of the body, as each
    // uid takes at least four bytes with its quotes and comma.)
    let expected = memchr::memchr_iter(b',', b).count() + 1;
    let mut out = Vec::with_capacity(expected.min(limits.max_batch).min(b.len() / 4 + 1));
    if b.get(i) == Some(&b']') {
        return (skip_ws(i + 1) == b.len()).then_some(out);
    }
    loop {
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let start = i + 1;
        // No further than a uid may reach: an unterminated or over-long
        // string is the full parser's to report, after one short look.
        let len = quote_or_backslash(&b[start..b.len().min(start + limits.max_uid_bytes + 1)])?;
        if b[start + len] != b'"'
            || len == 0
            || len > limits.max_uid_bytes
            || out.len() == limits.max_batch
        {
            return None;
        }
        // Quote and backslash are ASCII, so `start` and `start + len` are
        // character boundaries of the validated text.
        let uid = &text[start..start + len];
        if !screened && maybe_control(uid) && has_control(uid) {
            return None;
        }
        out.push(uid);
        i = skip_ws(start + len + 1);
        match b.get(i) {
            Some(b',') => i = skip_ws(i + 1),
            Some(b']') => return (skip_ws(i + 1) == b.len()).then_some(out),
            _ => return None,
        }
    }
}

/// One vectorised pass over a whole body: true when it holds no byte that
/// could start a control character (compact JSON of ASCII uids has none),
/// so that no uid needs the per-uid check. Whitespace around the array (a
/// final newline, most often) holds no uid and is left out.
fn screened(text: &str) -> bool {
    !maybe_control(text.trim_ascii())
}

/// The position of the first `"` or `\` in `b`. Eight bytes at a time in a
/// general register: uids are short (a vector search spends more on its
/// set-up than on the search), and this runs once per uid.
#[inline]
fn quote_or_backslash(b: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // High bit of each byte of `x` that is zero. A borrow can only mark a
    // byte above a zero one, so the lowest mark is exact.
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let mut at = 0;
    while let Some(word) = b.get(at..at + 8) {
        let x = u64::from_le_bytes(word.try_into().unwrap_or([0; 8]));
        let hits = zero(x ^ (ONES * u64::from(b'"'))) | zero(x ^ (ONES * u64::from(b'\\')));
        if hits != 0 {
            return Some(at + hits.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    b[at..]
        .iter()
        .position(|&c| c == b'"' || c == b'\\')
        .map(|i| at + i)
}

/// False when `s` certainly holds no control character: one branch-free
/// (vectorised) pass; true only for ASCII controls and texts with U+0080..
/// U+00BF (lead byte 0xC2), which [`has_control`] then checks exactly.
#[inline]
fn maybe_control(s: &str) -> bool {
    let suspect = |c: u8| (c < 0x20) | (c == 0x7f) | (c == 0xc2);
    let b = s.as_bytes();
    // Whole bodies go through here: 32 byte lanes at a time, marks or-ed
    // per lane (a shape the compiler turns into vector compares), looked
    // at once at the end.
    let mut lanes = [false; 32];
    let mut chunks = b.chunks_exact(32);
    for chunk in &mut chunks {
        for (lane, &c) in lanes.iter_mut().zip(chunk) {
            *lane |= suspect(c);
        }
    }
    lanes.iter().any(|&l| l) | chunks.remainder().iter().any(|&c| suspect(c))
}

/// True when `s` holds a control character (Unicode category Cc: U+0000-U+001F,
/// U+007F-U+009F). Works on bytes: in valid UTF-8, U+0080-U+009F is exactly the
/// pair 0xC2 0x80..=0x9F, so this equals `s.chars().any(char::is_control)`
/// without decoding characters.
#[inline]
pub fn has_control(s: &str) -> bool {
    let b = s.as_bytes();
    b.iter().enumerate().any(|(i, &c)| {
        c < 0x20
            || c == 0x7f
            || (c == 0xc2 && b.get(i + 1).is_some_and(|&n| (0x80..=0x9f).contains(&n)))
    })
}

struct BatchVisitor<'l> {
    limits: &'l Limits,
    failure: &'l RefCell<Option<ApiError>>,
}

impl<'de> Visitor<'de> for BatchVisitor<'_> {
    type Value = Vec<Cow<'de, str>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON array of strings")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(16).min(self.limits.max_batch));
        loop {
            let index = out.len();
            let seed = UidSeed {
                index,
                limits: self.limits,
                failure: self.failure,
            };
            match seq.next_element_seed(seed)? {
                Some(uid) => {
                    if index == self.limits.max_batch {
                        *self.failure.borrow_mut() = Some(ApiError::new(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "batch_too_large",
                            format!("batch has more than {} uids", self.limits.max_batch),
                        ));
                        return Err(de::Error::custom("batch too large"));
                    }
                    out.push(uid);
                }
                None => return Ok(out),
            }
        }
    }
}

struct UidSeed<'l> {
    index: usize,
    limits: &'l Limits,
    failure: &'l RefCell<Option<ApiError>>,
}

impl UidSeed<'_> {
    fn fail<E: de::Error>(&self, code: &'static str, why: String) -> E {
        *self.failure.borrow_mut() = Some(ApiError::bad_request(
            code,
            format!("uid at index {} {why}", self.index),
        ));
        E::custom("invalid uid")
    }

    fn check<'de, E: de::Error>(&self, uid: Cow<'de, str>) -> Result<Cow<'de, str>, E> {
        if uid.is_empty() {
            return Err(self.fail("invalid_uid", "is empty".into()));
        }
        if uid.len() > self.limits.max_uid_bytes {
            return Err(self.fail(
                "invalid_uid",
                format!(
                    "is {} bytes, over the limit of {}",
                    uid.len(),
                    self.limits.max_uid_bytes
                ),
            ));
        }
        if has_control(&uid) {
            return Err(self.fail("invalid_uid", "contains a control character".into()));
        }
        Ok(uid)
    }

    fn wrong<E: de::Error>(&self, what: &str) -> E {
        self.fail("invalid_uid", format!("must be a string, got {what}"))
    }
}

impl<'de> DeserializeSeed<'de> for UidSeed<'_> {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        // `deserialize_any` so that every JSON type reaches a visit method and
        // the error can say what was found.
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for UidSeed<'_> {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a uid string")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        self.check(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        self.check(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        self.check(Cow::Owned(v))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Err(self.wrong("a boolean"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Err(self.wrong("a number"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Err(self.wrong("a number"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Err(self.wrong("a number"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Err(self.wrong("null"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
        Err(self.wrong("an array"))
    }
    fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
        Err(self.wrong("an object"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Vec<String>, (u16, &'static str, String)> {
        parse_batch(s.as_bytes(), &Limits::default())
            .map(|v| v.into_iter().map(|c| c.into_owned()).collect())
            .map_err(|e| (e.status.as_u16(), e.code, e.msg))
    }

    /// A uid of exactly the longest length, and one past it, at the end of
    /// the search window: the first is read in the one pass, the second is
    /// the full parser's to refuse.
    #[test]
    fn the_longest_uid_takes_the_simple_path() {
        let limits = Limits {
            max_uid_bytes: 5,
            ..Limits::default()
        };
        assert!(matches!(
            parse_uids(br#"["abcde","x"]"#, &limits),
            Ok(Uids::Plain(v)) if v == ["abcde", "x"]
        ));
        let err = parse_uids(br#"["abcdef"]"#, &limits).err().unwrap();
        assert_eq!((err.status.as_u16(), err.code), (400, "invalid_uid"));
    }

    /// The reference: serde_json, then the uid rules one by one.
    fn reference(body: &[u8], limits: &Limits) -> Option<Vec<String>> {
        let uids: Vec<String> = serde_json::from_slice(body).ok()?;
        let ok = uids.len() <= limits.max_batch
            && uids.iter().all(|u| {
                !u.is_empty() && u.len() <= limits.max_uid_bytes && !u.chars().any(char::is_control)
            });
        ok.then_some(uids)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4000))]
        /// Arrays of strings assembled from hostile pieces (controls,
        /// escapes, C1 and neighbouring characters, quotes, broken UTF-8),
        /// with whitespace and stray tokens around and between them:
        /// whatever `parse_uids` accepts, the reference accepts with the
        /// same uids, and the reverse.
        #[test]
        fn parse_uids_agrees_with_a_reference_parser(
            uids in proptest::collection::vec(
                proptest::collection::vec(proptest::sample::select(vec![
                    &b"a"[..], b"user-0001", "\u{e9}".as_bytes(), b" ", b"\n", b"\t", b"\r",
                    b"\x0c", b"\x0b", b"\x00", b"\x01", b"\x1f", b"\x7f", "\u{85}".as_bytes(),
                    "\u{9f}".as_bytes(), "\u{a0}".as_bytes(), b"\\\\", b"\\\"", b"\\u0001",
                    b"\\u00e9", b"\\n", b"\"", b",", b"]", b"\xc2", b"\xff", b"\xe2\x80",
                ]), 0..6),
                0..5,
            ),
            around in proptest::sample::select(vec![
                &b""[..], b" ", b"\n", b"\t", b"\r\n", b"\x0c", b"\x00", b",", b"]", b"x",
            ]),
            between in proptest::sample::select(vec![&b","[..], b" , ", b",\n", b",,", b""]),
            small in proptest::bool::ANY,
        ) {
            let limits = if small {
                Limits { max_batch: 3, max_uid_bytes: 5, ..Limits::default() }
            } else {
                Limits::default()
            };
            let mut body = around.to_vec();
            body.push(b'[');
            for (i, uid) in uids.iter().enumerate() {
                if i > 0 {
                    body.extend_from_slice(between);
                }
                body.push(b'"');
                body.extend(uid.iter().copied().flatten());
                body.push(b'"');
            }
            body.push(b']');
            body.extend_from_slice(around);
            let ours = parse_uids(&body, &limits)
                .ok()
                .map(|u| match u {
                    Uids::Plain(v) => v.into_iter().map(str::to_owned).collect::<Vec<_>>(),
                    Uids::Mixed(v) => v.into_iter().map(Cow::into_owned).collect(),
                });
            proptest::prop_assert_eq!(ours, reference(&body, &limits), "{:?}", String::from_utf8_lossy(&body));
        }
    }

    /// Well-formed batches of random uids (any characters, controls
    /// included, with whitespace around or between tokens) take the same
    /// decision as the reference.
    #[test]
    fn well_formed_batches_agree_with_the_reference() {
        use proptest::test_runner::TestRunner;
        let limits = Limits::default();
        let mut runner = TestRunner::default();
        let batch = proptest::collection::vec(
            proptest::string::string_regex("[a-z0-9\\x00-\\x1f\\x7f-\\xa0é\"\\\\ ]{0,12}").unwrap(),
            0..8,
        );
        let ws = proptest::sample::select(vec!["", " ", "\n", "\t", "\r\n"]);
        runner
            .run(&(batch, ws), |(uids, ws)| {
                let inner = serde_json::to_string(&uids).unwrap();
                for body in [
                    inner.clone(),
                    format!("{ws}{inner}{ws}"),
                    serde_json::to_string_pretty(&uids).unwrap(),
                ] {
                    let ours = parse_uids(body.as_bytes(), &limits).ok().map(|u| match u {
                        Uids::Plain(v) => v.into_iter().map(str::to_owned).collect::<Vec<_>>(),
                        Uids::Mixed(v) => v.into_iter().map(Cow::into_owned).collect(),
                    });
                    proptest::prop_assert_eq!(
                        ours,
                        reference(body.as_bytes(), &limits),
                        "{}",
                        body
                    );
                }
                Ok(())
            })
            .unwrap();
    }

    /// The word-at-a-time search finds what a byte loop finds, for every
    /// position of the first hit, bytes around it that are near misses
    /// (0x21, 0x23, 0x5b, 0x5d, 0xa2, 0xdc, 0x00, 0x80, 0xff) and every length.
    #[test]
    fn quote_or_backslash_finds_the_first_hit() {
        let fillers = [
            b'a', 0x21, 0x23, 0x5b, 0x5d, 0xa2, 0xdc, 0x00, 0x80, 0xff, 0x01,
        ];
        for len in 0..40 {
            for &fill in &fillers {
                let base = vec![fill; len];
                assert_eq!(quote_or_backslash(&base), None, "{len} {fill:#x}");
                for first in 0..len {
                    for hit in [b'"', b'\\'] {
                        let mut b = base.clone();
                        b[first] = hit;
                        // A later hit of the other kind changes nothing.
                        if first + 3 < len {
                            b[first + 3] = if hit == b'"' { b'\\' } else { b'"' };
                        }
                        let naive = b.iter().position(|&c| c == b'"' || c == b'\\');
                        assert_eq!(quote_or_backslash(&b), naive, "{len} {fill:#x} {first}");
                        assert_eq!(naive, Some(first));
                    }
                }
            }
        }
    }

    #[test]
    fn accepts_arrays_of_strings_and_unescapes() {
        assert_eq!(
            parse(r#" ["a", "b\"c", "é"] "#).unwrap(),
            vec!["a", "b\"c", "é"]
        );
        assert_eq!(parse("[]").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn names_the_bad_uid() {
        assert_eq!(
            parse(r#"["a","b","c",""]"#).unwrap_err().2,
            "uid at index 3 is empty"
        );
        assert_eq!(
            parse(r#"["a",5]"#).unwrap_err().2,
            "uid at index 1 must be a string, got a number"
        );
        assert_eq!(
            parse(r#"["a",["b"]]"#).unwrap_err().2,
            "uid at index 1 must be a string, got an array"
        );
        assert_eq!(
            parse(r#"["a\u0000"]"#).unwrap_err().2,
            "uid at index 0 contains a control character"
        );
        let long = format!(r#"["{}"]"#, "x".repeat(257));
        assert_eq!(
            parse(&long).unwrap_err().2,
            "uid at index 0 is 257 bytes, over the limit of 256"
        );
    }

    #[test]
    fn rejects_what_is_not_an_array() {
        assert_eq!(parse(r#"{"a":1}"#).unwrap_err().1, "invalid_body");
        assert_eq!(parse("").unwrap_err().1, "invalid_body");
        assert_eq!(parse(r#"["a""#).unwrap_err().1, "invalid_json");
        assert_eq!(parse(r#"["a"] x"#).unwrap_err().1, "invalid_json");
    }

    #[test]
    fn the_byte_level_control_check_equals_char_is_control() {
        for c in (0u32..0x300)
            .filter_map(char::from_u32)
            .chain(['\u{2028}', '\u{feff}', '🙂'])
        {
            let s = format!("a{c}b");
            assert_eq!(
                has_control(&s),
                s.chars().any(char::is_control),
                "{:x}",
                c as u32
            );
        }
    }

    #[test]
    fn the_simple_path_and_the_full_parser_agree() {
        let limits = Limits {
            max_batch: 3,
            max_uid_bytes: 5,
            ..Limits::default()
        };
        let cases = [
            r#"["a","b"]"#,
            r#" [ "a" , "b" ] "#,
            "[]",
            " [ ] ",
            r#"["a""#,
            r#"["a",]"#,
            r#"["a"]x"#,
            r#"["a\"b"]"#,
            r#"["é"]"#,
            r#"["a",1]"#,
            r#"[""]"#,
            r#"["abcdef"]"#,
            r#"["a","b","c","d"]"#,
            "[\"a\u{7f}\"]",
            "[\"a\tb\"]",
            "[\"a\u{85}b\"]",
            "[\"a\",\n\"b\u{9f}\"]",
            r#"["a"],"#,
            r#"[,"a"]"#,
            r#"["a""b"]"#,
            "",
        ];
        // As the caller screens a body, and without the screen.
        for (case, screened) in cases.iter().flat_map(|&c| [(c, screened(c)), (c, false)]) {
            let simple = parse_simple(case, &limits, screened);
            let full = {
                let failure = RefCell::new(None);
                let mut de = serde_json::Deserializer::from_str(case);
                de.deserialize_seq(BatchVisitor {
                    limits: &limits,
                    failure: &failure,
                })
                .and_then(|v| de.end().map(|_| v))
                .ok()
            };
            if let Some(simple) = simple {
                let simple: Vec<Cow<str>> = simple.into_iter().map(Cow::Borrowed).collect();
                assert_eq!(Some(simple), full, "{case}");
            }
        }
        assert!(
            parse_simple(r#" ["a", "b"] "#, &limits, false).is_some(),
            "the common case takes the simple path"
        );
    }

    #[test]
    fn counts_against_the_batch_limit() {
        let limits = Limits {
            max_batch: 2,
            ..Limits::default()
        };
        assert!(parse_batch(br#"["a","b"]"#, &limits).is_ok());
        let err = parse_batch(br#"["a","b","c"]"#, &limits).unwrap_err();
        assert_eq!((err.status.as_u16(), err.code), (413, "batch_too_large"));
    }

    /// Every character from U+0000 to U+02FF (and a few beyond) inside a
    /// uid, sent raw: whatever the one-pass parser calls plain is written
    /// back exactly as the escaping writer writes it, as valid JSON.
    #[test]
    fn plain_uids_need_no_escaping() {
        use crate::routing::{NodeInput, StrategyInput, Table, TableInput};
        let limits = Limits::default();
        let nodes: Vec<NodeInput> = (0..5)
            .map(|i| NodeInput {
                id: format!("n{i}"),
                region: None,
                weight: 100,
                state: crate::model::NodeState::Active,
                healthy: true,
                external: crate::model::Addrs {
                    tcp_addr: format!("10.0.0.{i}:1"),
                    ..Default::default()
                },
                intranet: Default::default(),
            })
            .collect();
        let table = Table::build(&TableInput::prepare(
            &nodes,
            StrategyInput {
                name: "t".into(),
                kind: "hash".into(),
                params: serde_json::Value::Null,
            },
            &Default::default(),
            &Default::default(),
        ));
        let mut chars: Vec<char> = (0u32..0x300).filter_map(char::from_u32).collect();
        chars.extend(['\u{2028}', '\u{2029}', '\u{feff}', '\u{fffd}', '\u{10ffff}']);
        let mut plain = 0;
        for c in chars {
            let body = format!("[\"a{c}b\",\"x\"]");
            let Ok(Uids::Plain(uids)) = parse_uids(body.as_bytes(), &limits) else {
                continue;
            };
            plain += 1;
            let fast = table
                .route_batch_json(&uids, None, false, true, |_, _| {})
                .unwrap();
            let checked = table
                .route_batch_json(&uids, None, false, false, |_, _| {})
                .unwrap();
            assert_eq!(fast, checked, "U+{:04X}", c as u32);
            let back: serde_json::Value = serde_json::from_slice(&fast).unwrap();
            let all: Vec<&str> = back
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|g| {
                    g["uids"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|u| u.as_str().unwrap())
                })
                .collect();
            assert!(
                all.contains(&format!("a{c}b").as_str()),
                "U+{:04X}",
                c as u32
            );
        }
        assert!(plain > 600, "{plain}");
    }
}
