//! Carrying out claimed jobs of one portal (or of the webhook setup).
//!
//! Jobs that are plain REST calls are coalesced into `batch` requests (up to 50
//! commands, a job's commands never split across two), so a morning's burst of robot
//! runs costs a few requests instead of hundreds. The timeline comment carries a file
//! and goes alone: the batch method refuses file uploads (protocol §12.4).

use std::collections::HashMap;

use base64::Engine;
use chrono::{DateTime, Utc};
use rand::Rng;
use sea_orm::{ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{Value, json};

use super::Job;
use super::jobs::{MAX_ATTEMPTS, Outcome, failures};
use crate::bitrix24::{B24Error, BatchCommand, Target};
use crate::db::entities::{invitation, outbox_job, response};
use crate::invitations::{EntityRef, EntityType, patient};
use crate::state::AppState;

const MAX_COMMANDS: usize = 50;

/// Why a group of jobs has nowhere to go.
pub enum Unreachable {
    /// The portal or the webhook setup is gone: the jobs can never run.
    Gone(String),
    /// Could not tell right now (the database did not answer): retry later.
    Transient(String),
}

/// One claimed job with what it needs.
pub struct Claimed {
    pub row: outbox_job::Model,
    pub job: Job,
}

/// Runs the jobs of one target and returns each job's outcome.
pub async fn run_group(
    state: &AppState,
    target: Result<Target, Unreachable>,
    claimed: Vec<Claimed>,
    now: DateTime<Utc>,
) -> Vec<(outbox_job::Model, Outcome)> {
    let target = match target {
        Ok(t) => t,
        Err(why) => {
            let mut outcomes = Vec::with_capacity(claimed.len());
            for c in claimed {
                let outcome = match (&why, &c.job) {
                    // The portal is already gone: nothing left to confirm, the
                    // data are removed as the (later) event asks.
                    (Unreachable::Gone(_), Job::ConfirmUninstall { clean }) => {
                        super::uninstall::after_uninstall(state, &c.row, *clean, now).await
                    }
                    (Unreachable::Gone(reason), _) => Outcome::Dead(reason.clone()),
                    (Unreachable::Transient(reason), _) => {
                        retry(failures(&c.row), None, reason.clone(), now)
                    }
                };
                outcomes.push((c.row, outcome));
            }
            return outcomes;
        }
    };
    let mut outcomes = Vec::new();
    // Portal-wide jobs first: they name no invitation.
    let (portal_wide, claimed): (Vec<Claimed>, Vec<Claimed>) = claimed
        .into_iter()
        .partition(|c| c.job.invitation().is_none());
    for c in portal_wide {
        let outcome = match &c.job {
            Job::ConfirmUninstall { clean } => {
                super::uninstall::confirm(state, &target, &c.row, *clean, now).await
            }
            _ => Outcome::Dead("not a portal-wide job".into()),
        };
        outcomes.push((c.row, outcome));
    }
    let ids: Vec<String> = claimed
        .iter()
        .filter_map(|c| c.job.invitation().map(str::to_owned))
        .collect();
    let invitations: HashMap<String, invitation::Model> = match invitation::Entity::find()
        .filter(invitation::Column::Id.is_in(ids))
        .all(&state.db)
        .await
    {
        Ok(rows) => rows.into_iter().map(|r| (r.id.clone(), r)).collect(),
        Err(e) => {
            let error = format!("база данных: {e}");
            outcomes.extend(claimed.into_iter().map(|c| {
                let outcome = retry(failures(&c.row), None, error.clone(), now);
                (c.row, outcome)
            }));
            return outcomes;
        }
    };

    let mut batchable = Vec::new();
    // Once the portal pushes back, the group's remaining jobs wait with it: calling
    // again now would only add to its load.
    let mut pushback: Option<String> = None;
    for c in claimed {
        match c.job.invitation().and_then(|id| invitations.get(id)) {
            // Deleted with the portal's data (uninstall with CLEAN): nothing to deliver.
            None => outcomes.push((
                c.row,
                Outcome::Done(json!({"skipped": "invitation deleted"})),
            )),
            Some(inv) => match &c.job {
                Job::PostCompletion { .. } => {
                    let outcome = match &pushback {
                        Some(error) => Outcome::Deferred(now, error.clone()),
                        None => post_completion(state, &target, &c.row, inv, now).await,
                    };
                    if let Outcome::Deferred(_, error) = &outcome {
                        pushback = Some(error.clone());
                    }
                    outcomes.push((c.row, outcome));
                }
                _ => batchable.push((c, inv.clone())),
            },
        }
    }

    if matches!(target, Target::Webhook(_)) {
        let mut kinds: Vec<EntityType> = batchable
            .iter()
            .filter(|(c, _)| matches!(c.job, Job::WriteLinkField { .. }))
            .map(|(_, inv)| EntityRef::from_row(inv).kind)
            .collect();
        kinds.dedup();
        for kind in kinds {
            ensure_webhook_field(state, &target, kind).await;
        }
    }

    let mut chunks: Vec<Vec<(Claimed, invitation::Model, Vec<BatchCommand>)>> = Vec::new();
    let mut chunk: Vec<(Claimed, invitation::Model, Vec<BatchCommand>)> = Vec::new();
    let mut size = 0;
    for (c, inv) in batchable {
        let commands = commands_for(state, &c, &inv);
        if size + commands.len() > MAX_COMMANDS && !chunk.is_empty() {
            chunks.push(std::mem::take(&mut chunk));
            size = 0;
        }
        size += commands.len();
        chunk.push((c, inv, commands));
    }
    if !chunk.is_empty() {
        chunks.push(chunk);
    }
    for chunk in chunks {
        if let Some(error) = &pushback {
            outcomes.extend(
                chunk
                    .into_iter()
                    .map(|(c, _, _)| (c.row, Outcome::Deferred(now, error.clone()))),
            );
            continue;
        }
        let done = run_chunk(state, &target, chunk, now).await;
        pushback = done.iter().find_map(|(_, o)| match o {
            Outcome::Deferred(_, error) => Some(error.clone()),
            _ => None,
        });
        outcomes.extend(done);
    }
    outcomes
}

/// Once per process and entity type: the webhook setups have no install step that
/// would create the link field.
async fn ensure_webhook_field(state: &AppState, target: &Target, kind: EntityType) {
    let entity = kind.timeline_name();
    if state.link_field_checked(entity) {
        return;
    }
    match crate::b24::registration::ensure_link_field(state, target, entity).await {
        Ok(()) => state.mark_link_field_checked(entity),
        Err(e) => tracing::warn!(error = %e, entity, "Не удалось проверить поле для ссылки"),
    }
}

fn entity_method(kind: EntityType, verb: &str) -> String {
    match kind {
        EntityType::Deal => format!("crm.deal.{verb}"),
        EntityType::Lead => format!("crm.lead.{verb}"),
    }
}

fn survey_url(state: &AppState, inv: &invitation::Model) -> String {
    state
        .config
        .public(&format!("/s/{}", state.links.sign(&inv.id, inv.expires_at)))
}

fn commands_for(state: &AppState, c: &Claimed, inv: &invitation::Model) -> Vec<BatchCommand> {
    let entity = EntityRef::from_row(inv);
    let id = c.row.id;
    match &c.job {
        Job::ResolvePatient { .. } => {
            let mut cmds = vec![BatchCommand {
                name: format!("d{id}"),
                method: entity_method(entity.kind, "get"),
                params: json!({"id": entity.id}),
            }];
            if entity.kind == EntityType::Deal {
                // protocol §13: a later command reads an earlier result in the same batch.
                cmds.push(BatchCommand {
                    name: format!("c{id}"),
                    method: "crm.contact.get".into(),
                    params: json!({"id": format!("$result[d{id}][CONTACT_ID]")}),
                });
            }
            cmds
        }
        Job::ReturnRobotValues { event_token, .. } => {
            let url = survey_url(state, inv);
            vec![BatchCommand {
                name: format!("e{id}"),
                method: "bizproc.event.send".into(),
                params: json!({
                    "EVENT_TOKEN": event_token,
                    "RETURN_VALUES": {"survey_url": url, "survey_id": inv.id},
                    "LOG_MESSAGE": format!("Ссылка на опрос: {url}"),
                }),
            }]
        }
        Job::WriteLinkField { .. } => {
            let mut fields = serde_json::Map::new();
            fields.insert(
                state.config.link_field.clone(),
                json!(survey_url(state, inv)),
            );
            vec![BatchCommand {
                name: format!("f{id}"),
                method: entity_method(entity.kind, "update"),
                params: json!({"id": entity.id, "fields": fields}),
            }]
        }
        Job::PostCompletion { .. } | Job::ConfirmUninstall { .. } => Vec::new(),
    }
}

/// Methods whose effect the portal cannot repeat or tell from a repeat: the robot's
/// event token is spent by its first use (protocol §4.4).
fn is_single_use(method: &str) -> bool {
    method.eq_ignore_ascii_case("bizproc.event.send")
}

/// Whether an earlier try of this job may have reached the portal, so its effect
/// may be there already: the job was claimed before (`attempts` counts this claim
/// too; a worker that died mid-call left no outcome), or an admin put it back after
/// failures («Повторить» starts the count again; the last error stays).
fn tried_before(row: &outbox_job::Model) -> bool {
    row.attempts > 1 || row.last_error.is_some()
}

/// `batch` itself refused (a portal or proxy without it), as opposed to a portal
/// that refuses us: only then do the calls go one by one.
fn refuses_batch(e: &B24Error) -> bool {
    match e {
        B24Error::MethodNotFound { .. } | B24Error::WrongAuthType { .. } => true,
        B24Error::InvalidResponse { status, .. } => (400..500).contains(status),
        _ => false,
    }
}

async fn run_chunk(
    state: &AppState,
    target: &Target,
    chunk: Vec<(Claimed, invitation::Model, Vec<BatchCommand>)>,
    now: DateTime<Utc>,
) -> Vec<(outbox_job::Model, Outcome)> {
    let commands: Vec<BatchCommand> = chunk.iter().flat_map(|(_, _, c)| c.clone()).collect();
    // A robot's event token is single-use: a batch carrying it is not sent again by
    // the client after an answer that may hide a batch carried out; the job's next
    // try takes the token's ACCESS_DENIED as delivered.
    let sent = if commands.iter().any(|c| is_single_use(&c.method)) {
        state.b24.batch_once(target, commands.clone(), false).await
    } else {
        state.b24.batch(target, commands.clone(), false).await
    };
    let results = match sent {
        Ok(r) => r
            .into_iter()
            .map(|o| (o.name, o.result))
            .collect::<HashMap<_, _>>(),
        // A portal (or proxy) that refuses `batch` itself still gets every call.
        Err(e) if refuses_batch(&e) => {
            tracing::warn!(error = %e, "Пакетный вызов отклонён, отправляем вызовы по одному");
            one_by_one(state, target, commands).await
        }
        Err(e) => {
            tracing::warn!(error = %e, jobs = chunk.len(), "Пакетный вызов Битрикс24 не прошёл");
            return chunk
                .into_iter()
                .map(|(c, _, _)| {
                    let outcome = classify(&e, &c.row, now);
                    (c.row, outcome)
                })
                .collect();
        }
    };
    let mut out = Vec::new();
    for (c, inv, _) in chunk {
        let id = c.row.id;
        let take = |name: String| {
            results
                .get(&name)
                .cloned()
                .unwrap_or(Err(B24Error::NotExecuted))
        };
        let outcome = match &c.job {
            Job::ResolvePatient { .. } => {
                let entity = take(format!("d{id}"));
                let contact = take(format!("c{id}")).ok();
                match entity {
                    Ok(record) => {
                        let name = patient::best_name(contact.as_ref(), Some(&record));
                        store_name(state, &inv, name, now).await
                    }
                    Err(e) => classify(&e, &c.row, now),
                }
            }
            Job::ReturnRobotValues { .. } => match take(format!("e{id}")) {
                Ok(v) => Outcome::Done(json!({"result": v})),
                // protocol §4.4: a used event token answers ACCESS_DENIED. On a repeat
                // that means an earlier attempt landed before its answer was lost.
                Err(e) if e.is_access_denied() && tried_before(&c.row) => Outcome::Done(
                    json!({"note": "event token already used: an earlier attempt was delivered"}),
                ),
                Err(e) => classify(&e, &c.row, now),
            },
            Job::WriteLinkField { .. } => match take(format!("f{id}")) {
                Ok(v) => Outcome::Done(json!({"result": v})),
                Err(e) => classify(&e, &c.row, now),
            },
            Job::PostCompletion { .. } | Job::ConfirmUninstall { .. } => {
                Outcome::Dead("not a batch job".into())
            }
        };
        out.push((c.row, outcome));
    }
    out
}

/// The batch's commands as single calls, in order, resolving `$result[name][FIELD]`
/// references from earlier answers the way the portal's `batch` does (protocol §13).
async fn one_by_one(
    state: &AppState,
    target: &Target,
    commands: Vec<BatchCommand>,
) -> HashMap<String, Result<Value, B24Error>> {
    let mut results: HashMap<String, Result<Value, B24Error>> = HashMap::new();
    for cmd in commands {
        let params = resolve_references(cmd.params, &results);
        let result = if is_single_use(&cmd.method) {
            state.b24.call_once(target, &cmd.method, params).await
        } else {
            state.b24.call(target, &cmd.method, params).await
        };
        results.insert(cmd.name, result);
    }
    results
}

fn resolve_references(params: Value, results: &HashMap<String, Result<Value, B24Error>>) -> Value {
    match params {
        Value::String(s) if s.starts_with("$result[") => {
            let path: Vec<&str> = s
                .trim_start_matches("$result[")
                .trim_end_matches(']')
                .split("][")
                .collect();
            let found = path.split_first().and_then(|(name, fields)| {
                let mut node = results.get(*name)?.as_ref().ok()?;
                for f in fields {
                    node = node.get(*f)?;
                }
                Some(node.clone())
            });
            found.unwrap_or(Value::String(String::new()))
        }
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, resolve_references(v, results)))
                .collect(),
        ),
        other => other,
    }
}

