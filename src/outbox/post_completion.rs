//! The completion job: the timeline comment «Пациент завершил опрос …» with the PDF,
//! posted once. A repeat looks for the comment's marker first, the PDF is rendered
//! here if the submit did not store one, and the comment goes only while the job's
//! lease is still held.

use base64::Engine;
use chrono::{DateTime, Utc};
use sea_orm::EntityTrait;
use serde_json::{Value, json};

use super::jobs::{JobOutcome, failures};
use super::run::{classify, retry, tried_before};
use crate::bitrix24::{B24Error, Target};
use crate::crm::EntityRef;
use crate::db::entities::{invitation, outbox_job, response};
use crate::state::AppState;

/// Posts the timeline comment of a completed survey, with its PDF.
pub async fn run(
    state: &AppState,
    target: &Target,
    row: &outbox_job::Model,
    inv: &invitation::Model,
    now: DateTime<Utc>,
) -> JobOutcome {
    let entity = EntityRef::from_row(inv);
    let resp = match response::Entity::find_by_id(inv.id.clone())
        .one(&state.db)
        .await
    {
        Ok(Some(r)) => r,
        Ok(None) => return JobOutcome::Dead("ответы не найдены".into()),
        Err(e) => return retry(failures(row), None, format!("база данных: {e}"), now),
    };
    let (Some(answers), Some(completed_at)) = (resp.answers.clone(), resp.submitted_at) else {
        return JobOutcome::Dead("опрос не завершён".into());
    };
    // Answers that no longer decode are not posted as an empty result: the job dies
    // with the reason, for the admin to see.
    let answers = match crate::survey::decode_answers(&inv.id, answers) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(survey_id = %inv.id, error = %e, "Сохранённые ответы не читаются");
            return JobOutcome::Dead("сохранённые ответы не читаются".into());
        }
    };
    let pinned = match crate::questionnaires::of_invitation(state, inv).await {
        Ok(q) => q,
        Err(e) => return retry(failures(row), None, format!("база данных: {e}"), now),
    };
    let Some(q) = pinned else {
        return JobOutcome::Dead(format!(
            "анкета {} версии {} не найдена",
            inv.questionnaire_code, inv.questionnaire_version
        ));
    };

    // A repeat after an answer that never came back: the comment may already be there.
    if tried_before(row) {
        match find_posted_comment(state, target, entity, &inv.id).await {
            Ok(Some(id)) => {
                return JobOutcome::Done(json!({"comment_id": id, "note": "found on retry"}));
            }
            Ok(None) => {}
            // An app not allowed to list comments: posting again risks a duplicate,
            // not posting loses the result; the doctor must get it.
            Err(e) if e.is_access_denied() || matches!(e, B24Error::InsufficientScope) => {
                tracing::warn!(
                error = %e,
                    "Не удалось проверить, был ли комментарий отправлен ранее; отправляем"
                )
            }
            Err(e) => return classify(&e, row, now),
        }
    }

    // Rendered here when the submit left it to this job (`completion`).
    let pdf = crate::completion::stored_or_rendered_pdf(state, inv, &resp).await;
    // The portal cannot tell a second comment from a first: post only while the job
    // is still ours, not after another worker took it over from a stalled one.
    match super::jobs::holds(&state.db, row).await {
        Ok(true) => {}
        Ok(false) => return JobOutcome::Lost,
        Err(e) => return retry(failures(row), None, format!("база данных: {e}"), now),
    }
    let mut fields = serde_json::Map::new();
    fields.insert("ENTITY_ID".into(), json!(entity.id));
    fields.insert("ENTITY_TYPE".into(), json!(entity.kind.timeline_name()));
    if let Some(pdf) = pdf {
        let comment = crate::completion::timeline_comment(&q, inv, &answers, completed_at);
        let file = crate::completion::pdf_file_name(inv, completed_at);
        fields.insert("COMMENT".into(), json!(comment));
        fields.insert(
            "FILES".into(),
            json!([[file, base64::engine::general_purpose::STANDARD.encode(&pdf)]]),
        );
    } else {
        let comment =
            crate::completion::timeline_comment_without_pdf(&q, inv, &answers, completed_at);
        fields.insert("COMMENT".into(), json!(comment));
    }
    // Not repeated by the client after an answer that may hide a comment posted:
    // the next try of this job looks for the marker first.
    match state
        .b24
        .call_once(
            target,
            "crm.timeline.comment.add",
            json!({ "fields": fields }),
        )
        .await
    {
        Ok(id) => JobOutcome::Done(json!({"comment_id": id})),
        Err(e) => classify(&e, row, now),
    }
}

async fn find_posted_comment(
    state: &AppState,
    target: &Target,
    entity: EntityRef,
    invitation_id: &str,
) -> Result<Option<Value>, B24Error> {
    let list = state
        .b24
        .list_all(
            target,
            "crm.timeline.comment.list",
            json!({
                "filter": {"ENTITY_ID": entity.id, "ENTITY_TYPE": entity.kind.timeline_name()},
                "select": ["ID", "COMMENT"],
            }),
        )
        .await?;
    Ok(list
        .into_iter()
        .find(|c| {
            c.get("COMMENT")
                .and_then(Value::as_str)
                .is_some_and(|t| crate::completion::carries_marker(t, invitation_id))
        })
        .and_then(|c| c.get("ID").cloned()))
}
