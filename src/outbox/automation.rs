//! What a completed survey does to the clinic's automation (bitrix24-automation.md
//! §A1, §A2, §A5): the app triggers «Анкета заполнена» and «Анкета: есть отметки
//! для врача», and, only when an answer is flagged, the red-flag activity in the
//! timeline, a notification to the document's responsible user and — in the
//! inbound-webhook setup, which has no triggers or configurable activities — a to-do.
//!
//! One job per completed survey. A trigger execution and the webhook setup's to-do
//! cannot be looked up afterwards, so each is written into the job's row as "sent"
//! before it is sent, and a repeat skips what the row names: a restart mid-delivery
//! never fires a trigger twice (the small window between the note and the call may
//! lose one, never double it; a trigger fired twice would be harmless to the stage,
//! but the clinic's other robots on that stage are not ours to rerun). The activity
//! carries `originId` = the invitation id and a repeat looks for it first, so a red
//! flag is neither lost nor shown twice. The notification carries a `TAG` per
//! document, so a repeat replaces it rather than stacking (§A5).
//!
//! A step the portal refuses for lack of a right (`im`, an administrator, the
//! application context) ends with its reason in Russian in the job's result, which
//! the admin page lists; the other steps are still delivered.

use chrono::{DateTime, Datelike, Duration, Utc, Weekday};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, sea_query::Expr};
use serde_json::{Value, json};

use super::jobs::{JobOutcome, failures};
use super::run::{classify, retry, tried_before};
use crate::bitrix24::{B24Error, Target};
use crate::completion::neutralise;
use crate::crm::{EntityRef, EntityType};
use crate::db::entities::{invitation, outbox_job, response};
use crate::state::AppState;
use crate::survey::FlaggedAnswer;

/// App trigger codes and names (CONTRACT.md, Automation: fixed for administrators).
pub const TRIGGER_COMPLETED: &str = "opros_completed";
pub const TRIGGER_COMPLETED_NAME: &str = "Анкета заполнена";
pub const TRIGGER_RED_FLAGS: &str = "opros_red_flags";
pub const TRIGGER_RED_FLAGS_NAME: &str = "Анкета: есть отметки для врача";
/// The red kanban badge of the red-flag activity (§A2: registered once per portal).
pub const BADGE_CODE: &str = "opros_flags";
/// The «Просмотрено» button's `restEvent` id.
pub const SEEN_ACTION: &str = "seen";
const TODO_TITLE: &str = "Проверьте анкету пациента";
const NO_IM: &str = "нет права im — уведомления врачу не отправляются";

/// `crm.enum.ownertype` (§A1): 1 lead, 2 deal.
pub fn owner_type_id(kind: EntityType) -> u32 {
    match kind {
        EntityType::Deal => 2,
        EntityType::Lead => 1,
    }
}

/// «1 отметка», «2 отметки», «5 отметок», «21 отметка», «12 отметок».
pub fn marks(n: usize) -> String {
    let word = match (n % 10, n % 100) {
        (_, 11..=14) => "отметок",
        (1, _) => "отметка",
        (2..=4, _) => "отметки",
        _ => "отметок",
    };
    format!("{n} {word}")
}

/// «требует» / «требуют» after [`marks`].
fn require(n: usize) -> &'static str {
    if n % 10 == 1 && n % 100 != 11 {
        "требует"
    } else {
        "требуют"
    }
}

/// What was done, for the admin: a step's name, ✓ or the reason.
#[derive(Default)]
struct Steps(Vec<Value>);

impl Steps {
    fn ok(&mut self, what: &str, detail: impl Into<String>) {
        self.0
            .push(json!({"what": what, "ok": true, "detail": detail.into()}));
    }
    fn refused(&mut self, what: &str, reason: impl Into<String>) {
        self.0
            .push(json!({"what": what, "ok": false, "detail": reason.into()}));
    }
}

