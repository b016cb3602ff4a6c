//! What the application registers in a portal: the robots «Отправить опрос» and
//! «Дождаться анкеты», the «Анкета пациента» tabs, the application's events, the link
//! field, the app triggers and the red-flag badge. Idempotent: list
//! first, create what is missing, update the robot, and take "already there" errors
//! for success (protocol §3.4, §4.5, §6.1, §7.2, §12.3). Run on every install and on
//! the admin's request, since an application update can remove registrations.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::bitrix24::field;
use crate::bitrix24::{B24Error, BatchCommand, Target};
use crate::db::entities::portal;
use crate::outbox::link_field::{add_link_field, has_field};
use crate::outbox::{automation, robot_select};
use crate::state::AppState;

pub use crate::outbox::robot_select::ROBOT_CODE;
pub const AWAIT_ROBOT_CODE: &str = "opros_await_survey";
pub const TAB_TITLE: &str = "Анкета пациента";
pub const PLACEMENTS: [&str; 2] = ["CRM_DEAL_DETAIL_TAB", "CRM_LEAD_DETAIL_TAB"];
pub const ENTITIES: [&str; 2] = ["deal", "lead"];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Step {
    /// Russian, for the admin: «Робот «Отправить опрос»».
    pub what: String,
    pub ok: bool,
    /// «создан», «обновлён», «уже был», or what went wrong and what to do.
    pub detail: String,
    /// Without it the product does not work (the robot, the deal tab, uninstall).
    pub critical: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Report {
    pub steps: Vec<Step>,
}

impl Report {
    /// The report stored with the portal (`portal.registration`), read back as this
    /// type; `None` before the first check. A stored value that is not a report is an
    /// error, not an empty report.
    pub fn stored(portal: &portal::Model) -> Result<Option<Report>, serde_json::Error> {
        portal
            .registration
            .clone()
            .map(serde_json::from_value)
            .transpose()
    }

    pub fn all_critical_ok(&self) -> bool {
        self.steps.iter().all(|s| s.ok || !s.critical)
    }
    fn push(&mut self, what: impl Into<String>, critical: bool, result: Result<&str, String>) {
        let (ok, detail) = match result {
            Ok(d) => (true, d.to_owned()),
            Err(e) => (false, e),
        };
        self.steps.push(Step {
            what: what.into(),
            ok,
            detail,
            critical,
        });
    }
}

/// «Отправить опрос»: its select offers the portal's questionnaires
/// (`outbox::robot_select`, shared with the job that refreshes it).
async fn robot_fields(state: &AppState, target: &Target, installer: Option<i64>) -> Value {
    let options = match target {
        Target::Portal { member_id } => robot_select::options_for_member(state, member_id).await,
        _ => crate::questionnaires::robot_options(state, None).await,
    };
    let options = match options {
        Ok(options) => options,
        Err(e) => {
            // The templates still make a working robot; the next change refreshes it.
            tracing::warn!(error = %e, "Не удалось прочитать анкеты портала для робота");
            crate::questionnaires::robot_options(state, None)
                .await
                .unwrap_or_default()
        }
    };
    robot_select::send_robot_fields(state, &options, installer)
}

/// «Дождаться анкеты» (CONTRACT «Automation»): waits in the workflow
/// (`USE_SUBSCRIPTION=Y`) and hands back the survey's outcome, never an answer.
fn await_robot_fields(state: &AppState, installer: Option<i64>) -> Value {
    let string = |ru: &str, en: &str| json!({"Name": {"ru": ru, "en": en}, "Type": "string", "Multiple": "N"});
    let mut fields = json!({
        "HANDLER": state.config.public("/b24/robot/await-survey"),
        "USE_SUBSCRIPTION": "Y",
        "NAME": {"ru": "Дождаться анкеты", "en": "Wait for the questionnaire"},
        "DESCRIPTION": {
            "ru": "Ждёт, пока пациент заполнит анкету, и возвращает итог: статус, число отметок для врача, их вопросы, балл",
            "en": "Waits until the patient completes the questionnaire and returns its outcome"
        },
        "PROPERTIES": {
            "survey_id": {
                "Name": {"ru": "ID опроса (пусто — последний опрос документа)", "en": "Survey ID (empty: the latest)"},
                "Type": "string", "Required": "N", "Multiple": "N",
            },
        },
        "RETURN_PROPERTIES": {
            "status": string("Статус анкеты", "Status"),
            "red_flags": {"Name": {"ru": "Отметок для врача", "en": "Red flags"}, "Type": "int", "Multiple": "N"},
            "red_flag_titles": string("Вопросы с отметками", "Flagged questions"),
            "score": string("Балл", "Score"),
            "completed_at": {"Name": {"ru": "Заполнена", "en": "Completed at"}, "Type": "datetime", "Multiple": "N"},
        },
        "DOCUMENT_TYPE": ["crm", "CCrmDocumentDeal", "DEAL"],
        "FILTER": {"INCLUDE": [["crm", "CCrmDocumentDeal"], ["crm", "CCrmDocumentLead"]]},
    });
    if let (Some(user), Some(obj)) = (installer, fields.as_object_mut()) {
        obj.insert("AUTH_USER_ID".into(), json!(user));
    }
    fields
}

fn handler_of(item: &Value) -> String {
    field(item, "handler")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn list_of(v: Option<&Result<Value, B24Error>>) -> Result<Vec<Value>, String> {
    match v {
        Some(Ok(Value::Array(items))) => Ok(items.clone()),
        Some(Ok(Value::Object(map))) => Ok(map.values().cloned().collect()),
        Some(Ok(_)) => Ok(Vec::new()),
        Some(Err(e)) => Err(e.admin_message()),
        None => Err("нет ответа портала".into()),
    }
}

/// What the portal told about our registrations, by the names of `list`'s commands.
type Listed = std::collections::HashMap<String, Result<Value, B24Error>>;

/// Checks every registration and creates or updates what is needed.
pub async fn ensure(state: &AppState, target: &Target, installer: Option<i64>) -> Report {
    let mut report = Report::default();
    let listed = match list(state, target).await {
        Ok(listed) => listed,
        Err(e) => {
            report.push("Связь с порталом", true, Err(e.admin_message()));
            return report;
        }
    };
    ensure_robots(state, target, installer, &listed, &mut report).await;
    ensure_tabs(state, target, &listed, &mut report).await;
    ensure_events(state, target, &listed, &mut report).await;
    ensure_link_fields(state, target, &listed, &mut report).await;
    ensure_automation(state, target, &mut report).await;
    report
}

/// One request to learn what is there.
async fn list(state: &AppState, target: &Target) -> Result<Listed, B24Error> {
    let mut listing = vec![
        BatchCommand::new("robots", "bizproc.robot.list", json!({})),
        BatchCommand::new("placements", "placement.get", json!({})),
        BatchCommand::new("events", "event.get", json!({})),
    ];
    for entity in ENTITIES {
        listing.push(BatchCommand::new(
            format!("uf_{entity}"),
            format!("crm.{entity}.userfield.list"),
            json!({"filter": {"FIELD_NAME": state.config.link_field}}),
        ));
    }
    let results = state.b24.batch(target, listing, false).await?;
    Ok(results.into_iter().map(|o| (o.name, o.result)).collect())
}

/// The robots: each added if missing, else updated so a new version's properties
/// reach the portal.
async fn ensure_robots(
    state: &AppState,
    target: &Target,
    installer: Option<i64>,
    listed: &Listed,
    report: &mut Report,
) {
    let robots = [
        (
            ROBOT_CODE,
            robot_fields(state, target, installer).await,
            "Робот «Отправить опрос»",
        ),
        (
            AWAIT_ROBOT_CODE,
            await_robot_fields(state, installer),
            "Робот «Дождаться анкеты»",
        ),
    ];
    for (code, fields, what) in robots {
        let result = ensure_robot(state, target, listed, code, fields).await;
        report.push(what, true, result);
    }
}

async fn ensure_robot(
    state: &AppState,
    target: &Target,
    listed: &Listed,
    code: &str,
    fields: Value,
) -> Result<&'static str, String> {
    let robot_known =
        list_of(listed.get("robots")).map(|codes| codes.iter().any(|c| c.as_str() == Some(code)));
    match robot_known {
        Ok(true) => state
            .b24
            .call(
                target,
                "bizproc.robot.update",
                json!({"CODE": code, "FIELDS": fields}),
            )
            .await
            .map(|_| "обновлён")
            .map_err(|e| e.admin_message()),
        Ok(false) | Err(_) => {
            let mut params = fields;
            if let Some(obj) = params.as_object_mut() {
                obj.insert("CODE".into(), json!(code));
            }
            match state.b24.call(target, "bizproc.robot.add", params).await {
                Ok(_) => Ok("создан"),
                Err(e) if e.is_already_registered() => Ok("уже был"),
                Err(e) => Err(e.admin_message()),
            }
        }
    }
}

/// The tabs: ours bound; one left from an old service address unbound.
async fn ensure_tabs(state: &AppState, target: &Target, listed: &Listed, report: &mut Report) {
    let tab_handler = state.config.public("/b24/placement/deal-tab");
    let placements = list_of(listed.get("placements")).unwrap_or_default();
    for (i, code) in PLACEMENTS.iter().enumerate() {
        let ours = |p: &Value| field(p, "placement").and_then(Value::as_str) == Some(*code);
        let mut bound = false;
        for p in placements.iter().filter(|p| ours(p)) {
            let handler = handler_of(p);
            if handler == tab_handler {
                bound = true;
            } else if handler.ends_with("/b24/placement/deal-tab") {
                let _ = state
                    .b24
                    .call(
                        target,
                        "placement.unbind",
                        json!({"PLACEMENT": code, "HANDLER": handler}),
                    )
                    .await;
            }
        }
        let result = if bound {
            Ok("уже была")
        } else {
            match state
                .b24
                .call(
                    target,
                    "placement.bind",
                    json!({
                        "PLACEMENT": code,
                        "HANDLER": tab_handler,
                        "TITLE": TAB_TITLE,
                        "DESCRIPTION": "Ответы пациента на анкету и PDF-отчёт",
                        "LANG_ALL": {
                            "ru": {"TITLE": TAB_TITLE},
                            "en": {"TITLE": "Patient questionnaire"},
                        },
                    }),
                )
                .await
            {
                Ok(_) => Ok("добавлена"),
                Err(e) if e.is_already_registered() => Ok("уже была"),
                Err(e) => Err(e.admin_message()),
            }
        };
        let what = if i == 0 {
            "Вкладка «Анкета пациента» в сделке"
        } else {
            "Вкладка «Анкета пациента» в лиде"
        };
        report.push(what, i == 0, result);
    }
}

/// Application events: the uninstall (critical); the install event (protocol §3.3:
/// bound before installFinish, it carries the install's tokens even when the install
/// page never finishes) and the update, which brings a new application token (§3.4).
async fn ensure_events(state: &AppState, target: &Target, listed: &Listed, report: &mut Report) {
    let event_handler = state.config.public("/b24/events");
    let events = list_of(listed.get("events")).unwrap_or_default();
    for (event, what, critical) in [
        (
            "ONAPPUNINSTALL",
            "Событие удаления приложения (ONAPPUNINSTALL)",
            true,
        ),
        ("ONAPPINSTALL", "Событие установки (ONAPPINSTALL)", false),
        ("ONAPPUPDATE", "Событие обновления (ONAPPUPDATE)", false),
        (
            "ONCRMTIMELINEITEMACTION",
            "Кнопка «Просмотрено» в деле (ONCRMTIMELINEITEMACTION)",
            false,
        ),
    ] {
        let event_bound = events.iter().any(|e| {
            field(e, "event")
                .and_then(Value::as_str)
                .is_some_and(|n| n.eq_ignore_ascii_case(event))
                && handler_of(e) == event_handler
        });
        let result = if event_bound {
            Ok("уже было")
        } else {
            match state
                .b24
                .call(
                    target,
                    "event.bind",
                    json!({"event": event, "handler": event_handler}),
                )
                .await
            {
                Ok(_) => Ok("подписано"),
                Err(e) if e.is_already_registered() => Ok("уже было"),
                Err(e) => Err(e.admin_message()),
            }
        };
        report.push(what, critical, result);
    }
}

/// The link field on deals and leads.
async fn ensure_link_fields(
    state: &AppState,
    target: &Target,
    listed: &Listed,
    report: &mut Report,
) {
    let link_field = &state.config.link_field;
    for entity in ENTITIES {
        let present = list_of(listed.get(&format!("uf_{entity}")))
            .map(|fields| has_field(&fields, link_field));
        let result = match present {
            Ok(true) => Ok("уже было"),
            _ => add_link_field(state, target, entity).await,
        };
        let what = if entity == "deal" {
            format!("Поле {link_field} в сделках")
        } else {
            format!("Поле {link_field} в лидах")
        };
        report.push(what, false, result);
    }
}

/// The app triggers and the red-flag badge (bitrix24-automation.md §A1, §A2). Adding a
/// trigger with a known `CODE` only renames it, so `add` alone is idempotent; a badge
/// added again replaces itself. Both need a CRM administrator and the application
/// context: a refusal is listed with its reason and the rest goes on.
async fn ensure_automation(state: &AppState, target: &Target, report: &mut Report) {
    for (code, name) in [
        (
            automation::TRIGGER_COMPLETED,
            automation::TRIGGER_COMPLETED_NAME,
        ),
        (
            automation::TRIGGER_RED_FLAGS,
            automation::TRIGGER_RED_FLAGS_NAME,
        ),
    ] {
        let result = state
            .b24
            .call(
                target,
                "crm.automation.trigger.add",
                json!({"CODE": code, "NAME": name}),
            )
            .await
            .map(|_| "зарегистрирован")
            .map_err(|e| e.admin_message());
        report.push(format!("Триггер «{name}»"), false, result);
    }
    let badge = state
        .b24
        .call(
            target,
            "crm.activity.badge.add",
            json!({
                "code": automation::BADGE_CODE,
                "title": "Анкета",
                "value": "Отметки для врача",
                "type": "failure",
            }),
        )
        .await;
    let result = match badge {
        Ok(_) => Ok("зарегистрирован"),
        Err(e) if e.is_already_registered() => Ok("уже был"),
        Err(e) => Err(e.admin_message()),
    };
    report.push(
        "Красный значок «Отметки для врача» в канбане",
        false,
        result,
    );
    // The notification needs `im`; without it the rest works, so the admin is told
    // here rather than by a failed delivery.
    if let Some(scope) = granted_scope(state, target).await
        && !scope.iter().any(|s| s == "im")
    {
        report.push(
            "Уведомления врачу",
            false,
            Err("нет права im — уведомления врачу не отправляются".into()),
        );
    }
}

/// The scopes the OAuth server said it granted (stored at install), when known.
async fn granted_scope(state: &AppState, target: &Target) -> Option<Vec<String>> {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    let Target::Portal { member_id } = target else {
        return None;
    };
    let row = portal::Entity::find()
        .filter(portal::Column::MemberId.eq(member_id.as_str()))
        .one(&state.db)
        .await
        .ok()??;
    Some(row.scope?.split(',').map(|s| s.trim().to_owned()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn portal_with(registration: Option<Value>) -> portal::Model {
        let now = chrono::Utc::now();
        portal::Model {
            id: 1,
            member_id: "m".into(),
            domain: "clinic.bitrix24.ru".into(),
            client_endpoint: "https://clinic.bitrix24.ru/rest/".into(),
            server_endpoint: None,
            access_token: None,
            refresh_token: None,
            expires_at: None,
            application_token: None,
            scope: None,
            installed_by: None,
            status: portal::Status::Installed,
            registration,
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn the_stored_report_reads_back_as_its_type() {
        let mut report = Report::default();
        report.push("Робот «Отправить опрос»", true, Ok("создан"));
        report.push("Поле в лидах", false, Err("нет прав".into()));
        let stored = portal_with(Some(serde_json::to_value(&report).expect("json")));
        assert_eq!(Report::stored(&stored).expect("reads"), Some(report));
        assert_eq!(Report::stored(&portal_with(None)).expect("reads"), None);
        let broken = portal_with(Some(json!({"steps": [{"what": 1}]})));
        assert!(Report::stored(&broken).is_err());
    }
}
