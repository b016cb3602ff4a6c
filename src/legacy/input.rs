//! Reading the webhook robot's request however it arrives: query string, JSON,
//! `x-www-form-urlencoded` or `multipart/form-data`, also mixed (the body wins), and
//! a content type that does not match the body when the body is unambiguous. The
//! seed guide's «Error parsing data» came from insisting on one format.

use serde::Deserialize;
use serde_json::Value;

use crate::bitrix24::callback::{DocumentId, EventData, EventFields, rejected};
use crate::bitrix24::form::{self, FormError};
use crate::error::{ApiError, ErrorCode};

/// `auth[...]` of an outgoing-webhook event (protocol §8): only its token matters.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct WebhookAuth {
    #[serde(default, deserialize_with = "form::text")]
    pub application_token: Option<String>,
}

/// Everything the guides' two webhook setups may send, from the query string and the
/// body alike: the webhook robot's URL parameters (`lead_id`, `auth_token`, …,
/// protocol §5.2) and the outgoing webhook's event (protocol §8).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Fields {
    #[serde(default, deserialize_with = "form::text")]
    pub event: Option<String>,
    #[serde(default)]
    pub data: EventData,
    #[serde(default)]
    pub auth: WebhookAuth,
    #[serde(default, deserialize_with = "form::text")]
    pub application_token: Option<String>,
    #[serde(default, deserialize_with = "form::text")]
    pub token: Option<String>,
    #[serde(default, deserialize_with = "form::text")]
    pub auth_token: Option<String>,
    #[serde(default, deserialize_with = "form::text")]
    pub lead_id: Option<String>,
    #[serde(default, deserialize_with = "form::text")]
    pub deal_id: Option<String>,
    #[serde(default, deserialize_with = "form::text")]
    pub entity_type: Option<String>,
    #[serde(default, deserialize_with = "form::text")]
    pub category_id: Option<String>,
    #[serde(default, deserialize_with = "form::text")]
    pub patient_name: Option<String>,
    #[serde(default, deserialize_with = "form::text")]
    pub force: Option<String>,
    #[serde(default)]
    pub document_id: DocumentId,
}

impl Fields {
    /// Field by field, what `self` (the body) gives wins over `other` (the query).
    fn over(self, other: Fields) -> Fields {
        let document_id = if self.document_id.0.is_empty() {
            other.document_id
        } else {
            self.document_id
        };
        Fields {
            event: self.event.or(other.event),
            data: EventData {
                fields: EventFields {
                    id: self.data.fields.id.or(other.data.fields.id),
                },
                clean: self.data.clean.or(other.data.clean),
                // The guides' webhooks never carry timeline actions.
                timeline_action: Default::default(),
            },
            auth: WebhookAuth {
                application_token: self.auth.application_token.or(other.auth.application_token),
            },
            application_token: self.application_token.or(other.application_token),
            token: self.token.or(other.token),
            auth_token: self.auth_token.or(other.auth_token),
            lead_id: self.lead_id.or(other.lead_id),
            deal_id: self.deal_id.or(other.deal_id),
            entity_type: self.entity_type.or(other.entity_type),
            category_id: self.category_id.or(other.category_id),
            patient_name: self.patient_name.or(other.patient_name),
            force: self.force.or(other.force),
            document_id,
        }
    }
}

/// Why a request's fields could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// Refused by the bounded decoder (too deep, too many keys, not UTF-8).
    #[error(transparent)]
    Form(#[from] FormError),
    /// A body in none of the accepted formats; the message says what was expected.
    #[error("{0}")]
    Unparsable(String),
}

/// The request's fields from its query string and body, or a 400 saying what was
/// expected.
pub async fn from_request(req: &poem::Request, body: poem::Body) -> Result<Fields, ApiError> {
    let bytes = body.into_bytes().await.map_err(|_| {
        ApiError::bad_request(ErrorCode::BadBody, "Не удалось прочитать тело запроса")
    })?;
    read(req.uri().query(), req.content_type(), &bytes)
        .await
        .map_err(|e| match e {
            InputError::Form(e) => rejected(&e),
            InputError::Unparsable(message) => {
                ApiError::bad_request(ErrorCode::UnparsableBody, message)
            }
        })
}

pub async fn read(
    query: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Fields, InputError> {
    let from_query: Fields = form::decode(query.unwrap_or_default().as_bytes())?;
    let from_body = parse_body_any(content_type, body).await?;
    Ok(from_body.over(from_query))
}

/// A JSON object read as [`Fields`]; `None` if the body is not a JSON object.
fn json_fields(body: &[u8]) -> Result<Option<Fields>, String> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(mut map)) => {
            // A JSON list `["crm", "CCrmDocumentDeal", "DEAL_1"]` is the same document
            // id as the form's indexed keys; anything else in its place is ignored.
            match map.remove("document_id") {
                Some(Value::Array(items)) => {
                    let indexed = items
                        .into_iter()
                        .enumerate()
                        .map(|(i, v)| (i.to_string(), v))
                        .collect();
                    map.insert("document_id".into(), Value::Object(indexed));
                }
                Some(v @ Value::Object(_)) => {
                    map.insert("document_id".into(), v);
                }
                _ => {}
            }
            serde_json::from_value(Value::Object(map))
                .map(Some)
                .map_err(|e| e.to_string())
        }
        Ok(_) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

