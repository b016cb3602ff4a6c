//! Reading what Bitrix24 POSTs to us: form bodies with PHP-style bracket keys
//! (`auth[member_id]`, `document_id[2]`, `data[FIELDS][ID]`), percent-encoded, and
//! sometimes JSON. Every body goes through the one bounded decoder
//! (`bitrix24::form::decode`): a key nested deeper than `form::MAX_DEPTH`, more than
//! `form::MAX_KEYS` keys or a body that is not UTF-8 is refused with a 400 before any
//! handler looks at it, let alone checks a token.
//!
//! The robot call and the app events are decoded into the structs below, which say
//! what Bitrix24 sends (protocol §4.3, §7); the iframe POSTs (install page, deal tab,
//! admin page) are flat and still read as a JSON value by key.

use std::collections::BTreeMap;

use poem::{FromRequest, Request, RequestBody};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::bitrix24::form::{self, FormError, Text};
use crate::error::ApiError;

/// The `auth[...]` block of a robot call or an event (protocol §4.3, §7.1; fixtures
/// `robot-call.form.txt`, `onappinstall.form.txt`). Events fired by automation and
/// `ONAPPUNINSTALL` carry no tokens, only `member_id`, `domain` and
/// `application_token` — the application token is the only proof of origin, and any
/// user of the portal can read it from their own tab POST.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Auth {
    #[serde(
        default,
        deserialize_with = "form::text",
        skip_serializing_if = "Option::is_none"
    )]
    pub access_token: Option<String>,
    #[serde(
        default,
        deserialize_with = "form::text",
        skip_serializing_if = "Option::is_none"
    )]
    pub expires: Option<String>,
    #[serde(
        default,
        deserialize_with = "form::text",
        skip_serializing_if = "Option::is_none"
    )]
    pub expires_in: Option<String>,
    #[serde(
        default,
        deserialize_with = "form::text",
        skip_serializing_if = "Option::is_none"
    )]
    pub scope: Option<String>,
    #[serde(
        default,
        deserialize_with = "form::text",
        skip_serializing_if = "Option::is_none"
    )]
    pub domain: Option<String>,
    #[serde(
        default,
        deserialize_with = "form::text",
        skip_serializing_if = "Option::is_none"
    )]
    pub server_endpoint: Option<String>,
    #[serde(
        default,
        deserialize_with = "form::text",
        skip_serializing_if = "Option::is_none"
    )]
    pub status: Option<String>,
    #[serde(
        default,
        deserialize_with = "form::text",
        skip_serializing_if = "Option::is_none"
    )]
    pub client_endpoint: Option<String>,
    #[serde(
        default,
        deserialize_with = "form::text",
        skip_serializing_if = "Option::is_none"
    )]
    pub member_id: Option<String>,
    #[serde(
        default,
        deserialize_with = "form::text",
        skip_serializing_if = "Option::is_none"
    )]
    pub user_id: Option<String>,
    #[serde(
        default,
        deserialize_with = "form::text",
        skip_serializing_if = "Option::is_none"
    )]
    pub refresh_token: Option<String>,
    #[serde(
        default,
        deserialize_with = "form::text",
        skip_serializing_if = "Option::is_none"
    )]
    pub application_token: Option<String>,
}

/// `document_id[0..2]`: `["crm", "CCrmDocumentDeal", "DEAL_4217"]` (protocol §4.3).
/// Read from a form's indexed keys or a JSON list alike.
#[derive(Debug, Clone, Default)]
pub struct DocumentId(pub BTreeMap<usize, String>);

impl DocumentId {
    /// The document itself (`DEAL_4217`), the third element.
    pub fn document(&self) -> Option<&str> {
        self.0.get(&2).map(String::as_str)
    }
}

impl<'de> Deserialize<'de> for DocumentId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Asked for as a map: a form's `document_id[2]` alone is a map with key 2,
        // which `serde_qs` would refuse to read as a list with gaps.
        d.deserialize_map(DocumentIdVisitor)
    }
}

struct DocumentIdVisitor;

impl<'de> serde::de::Visitor<'de> for DocumentIdVisitor {
    type Value = DocumentId;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("document_id[0..2]")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<DocumentId, A::Error> {
        let mut items = BTreeMap::new();
        while let Some((key, Text(value))) = map.next_entry::<String, Text>()? {
            if let (Ok(index), Some(value)) = (key.parse::<usize>(), value) {
                items.insert(index, value);
            }
        }
        Ok(DocumentId(items))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<DocumentId, A::Error> {
        let mut items = BTreeMap::new();
        let mut index = 0;
        while let Some(Text(value)) = seq.next_element::<Text>()? {
            if let Some(value) = value {
                items.insert(index, value);
            }
            index += 1;
        }
        Ok(DocumentId(items))
    }
}

/// The robot «Отправить опрос» calling its handler (protocol §4.3, fixture
/// `robot-call.form.txt`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RobotCall {
    /// Single-use token the business process waits on (`bizproc.event.send`).
    #[serde(default, deserialize_with = "form::text")]
    pub event_token: Option<String>,
    #[serde(default)]
    pub document_id: DocumentId,
    #[serde(default)]
    pub auth: Auth,
    /// The robot's properties as the administrator filled them
    /// (`survey_code`, `patient_name`, `link_days`, `reuse_active`).
    #[serde(default)]
    pub properties: BTreeMap<String, Text>,
}

impl RobotCall {
    pub fn property(&self, name: &str) -> Option<String> {
        self.properties.get(name).and_then(|t| t.0.clone())
    }
}

