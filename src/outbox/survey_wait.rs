//! The robot «Дождаться анкеты» (`opros_await_survey`, `USE_SUBSCRIPTION=Y`): a
//! waiting workflow step is one outbox job holding the step's event token. The job
//! is due at once when the wait is stored, then at the link's expiry; completion,
//! a newer link for the document and the patient's progress make it due again.
//! Each run decides from the stored data: completed, revoked, expired or still
//! waiting. An answer is one `bizproc.event.send`, so exactly once per wait; a
//! step the portal already closed (its timeout, bitrix24-automation.md §A4)
//! answers `ACCESS_DENIED`, which ends the wait as delivered.
//!
//! The job's key names the portal, the document and the invitation
//! (`await:<portal>:<TYPE>_<id>:<invitation|->:<token hash>`), so the writes that
//! change a wait's outcome find it by the key's prefix in their own transaction.

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DbBackend, DbErr, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, sea_query::Expr,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::jobs::{self, JobOutcome, failures};
use super::run::{classify, retry};
use super::{Job, enqueue_all};
use crate::bitrix24::Target;
use crate::crm::{EntityRef, InvitationId};
use crate::db::entities::{invitation, outbox_job, response};
use crate::state::AppState;

/// `outbox_job.kind` of a wait.
pub const KIND: &str = "await_survey";

/// Progress written into the workflow log while the step waits (once each per wait).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Progress {
    Opened,
    DraftSaved,
}

impl Progress {
    pub fn message(self) -> &'static str {
        match self {
            Progress::Opened => "Пациент открыл анкету",
            Progress::DraftSaved => "Черновик сохранён",
        }
    }
    fn key(self) -> &'static str {
        match self {
            Progress::Opened => "opened",
            Progress::DraftSaved => "draft",
        }
    }
}

/// What the robot hands back (CONTRACT «Automation»: `RETURN_PROPERTIES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    Expired,
    Revoked,
    Missing,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Expired => "expired",
            Outcome::Revoked => "revoked",
            Outcome::Missing => "missing",
        }
    }
}

fn token_hash(event_token: &str) -> String {
    hex::encode(Sha256::digest(event_token.as_bytes()))[..32].to_owned()
}

fn document_prefix(portal_id: i64, entity: EntityRef) -> String {
    format!("await:{portal_id}:{}_{}:", entity.kind, entity.id)
}

/// The keys of every wait on a document as a range in byte order (see
/// [`keys_under`]).
pub fn document_keys(portal_id: i64, entity: EntityRef) -> std::ops::Range<String> {
    keys_under(&document_prefix(portal_id, entity))
}

/// The keys that begin with `prefix` as a range in byte order, SQLite's `BINARY`
/// collation: from the prefix up to the prefix with its last character raised by
/// one (a wait's prefixes end with `:`, so `DEAL_5:` does not take in `DEAL_50:`).
/// A search of the keys' unique index by this range finds the waits under a prefix
/// without reading every open wait, as a `LIKE` does on SQLite (issue 19: with
/// 20 000 open waits a new link's wake took the robot from ~7 000 calls/s to ~200).
fn keys_under(prefix: &str) -> std::ops::Range<String> {
    let mut end = prefix.to_owned();
    while let Some(c) = end.pop() {
        // The next character, past the surrogates' gap after U+D7FF; a last
        // character that has none (U+10FFFF) gives way to the one before it.
        if let Some(next) = (u32::from(c) + 1..=u32::from(char::MAX)).find_map(char::from_u32) {
            end.push(next);
            return prefix.to_owned()..end;
        }
    }
    // An empty prefix (or U+10FFFF alone): up to the last character, beyond any
    // key these prefixes are made of.
    prefix.to_owned()..format!("{prefix}{}", char::MAX)
}

/// The wait's idempotency key: the same robot call twice stores one wait.
pub fn wait_key(
    portal_id: i64,
    entity: EntityRef,
    invitation: Option<&str>,
    event_token: &str,
) -> String {
    format!(
        "{}{}:{}",
        document_prefix(portal_id, entity),
        invitation.unwrap_or("-"),
        token_hash(event_token)
    )
}

