//! `POST|GET /api/v1/bitrix/webhook`: the seed guide's webhook robot.
//!
//! The built-in CRM robot «Вебхук» has only a URL field and POSTs nothing but
//! `document_id[0..2]` (protocol §5.2), so administrators put the token and names in
//! the URL's query string. JSON bodies from business-process webhooks work too.

use poem::web::{Data, Json};
use poem::{Body, Request, handler};
use serde_json::{Value, json};

use super::input;
use crate::error::{ApiError, ErrorCode};
use crate::invitations::{Channel, EntityRef, EntityType, patient};
use crate::state::AppState;

#[handler]
pub async fn webhook_robot(
    req: &Request,
    body: Body,
    Data(state): Data<&AppState>,
) -> Result<Json<Value>, ApiError> {
    let Some(expected) = state.config.incoming_token.clone() else {
        tracing::warn!("Получен вебхук от Битрикс24, но BITRIX24_INCOMING_TOKEN не задан");
        return Err(ApiError::unavailable(
            ErrorCode::NotConfigured,
            "Интеграция не настроена: задайте BITRIX24_INCOMING_TOKEN",
        ));
    };
    let fields = input::from_request(req, body).await?;
    tracing::info!("Получен вебхук от Битрикс24");

    let presented = [("auth_token", &fields.auth_token), ("token", &fields.token)]
        .into_iter()
        .find_map(|(f, v)| v.clone().map(|v| (f, v)));
    match &presented {
        Some((field, value)) if expected.matches(value) => {
            tracing::debug!(field, "Токен вебхука проверен");
        }
        Some((field, _)) => {
            tracing::warn!(
                field,
                "Неверный токен вебхука: значение не совпадает с BITRIX24_INCOMING_TOKEN"
            );
            return Err(unauthorized());
        }
        None => {
            tracing::warn!("В вебхуке нет токена: ожидается параметр auth_token или token");
            return Err(unauthorized());
        }
    }

    let entity = entity_of(&fields)?;
    super::check_pipeline(state, entity, fields.category_id.as_deref()).await?;
    let given_name = patient::usable_name(fields.patient_name.as_deref());
    let force = fields
        .force
        .as_deref()
        .is_some_and(|f| matches!(f, "1" | "true" | "yes" | "Y"));
    let (inv, _) = crate::invitations::issue::issue(
        state,
        crate::invitations::issue::Request {
            portal_id: None,
            channel: Channel::Webhook,
            entity,
            given_name,
            reuse_active: !force,
            lifetime_days: state.config.link_days,
            dedupe_key: None,
            questionnaire: None,
            robot_event: None,
        },
    )
    .await?;
    Ok(Json(json!({
        "ok": true,
        "survey_url": crate::invitations::issue::link_of(state, &inv),
        "survey_id": inv.id,
        "expires_at": inv.expires_at.to_rfc3339(),
    })))
}

fn unauthorized() -> ApiError {
    ApiError::unauthorized(
        ErrorCode::BadToken,
        "Неверный токен: проверьте auth_token (или token) в настройках робота и BITRIX24_INCOMING_TOKEN",
    )
}

/// `lead_id` (with `entity_type`), else the business-process `document_id[2]`.
fn entity_of(fields: &input::Fields) -> Result<EntityRef, ApiError> {
    let kind = fields
        .entity_type
        .as_deref()
        .map(|t| {
            EntityType::parse(t).ok_or_else(|| {
                ApiError::bad_request(
                    ErrorCode::EntityTypeUnsupported,
                    format!("entity_type должен быть DEAL или LEAD, получено «{t}»"),
                )
            })
        })
        .transpose()?;
    if let Some(raw) = fields.lead_id.clone().or_else(|| fields.deal_id.clone()) {
        if raw.contains("{{") || raw.contains("{=") {
            return Err(ApiError::bad_request(
                ErrorCode::LeadIdTemplate,
                format!(
                    "lead_id не подставился («{raw}»): проверьте переменную {{{{ID}}}} в настройках робота"
                ),
            ));
        }
        if let Some(e) = EntityRef::from_document_id(&raw) {
            return Ok(e);
        }
        let id = raw.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
            ApiError::bad_request(
                ErrorCode::LeadIdInvalid,
                format!("lead_id должен быть номером сделки, получено «{raw}»"),
            )
        })?;
        return Ok(EntityRef {
            kind: kind.unwrap_or(EntityType::Deal),
            id,
        });
    }
    if let Some(doc) = fields.document_id.document() {
        return EntityRef::from_document_id(doc).ok_or_else(|| {
            ApiError::bad_request(
                ErrorCode::DocumentUnsupported,
                format!("Поддерживаются сделки и лиды, получено «{doc}»"),
            )
        });
    }
    Err(ApiError::bad_request(
        ErrorCode::LeadIdMissing,
        "Не указана сделка: передайте lead_id (например ?lead_id={{ID}}) или вызовите из робота сделки",
    ))
}
