//! The robot «Отправить опрос»'s definition, and the job that keeps its «Анкета»
//! select equal to the portal's catalog. Here, below `local_app`, so that both the
//! registration (install, «Переустановить») and this job build the same fields.
//!
//! `bizproc.robot.update` takes `CODE` and `FIELDS` with `HANDLER` and `NAME`
//! required (bitrix24/b24restdocs, api-reference/bizproc/bizproc-robot/
//! bizproc-robot-update.md), so the whole definition is sent again: a repeat sets
//! the same values, and the select is read when the job runs, so several changes in
//! a row end with the latest catalog.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::jobs::{JobOutcome, failures};
use super::run::{classify, retry};
use crate::bitrix24::Target;
use crate::db::entities::outbox_job;
use crate::state::AppState;

pub const ROBOT_CODE: &str = "opros_send_survey";

/// `bizproc.robot.add`/`update` fields of «Отправить опрос»: its select offers
/// `options` (`questionnaires::robot_options`), by code.
pub fn send_robot_fields(
    state: &AppState,
    options: &[(String, String)],
    installer: Option<i64>,
) -> Value {
    let options: serde_json::Map<String, Value> = options
        .iter()
        .map(|(code, title)| (code.clone(), json!(title)))
        .collect();
    let mut fields = json!({
        "HANDLER": state.config.public("/b24/robot/send-survey"),
        "USE_SUBSCRIPTION": "Y",
        "NAME": {"ru": "Отправить опрос", "en": "Send survey"},
        "DESCRIPTION": {
            "ru": "Создаёт ссылку на анкету пациента и возвращает её в переменные процесса",
            "en": "Creates a patient questionnaire link and returns it to the workflow"
        },
        "PROPERTIES": {
            "survey_code": {
                "Name": {"ru": "Анкета", "en": "Questionnaire"},
                "Type": "select", "Required": "Y", "Multiple": "N",
                "Default": state.catalog().default_code(),
                "Options": options,
            },
            "link_days": {
                "Name": {"ru": "Срок действия ссылки, дней", "en": "Link lifetime, days"},
                "Type": "int", "Required": "N", "Multiple": "N",
                "Default": state.config.link_days,
            },
            "reuse_active": {
                "Name": {"ru": "Отправлять действующую ссылку повторно", "en": "Reuse an active link"},
                "Type": "bool", "Required": "N", "Multiple": "N", "Default": "Y",
            },
        },
        "RETURN_PROPERTIES": {
            "survey_url": {"Name": {"ru": "Ссылка на опрос", "en": "Survey link"}, "Type": "string", "Multiple": "N"},
            "survey_id": {"Name": {"ru": "ID опроса", "en": "Survey ID"}, "Type": "string", "Multiple": "N"},
        },
        "DOCUMENT_TYPE": ["crm", "CCrmDocumentDeal", "DEAL"],
        "FILTER": {"INCLUDE": [["crm", "CCrmDocumentDeal"], ["crm", "CCrmDocumentLead"]]},
    });
    if let (Some(user), Some(obj)) = (installer, fields.as_object_mut()) {
        obj.insert("AUTH_USER_ID".into(), json!(user));
    }
    fields
}

/// The select's choices for the portal `member_id` names; the templates alone when
/// the portal is not stored (yet).
pub async fn options_for_member(
    state: &AppState,
    member_id: &str,
) -> Result<Vec<(String, String)>, sea_orm::DbErr> {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect};
    let portal: Option<i64> = crate::db::entities::portal::Entity::find()
        .select_only()
        .column(crate::db::entities::portal::Column::Id)
        .filter(crate::db::entities::portal::Column::MemberId.eq(member_id))
        .into_tuple()
        .one(&state.db)
        .await?;
    crate::questionnaires::robot_options(state, portal).await
}

/// Sends the robot's definition with the portal's current catalog. A robot the
/// portal no longer has is left to the registration (install, «Переустановить»).
pub async fn run(
    state: &AppState,
    target: &Target,
    row: &outbox_job::Model,
    now: DateTime<Utc>,
) -> JobOutcome {
    let options = match crate::questionnaires::robot_options(state, row.portal_id).await {
        Ok(options) => options,
        Err(e) => return retry(failures(row), None, format!("база данных: {e}"), now),
    };
    let fields = send_robot_fields(state, &options, None);
    match state
        .b24
        .call(
            target,
            "bizproc.robot.update",
            json!({"CODE": ROBOT_CODE, "FIELDS": fields}),
        )
        .await
    {
        Ok(_) => JobOutcome::Done(json!({"options": options.len()})),
        Err(e) if e.code() == Some("ERROR_ACTIVITY_NOT_FOUND") => JobOutcome::Done(
            json!({"skipped": "робот не зарегистрирован; нажмите «Переустановить»"}),
        ),
        Err(e) => classify(&e, row, now),
    }
}