/// How many robots «Дождаться анкеты» may wait on one document at a time. A
/// workflow has one or two; the application token, which any portal user can read,
/// must not let anyone pile up waits that each cost a portal call and a log line on
/// every move of the patient.
pub const MAX_OPEN_WAITS: u64 = 20;

/// The waits still open on a document (caller's transaction).
pub async fn open_waits<C: ConnectionTrait>(
    db: &C,
    portal_id: i64,
    entity: EntityRef,
) -> Result<u64, DbErr> {
    let (kind, keys) = waits_under(
        db.get_database_backend(),
        &[document_prefix(portal_id, entity)],
    );
    outbox_job::Entity::find()
        .filter(kind)
        .filter(keys)
        .filter(outbox_job::Column::DoneAt.is_null())
        .filter(outbox_job::Column::DeadAt.is_null())
        .count(db)
        .await
}

/// Stores a wait in the caller's transaction; due at once, so a survey already
/// completed (or none at all) is answered without waiting. The opening is logged
/// at once too when the patient opened the link before the step began.
pub async fn store<C: ConnectionTrait>(
    db: &C,
    portal_id: i64,
    entity: EntityRef,
    inv: Option<&invitation::Model>,
    event_token: &str,
) -> Result<(), DbErr> {
    let id = inv.map(InvitationId::of);
    let key = wait_key(
        portal_id,
        entity,
        id.as_ref().map(InvitationId::as_str),
        event_token,
    );
    let mut queued = Vec::with_capacity(2);
    if let (Some(inv), Some(id)) = (inv, &id)
        && inv.opened_at.is_some()
    {
        queued.push(progress_job(id, event_token, Progress::Opened));
    }
    queued.push((
        Job::AwaitSurvey {
            invitation: id,
            event_token: event_token.to_owned(),
        },
        key,
    ));
    enqueue_all(db, Some(portal_id), &queued).await
}

fn progress_job(id: &InvitationId, event_token: &str, step: Progress) -> (Job, String) {
    (
        Job::LogWaitProgress {
            invitation: id.clone(),
            event_token: event_token.to_owned(),
            step,
        },
        format!("awaitlog:{}:{}", token_hash(event_token), step.key()),
    )
}

/// The conditions on a wait's kind and key for the waits whose keys begin with one
/// of `prefixes`. On SQLite the keys are ranges of their unique index, and `+kind`
/// keeps the planner off the index by kind, whose walk read every open wait of every
/// portal (`KIND` is a constant of letters and `_`, safe to inline). PostgreSQL
/// keeps `LIKE`: its collation need not keep the range in byte order.
fn waits_under(
    backend: DbBackend,
    prefixes: &[String],
) -> (sea_orm::sea_query::SimpleExpr, Condition) {
    let key = outbox_job::Column::IdempotencyKey;
    let sqlite = backend == DbBackend::Sqlite;
    let keys = prefixes.iter().fold(Condition::any(), |any, prefix| {
        if sqlite {
            let range = keys_under(prefix);
            any.add(
                Condition::all()
                    .add(key.gte(range.start))
                    .add(key.lt(range.end)),
            )
        } else {
            any.add(key.like(format!("{prefix}%")))
        }
    });
    let kind = if sqlite {
        Expr::cust(format!("+\"kind\" = '{KIND}'"))
    } else {
        outbox_job::Column::Kind.eq(KIND)
    };
    (kind, keys)
}

/// The open waits whose keys begin with one of `prefixes` are due now.
async fn make_due<C: ConnectionTrait>(
    db: &C,
    prefixes: &[String],
    now: DateTime<Utc>,
) -> Result<u64, DbErr> {
    due_under(db.get_database_backend(), prefixes, now)
        .exec(db)
        .await
        .map(|r| r.rows_affected)
}

