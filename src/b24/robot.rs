//! `POST /b24/robot/send-survey`: the robot «Отправить опрос» (protocol §4.3).
//! Verifies the call, creates (or reuses) the invitation and queues, in the same
//! transaction, the name lookup, `bizproc.event.send` with `survey_url`/`survey_id`
//! and the link field update. Answers at once: the business process waits for the
//! event, not for this answer.

use chrono::Utc;
use poem::handler;
use poem::web::{Data, Json};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::inbound::{Callback, RobotCall};
use super::portals;
use crate::error::ApiError;
use crate::invitations::issue;
use crate::invitations::{Channel, EntityRef, NewInvitation, patient};
use crate::outbox::Job;
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

    let event_token = call.event_token.clone().ok_or_else(|| {
        ApiError::bad_request("event_token_missing", "В вызове робота нет event_token")
    })?;
    let document = call.document_id.document().ok_or_else(|| {
        ApiError::bad_request("document_missing", "В вызове робота нет document_id")
    })?;
    let entity = EntityRef::from_document_id(document).ok_or_else(|| {
        ApiError::bad_request(
            "document_unsupported",
            format!("Робот работает только со сделками и лидами, получено «{document}»"),
        )
    })?;

    let prop = |k: &str| call.property(k);
    let (code, version) = {
        let catalog = state.catalog();
        let code = prop("survey_code").unwrap_or_else(|| catalog.default_code().to_owned());
        let q = catalog.latest(&code).ok_or_else(|| {
            ApiError::bad_request(
                "questionnaire_unknown",
                format!("Анкета «{code}» не найдена; выберите анкету в настройках робота"),
            )
        })?;
        (q.code.clone(), q.version)
    };
    // The robot's own properties win; the admin's settings (read with the portal)
    // fill what they leave open.
    let defaults = crate::b24::portal_settings::from_stored(
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
    let now = Utc::now();
    let new = NewInvitation {
        portal_id: Some(portal.id),
        channel: Channel::App,
        entity,
        patient_name: given_name
            .clone()
            .unwrap_or_else(|| patient::PLACEHOLDER.to_owned()),
        questionnaire_code: code,
        questionnaire_version: version,
        lifetime_days,
        reuse_active,
        dedupe_key: Some(key.clone()),
    };
    let name_known = given_name.is_some();
    let outcome = issue::store(state, new, now, move |outcome| {
        let inv = &outcome.invitation.id;
        let mut jobs = vec![(
            Job::ReturnRobotValues {
                invitation: inv.clone(),
                event_token: event_token.clone(),
            },
            format!("{key}:return"),
        )];
        jobs.extend(issue::link_jobs(inv, &key, name_known));
        jobs
    })
    .await?;
    let inv = &outcome.invitation;

    issue::log_link(state, inv, outcome.existing);
    Ok(Json(json!({"ok": true, "survey_id": inv.id})))
}
