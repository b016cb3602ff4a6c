//! Reading the webhook robot's request however it arrives: query string, JSON,
//! `x-www-form-urlencoded` or `multipart/form-data`, also mixed (the body wins), and
//! a content type that does not match the body when the body is unambiguous. The
//! seed guide's «Error parsing data» came from insisting on one format.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::b24::inbound::{parse_form, text};

/// Flat view of the request's fields (`document_id[2]` stays reachable by path).
pub struct Fields {
    merged: Value,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

impl Fields {
    pub fn get(&self, key: &str) -> Option<String> {
        text(&self.merged, &[key])
    }

    pub fn path(&self, path: &[&str]) -> Option<String> {
        text(&self.merged, path)
    }
}

/// The request's fields from its query string and body, or a 400 saying what was
/// expected.
pub async fn from_request(
    req: &poem::Request,
    body: poem::Body,
) -> Result<Fields, crate::error::ApiError> {
    use crate::error::ApiError;
    let bytes = body
        .into_bytes()
        .await
        .map_err(|_| ApiError::bad_request("bad_body", "Не удалось прочитать тело запроса"))?;
    read(req.uri().query(), req.content_type(), &bytes)
        .await
        .map_err(|e| ApiError::bad_request("unparsable_body", e.0))
}

pub async fn read(
    query: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Fields, InputError> {
    let mut merged = parse_form(query.unwrap_or_default().as_bytes());
    let body_value = parse_body_any(content_type, body).await?;
    if let (Value::Object(into), Value::Object(from)) = (&mut merged, body_value) {
        for (k, v) in from {
            into.insert(k, v);
        }
    }
    Ok(Fields { merged })
}

async fn parse_body_any(content_type: Option<&str>, body: &[u8]) -> Result<Value, InputError> {
    let ct = content_type.unwrap_or_default().to_ascii_lowercase();
    let first = body.iter().copied().find(|b| !b.is_ascii_whitespace());
    let Some(first) = first else {
        return Ok(Value::Object(Default::default()));
    };
    if ct.starts_with("multipart/form-data") {
        // Boundaries are case-sensitive: read them from the header as sent.
        let boundary = multer::parse_boundary(content_type.unwrap_or_default()).ok();
        if let Some(boundary) = boundary.or_else(|| sniff_boundary(body)) {
            return parse_multipart(body, boundary).await;
        }
    }
    if first == b'{' || ct.contains("json") {
        return match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => Ok(Value::Object(map)),
            Ok(_) => Err(InputError(
                "Ожидался JSON-объект вида {\"lead_id\": \"…\", \"auth_token\": \"…\"}".into(),
            )),
            Err(e) if first == b'{' || !looks_like_form(body) => Err(InputError(format!(
                "Тело запроса похоже на JSON, но не разбирается ({e}). Ожидался JSON-объект, \
                 форма (x-www-form-urlencoded) или multipart/form-data"
            ))),
            Err(_) => Ok(parse_form(body)),
        };
    }
    if first == b'-'
        && let Some(boundary) = sniff_boundary(body)
    {
        return parse_multipart(body, boundary).await;
    }
    if looks_like_form(body) {
        return Ok(parse_form(body));
    }
    Err(InputError(
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

async fn parse_multipart(body: &[u8], boundary: String) -> Result<Value, InputError> {
    let bytes = bytes_of(body);
    let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(bytes) });
    let mut mp = multer::Multipart::new(stream, boundary);
    let mut fields: BTreeMap<String, String> = BTreeMap::new();
    loop {
        match mp.next_field().await {
            Ok(Some(field)) => {
                let Some(name) = field.name().map(str::to_owned) else {
                    continue;
                };
                let value = field
                    .text()
                    .await
                    .map_err(|e| InputError(format!("multipart: {e}")))?;
                fields.insert(name, value);
            }
            Ok(None) => break,
            Err(e) => {
                return Err(InputError(format!(
                    "Не удалось разобрать multipart/form-data: {e}"
                )));
            }
        }
    }
    let encoded = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields.iter())
        .finish();
    Ok(parse_form(encoded.as_bytes()))
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
        assert_eq!(f.get("lead_id").as_deref(), Some("5"));
        assert_eq!(f.get("token").as_deref(), Some("q"));
        let f = read(None, Some("application/json"), b"lead_id=7&auth_token=x")
            .await
            .unwrap();
        assert_eq!(f.get("lead_id").as_deref(), Some("7"));
        let f = read(
            None,
            Some("application/x-www-form-urlencoded"),
            br#"{"lead_id": 8}"#,
        )
        .await
        .unwrap();
        assert_eq!(f.get("lead_id").as_deref(), Some("8"));
        let mp =
            b"--XyZ\r\nContent-Disposition: form-data; name=\"lead_id\"\r\n\r\n9\r\n--XyZ--\r\n";
        let f = read(None, Some("multipart/form-data; boundary=XyZ"), mp)
            .await
            .unwrap();
        assert_eq!(f.get("lead_id").as_deref(), Some("9"));
        let f = read(None, Some("text/plain"), mp).await.unwrap();
        assert_eq!(f.get("lead_id").as_deref(), Some("9"));
        let f = read(None, None, b"document_id%5B2%5D=DEAL_4217")
            .await
            .unwrap();
        assert_eq!(f.path(&["document_id", "2"]).as_deref(), Some("DEAL_4217"));
        assert!(
            read(None, Some("application/json"), b"{broken")
                .await
                .is_err()
        );
        assert!(read(None, None, b"just some words").await.is_err());
    }
}