// `db::prepared::commit_new_invitations` writes these conditions out in SQL: keep
// them in step.
fn due_under(
    backend: DbBackend,
    prefixes: &[String],
    now: DateTime<Utc>,
) -> sea_orm::UpdateMany<outbox_job::Entity> {
    let (kind, keys) = waits_under(backend, prefixes);
    outbox_job::Entity::update_many()
        .col_expr(
            outbox_job::Column::RunAt,
            Expr::value(now.timestamp_millis()),
        )
        .filter(kind)
        .filter(keys)
        .filter(outbox_job::Column::DoneAt.is_null())
        .filter(outbox_job::Column::DeadAt.is_null())
}

/// The key prefix of every wait on `inv`.
pub fn invitation_prefix(inv: &invitation::Model) -> Option<String> {
    let portal = inv.portal_id?;
    Some(format!(
        "{}{}:",
        document_prefix(portal, EntityRef::from_row(inv)),
        inv.id
    ))
}

/// The waits under `prefix` (an [`invitation_prefix`]) are due now (caller's
/// transaction): for a claim that carries the prefix, not the invitation's row.
pub async fn wake_prefix<C: ConnectionTrait>(
    db: &C,
    prefix: &str,
    now: DateTime<Utc>,
) -> Result<u64, DbErr> {
    make_due(db, &[prefix.to_owned()], now).await
}

/// A newer link was made for the document: its waits are due now and find
/// themselves revoked (caller's transaction).
pub async fn wake_document<C: ConnectionTrait>(
    db: &C,
    portal_id: i64,
    entity: EntityRef,
    now: DateTime<Utc>,
) -> Result<u64, DbErr> {
    make_due(db, &[document_prefix(portal_id, entity)], now).await
}

/// [`wake_document`] for several documents, a statement per power-of-two chunk of
/// them (the group commit's batch of new links; on SQLite, `db::prepared::commit_new_invitations` wakes them
/// with the same conditions in its own statement).
pub async fn wake_documents<C: ConnectionTrait>(
    db: &C,
    documents: &[(i64, EntityRef)],
    now: DateTime<Utc>,
) -> Result<u64, DbErr> {
    let mut prefixes: Vec<String> = documents
        .iter()
        .map(|(portal, entity)| document_prefix(*portal, *entity))
        .collect();
    prefixes.sort_unstable();
    prefixes.dedup();
    let mut woken = 0;
    // Chunks of a power of two: few distinct statement texts to prepare.
    for range in crate::db::prepared::pow2_chunks(prefixes.len()) {
        woken += make_due(db, &prefixes[range], now).await?;
    }
    Ok(woken)
}

/// The patient opened the link or saved a draft: every pending wait on the
/// invitation gets the log line, once per wait (the key).
pub async fn note_progress<C: ConnectionTrait>(
    db: &C,
    inv: &invitation::Model,
    step: Progress,
) -> Result<usize, DbErr> {
    let Some(prefix) = invitation_prefix(inv) else {
        return Ok(0);
    };
    let (kind, keys) = waits_under(db.get_database_backend(), &[prefix]);
    let payloads: Vec<Value> = outbox_job::Entity::find()
        .select_only()
        .column(outbox_job::Column::Payload)
        .filter(kind)
        .filter(keys)
        .filter(outbox_job::Column::DoneAt.is_null())
        .filter(outbox_job::Column::DeadAt.is_null())
        .limit(MAX_OPEN_WAITS)
        .into_tuple()
        .all(db)
        .await?;
    let queued: Vec<(Job, String)> = payloads
        .into_iter()
        .filter_map(|p| match serde_json::from_value(p) {
            Ok(Job::AwaitSurvey {
                invitation: Some(id),
                event_token,
            }) => Some(progress_job(&id, &event_token, step)),
            _ => None,
        })
        .collect();
    enqueue_all(db, inv.portal_id, &queued).await?;
    Ok(queued.len())
}

/// The `bizproc.activity.log` call of a progress job.
pub fn progress_params(event_token: &str, step: Progress) -> Value {
    json!({"EVENT_TOKEN": event_token, "LOG_MESSAGE": step.message()})
}

