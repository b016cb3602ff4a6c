//! Reading what Bitrix24 POSTs to us: form bodies with PHP-style bracket keys
//! (`auth[member_id]`, `document_id[2]`, `data[FIELDS][ID]`), percent-encoded, and
//! sometimes JSON. Both become one nested JSON value the handlers read by path.

use serde_json::{Map, Value};

/// Parses `application/x-www-form-urlencoded` bytes with bracket keys into nested
/// objects. List indexes become object keys (`"0"`, `"1"`), which is all the handlers
/// need; a repeated plain key keeps its last value, as PHP does.
pub fn parse_form(body: &[u8]) -> Value {
    let mut root = Map::new();
    for (key, value) in url::form_urlencoded::parse(body) {
        insert(&mut root, &key, Value::String(value.into_owned()));
    }
    Value::Object(root)
}

/// Reads and decodes a POST from Bitrix24 (form or JSON); `None` if the body could
/// not be read at all.
pub async fn read(req: &poem::Request, body: poem::Body) -> Option<Value> {
    let bytes = body.into_bytes().await.ok()?;
    Some(parse_body(req.content_type(), &bytes))
}

/// JSON body, else form body; an empty body is an empty object.
pub fn parse_body(content_type: Option<&str>, body: &[u8]) -> Value {
    let first = body.iter().copied().find(|b| !b.is_ascii_whitespace());
    let Some(first) = first else {
        return Value::Object(Map::new());
    };
    let looks_json = first == b'{';
    if (content_type.is_some_and(|c| c.contains("json")) || looks_json)
        && let Ok(v @ Value::Object(_)) = serde_json::from_slice::<Value>(body)
    {
        return v;
    }
    parse_form(body)
}

fn insert(root: &mut Map<String, Value>, key: &str, value: Value) {
    let (head, rest) = match key.find('[') {
        Some(i) if key.ends_with(']') => (&key[..i], &key[i..]),
        _ => (key, ""),
    };
    if head.is_empty() {
        return;
    }
    let path: Vec<&str> = if rest.is_empty() {
        Vec::new()
    } else {
        rest[1..rest.len() - 1].split("][").collect()
    };
    let mut node = root
        .entry(head.to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    for (depth, segment) in path.iter().enumerate() {
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        let Value::Object(map) = node else { return };
        // `key[]` appends, as PHP does.
        let segment = if segment.is_empty() {
            map.len().to_string()
        } else {
            (*segment).to_owned()
        };
        if depth + 1 == path.len() {
            map.insert(segment, value);
            return;
        }
        node = map
            .entry(segment)
            .or_insert_with(|| Value::Object(Map::new()));
    }
    *node = value;
}

/// A string at a path (`["auth", "member_id"]`); numbers are given as text.
pub fn text<'a>(v: &'a Value, path: &[&str]) -> Option<String> {
    let mut node: &'a Value = v;
    for p in path {
        node = node.get(*p)?;
    }
    match node {
        Value::String(s) => Some(s.trim().to_owned()).filter(|s| !s.is_empty()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A field of a Bitrix24 record regardless of key case (lists come lower-case from
/// some methods, upper-case from others).
pub fn field<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    v.as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// A Bitrix24 yes/no flag: `true`, `"Y"`, `"true"`, `"1"` or `1` (`ADMIN`, `user.admin`).
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::String(s) => matches!(s.as_str(), "true" | "Y" | "1"),
        Value::Number(n) => n.as_i64() == Some(1),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bracket_keys_nest() {
        let v = parse_form(
            b"document_id%5B0%5D=crm&document_id%5B2%5D=DEAL_4217&auth%5Bmember_id%5D=m1&event_token=a%7Cb&properties%5Bpatient_name%5D=%D0%90%D0%BD%D0%BD%D0%B0+%D0%9F",
        );
        assert_eq!(
            text(&v, &["document_id", "2"]).as_deref(),
            Some("DEAL_4217")
        );
        assert_eq!(text(&v, &["auth", "member_id"]).as_deref(), Some("m1"));
        assert_eq!(text(&v, &["event_token"]).as_deref(), Some("a|b"));
        assert_eq!(
            text(&v, &["properties", "patient_name"]).as_deref(),
            Some("Анна П")
        );
    }

    #[test]
    fn deep_keys_and_json() {
        let v = parse_form(b"data[FIELDS][ID]=4217&list[]=a&list[]=b");
        assert_eq!(text(&v, &["data", "FIELDS", "ID"]).as_deref(), Some("4217"));
        assert_eq!(text(&v, &["list", "1"]).as_deref(), Some("b"));
        let v = parse_body(Some("application/json"), br#"{"lead_id": 5}"#);
        assert_eq!(text(&v, &["lead_id"]).as_deref(), Some("5"));
        let v = parse_body(None, b"  ");
        assert_eq!(v, Value::Object(Map::new()));
    }
}