async fn store_name(
    state: &AppState,
    inv: &invitation::Model,
    name: String,
    now: DateTime<Utc>,
) -> Outcome {
    if name == inv.patient_name
        || (name == patient::PLACEHOLDER && inv.patient_name != patient::PLACEHOLDER)
    {
        return Outcome::Done(json!({"name": "unchanged"}));
    }
    let mut row: invitation::ActiveModel = inv.clone().into();
    row.patient_name = Set(name);
    match row.update(&state.db).await {
        Ok(_) => Outcome::Done(json!({"name": "resolved"})),
        Err(e) => retry(1, None, format!("база данных: {e}"), now),
    }
}

async fn post_completion(
    state: &AppState,
    target: &Target,
    row: &outbox_job::Model,
    inv: &invitation::Model,
    now: DateTime<Utc>,
) -> Outcome {
    let entity = EntityRef::from_row(inv);
    let resp = match response::Entity::find_by_id(inv.id.clone())
        .one(&state.db)
        .await
    {
        Ok(Some(r)) => r,
        Ok(None) => return Outcome::Dead("ответы не найдены".into()),
        Err(e) => return retry(failures(row), None, format!("база данных: {e}"), now),
    };
    let (Some(answers), Some(completed_at)) = (resp.answers.clone(), resp.submitted_at) else {
        return Outcome::Dead("опрос не завершён".into());
    };
    let answers: crate::survey::Answers = serde_json::from_value(answers).unwrap_or_default();
    let Some(q) = state
        .catalog()
        .get(&inv.questionnaire_code, inv.questionnaire_version as u32)
    else {
        return Outcome::Dead(format!(
            "анкета {} версии {} не найдена",
            inv.questionnaire_code, inv.questionnaire_version
        ));
    };

    // A repeat after an answer that never came back: the comment may already be there.
    if tried_before(row) {
        match find_posted_comment(state, target, entity, &inv.id).await {
            Ok(Some(id)) => {
                return Outcome::Done(json!({"comment_id": id, "note": "found on retry"}));
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
        Ok(false) => return Outcome::Lost,
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
        Ok(id) => Outcome::Done(json!({"comment_id": id})),
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

/// Clinic name for the PDF header: `CLINIC_NAME`, else the portal's domain.
pub async fn clinic_name(state: &AppState, inv: &invitation::Model) -> String {
    if let Some(name) = &state.config.clinic_name {
        return name.clone();
    }
    match inv.portal_id {
        Some(pid) => crate::db::entities::portal::Entity::find_by_id(pid)
            .one(&state.db)
            .await
            .ok()
            .flatten()
            .map(|p| p.domain)
            .unwrap_or_default(),
        None => state
            .config
            .webhook_url
            .as_ref()
            .and_then(|w| w.rest_base().host_str().map(str::to_owned))
            .unwrap_or_default(),
    }
}

/// A pushback's first probe comes this soon; the worker spaces later ones out per
/// portal (`backpressure::Probes`).
const FIRST_PROBE: std::time::Duration = std::time::Duration::from_secs(1);

/// Wait for the portal, retry, or give up, as the error says.
pub fn classify(e: &B24Error, row: &outbox_job::Model, now: DateTime<Utc>) -> Outcome {
    if e.is_backpressure() {
        let after = e
            .retry_after()
            .unwrap_or(FIRST_PROBE)
            .min(super::backpressure::PROBE_CAP);
        let after = chrono::Duration::from_std(after).unwrap_or(chrono::Duration::seconds(1));
        Outcome::Deferred(now + after, e.admin_message())
    } else if e.is_retryable() {
        retry(failures(row), e.retry_after(), e.admin_message(), now)
    } else {
        Outcome::Dead(e.admin_message())
    }
}

/// Capped exponential backoff with jitter: 2 s, 4 s, 8 s … up to 10 minutes.
pub fn retry(
    attempts: i32,
    after: Option<std::time::Duration>,
    error: String,
    now: DateTime<Utc>,
) -> Outcome {
    if attempts >= MAX_ATTEMPTS {
        return Outcome::Dead(format!("{error} (попыток: {attempts})"));
    }
    let base_ms = 2_000i64.saturating_mul(1i64 << attempts.clamp(0, 20).saturating_sub(1));
    let capped = base_ms.min(600_000);
    let jitter = rand::thread_rng().gen_range(0.75..1.25);
    let mut delay_ms = (capped as f64 * jitter) as i64;
    if let Some(after) = after {
        delay_ms = delay_ms.max(after.as_millis() as i64);
    }
    Outcome::RetryAt(now + chrono::Duration::milliseconds(delay_ms), error)
}