/// Whether a newer link of the same questionnaire was made for the same document
/// (what reuse would have returned instead): another questionnaire sent to the same
/// deal replaces nothing.
async fn replaced<C: ConnectionTrait>(db: &C, inv: &invitation::Model) -> Result<bool, DbErr> {
    let newer = invitation::Entity::find()
        .select_only()
        .column(invitation::Column::Id)
        .filter(invitation::Column::PortalId.eq(inv.portal_id))
        .filter(invitation::Column::EntityType.eq(inv.entity_type))
        .filter(invitation::Column::EntityId.eq(inv.entity_id))
        .filter(invitation::Column::QuestionnaireCode.eq(inv.questionnaire_code.clone()))
        .filter(invitation::Column::CreatedAt.gt(inv.created_at))
        .order_by_desc(invitation::Column::CreatedAt)
        .into_tuple::<String>()
        .one(db)
        .await?;
    Ok(newer.is_some())
}

/// The values of a completed survey: flagged question titles only, never answers.
async fn completed_values(state: &AppState, inv: &invitation::Model) -> Result<Value, String> {
    let resp = response::Entity::find_by_id(inv.id.clone())
        .one(&state.db)
        .await
        .map_err(|e| format!("база данных: {e}"))?;
    let answers = resp
        .and_then(|r| r.answers)
        .ok_or_else(|| "ответы не найдены".to_owned())?;
    let answers = crate::survey::decode_answers(&inv.id, answers)
        .map_err(|_| "сохранённые ответы не читаются".to_owned())?;
    let q = crate::questionnaires::of_invitation(state, inv)
        .await
        .map_err(|e| format!("база данных: {e}"))?
        .ok_or_else(|| {
            format!(
                "анкета {} версии {} не найдена",
                inv.questionnaire_code, inv.questionnaire_version
            )
        })?;
    let flagged = crate::survey::flagged(&q, &answers);
    let titles: Vec<String> = flagged.iter().map(|f| f.question.clone()).collect();
    let completed_at = inv
        .completed_at
        .map(|at| at.with_timezone(&crate::completion::MSK).to_rfc3339())
        .unwrap_or_default();
    Ok(json!({
        "status": Outcome::Completed.as_str(),
        "red_flags": titles.len(),
        "red_flag_titles": titles.join("; "),
        // CONTRACT «Automation»: «PHQ-9: 12 — умеренная», empty without scores;
        // totals and band names only, never an answer.
        "score": crate::completion::score_line(&q, &answers).unwrap_or_default(),
        "completed_at": completed_at,
    }))
}

fn unanswered(outcome: Outcome) -> Value {
    json!({
        "status": outcome.as_str(),
        "red_flags": 0,
        "red_flag_titles": "",
        "score": "",
        "completed_at": "",
    })
}

/// Runs a wait: answers the step if its survey has an outcome, else waits on.
pub async fn run(
    state: &AppState,
    target: &Target,
    row: &outbox_job::Model,
    inv: Option<&invitation::Model>,
    event_token: &str,
    now: DateTime<Utc>,
) -> JobOutcome {
    let values = match inv {
        None => unanswered(Outcome::Missing),
        Some(inv) if inv.status == invitation::Status::Completed => {
            match completed_values(state, inv).await {
                Ok(v) => v,
                Err(e) => return retry(failures(row), None, e, now),
            }
        }
        Some(inv) => match replaced(&state.db, inv).await {
            Err(e) => return retry(failures(row), None, format!("база данных: {e}"), now),
            Ok(true) => unanswered(Outcome::Revoked),
            Ok(false) if inv.expires_at <= now => unanswered(Outcome::Expired),
            Ok(false) => return JobOutcome::Waiting(inv.expires_at),
        },
    };
    // The token is single-use: only the lease's holder may spend it.
    match jobs::holds(&state.db, row).await {
        Ok(true) => {}
        Ok(false) => return JobOutcome::Lost,
        Err(e) => return retry(failures(row), None, format!("база данных: {e}"), now),
    }
    let status = values["status"].as_str().unwrap_or_default().to_owned();
    let params = json!({
        "EVENT_TOKEN": event_token,
        "RETURN_VALUES": values,
        "LOG_MESSAGE": format!("Анкета: {}", status_text(&status)),
    });
    match state
        .b24
        .call_once(target, "bizproc.event.send", params)
        .await
    {
        Ok(_) => JobOutcome::Done(json!({"status": status})),
        // §A4: the step was closed (its timeout ran out) or an earlier attempt spent
        // the token: either way nobody waits for this answer any more.
        Err(e) if e.is_access_denied() => {
            JobOutcome::Done(json!({"status": status, "note": "the step no longer waits"}))
        }
        Err(e) => classify(&e, row, now),
    }
}

