//! Reading what Bitrix24 POSTs to us: form bodies with PHP-style bracket keys
//! (`auth[member_id]`, `document_id[2]`, `data[FIELDS][ID]`), percent-encoded, and
//! sometimes JSON. Every body goes through the one bounded decoder
//! (`bitrix24::form::decode`): a key nested deeper than `form::MAX_DEPTH`, more than
//! `form::MAX_KEYS` keys or a body that is not UTF-8 is refused with a 400 before any
//! handler looks at it, let alone checks a token.
//!
//! The robot call and the app events are decoded into the structs below, which say
//! what Bitrix24 sends (protocol §4.3, §7). Shared by the handlers of the installed
//! application (`b24`) and of the guides' webhooks (`legacy`).

use std::collections::BTreeMap;

use poem::{FromRequest, Request, RequestBody};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::form::{self, FormError, Text};
use crate::error::{ApiError, ErrorCode};

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
    ApiError::bad_request(ErrorCode::BadBody, "Не удалось прочитать тело запроса")
}

/// The 400 for a body the decoder refused, with its stable code.
pub fn rejected(e: &FormError) -> ApiError {
    log_refusal(e);
    ApiError::bad_request(e.code(), e.message())
}

/// One line per refused body, with its code only: the body may hold tokens.
pub(crate) fn log_refusal(e: &FormError) {
    tracing::info!(code = e.code().as_str(), "Тело запроса отклонено");
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

#[cfg(test)]
mod tests {
    use super::*;

    const ROBOT: &[u8] = b"document_id%5B0%5D=crm&document_id%5B1%5D=CCrmDocumentDeal&document_id%5B2%5D=DEAL_4217&auth%5Bmember_id%5D=m1&event_token=a%7Cb&properties%5Bpatient_name%5D=%D0%90%D0%BD%D0%BD%D0%B0+%D0%9F";

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
    fn hostile_bodies_are_refused_flatly() {
        let deep = format!("{}=1", "a".to_owned() + &"[a]".repeat(50_000));
        let e = decode_body::<Value>(None, deep.as_bytes()).expect_err("too deep");
        assert_eq!(e.code().as_str(), "form_too_deep");
        let encoded = format!("{}=1", "a".to_owned() + &"%5Ba%5D".repeat(9));
        let e = decode_body::<EventCall>(None, encoded.as_bytes()).expect_err("too deep");
        assert_eq!(e.code().as_str(), "form_too_deep");
        let many: Vec<String> = (0..1_001).map(|i| format!("k{i}=v")).collect();
        let e = decode_body::<Value>(None, many.join("&").as_bytes()).expect_err("too many");
        assert_eq!(e.code().as_str(), "form_too_many_keys");
        let e = decode_body::<Value>(None, b"event=\xff\xfe").expect_err("not utf-8");
        assert_eq!(e.code().as_str(), "bad_encoding");
        // Eight levels are fine.
        let ok = format!("{}=1", "a".to_owned() + &"[a]".repeat(8));
        assert!(decode_body::<Value>(None, ok.as_bytes()).is_ok());
    }
}