/// `data[FIELDS]` of a CRM event: the record's id only (protocol §7.1).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct EventFields {
    #[serde(rename = "ID", default, deserialize_with = "form::text")]
    pub id: Option<String>,
}

/// `data[...]` of the events we handle.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct EventData {
    /// `ONCRMDEALADD`, `ONCRMLEADADD`.
    #[serde(rename = "FIELDS", default)]
    pub fields: EventFields,
    /// `ONAPPUNINSTALL`: `1` when the administrator chose to delete the app's data.
    #[serde(rename = "CLEAN", default, deserialize_with = "form::text")]
    pub clean: Option<String>,
}

/// An event bound by the application (protocol §7, fixtures `onappinstall.form.txt`,
/// `onappuninstall.form.txt`, `oncrmdealadd.form.txt`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct EventCall {
    #[serde(default, deserialize_with = "form::text")]
    pub event: Option<String>,
    #[serde(default)]
    pub data: EventData,
    #[serde(default)]
    pub auth: Auth,
}

/// A Bitrix24 callback body decoded once, bounded, into `T`; a body that cannot be
/// read or decoded is answered 400 with the decoder's code before the handler runs.
pub struct Callback<T>(pub T);

impl<'a, T: DeserializeOwned + Send> FromRequest<'a> for Callback<T> {
    async fn from_request(req: &'a Request, body: &mut RequestBody) -> poem::Result<Self> {
        let bytes = body
            .take()?
            .into_bytes()
            .await
            .map_err(|_| unreadable().into_poem())?;
        decode_body(req.content_type(), &bytes)
            .map(Callback)
            .map_err(|e| rejected(&e).into_poem())
    }
}

fn unreadable() -> ApiError {
    ApiError::bad_request("bad_body", "Не удалось прочитать тело запроса")
}

/// The 400 for a body the decoder refused, with its stable code.
pub fn rejected(e: &FormError) -> ApiError {
    log_refusal(e);
    ApiError::bad_request(e.code(), e.message())
}

/// One line per refused body, with its code only: the body may hold tokens.
fn log_refusal(e: &FormError) {
    tracing::info!(code = e.code(), "Тело запроса отклонено");
}

/// JSON body (an object), else form body; an empty body is an empty object.
pub fn decode_body<T: DeserializeOwned>(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<T, FormError> {
    let first = body.iter().copied().find(|b| !b.is_ascii_whitespace());
    let empty = || {
        serde_json::from_value(Value::Object(Map::new()))
            .map_err(|e| FormError::Malformed(e.to_string()))
    };
    let Some(first) = first else {
        return empty();
    };
    if content_type.is_some_and(|c| c.contains("json")) || first == b'{' {
        // serde_json refuses nesting deeper than 128 itself; a body that is not an
        // object is read as a form, as before.
        if let Ok(v @ Value::Object(_)) = serde_json::from_slice::<Value>(body) {
            return serde_json::from_value(v).map_err(|e| FormError::Malformed(e.to_string()));
        }
    }
    form::decode(body)
}

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
    fn robot_call_is_typed() {
        let call: RobotCall = decode_body(None, ROBOT).expect("decodes");
        assert_eq!(call.document_id.document(), Some("DEAL_4217"));
        assert_eq!(call.auth.member_id.as_deref(), Some("m1"));
        assert_eq!(call.event_token.as_deref(), Some("a|b"));
        assert_eq!(call.property("patient_name").as_deref(), Some("Анна П"));
        assert_eq!(call.property("survey_code"), None);
    }

    #[test]
    fn events_are_typed_from_form_and_json() {
        let e: EventCall = decode_body(
            Some("application/x-www-form-urlencoded"),
            b"event=ONCRMDEALADD&data%5BFIELDS%5D%5BID%5D=4217&auth%5Bapplication_token%5D=t",
        )
        .expect("decodes");
        assert_eq!(e.event.as_deref(), Some("ONCRMDEALADD"));
        assert_eq!(e.data.fields.id.as_deref(), Some("4217"));
        assert_eq!(e.auth.application_token.as_deref(), Some("t"));
        let e: EventCall = decode_body(
            Some("application/json"),
            br#"{"event":"ONAPPUNINSTALL","data":{"CLEAN":1},"auth":{"member_id":"m"}}"#,
        )
        .expect("decodes");
        assert_eq!(e.data.clean.as_deref(), Some("1"));
        assert_eq!(e.auth.member_id.as_deref(), Some("m"));
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

    #[test]
    fn hostile_bodies_are_refused_flatly() {
        let deep = format!("{}=1", "a".to_owned() + &"[a]".repeat(50_000));
        let e = decode_body::<Value>(None, deep.as_bytes()).expect_err("too deep");
        assert_eq!(e.code(), "form_too_deep");
        let encoded = format!("{}=1", "a".to_owned() + &"%5Ba%5D".repeat(9));
        let e = decode_body::<EventCall>(None, encoded.as_bytes()).expect_err("too deep");
        assert_eq!(e.code(), "form_too_deep");
        let many: Vec<String> = (0..1_001).map(|i| format!("k{i}=v")).collect();
        let e = decode_body::<Value>(None, many.join("&").as_bytes()).expect_err("too many");
        assert_eq!(e.code(), "form_too_many_keys");
        let e = decode_body::<Value>(None, b"event=\xff\xfe").expect_err("not utf-8");
        assert_eq!(e.code(), "bad_encoding");
        // Eight levels are fine.
        let ok = format!("{}=1", "a".to_owned() + &"[a]".repeat(8));
        assert!(decode_body::<Value>(None, ok.as_bytes()).is_ok());
    }
}
