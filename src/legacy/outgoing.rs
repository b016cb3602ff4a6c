//! `POST /api/bitrix/webhook`: the portal's outgoing webhook (protocol §8), verified
//! by its `application_token` against `BITRIX24_OUTGOING_WEBHOOK_TOKEN`.
//!
//! The clinic's troubleshooting answer tells admins to look for two log lines; their
//! words are kept, and the failure line describes what was received without its value.

use poem::http::HeaderMap;
use poem::web::{Data, Json};
use poem::{Body, Request, handler};
use serde_json::{Value, json};

use super::input::{self, Fields};
use crate::error::{ApiError, ErrorCode};
use crate::invitations::{Channel, EntityRef, EntityType};
use crate::secret::Secret;
use crate::state::AppState;

const HEADERS: [&str; 4] = [
    "x-application-token",
    "x-bitrix24-token",
    "x-auth-token",
    "authorization",
];

#[handler]
pub async fn outgoing(
    req: &Request,
    body: Body,
    Data(state): Data<&AppState>,
) -> Result<Json<Value>, ApiError> {
    let fields = input::from_request(req, body).await?;
    tracing::info!(
        event = %fields.event.as_deref().unwrap_or_default(),
        "Получен вебхук от Битрикс24 (исходящий вебхук)"
    );
    let Some(expected) = state.config.outgoing_token.clone() else {
        tracing::warn!(
            "⚠️ Неверный токен исходящего вебхука. Получен: {}; переменная BITRIX24_OUTGOING_WEBHOOK_TOKEN не задана",
            describe(find_token(&fields, req.headers()).as_ref(), None)
        );
        return Err(ApiError::unavailable(
            ErrorCode::NotConfigured,
            "Интеграция не настроена: задайте BITRIX24_OUTGOING_WEBHOOK_TOKEN",
        ));
    };
    let found = find_token(&fields, req.headers());
    match &found {
        Some((_, value)) if expected.matches(value) => {
            tracing::info!("✅ Токен исходящего вебхука проверен успешно");
        }
        _ => {
            tracing::warn!(
                "⚠️ Неверный токен исходящего вебхука. Получен: {}; искали в auth[application_token], в строке запроса (application_token, token) и в заголовках; переменная BITRIX24_OUTGOING_WEBHOOK_TOKEN задана",
                describe(found.as_ref(), Some(&expected))
            );
            return Err(ApiError::unauthorized(
                ErrorCode::BadApplicationToken,
                "Неверный токен исходящего вебхука: сравните application_token в Битрикс24 и BITRIX24_OUTGOING_WEBHOOK_TOKEN",
            ));
        }
    }

    let event = fields
        .event
        .as_deref()
        .unwrap_or_default()
        .to_ascii_uppercase();
    let kind = match event.as_str() {
        "ONCRMDEALADD" => EntityType::Deal,
        "ONCRMLEADADD" => EntityType::Lead,
        other => {
            tracing::debug!(event = %other, "Событие исходящего вебхука не обрабатывается");
            return Ok(Json(json!({"ok": true, "ignored": other})));
        }
    };
    let id: i64 = fields
        .data
        .fields
        .id
        .as_deref()
        .and_then(|s| s.parse().ok())
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            ApiError::bad_request(ErrorCode::IdMissing, "В событии нет data[FIELDS][ID]")
        })?;
    let entity = EntityRef { kind, id };
    super::check_pipeline(state, entity, None).await?;
    let inv = crate::invitations::issue::create_for_new_entity(
        state,
        None,
        Channel::Webhook,
        entity,
        &format!("outgoing:{}:{}", kind, id),
    )
    .await?;
    Ok(Json(json!({"ok": true, "survey_id": inv.id})))
}

/// Where the token was found and its value: the body's `auth[application_token]`, then
/// the query string, then a header.
fn find_token(fields: &Fields, headers: &HeaderMap) -> Option<(&'static str, String)> {
    if let Some(t) = &fields.auth.application_token {
        return Some(("auth[application_token]", t.clone()));
    }
    if let Some(t) = fields.application_token.as_ref().or(fields.token.as_ref()) {
        return Some(("query", t.clone()));
    }
    for name in HEADERS {
        if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
            let v = v.trim().trim_start_matches("Bearer ").trim().to_owned();
            if !v.is_empty() {
                return Some(("header", v));
            }
        }
    }
    None
}

/// «нет», or «строка из 32 символов (auth[application_token]), не совпадает».
fn describe(found: Option<&(&'static str, String)>, expected: Option<&Secret<String>>) -> String {
    match found {
        None => "нет".to_owned(),
        Some((place, value)) => {
            let verdict = match expected {
                Some(e) if e.matches(value) => "совпадает",
                Some(_) => "не совпадает",
                None => "сравнить не с чем",
            };
            format!(
                "строка из {} символов ({place}), {verdict}",
                value.chars().count()
            )
        }
    }
}