/// A refusal that retrying cannot cure: the portal lacks a right or a context.
fn refusal(e: &B24Error) -> Option<String> {
    match e {
        B24Error::InsufficientScope => Some("нет нужного права (scope) у приложения".into()),
        B24Error::AccessDenied { .. } | B24Error::WrongAuthType { .. } => Some(e.admin_message()),
        B24Error::Api { code, .. } if code == "ERROR_WRONG_CONTEXT" => Some(e.admin_message()),
        _ => None,
    }
}

/// Steps an earlier try already sent (written before sending).
fn sent_before(row: &outbox_job::Model) -> Vec<String> {
    row.result
        .as_ref()
        .and_then(|r| r.get("sent"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Notes in the job's row that `step` is about to be sent, fenced on the lease: a
/// worker that lost the job sends nothing.
async fn note_sent(
    state: &AppState,
    row: &outbox_job::Model,
    sent: &mut Vec<String>,
    extra: &Value,
    step: &str,
) -> Result<bool, String> {
    sent.push(step.to_owned());
    write_sent(state, row, sent, extra).await
}

/// Takes `step` off the row's list after an answer that proves it did not run (a
/// refused token, a pushback), so the next try sends it. Should the write fail, the
/// step stays noted and is not sent again: lost rather than doubled.
async fn unnote(
    state: &AppState,
    row: &outbox_job::Model,
    sent: &mut Vec<String>,
    extra: &Value,
    step: &str,
) {
    sent.retain(|s| s != step);
    if let Err(e) = write_sent(state, row, sent, extra).await {
        tracing::warn!(error = %e, step, "Не удалось снять отметку об отправке шага");
    }
}

async fn write_sent(
    state: &AppState,
    row: &outbox_job::Model,
    sent: &[String],
    extra: &Value,
) -> Result<bool, String> {
    let noted = outbox_job::Entity::update_many()
        .col_expr(
            outbox_job::Column::Result,
            Expr::value(json!({"sent": sent, "progress": extra})),
        )
        .filter(outbox_job::Column::Id.eq(row.id))
        .filter(outbox_job::Column::Lease.eq(row.lease.clone()))
        .exec(&state.db)
        .await
        .map_err(|e| format!("база данных: {e}"))?;
    Ok(noted.rows_affected == 1)
}

/// The document as the portal has it: responsible user and title.
struct Document {
    responsible: Option<i64>,
    title: String,
}

async fn read_document(
    state: &AppState,
    target: &Target,
    entity: EntityRef,
) -> Result<Document, B24Error> {
    let method = format!("crm.{}.get", entity.kind.timeline_name());
    let record = state
        .b24
        .call(target, &method, json!({"id": entity.id}))
        .await?;
    let responsible = crate::bitrix24::field(&record, "ASSIGNED_BY_ID").and_then(|v| match v {
        Value::String(s) => s.trim().parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    });
    let title = crate::bitrix24::field(&record, "TITLE")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    Ok(Document { responsible, title })
}

/// Runs the automation of one completed survey.
pub async fn run(
    state: &AppState,
    target: &Target,
    row: &outbox_job::Model,
    inv: &invitation::Model,
    now: DateTime<Utc>,
) -> JobOutcome {
    let entity = EntityRef::from_row(inv);
    let flagged = match flagged_of(state, inv, row, now).await {
        Ok(f) => f,
        Err(outcome) => return outcome,
    };
    let mut sent = sent_before(row);
    let mut progress = row
        .result
        .as_ref()
        .and_then(|r| r.get("progress"))
        .cloned()
        .unwrap_or_else(|| json!({}));
    let mut steps = Steps::default();
    let app = matches!(target, Target::Portal { .. });

    if app {
        let mut codes = vec![(TRIGGER_COMPLETED, TRIGGER_COMPLETED_NAME)];
        if !flagged.is_empty() {
            codes.push((TRIGGER_RED_FLAGS, TRIGGER_RED_FLAGS_NAME));
        }
        for (code, name) in codes {
            let what = format!("Триггер «{name}»");
            if sent.iter().any(|s| s == code) {
                steps.ok(&what, "выполнен ранее");
                continue;
            }
            match note_sent(state, row, &mut sent, &progress, code).await {
                Ok(true) => {}
                Ok(false) => return JobOutcome::Lost,
                Err(e) => return retry(failures(row), None, e, now),
            }
            // §A1: the methods need application context and a CRM administrator:
            // the installer's stored tokens are what `Target::Portal` sends.
            let executed = state
                .b24
                .call_once(
                    target,
                    "crm.automation.trigger.execute",
                    json!({
                        "CODE": code,
                        "OWNER_TYPE_ID": owner_type_id(entity.kind),
                        "OWNER_ID": entity.id,
                    }),
                )
                .await;
            match executed {
                Ok(_) => steps.ok(&what, "выполнен"),
                Err(e) => match refusal(&e) {
                    Some(reason) => steps.refused(&what, reason),
                    // Sent and maybe run: not repeated (see the module's notes).
                    None if e.may_have_run() => steps.refused(&what, e.admin_message()),
                    None => {
                        unnote(state, row, &mut sent, &progress, code).await;
                        return classify(&e, row, now);
                    }
                },
            }
        }
    }
    if flagged.is_empty() {
        return JobOutcome::Done(json!({"steps": steps.0, "sent": sent}));
    }

    let document = match read_document(state, target, entity).await {
        Ok(d) => d,
        Err(e) => match refusal(&e) {
            Some(reason) => {
                steps.refused("Сделка или лид", reason);
                return JobOutcome::Done(json!({"steps": steps.0, "sent": sent}));
            }
            None => return classify(&e, row, now),
        },
    };

    if app {
        let what = "Дело «Анкета: отметки для врача»";
        // A repeat looks for the activity by its `originId` first (a red flag must
        // not be lost, nor shown twice).
        // A lookup the portal refuses cannot tell whether the activity exists, so
        // it is not made again: a second badge is worse than a step reported.
        let found = if tried_before(row) {
            match find_activity(state, target, entity, &inv.id).await {
                Ok(found) => Ok(found),
                Err(e) => match refusal(&e) {
                    Some(reason) => Err(reason),
                    None => return classify(&e, row, now),
                },
            }
        } else {
            Ok(None)
        };
        let created = match found {
            Err(reason) => Err(reason),
            Ok(Some(id)) => Ok(Some(id)),
            Ok(None) => {
                let params = activity_params(inv, entity, &flagged, document.responsible);
                match state
                    .b24
                    .call_once(target, "crm.activity.configurable.add", params)
                    .await
                {
                    Ok(v) => Ok(v.get("activity").and_then(|a| a.get("id")).cloned()),
                    Err(e) => match refusal(&e) {
                        Some(reason) => Err(reason),
                        None => return classify(&e, row, now),
                    },
                }
            }
        };
        match created {
            Ok(id) => {
                if let Some(obj) = progress.as_object_mut() {
                    obj.insert("activity_id".into(), id.unwrap_or(Value::Null));
                }
                steps.ok(what, "создано");
            }
            Err(reason) => steps.refused(what, reason),
        }
    } else {
        let what = "Дело «Проверьте анкету пациента»";
        if sent.iter().any(|s| s == "todo") {
            steps.ok(what, "создано ранее");
        } else {
            match note_sent(state, row, &mut sent, &progress, "todo").await {
                Ok(true) => {}
                Ok(false) => return JobOutcome::Lost,
                Err(e) => return retry(failures(row), None, e, now),
            }
            let params = todo_params(entity, &flagged, document.responsible, now);
            match state
                .b24
                .call_once(target, "crm.activity.todo.add", params)
                .await
            {
                Ok(_) => steps.ok(what, "создано"),
                Err(e) => match refusal(&e) {
                    Some(reason) => steps.refused(what, reason),
                    None if e.may_have_run() => steps.refused(what, e.admin_message()),
                    None => {
                        unnote(state, row, &mut sent, &progress, "todo").await;
                        return classify(&e, row, now);
                    }
                },
            }
        }
    }

    let what = "Уведомление ответственному";
    match document.responsible {
        None => steps.refused(what, "у документа нет ответственного"),
        Some(user) => {
            let member_id = member_id(state, inv).await;
            let params = json!({
                "USER_ID": user,
                "MESSAGE": notification_text(entity, &document.title, flagged.len()),
                "TAG": format!("opros|{member_id}|{}_{}", entity.kind.as_str(), entity.id),
            });
            // A repeat replaces the notification (same TAG), so the client may retry.
            match state.b24.call(target, "im.notify.system.add", params).await {
                Ok(_) => steps.ok(what, "отправлено"),
                Err(B24Error::InsufficientScope) => steps.refused(what, NO_IM),
                Err(e) => match refusal(&e) {
                    Some(reason) => steps.refused(what, reason),
                    None => return classify(&e, row, now),
                },
            }
        }
    }
    let mut result = json!({"steps": steps.0, "sent": sent});
    if let (Some(obj), Some(id)) = (result.as_object_mut(), progress.get("activity_id")) {
        obj.insert("activity_id".into(), id.clone());
    }
    JobOutcome::Done(result)
}

/// How many recent automation jobs the admin page looks at.
const RECENT: u64 = 50;

/// Steps of the portal's recent automation jobs that the portal refused, each
/// (what, why) once, for the admin page.
pub async fn refused_lately<C: sea_orm::ConnectionTrait>(
    db: &C,
    portal_id: i64,
) -> Result<Vec<(String, String)>, sea_orm::DbErr> {
    use sea_orm::{QueryOrder, QuerySelect};
    let jobs = outbox_job::Entity::find()
        .filter(outbox_job::Column::PortalId.eq(portal_id))
        .filter(outbox_job::Column::Kind.eq("automate"))
        .filter(outbox_job::Column::DoneAt.is_not_null())
        .order_by_desc(outbox_job::Column::Id)
        .limit(RECENT)
        .all(db)
        .await?;
    let mut out: Vec<(String, String)> = Vec::new();
    let steps = jobs
        .iter()
        .filter_map(|j| j.result.as_ref()?.get("steps")?.as_array().cloned())
        .flatten();
    for step in steps {
        if step.get("ok").and_then(Value::as_bool) != Some(false) {
            continue;
        }
        let field = |name: &str| {
            step.get(name)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let item = (field("what"), field("detail"));
        if !out.contains(&item) {
            out.push(item);
        }
    }
    Ok(out)
}

/// Completes the red-flag activity after «Просмотрено» (§A2: a completed activity
/// drops its kanban badge). Setting `completed` again changes nothing, so the client
/// may repeat it.
pub async fn complete(
    state: &AppState,
    target: &Target,
    row: &outbox_job::Model,
    activity_id: i64,
    now: DateTime<Utc>,
) -> JobOutcome {
    match state
        .b24
        .call(
            target,
            "crm.activity.configurable.update",
            json!({"id": activity_id, "fields": {"completed": true}}),
        )
        .await
    {
        Ok(_) => JobOutcome::Done(json!({"completed": activity_id})),
        // Deleted by a user meanwhile: nothing left to complete.
        Err(e) if e.is_not_found() => JobOutcome::Done(json!({"note": "activity not found"})),
        Err(e) => classify(&e, row, now),
    }
}

/// Our red-flag activity on this document, by the `originId` it was created with.
async fn find_activity(
    state: &AppState,
    target: &Target,
    entity: EntityRef,
    invitation_id: &str,
) -> Result<Option<Value>, B24Error> {
    let list = state
        .b24
        .call(
            target,
            "crm.activity.list",
            json!({
                "filter": {
                    "OWNER_TYPE_ID": owner_type_id(entity.kind),
                    "OWNER_ID": entity.id,
                    "ORIGIN_ID": invitation_id,
                },
                "select": ["ID"],
            }),
        )
        .await?;
    Ok(list
        .as_array()
        .and_then(|rows| rows.first())
        .and_then(|row| crate::bitrix24::field(row, "ID"))
        .and_then(|id| match id {
            Value::String(s) => s.parse::<i64>().ok().map(Value::from),
            Value::Number(_) => Some(id.clone()),
            _ => None,
        }))
}

/// The flagged answers of the stored result; the job's outcome when they cannot be read.
async fn flagged_of(
    state: &AppState,
    inv: &invitation::Model,
    row: &outbox_job::Model,
    now: DateTime<Utc>,
) -> Result<Vec<FlaggedAnswer>, JobOutcome> {
    let resp = match response::Entity::find_by_id(inv.id.clone())
        .one(&state.db)
        .await
    {
        Ok(Some(r)) => r,
        Ok(None) => return Err(JobOutcome::Dead("ответы не найдены".into())),
        Err(e) => return Err(retry(failures(row), None, format!("база данных: {e}"), now)),
    };
    let Some(answers) = resp.answers else {
        return Err(JobOutcome::Dead("опрос не завершён".into()));
    };
    let answers = crate::survey::decode_answers(&inv.id, answers)
        .map_err(|_| JobOutcome::Dead("сохранённые ответы не читаются".into()))?;
    let pinned = crate::questionnaires::of_invitation(state, inv).await;
    let Some(q) =
        pinned.map_err(|e| retry(failures(row), None, format!("база данных: {e}"), now))?
    else {
        return Err(JobOutcome::Dead(format!(
            "анкета {} версии {} не найдена",
            inv.questionnaire_code, inv.questionnaire_version
        )));
    };
    Ok(crate::survey::flagged(&q, &answers))
}

async fn member_id(state: &AppState, inv: &invitation::Model) -> String {
    crate::completion::portal_field(state, inv, |p| p.member_id).await
}

/// The document's card, relative: a slider on the portal (§A2, `redirect`).
fn card_url(entity: EntityRef) -> String {
    format!(
        "/crm/{}/details/{}/",
        entity.kind.timeline_name(),
        entity.id
    )
}

/// «Анкета пациента по сделке «…»: 2 отметки требуют внимания» with a link to the
/// card. The title is the clinic's own data but still user text: neutralised, so it
/// cannot close our `[URL]` or open a tag of its own. Never an answer.
pub fn notification_text(entity: EntityRef, title: &str, flags: usize) -> String {
    let (by, open) = match entity.kind {
        EntityType::Deal => ("по сделке", "Открыть сделку"),
        EntityType::Lead => ("по лиду", "Открыть лид"),
    };
    format!(
        "Анкета пациента {by} «{}»: {} {} внимания. [URL={}]{open}[/URL]",
        neutralise(title),
        marks(flags),
        require(flags),
        card_url(entity),
    )
}

/// The flagged questions' titles, neutralised (they come from the questionnaire, but
/// a clinic's own questionnaire is typed by someone too). Never the answers.
fn titles(flagged: &[FlaggedAnswer]) -> Vec<String> {
    flagged.iter().map(|f| neutralise(&f.question)).collect()
}

/// `crm.activity.configurable.add` (§A2, configurable/structure/*.md): at most two
/// footer buttons, so «PDF» is a body link to the card (its tab shows the PDF to a
/// verified doctor only), which also serves the mobile app where `openRestApp` does
/// not work.
fn activity_params(
    inv: &invitation::Model,
    entity: EntityRef,
    flagged: &[FlaggedAnswer],
    responsible: Option<i64>,
) -> Value {
    let mut blocks = serde_json::Map::new();
    // 1–20 blocks: 18 titles at most, the rest summed up.
    let titles = titles(flagged);
    for (i, title) in titles.iter().take(18).enumerate() {
        blocks.insert(
            format!("q{i}"),
            json!({"type": "withTitle", "properties": {
                "title": "Отметка",
                "block": {"type": "text", "properties": {"value": title}},
            }}),
        );
    }
    if titles.len() > 18 {
        blocks.insert(
            "more".into(),
            json!({"type": "text", "properties": {
                "value": format!("и ещё {}", marks(titles.len() - 18)),
            }}),
        );
    }
    blocks.insert(
        "pdf".into(),
        json!({"type": "link", "properties": {
            "text": "PDF и ответы — во вкладке «Анкета пациента»",
            "action": {"type": "redirect", "uri": card_url(entity)},
        }}),
    );
    let header = format!("Анкета: {} для врача", marks(flagged.len()));
    // No `typeId`: the reference names it without saying which values a portal
    // accepts, and the default type is a configurable activity.
    let mut fields = json!({
        "completed": false,
        "badgeCode": BADGE_CODE,
        "originId": inv.id,
    });
    if let (Some(obj), Some(user)) = (fields.as_object_mut(), responsible) {
        obj.insert("responsibleId".into(), json!(user));
    }
    json!({
        "ownerTypeId": owner_type_id(entity.kind),
        "ownerId": entity.id,
        "fields": fields,
        "layout": {
            "icon": {"code": "attention"},
            "header": {
                "title": header,
                // At most two tags (§A2): the second is kept for the questionnaire's
                // score once questionnaires carry one (issue #17).
                "tags": {"flags": {"title": marks(flagged.len()), "type": "failure"}},
            },
            "body": {"blocks": blocks},
            "footer": {"buttons": {
                "open": {"title": "Открыть анкету", "type": "primary",
                    "action": {"type": "openRestApp", "actionParams": {"survey": inv.id}}},
                SEEN_ACTION: {"title": "Просмотрено", "type": "secondary",
                    "action": {"type": "restEvent", "id": SEEN_ACTION, "animationType": "loader"}},
            }},
        },
    })
}

/// The next working day at 10:00 Moscow time (clinics work in МСК, see
/// `completion::moscow`): a to-do the doctor sees in the morning.
pub fn todo_deadline(now: DateTime<Utc>) -> String {
    let local = now.with_timezone(&crate::completion::MSK);
    let mut day = local.date_naive() + Duration::days(1);
    while matches!(day.weekday(), Weekday::Sat | Weekday::Sun) {
        day += Duration::days(1);
    }
    format!("{}T10:00:00+03:00", day.format("%Y-%m-%d"))
}

/// `crm.activity.todo.add` (§A2): the flagged titles, never the answers.
fn todo_params(
    entity: EntityRef,
    flagged: &[FlaggedAnswer],
    responsible: Option<i64>,
    now: DateTime<Utc>,
) -> Value {
    let mut params = json!({
        "ownerTypeId": owner_type_id(entity.kind),
        "ownerId": entity.id,
        "deadline": todo_deadline(now),
        "title": TODO_TITLE,
        "description": format!(
            "{} для врача: {}.",
            marks(flagged.len()),
            titles(flagged).join("; ")
        ),
        "pingOffsets": [0],
    });
    if let (Some(obj), Some(user)) = (params.as_object_mut(), responsible) {
        obj.insert("responsibleId".into(), json!(user));
    }
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn russian_plural_forms() {
        for (n, text) in [
            (1, "1 отметка"),
            (2, "2 отметки"),
            (4, "4 отметки"),
            (5, "5 отметок"),
            (11, "11 отметок"),
            (12, "12 отметок"),
            (21, "21 отметка"),
            (22, "22 отметки"),
            (111, "111 отметок"),
        ] {
            assert_eq!(marks(n), text);
        }
        assert_eq!(require(1), "требует");
        assert_eq!(require(11), "требуют");
        assert_eq!(require(2), "требуют");
    }

    #[test]
    fn a_deal_title_cannot_open_a_tag_in_the_notification() {
        let entity = EntityRef {
            kind: EntityType::Deal,
            id: 5,
        };
        let text = notification_text(entity, "Приём [/URL][URL=https://evil.example]x", 2);
        assert!(
            text.starts_with("Анкета пациента по сделке «Приём ［/URL］"),
            "{text}"
        );
        assert_eq!(text.matches("[URL=").count(), 1, "{text}");
        assert!(
            text.ends_with("[URL=/crm/deal/details/5/]Открыть сделку[/URL]"),
            "{text}"
        );
        assert!(text.contains("2 отметки требуют внимания"), "{text}");
    }

    #[test]
    fn the_to_do_is_due_the_next_working_morning() {
        let friday_evening = "2026-12-11T15:00:00Z".parse().expect("time");
        assert_eq!(todo_deadline(friday_evening), "2026-12-14T10:00:00+03:00");
        let tuesday = "2026-12-08T06:00:00Z".parse().expect("time");
        assert_eq!(todo_deadline(tuesday), "2026-12-09T10:00:00+03:00");
    }
}
