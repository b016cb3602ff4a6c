//! The flat iframe POSTs (install page, deal tab, admin page) read as a JSON value
//! by key, and helpers for fields of Bitrix24 records. The typed callbacks (robot
//! call, events) are in `bitrix24::callback`.

use serde_json::{Map, Value};

use crate::bitrix24::callback::{decode_body, log_refusal};
use crate::bitrix24::form;

/// Parses a form body into a JSON value through the bounded decoder, for the flat
/// iframe POSTs. A body the decoder refuses reads as empty: the handlers then find
/// none of the fields they need and refuse the request.
pub fn parse_form(body: &[u8]) -> Value {
    form::decode::<Value>(body).unwrap_or_else(|e| {
        log_refusal(&e);
        Value::Object(Map::new())
    })
}

/// Reads and decodes a POST from Bitrix24 (form or JSON) as a JSON value; `None` if
/// the body could not be read or the decoder refused it.
pub async fn read(req: &poem::Request, body: poem::Body) -> Option<Value> {
    let bytes = body.into_bytes().await.ok()?;
    decode_body(req.content_type(), &bytes)
        .map_err(|e| log_refusal(&e))
        .ok()
}

/// A string at a path (`["auth", "member_id"]`); numbers are given as text. A list
/// (`a[]=…`, or a key repeated) is indexed by position and gives its last value when
/// read as a whole, as PHP does.
pub fn text<'a>(v: &'a Value, path: &[&str]) -> Option<String> {
    let mut node: &'a Value = v;
    for p in path {
        node = match node {
            Value::Array(items) => items.get(p.parse::<usize>().ok()?)?,
            other => other.get(*p)?,
        };
    }
    if let Value::Array(items) = node {
        node = items.last()?;
    }
    match node {
        Value::String(s) => Some(s.trim().to_owned()).filter(|s| !s.is_empty()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROBOT: &[u8] = b"document_id%5B0%5D=crm&document_id%5B1%5D=CCrmDocumentDeal&document_id%5B2%5D=DEAL_4217&auth%5Bmember_id%5D=m1&event_token=a%7Cb&properties%5Bpatient_name%5D=%D0%90%D0%BD%D0%BD%D0%B0+%D0%9F";

    #[test]
    fn bracket_keys_nest() {
        let v = parse_form(ROBOT);
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
    fn deep_keys_lists_and_json() {
        let v = parse_form(b"data[FIELDS][ID]=4217&list[]=a&list[]=b");
        assert_eq!(text(&v, &["data", "FIELDS", "ID"]).as_deref(), Some("4217"));
        assert_eq!(text(&v, &["list", "1"]).as_deref(), Some("b"));
        let v: Value = decode_body(Some("application/json"), br#"{"lead_id": 5}"#).expect("json");
        assert_eq!(text(&v, &["lead_id"]).as_deref(), Some("5"));
        let v: Value = decode_body(None, b"  ").expect("empty");
        assert_eq!(v, Value::Object(Map::new()));
    }
}
