//! Reading what Bitrix24 POSTs to us: form bodies with PHP-style bracket keys
//! (`auth[member_id]`, `document_id[2]`, `data[FIELDS][ID]`), percent-encoded, and
//! sometimes JSON. Every body goes through the one bounded decoder
//! (`bitrix24::form::decode`): a key nested deeper than `form::MAX_DEPTH`, more than
//! `form::MAX_KEYS` keys or a body that is not UTF-8 is refused with a 400 before any
//! handler looks at it, let alone checks a token.
//!
//! The robot call and the app events are decoded into the structs below, which say
//! what Bitrix24 sends (protocol §4.3, §7). Shared by the handlers of the installed
//! application (`local_app`) and of the guides' webhooks (`legacy`).

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
    /// `ONCRMTIMELINEITEMACTION`: which button of which activity.
    #[serde(flatten)]
    pub timeline_action: TimelineAction,
}

/// `data[...]` of `ONCRMTIMELINEITEMACTION` (automation §A2): a `restEvent` button of
/// a configurable activity was pressed. Bitrix24 sends it only to the application
/// that created the activity, with the activity's record and the user who pressed,
/// plus the button's `actionParams`. Like every event it carries the application
/// token only as proof of origin, which any portal user can read (protocol §6.2):
/// the activity and the user are to be read back from the portal, never believed.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TimelineAction {
    /// The action's id as the layout named it.
    #[serde(default, deserialize_with = "form::text")]
    pub id: Option<String>,
    /// `2` for a deal, `1` for a lead (CRM entity type ids).
    #[serde(rename = "entityTypeId", default, deserialize_with = "form::text")]
    pub entity_type_id: Option<String>,
    #[serde(rename = "entityId", default, deserialize_with = "form::text")]
    pub entity_id: Option<String>,
    #[serde(rename = "activityId", default, deserialize_with = "form::text")]
    pub activity_id: Option<String>,
    #[serde(rename = "userId", default, deserialize_with = "form::text")]
    pub user_id: Option<String>,
    /// The button's own parameters, as the layout gave them.
    #[serde(rename = "actionParams", default)]
    pub action_params: BTreeMap<String, Text>,
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

/// The POST Bitrix24's page submits into one of our frames: the install page
/// (protocol §3.1, fixture `install-post.form.txt`), a placement such as the deal tab
/// (§6.2, fixture `placement-deal-tab.form.txt`) and the application's own page. The
/// user's browser sends it, so nothing in it is believed until the portal confirms
/// `AUTH_ID` (§11). The query string's `DOMAIN`/`PROTOCOL`/`LANG` are read apart.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct FrameCall {
    /// The user's access token.
    #[serde(rename = "AUTH_ID", default, deserialize_with = "form::text")]
    pub auth_id: Option<String>,
    /// The access token's lifetime in seconds (`3600`), not a point in time (§6.2).
    #[serde(rename = "AUTH_EXPIRES", default, deserialize_with = "form::text")]
    pub auth_expires: Option<String>,
    #[serde(rename = "REFRESH_ID", default, deserialize_with = "form::text")]
    pub refresh_id: Option<String>,
    /// The OAuth server's REST base (`https://oauth.bitrix24.tech/rest/`).
    #[serde(rename = "SERVER_ENDPOINT", default, deserialize_with = "form::text")]
    pub server_endpoint: Option<String>,
    /// Readable by every user of the portal from this very POST (§6.2).
    #[serde(rename = "APPLICATION_TOKEN", default, deserialize_with = "form::text")]
    pub application_token: Option<String>,
    #[serde(default, deserialize_with = "form::text")]
    pub member_id: Option<String>,
    /// Sometimes in the body too; the query string's wins.
    #[serde(rename = "DOMAIN", default, deserialize_with = "form::text")]
    pub domain: Option<String>,
    /// `CRM_DEAL_DETAIL_TAB`, `CRM_LEAD_DETAIL_TAB`, `DEFAULT` (install page, app page).
    #[serde(rename = "PLACEMENT", default, deserialize_with = "form::text")]
    pub placement: Option<String>,
    /// A JSON text inside the form: `{"ID":"4217","URI":"…"}`.
    #[serde(rename = "PLACEMENT_OPTIONS", default, deserialize_with = "form::text")]
    pub placement_options: Option<String>,
}

impl FrameCall {
    /// `AUTH_EXPIRES` as a lifetime; zero when absent or unreadable.
    pub fn auth_lifetime(&self) -> std::time::Duration {
        self.auth_expires
            .as_deref()
            .and_then(|s| s.parse::<u64>().ok())
            .map_or(std::time::Duration::ZERO, std::time::Duration::from_secs)
    }

