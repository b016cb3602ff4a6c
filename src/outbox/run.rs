//! Carrying out claimed jobs of one portal (or of the webhook setup): planning them
//! into batches and reading each job's outcome back.
//!
//! Jobs that are plain REST calls are coalesced into `batch` requests (up to 50
//! commands, a job's commands never split across two), so a morning's burst of robot
//! runs costs a few requests instead of hundreds. The timeline comment carries a file
//! and goes alone (`post_completion`): the batch method refuses file uploads
//! (protocol §12.4).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rand::Rng;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{Value, json};

use super::Job;
use super::jobs::{JobOutcome, MAX_ATTEMPTS, failures};
use crate::bitrix24::{B24Error, BatchCommand, Target};
use crate::crm::{EntityRef, EntityType, patient};
use crate::db::entities::{invitation, outbox_job};
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
) -> Vec<(outbox_job::Model, JobOutcome)> {
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
                    (Unreachable::Gone(reason), _) => JobOutcome::Dead(reason.clone()),
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
            Job::AwaitSurvey { event_token, .. } => {
                super::survey_wait::run(state, &target, &c.row, None, event_token, now).await
            }
            Job::RefreshRobotSelect => super::robot_select::run(state, &target, &c.row, now).await,
            _ => JobOutcome::Dead("not a portal-wide job".into()),
        };
        outcomes.push((c.row, outcome));
    }
    let ids: Vec<String> = claimed
        .iter()
        .filter_map(|c| c.job.invitation().map(|id| id.as_str().to_owned()))
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
    let mut automation = Vec::new();
    // Once the portal pushes back, the group's remaining jobs wait with it: calling
    // again now would only add to its load.
    let mut pushback: Option<String> = None;
    for c in claimed {
        match c
            .job
            .invitation()
            .and_then(|id| invitations.get(id.as_str()))
        {
            // Deleted with the portal's data (uninstall with CLEAN): nothing to deliver.
            None => outcomes.push((
                c.row,
                JobOutcome::Done(json!({"skipped": "invitation deleted"})),
            )),
            Some(inv) => match &c.job {
                Job::PostCompletion { .. } => {
                    let outcome = match &pushback {
                        Some(error) => JobOutcome::Deferred(now, error.clone()),
                        None => super::post_completion::run(state, &target, &c.row, inv, now).await,
                    };
                    if let JobOutcome::Deferred(_, error) = &outcome {
                        pushback = Some(error.clone());
                    }
                    outcomes.push((c.row, outcome));
                }
                Job::AwaitSurvey { event_token, .. } => {
                    let outcome = match &pushback {
                        Some(error) => JobOutcome::Deferred(now, error.clone()),
                        None => {
                            super::survey_wait::run(
                                state,
                                &target,
                                &c.row,
                                Some(inv),
                                event_token,
                                now,
                            )
                            .await
                        }
                    };
                    if let JobOutcome::Deferred(_, error) = &outcome {
                        pushback = Some(error.clone());
                    }
                    outcomes.push((c.row, outcome));
                }
                // The clinic's automation goes after the comments and the robots'
                // answers: it is several calls per survey, and a portal's budget
                // should first carry what patients and workflows wait for.
                Job::Automate { .. } | Job::CompleteActivity { .. } => {
                    automation.push((c, inv.clone()))
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
                    .map(|(c, _, _)| (c.row, JobOutcome::Deferred(now, error.clone()))),
            );
            continue;
        }
        let done = run_chunk(state, &target, chunk, now).await;
        pushback = done.iter().find_map(|(_, o)| match o {
            JobOutcome::Deferred(_, error) => Some(error.clone()),
            _ => None,
        });
        outcomes.extend(done);
    }
    for (c, inv) in automation {
        let outcome = match (&pushback, &c.job) {
            (Some(error), _) => JobOutcome::Deferred(now, error.clone()),
            (None, Job::CompleteActivity { activity_id, .. }) => {
                super::automation::complete(state, &target, &c.row, *activity_id, now).await
            }
            (None, _) => super::automation::run(state, &target, &c.row, &inv, now).await,
        };
        if let JobOutcome::Deferred(_, error) = &outcome {
            pushback = Some(error.clone());
        }
        outcomes.push((c.row, outcome));
    }
    outcomes
}

