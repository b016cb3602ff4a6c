//! PHP-style form encoding, both ways.
//!
//! Bitrix24 speaks `application/x-www-form-urlencoded` with PHP bracket keys
//! (`fields[UF_CRM_X]=…`, `document_id[0]=crm`, `data[FIELDS][ID]=4217`), brackets
//! percent-encoded on the wire and UTF-8 values (Cyrillic) percent-encoded byte-wise
//! (protocol §"Conventions", `settings/how-to-call-rest-api/data-encoding.md`).
//! `serde_urlencoded` (poem's `Form`) cannot nest such keys, so every decoder of
//! Bitrix24 payloads goes through this module.

use crate::error::ErrorCode;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// One `key=value` pair of a form body, decoded.
pub type FormPairs = Vec<(String, String)>;

/// Flattens JSON params into bracket-key pairs the way PHP's `http_build_query` does
/// (the docs' data-encoding page names it as the reference encoder): nested objects
/// become `a[b][c]`, lists `a[0]`, `a[1]`, `true`/`false` become `1`/`0`, and `null`
/// and empty containers are left out.
pub fn flatten(params: &Value) -> FormPairs {
    let mut out = Vec::new();
    match params {
        Value::Object(map) => {
            for (key, value) in map {
                flatten_into(key, value, &mut out);
            }
        }
        Value::Array(items) => {
            for (index, value) in items.iter().enumerate() {
                flatten_into(&index.to_string(), value, &mut out);
            }
        }
        _ => {}
    }
    out
}

fn flatten_into(prefix: &str, value: &Value, out: &mut FormPairs) {
    match value {
        Value::Null => {}
        Value::Bool(b) => out.push((prefix.to_owned(), if *b { "1" } else { "0" }.to_owned())),
        Value::Number(n) => out.push((prefix.to_owned(), n.to_string())),
        Value::String(s) => out.push((prefix.to_owned(), s.clone())),
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                flatten_into(&format!("{prefix}[{index}]"), item, out);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                flatten_into(&format!("{prefix}[{key}]"), item, out);
            }
        }
    }
}

/// Encodes pairs as a form body: brackets, `$`, `&`, `|` and every non-ASCII byte are
/// percent-encoded, a space becomes `+`.
pub fn encode(pairs: &[(String, String)]) -> String {
    let mut serializer = url::form_urlencoded::Serializer::new(String::new());
    for (key, value) in pairs {
        serializer.append_pair(key, value);
    }
    serializer.finish()
}