async fn parse_body_any(content_type: Option<&str>, body: &[u8]) -> Result<Fields, InputError> {
    let ct = content_type.unwrap_or_default().to_ascii_lowercase();
    let first = body.iter().copied().find(|b| !b.is_ascii_whitespace());
    let Some(first) = first else {
        return Ok(Fields::default());
    };
    if ct.starts_with("multipart/form-data") {
        // Boundaries are case-sensitive: read them from the header as sent.
        let boundary = multer::parse_boundary(content_type.unwrap_or_default()).ok();
        if let Some(boundary) = boundary.or_else(|| sniff_boundary(body)) {
            return parse_multipart(body, boundary).await;
        }
    }
    if first == b'{' || ct.contains("json") {
        return match json_fields(body) {
            Ok(Some(fields)) => Ok(fields),
            Ok(None) => Err(InputError::Unparsable(
                "Ожидался JSON-объект вида {\"lead_id\": \"…\", \"auth_token\": \"…\"}".into(),
            )),
            Err(e) if first == b'{' || !looks_like_form(body) => {
                Err(InputError::Unparsable(format!(
                    "Тело запроса похоже на JSON, но не разбирается ({e}). Ожидался JSON-объект, \
                 форма (x-www-form-urlencoded) или multipart/form-data"
                )))
            }
            Err(_) => Ok(form::decode(body)?),
        };
    }
    if first == b'-'
        && let Some(boundary) = sniff_boundary(body)
    {
        return parse_multipart(body, boundary).await;
    }
    if std::str::from_utf8(body).is_err() {
        return Err(FormError::NotUtf8.into());
    }
    if looks_like_form(body) {
        return Ok(form::decode(body)?);
    }
    Err(InputError::Unparsable(
        "Не удалось разобрать тело запроса: ожидался JSON-объект, форма (x-www-form-urlencoded) \
         или multipart/form-data; параметры можно передать и в строке адреса"
            .into(),
    ))
}

fn looks_like_form(body: &[u8]) -> bool {
    std::str::from_utf8(body).is_ok_and(|s| {
        s.split('&')
            .filter(|p| !p.trim().is_empty())
            .all(|p| p.contains('=') && !p.starts_with('='))
    })
}

/// `--boundary\r\n` at the start of a body whose content type lost its boundary.
fn sniff_boundary(body: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(body.get(..body.len().min(200))?).ok()?;
    let line = s.strip_prefix("--")?.lines().next()?.trim();
    (!line.is_empty()).then(|| line.to_owned())
}

async fn parse_multipart(body: &[u8], boundary: String) -> Result<Fields, InputError> {
    let bytes = bytes_of(body);
    let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(bytes) });
    let mut mp = multer::Multipart::new(stream, boundary);
    let mut fields: Vec<(String, String)> = Vec::new();
    loop {
        match mp.next_field().await {
            Ok(Some(field)) => {
                let Some(name) = field.name().map(str::to_owned) else {
                    continue;
                };
                let value = field
                    .text()
                    .await
                    .map_err(|e| InputError::Unparsable(format!("multipart: {e}")))?;
                fields.push((name, value));
                if fields.len() > form::MAX_KEYS {
                    return Err(FormError::TooManyKeys.into());
                }
            }
            Ok(None) => break,
            Err(e) => {
                return Err(InputError::Unparsable(format!(
                    "Не удалось разобрать multipart/form-data: {e}"
                )));
            }
        }
    }
    // The parts' names are form keys (`document_id[2]`): one decoder reads both.
    Ok(form::decode(form::encode(&fields).as_bytes())?)
}

fn bytes_of(body: &[u8]) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_format_and_mixes() {
        let f = read(Some("lead_id=1&token=q"), None, br#"{"lead_id": "5"}"#)
            .await
            .unwrap();
        assert_eq!(f.lead_id.as_deref(), Some("5"));
        assert_eq!(f.token.as_deref(), Some("q"));
        let f = read(None, Some("application/json"), b"lead_id=7&auth_token=x")
            .await
            .unwrap();
        assert_eq!(f.lead_id.as_deref(), Some("7"));
        let f = read(
            None,
            Some("application/x-www-form-urlencoded"),
            br#"{"lead_id": 8}"#,
        )
        .await
        .unwrap();
        assert_eq!(f.lead_id.as_deref(), Some("8"));
        let mp =
            b"--XyZ\r\nContent-Disposition: form-data; name=\"lead_id\"\r\n\r\n9\r\n--XyZ--\r\n";
        let f = read(None, Some("multipart/form-data; boundary=XyZ"), mp)
            .await
            .unwrap();
        assert_eq!(f.lead_id.as_deref(), Some("9"));
        let f = read(None, Some("text/plain"), mp).await.unwrap();
        assert_eq!(f.lead_id.as_deref(), Some("9"));
        let f = read(None, None, b"document_id%5B2%5D=DEAL_4217")
            .await
            .unwrap();
        assert_eq!(f.document_id.document(), Some("DEAL_4217"));
        assert!(
            read(None, Some("application/json"), b"{broken")
                .await
                .is_err()
        );
        assert!(read(None, None, b"just some words").await.is_err());
    }
}