/// Once per process and entity type: the webhook setups have no install step that
/// would create the link field.
async fn ensure_webhook_field(state: &AppState, target: &Target, kind: EntityType) {
    let entity = kind.timeline_name();
    let entity = entity.as_str();
    if state.link_field_checked(entity) {
        return;
    }
    match super::link_field::ensure(state, target, entity).await {
        Ok(()) => state.mark_link_field_checked(entity),
        Err(e) => tracing::warn!(error = %e, entity, "Не удалось проверить поле для ссылки"),
    }
}

fn commands_for(state: &AppState, c: &Claimed, inv: &invitation::Model) -> Vec<BatchCommand> {
    let entity = EntityRef::from_row(inv);
    let id = c.row.id;
    match &c.job {
        Job::ResolvePatient { .. } => {
            let (method, params) = entity.read_call();
            let mut cmds = vec![BatchCommand {
                name: format!("d{id}"),
                method,
                params,
            }];
            // protocol §13: a later command reads an earlier result in the same batch.
            if let Some(contact) = entity.contact_ref(&format!("d{id}")) {
                cmds.push(BatchCommand {
                    name: format!("c{id}"),
                    method: "crm.contact.get".into(),
                    params: json!({"id": contact}),
                });
            }
            cmds
        }
        Job::ReturnRobotValues { event_token, .. } => {
            let url = state.survey_url(inv);
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
                json!(state.survey_url(inv)),
            );
            vec![BatchCommand {
                name: format!("f{id}"),
                method: format!("crm.{}.update", entity.kind.timeline_name()),
                params: json!({"id": entity.id, "fields": fields}),
            }]
        }
        Job::LogWaitProgress {
            event_token, step, ..
        } => vec![BatchCommand {
            name: format!("l{id}"),
            method: "bizproc.activity.log".into(),
            params: super::survey_wait::progress_params(event_token, *step),
        }],
        Job::PostCompletion { .. }
        | Job::AwaitSurvey { .. }
        | Job::Automate { .. }
        | Job::CompleteActivity { .. }
        | Job::ConfirmUninstall { .. }
        | Job::RefreshRobotSelect => Vec::new(),
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
pub(super) fn tried_before(row: &outbox_job::Model) -> bool {
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
) -> Vec<(outbox_job::Model, JobOutcome)> {
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
    // Names read from the portal, written together after the loop: `(index in
    // out, invitation id, name)`.
    let mut names = Vec::new();
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
                    Ok(read) => {
                        let record = crate::crm::document::record(inv.entity_type, read);
                        let name = patient::best_name(contact.as_ref(), Some(&record));
                        if name_is_news(&inv, &name) {
                            names.push((out.len(), inv.id.clone(), name));
                            JobOutcome::Done(json!({"name": "resolved"}))
                        } else {
                            JobOutcome::Done(json!({"name": "unchanged"}))
                        }
                    }
                    Err(e) => classify(&e, &c.row, now),
                }
            }
            Job::ReturnRobotValues { .. } => match take(format!("e{id}")) {
                Ok(v) => JobOutcome::Done(json!({"result": v})),
                // protocol §4.4: a used event token answers ACCESS_DENIED. On a repeat
                // that means an earlier attempt landed before its answer was lost.
                Err(e) if e.is_access_denied() && tried_before(&c.row) => JobOutcome::Done(
                    json!({"note": "event token already used: an earlier attempt was delivered"}),
                ),
                Err(e) => classify(&e, &c.row, now),
            },
            Job::WriteLinkField { .. } => match take(format!("f{id}")) {
                Ok(v) => JobOutcome::Done(json!({"result": v})),
                Err(e) => classify(&e, &c.row, now),
            },
            Job::LogWaitProgress { .. } => match take(format!("l{id}")) {
                Ok(v) => JobOutcome::Done(json!({"result": v})),
                // The step was answered or closed: the line has nowhere to go.
                Err(e) if e.is_access_denied() => {
                    JobOutcome::Done(json!({"note": "the step no longer waits"}))
                }
                Err(e) => classify(&e, &c.row, now),
            },
            Job::PostCompletion { .. }
            | Job::AwaitSurvey { .. }
            | Job::Automate { .. }
            | Job::CompleteActivity { .. }
            | Job::ConfirmUninstall { .. }
            | Job::RefreshRobotSelect => JobOutcome::Dead("not a batch job".into()),
        };
        out.push((c.row, outcome));
    }
    if let Err(e) = store_names(state, &names).await {
        for (at, _, _) in names {
            if let Some((row, outcome)) = out.get_mut(at) {
                *outcome = retry(failures(row), None, format!("база данных: {e}"), now);
            }
        }
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

/// Whether a name read from the portal says more than the stored one: the
/// placeholder never replaces a name a caller gave.
fn name_is_news(inv: &invitation::Model, name: &str) -> bool {
    name != inv.patient_name
        && !(name == patient::PLACEHOLDER && inv.patient_name != patient::PLACEHOLDER)
}

/// Writes a chunk's names in the next group commit, together with concurrent robot
/// calls' links, through the one connection that writes (issue 19: a write from
/// another SQLite connection also empties the writer's page cache).
async fn store_names(
    state: &AppState,
    names: &[(usize, String, String)],
) -> Result<(), sea_orm::DbErr> {
    if names.is_empty() {
        return Ok(());
    }
    let names: std::sync::Arc<[(String, String)]> = names
        .iter()
        .map(|(_, id, name)| (id.clone(), name.clone()))
        .collect();
    state
        .group_write(move |txn| {
            let names = std::sync::Arc::clone(&names);
            Box::pin(async move { crate::db::prepared::set_patient_names(txn, &names).await })
        })
        .await
}

/// A pushback's first probe comes this soon; the worker spaces later ones out per
/// portal (`backpressure::Probes`).
const FIRST_PROBE: std::time::Duration = std::time::Duration::from_secs(1);

/// Wait for the portal, retry, or give up, as the error says.
pub fn classify(e: &B24Error, row: &outbox_job::Model, now: DateTime<Utc>) -> JobOutcome {
    if e.is_backpressure() {
        let after = e
            .retry_after()
            .unwrap_or(FIRST_PROBE)
            .min(super::backpressure::PROBE_CAP);
        let after = chrono::Duration::from_std(after).unwrap_or(chrono::Duration::seconds(1));
        JobOutcome::Deferred(now + after, e.admin_message())
    } else if e.is_retryable() {
        retry(failures(row), e.retry_after(), e.admin_message(), now)
    } else {
        JobOutcome::Dead(e.admin_message())
    }
}

/// Capped exponential backoff with jitter: 2 s, 4 s, 8 s … up to 10 minutes.
pub fn retry(
    attempts: i32,
    after: Option<std::time::Duration>,
    error: String,
    now: DateTime<Utc>,
) -> JobOutcome {
    if attempts >= MAX_ATTEMPTS {
        return JobOutcome::Dead(format!("{error} (попыток: {attempts})"));
    }
    let base_ms = 2_000i64.saturating_mul(1i64 << attempts.clamp(0, 20).saturating_sub(1));
    let capped = base_ms.min(600_000);
    let jitter = rand::thread_rng().gen_range(0.75..1.25);
    let mut delay_ms = (capped as f64 * jitter) as i64;
    if let Some(after) = after {
        delay_ms = delay_ms.max(after.as_millis() as i64);
    }
    JobOutcome::RetryAt(now + chrono::Duration::milliseconds(delay_ms), error)
}