/// Decodes a form body (or query string) into pairs, in wire order. `+` is a space,
/// `%XX` in either case is a byte; invalid UTF-8 is replaced rather than rejected.
pub fn decode_pairs(body: &[u8]) -> FormPairs {
    url::form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Deepest bracket nesting accepted in an inbound form or query: Bitrix24's deepest
/// key is `data[FIELDS][ID]` (3 levels); PHP itself stops at 64.
pub const MAX_DEPTH: usize = 8;
/// Most `key=value` pairs accepted in one inbound form or query: a robot call has
/// about 25; PHP's `max_input_vars` defaults to 1 000.
pub const MAX_KEYS: usize = 1_000;

/// Why an inbound form body or query was refused. Each has a stable code for the
/// error body and a Russian message for whoever reads it.
#[derive(Debug, thiserror::Error)]
pub enum FormError {
    #[error("body is not UTF-8")]
    NotUtf8,
    #[error("keys nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("more than {MAX_KEYS} keys")]
    TooManyKeys,
    #[error("malformed form body: {0}")]
    Malformed(String),
}

impl FormError {
    /// The machine-readable code of the error body.
    pub fn code(&self) -> ErrorCode {
        match self {
            FormError::NotUtf8 => ErrorCode::BadEncoding,
            FormError::TooDeep => ErrorCode::FormTooDeep,
            FormError::TooManyKeys => ErrorCode::FormTooManyKeys,
            FormError::Malformed(_) => ErrorCode::BadBody,
        }
    }

    /// What went wrong, for a person.
    pub fn message(&self) -> String {
        match self {
            FormError::NotUtf8 => "Тело запроса должно быть в кодировке UTF-8".to_owned(),
            FormError::TooDeep => {
                format!("Слишком глубокая вложенность ключей формы (больше {MAX_DEPTH} уровней)")
            }
            FormError::TooManyKeys => {
                format!("Слишком много полей в запросе (больше {MAX_KEYS})")
            }
            FormError::Malformed(_) => "Не удалось разобрать тело запроса".to_owned(),
        }
    }
}

/// Checks an inbound form body or query against the limits before anything builds a
/// tree from it: valid UTF-8, at most [`MAX_KEYS`] pairs, no key nested deeper than
/// [`MAX_DEPTH`]. Keys are counted after percent-decoding, so `%5B` counts as `[`.
/// The scan is flat: a hostile key costs its length, never stack.
pub fn check_limits(body: &[u8]) -> Result<(), FormError> {
    if std::str::from_utf8(body).is_err() {
        return Err(FormError::NotUtf8);
    }
    // The pairs `url::form_urlencoded::parse` yields (non-empty runs between `&`),
    // without decoding and copying every key and value as it does: only the key's
    // brackets matter, and `%5B` is the one escape that decodes to `[`.
    let pairs = body.split(|b| *b == b'&').filter(|p| !p.is_empty());
    for (count, pair) in pairs.enumerate() {
        if count >= MAX_KEYS {
            return Err(FormError::TooManyKeys);
        }
        let key = pair.split(|b| *b == b'=').next().unwrap_or_default();
        if decoded_brackets(key) > MAX_DEPTH {
            return Err(FormError::TooDeep);
        }
    }
    Ok(())
}

/// How many `[` a percent-decoded `key` holds, decoding as `form_urlencoded` does:
/// `%` and two hex digits are one byte, any other `%` stands for itself.
fn decoded_brackets(key: &[u8]) -> usize {
    let (mut i, mut n) = (0, 0);
    while i < key.len() {
        let escaped = match key.get(i..i + 3) {
            Some([b'%', hi, lo]) if hi.is_ascii_hexdigit() && lo.is_ascii_hexdigit() => {
                Some(*hi == b'5' && lo.eq_ignore_ascii_case(&b'b'))
            }
            _ => None,
        };
        match escaped {
            Some(bracket) => {
                n += usize::from(bracket);
                i += 3;
            }
            None => {
                n += usize::from(key[i] == b'[');
                i += 1;
            }
        }
    }
    n
}

/// Decodes an inbound form body or query string (PHP bracket keys, percent-encoded
/// or not) into a typed value through `serde_qs`, after [`check_limits`]. The one
/// decoder for everything Bitrix24 and the guides' webhooks send us. Every scalar
/// arrives as a string.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FormError> {
    check_limits(body)?;
    serde_qs::Config::new()
        .max_depth(MAX_DEPTH)
        .use_form_encoding(true)
        .deserialize_bytes(body)
        .map_err(|e| FormError::Malformed(e.to_string()))
}

/// Reads a scalar the way every inbound field is read: a trimmed, non-empty string;
/// numbers and booleans (JSON bodies) as their text; a repeated key (`a=1&a=2`, a
/// list) gives its last value, as PHP does; nested maps and `null` give `None`.
/// For `#[serde(default, deserialize_with = "form::text")]` on `Option<String>`.
pub fn text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    d.deserialize_any(TextVisitor)
}

/// A scalar field of an inbound map whose keys are not fixed (robot properties,
/// `document_id`), read like [`text`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Text(pub Option<String>);

impl<'de> serde::Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        text(d).map(Text)
    }
}

struct TextVisitor;