    /// The record the placement was opened for: `PLACEMENT_OPTIONS.ID`, a string
    /// inside the JSON text (§6.2); `None` unless a positive number.
    pub fn placement_id(&self) -> Option<i64> {
        // A map, not a struct: serde would read a struct from a JSON list as well.
        let options: BTreeMap<String, Text> =
            serde_json::from_str(self.placement_options.as_deref()?).ok()?;
        let Text(id) = options.get("ID")?.clone();
        id?.parse::<i64>().ok().filter(|id| *id > 0)
    }
}

/// What the install handler's URL receives: the install page's frame POST, or the
/// `ONAPPINSTALL` event Bitrix24 sends to the same URL (§3.3, fixture
/// `onappinstall-event.form.txt`), told apart by `event`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct InstallCall {
    #[serde(flatten)]
    pub frame: FrameCall,
    #[serde(default, deserialize_with = "form::text")]
    pub event: Option<String>,
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
pub fn log_refusal(e: &FormError) {
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
    fn frame_posts_are_typed_as_the_fixtures_show() {
        // placement-deal-tab.form.txt, form-encoded.
        let body = b"AUTH_ID=8e5a&AUTH_EXPIRES=3600&REFRESH_ID=7edf&SERVER_ENDPOINT=https%3A%2F%2Foauth.bitrix24.tech%2Frest%2F&APPLICATION_TOKEN=9b1e&member_id=4f2a&status=L&PLACEMENT=CRM_DEAL_DETAIL_TAB&PLACEMENT_OPTIONS=%7B%22ID%22%3A%224217%22%2C%22URI%22%3A%22%5C%2Fcrm%5C%2Fdeal%5C%2Fdetails%5C%2F4217%5C%2F%22%7D";
        let call: FrameCall = decode_body(None, body).expect("decodes");
        assert_eq!(call.auth_id.as_deref(), Some("8e5a"));
        assert_eq!(call.member_id.as_deref(), Some("4f2a"));
        assert_eq!(call.placement.as_deref(), Some("CRM_DEAL_DETAIL_TAB"));
        assert_eq!(call.placement_id(), Some(4217));
        assert_eq!(call.auth_lifetime(), std::time::Duration::from_secs(3600));
        // A forged or broken options text gives no record, never a panic.
        for options in [
            "",
            "%7B%7D",
            "%5B1%5D",
            "%7B%22ID%22%3A%22-5%22%7D",
            "not-json",
        ] {
            let body = format!("PLACEMENT_OPTIONS={options}");
            let call: FrameCall = decode_body(None, body.as_bytes()).expect("decodes");
            assert_eq!(call.placement_id(), None, "{options}");
        }
        // The install URL: the page's POST and the ONAPPINSTALL event alike.
        let page: InstallCall = decode_body(
            None,
            b"AUTH_ID=a&REFRESH_ID=r&member_id=m&DOMAIN=clinic.bitrix24.ru",
        )
        .expect("page");
        assert_eq!(page.frame.refresh_id.as_deref(), Some("r"));
        assert_eq!(page.frame.domain.as_deref(), Some("clinic.bitrix24.ru"));
        assert_eq!(page.event, None);
        let event: InstallCall = decode_body(
            None,
            b"event=ONAPPINSTALL&data%5BVERSION%5D=1&auth%5Bdomain%5D=clinic.bitrix24.ru&auth%5Brefresh_token%5D=r2&auth%5Bmember_id%5D=m",
        )
        .expect("event");
        assert_eq!(event.event.as_deref(), Some("ONAPPINSTALL"));
        assert_eq!(event.auth.refresh_token.as_deref(), Some("r2"));
        assert_eq!(event.frame.member_id, None);
    }

    #[test]
    fn timeline_action_is_typed() {
        let e: EventCall = decode_body(
            None,
            b"event=ONCRMTIMELINEITEMACTION&data%5Bid%5D=viewed&data%5BentityTypeId%5D=2&data%5BentityId%5D=4217&data%5BactivityId%5D=99&data%5BuserId%5D=17&data%5BactionParams%5D%5Bsurvey%5D=abc&auth%5Bapplication_token%5D=t",
        )
        .expect("decodes");
        let a = &e.data.timeline_action;
        assert_eq!(a.id.as_deref(), Some("viewed"));
        assert_eq!(a.entity_type_id.as_deref(), Some("2"));
        assert_eq!(a.entity_id.as_deref(), Some("4217"));
        assert_eq!(a.activity_id.as_deref(), Some("99"));
        assert_eq!(a.user_id.as_deref(), Some("17"));
        assert_eq!(
            a.action_params.get("survey"),
            Some(&Text(Some("abc".into())))
        );
        // A CRM event leaves it empty and still reads its record.
        let e: EventCall =
            decode_body(None, b"event=ONCRMDEALADD&data%5BFIELDS%5D%5BID%5D=5").expect("decodes");
        assert_eq!(e.data.fields.id.as_deref(), Some("5"));
        assert_eq!(e.data.timeline_action.activity_id, None);
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
