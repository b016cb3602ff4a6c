//! `POST /b24/robot/send-survey`: the robot «Отправить опрос» (protocol §4.3).
//! Verifies the call, creates (or reuses) the invitation and queues, in the same
//! transaction, the name lookup, `bizproc.event.send` with `survey_url`/`survey_id`
//! and the link field update. Answers at once: the business process waits for the
//! event, not for this answer.

use poem::handler;
use poem::web::{Data, Json};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::portals;
use crate::bitrix24::callback::{Callback, RobotCall};
use crate::crm::{Channel, EntityRef, patient};
use crate::error::{ApiError, ErrorCode};
use crate::invitations::issue;
use crate::state::AppState;

#[handler]
pub async fn send_survey(
    Callback(call): Callback<RobotCall>,
    Data(state): Data<&AppState>,
) -> Result<Json<Value>, ApiError> {
    let portal = portals::verify_robot_call(
        &state.db,
        call.auth.member_id.as_deref(),
        call.auth.application_token.as_deref(),
    )
    .await?;
    tracing::info!(portal = %portal.domain, "Получен вебхук от Битрикс24: робот «Отправить опрос»");

    let (event_token, entity) = step_of(&call)?;

    let prop = |k: &str| call.property(k);
    // The portal's own questionnaire of that code, else the template; another
    // portal's code is unknown here. From memory, not a query per call (issue 19).
    let code = prop("survey_code").unwrap_or_else(|| state.catalog().default_code().to_owned());
    let chosen = crate::questionnaires::resolve(state, Some(portal.id), &code)
        .await?
        .ok_or_else(|| {
            ApiError::bad_request(
                ErrorCode::QuestionnaireUnknown,
                format!("Анкета «{code}» не найдена; выберите анкету в настройках робота"),
            )
        })?;
    // The robot's own properties win; the admin's settings (read with the portal)
    // fill what they leave open.
    let defaults = crate::invitations::portal_settings::from_stored(
        portal.link_days.as_deref(),
        portal.reuse_active.as_deref(),
        state.config.link_days,
    );
    let lifetime_days = prop("link_days")
        .and_then(|d| d.parse::<u32>().ok())
        .filter(|d| (1..=365).contains(d))
        .unwrap_or(defaults.link_days);
    let reuse_active = match prop("reuse_active").as_deref() {
        Some("N" | "n" | "0" | "false") => false,
        Some("Y" | "y" | "1" | "true") => true,
        _ => defaults.reuse_active,
    };
    let given_name = patient::usable_name(prop("patient_name").as_deref());

    let token_hash = hex::encode(Sha256::digest(event_token.as_bytes()));
    let key = format!("robot:{}:{}", portal.id, &token_hash[..32]);
    let (inv, _) = issue::issue(
        state,
        issue::Request {
            portal_id: Some(portal.id),
            channel: Channel::App,
            entity,
            given_name,
            reuse_active,
            lifetime_days,
            dedupe_key: Some(key),
            questionnaire: Some(chosen),
            robot_event: Some(event_token),
        },
    )
    .await?;
    Ok(Json(json!({"ok": true, "survey_id": inv.id})))
}

/// The waiting step's event token and the CRM document it runs on, or the 400 that
/// says which is missing. Shared by both robots.
pub(super) fn step_of(call: &RobotCall) -> Result<(String, EntityRef), ApiError> {
    let event_token = call.event_token.clone().ok_or_else(|| {
        ApiError::bad_request(
            ErrorCode::EventTokenMissing,
            "В вызове робота нет event_token",
        )
    })?;
    let document = call.document_id.document().ok_or_else(|| {
        ApiError::bad_request(
            ErrorCode::DocumentMissing,
            "В вызове робота нет document_id",
        )
    })?;
    let entity = EntityRef::from_document_id(document).ok_or_else(|| {
        ApiError::bad_request(
            ErrorCode::DocumentUnsupported,
            format!("Робот работает только со сделками и лидами, получено «{document}»"),
        )
    })?;
    Ok((event_token, entity))
}