fn status_text(status: &str) -> &'static str {
    match status {
        "completed" => "заполнена",
        "expired" => "срок ссылки истёк",
        "revoked" => "ссылку заменила новая",
        _ => "ссылка не отправлялась",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crm::EntityType;

    #[test]
    fn a_wait_key_is_found_by_its_invitation_and_by_its_document() {
        let deal = EntityRef {
            kind: EntityType::Deal,
            id: 5,
        };
        let key = wait_key(7, deal, Some("a2B3c4D5e6F7"), "wf|A1_2|x");
        assert!(key.starts_with(&document_prefix(7, deal)), "{key}");
        assert!(key.contains(":a2B3c4D5e6F7:"), "{key}");
        assert!(
            !key.contains("wf|A1_2|x"),
            "the token itself is not in the key"
        );
        let none = wait_key(7, deal, None, "wf|A1_2|x");
        assert_ne!(key, none);
        assert_eq!(Outcome::Missing.as_str(), "missing");
        // In byte order, the document's range holds its keys and no other deal's.
        let keys = document_keys(7, deal);
        assert!(keys.contains(&key) && keys.contains(&none), "{keys:?}");
        let other = |id| {
            let deal = EntityRef {
                kind: EntityType::Deal,
                id,
            };
            wait_key(7, deal, None, "wf|A1_2|x")
        };
        for id in [50, 4, 6, 55] {
            assert!(!keys.contains(&other(id)), "{keys:?} {}", other(id));
        }
        // Any prefix: its last character raised, or everything after it.
        assert_eq!(
            keys_under("await:7:"),
            "await:7:".to_owned().."await:7;".to_owned()
        );
        assert_eq!(keys_under("ab"), "ab".to_owned().."ac".to_owned());
        assert_eq!(
            keys_under("a\u{D7FF}"),
            "a\u{D7FF}".to_owned().."a\u{E000}".to_owned()
        );
        assert_eq!(
            keys_under("ab\u{10FFFF}"),
            "ab\u{10FFFF}".to_owned().."ac".to_owned()
        );
        assert_eq!(keys_under(""), String::new()..char::MAX.to_string());
    }

    /// Waking, counting and noting the waits under a prefix search the keys' index
    /// on SQLite, a range per prefix: the walk of the index by kind read every open
    /// wait of every portal. Plans are fixed for a schema, so this guards the
    /// figures without timing anything.
    #[tokio::test]
    async fn waits_under_a_prefix_are_found_by_a_search_of_their_keys() {
        use sea_orm::QueryTrait;
        let db = crate::db::connect("sqlite::memory:").await.expect("db");
        crate::db::migrate(&db).await.expect("migrated");
        let deal = |id| EntityRef {
            kind: EntityType::Deal,
            id,
        };
        let prefixes = [document_prefix(7, deal(5)), document_prefix(7, deal(6))];
        let backend = DbBackend::Sqlite;
        let wake = crate::db::query_plan(
            &db,
            due_under(backend, &prefixes, Utc::now()).build(backend),
        )
        .await;
        let (kind, keys) = waits_under(backend, &prefixes[..1]);
        let count = crate::db::query_plan(
            &db,
            outbox_job::Entity::find()
                .filter(kind)
                .filter(keys)
                .filter(outbox_job::Column::DoneAt.is_null())
                .build(backend),
        )
        .await;
        for plan in [&wake, &count] {
            assert!(
                plan.contains(
                    "USING INDEX sqlite_autoindex_outbox_job_1 (idempotency_key>? AND idempotency_key<?)"
                ),
                "{plan}"
            );
            assert!(!plan.contains("idx_outbox_open_by_kind"), "{plan}");
        }
        assert!(wake.contains("MULTI-INDEX OR"), "{wake}");
    }
}