impl<'de> serde::de::Visitor<'de> for TextVisitor {
    type Value = Option<String>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a scalar value")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(v.trim().to_owned()).filter(|s| !s.is_empty()))
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Some(v.to_string()))
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Some(v.to_string()))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some(v.to_string()))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Some(v.to_string()))
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(TextVisitor)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut last = None;
        while let Some(Text(v)) = seq.next_element::<Text>()? {
            if v.is_some() {
                last = v;
            }
        }
        Ok(last)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map
            .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
            .is_some()
        {}
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn flattens_like_http_build_query() {
        let pairs = flatten(&json!({
            "fields": {"UF_CRM_X": "Ссылка", "FILES": [["report.pdf", "QUJD"]], "OPENED": true},
            "id": 4217, "skip": null, "flag": false
        }));
        assert!(pairs.contains(&("fields[UF_CRM_X]".into(), "Ссылка".into())));
        assert!(pairs.contains(&("fields[FILES][0][0]".into(), "report.pdf".into())));
        assert!(pairs.contains(&("fields[FILES][0][1]".into(), "QUJD".into())));
        assert!(pairs.contains(&("fields[OPENED]".into(), "1".into())));
        assert!(pairs.contains(&("flag".into(), "0".into())));
        assert!(pairs.contains(&("id".into(), "4217".into())));
        assert!(!pairs.iter().any(|(k, _)| k == "skip"));
    }

    #[test]
    fn cyrillic_and_brackets_round_trip() {
        let pairs = vec![
            (
                "fields[TITLE]".to_owned(),
                "Приём & «опрос» + 100%".to_owned(),
            ),
            ("cmd[a]".to_owned(), "crm.deal.get?id=1&x=%26".to_owned()),
        ];
        let body = encode(&pairs);
        assert!(body.contains("fields%5BTITLE%5D="), "{body}");
        assert!(!body.contains('['));
        assert_eq!(decode_pairs(body.as_bytes()), pairs);
        let json: Value = decode(body.as_bytes()).expect("decodes");
        assert_eq!(json["fields"]["TITLE"], "Приём & «опрос» + 100%");
    }

    #[test]
    fn typed_decode_nests_percent_encoded_brackets() {
        #[derive(serde::Deserialize)]
        struct Auth {
            member_id: String,
        }
        #[derive(serde::Deserialize)]
        struct Event {
            event: String,
            auth: Auth,
        }
        let e: Event = decode(b"event=ONAPPINSTALL&auth%5Bmember_id%5D=4f2a").expect("decodes");
        assert_eq!(e.event, "ONAPPINSTALL");
        assert_eq!(e.auth.member_id, "4f2a");
    }

    #[test]
    fn the_flat_scan_counts_as_the_decoder_decodes() {
        let keys: [&[u8]; 12] = [
            b"a[b][c]",
            b"a%5Bb%5D%5bc%5d",
            b"a%255Bb",
            b"a%%5Bb",
            b"a%5",
            b"a%5Gb[",
            b"%5B%5B%5B",
            b"[[[[[[[[[",
            b"a+b[c]",
            b"\xd0\x90[x]",
            b"",
            b"%",
        ];
        for key in keys {
            let pair = [key, b"=v"].concat();
            let (decoded, _) = url::form_urlencoded::parse(&pair)
                .next()
                .unwrap_or_default();
            let expected = decoded.bytes().filter(|b| *b == b'[').count();
            assert_eq!(
                decoded_brackets(key),
                expected,
                "{}",
                String::from_utf8_lossy(key)
            );
        }
        // Empty runs between `&` are not pairs, as for the decoder.
        let many = "&&k=v&".repeat(MAX_KEYS);
        assert!(check_limits(many.as_bytes()).is_ok());
        let too_many = format!("{many}&k=v");
        assert!(matches!(
            check_limits(too_many.as_bytes()),
            Err(FormError::TooManyKeys)
        ));
    }
}
