//! Issuing a link, the one entry for every caller (the robot, the webhook robot, the
//! CRM events, a doctor's «Отправить новую ссылку»): the invitation plus, in the same
//! transaction, the name lookup, the link field update and, for the robot, the
//! values it waits for.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sea_orm::DbErr;

use super::{Channel, EntityRef, Issued, NewInvitation, create_or_reuse, patient};
use crate::db::entities::invitation;
use crate::error::ApiError;
use crate::outbox::{self, Job};
use crate::questionnaires::Resolved;
use crate::state::AppState;

/// The link lifetime: the portal administrator's setting, else `SURVEY_LINK_DAYS`.
pub async fn lifetime_for(state: &AppState, portal_id: Option<i64>) -> Result<u32, ApiError> {
    Ok(match portal_id {
        Some(id) => {
            super::portal_settings::load(&state.db, id, state.config.link_days)
                .await?
                .link_days
        }
        None => state.config.link_days,
    })
}

/// A new deal or lead from an event: one invitation per document (a repeated delivery
/// of the event finds the first one), its link written to the link field, the name
/// looked up in the portal.
pub async fn create_for_new_entity(
    state: &AppState,
    portal_id: Option<i64>,
    channel: Channel,
    entity: EntityRef,
    dedupe_key: &str,
) -> Result<invitation::Model, ApiError> {
    let lifetime_days = lifetime_for(state, portal_id).await?;
    issue(
        state,
        Request {
            portal_id,
            channel,
            entity,
            given_name: None,
            reuse_active: false,
            lifetime_days,
            dedupe_key: Some(dedupe_key.to_owned()),
            questionnaire: None,
            robot_event: None,
        },
    )
    .await
    .map(|(inv, _)| inv)
}

/// What to issue a link for.
#[derive(Debug, Clone)]
pub struct Request {
    pub portal_id: Option<i64>,
    pub channel: Channel,
    pub entity: EntityRef,
    /// A usable name from the caller; `None` queues a lookup in the portal.
    pub given_name: Option<String>,
    /// Return the active link of the same document instead of a new one.
    pub reuse_active: bool,
    pub lifetime_days: u32,
    pub dedupe_key: Option<String>,
    /// The questionnaire (`questionnaires::resolve`); `None` takes the default code,
    /// as the portal has it (its own questionnaire of that code, else the template).
    pub questionnaire: Option<Resolved>,
    /// The robot's `event_token`: `survey_url`/`survey_id` go back to the waiting
    /// business process, on a repeat or a reused link too, and every job is keyed
    /// by `dedupe_key` (one robot run, one set of jobs).
    pub robot_event: Option<String>,
}

/// Creates (or reuses) an invitation and queues the name lookup and the link field
/// update in the same transaction. Returns the invitation and whether it existed.
pub async fn issue(
    state: &AppState,
    request: Request,
) -> Result<(invitation::Model, bool), ApiError> {
    let Request {
        portal_id,
        channel,
        entity,
        given_name,
        reuse_active,
        lifetime_days,
        dedupe_key,
        questionnaire,
        robot_event,
    } = request;
    let chosen = match questionnaire {
        Some(chosen) => chosen,
        None => {
            let code = state.catalog().default_code();
            crate::questionnaires::resolve(state, portal_id, code)
                .await?
                .ok_or_else(|| ApiError::internal(format!("questionnaire {code} missing")))?
        }
    };
    let now = Utc::now();
    let delivers = portal_id.is_some() || state.config.webhook_url.is_some();
    let new = NewInvitation {
        portal_id,
        channel,
        entity,
        patient_name: given_name
            .clone()
            .unwrap_or_else(|| patient::PLACEHOLDER.to_owned()),
        questionnaire_code: chosen.questionnaire.code.clone(),
        questionnaire_version: chosen.questionnaire.version,
        questionnaire_version_id: chosen.version_id,
        lifetime_days,
        reuse_active,
        dedupe_key: dedupe_key.clone(),
    };
    let name_known = given_name.is_some();
    let field = entity.kind.has_link_field();
    let outcome = store(state, new, now, move |outcome: &Issued| {
        let inv = &outcome.invitation.id;
        if let (Some(event_token), Some(key)) = (&robot_event, &dedupe_key) {
            return robot_jobs(
                inv,
                event_token,
                &robot_job_key(inv, key, reuse_active),
                name_known,
                field,
            );
        }
        if outcome.existing || !delivers {
            return Vec::new();
        }
        link_jobs(inv, &format!("invitation:{inv}"), name_known, field)
    })
    .await?;
    let inv = outcome.invitation.clone();
    if !delivers {
        tracing::warn!(
            "BITRIX24_WEBHOOK_URL не задан: ссылка не будет записана в сделку, а результат опроса не попадёт в Битрикс24"
        );
    }
    log_link(state, &inv, outcome.existing);
    Ok((inv, outcome.existing))
}

/// Creates (or reuses) an invitation and queues the jobs `jobs` names for the
/// outcome, in one transaction shared with concurrent callers
/// (`AppState::group_write`), then wakes the outbox.
async fn store<J>(
    state: &AppState,
    new: NewInvitation,
    now: DateTime<Utc>,
    jobs: J,
) -> Result<Issued, DbErr>
where
    J: Fn(&Issued) -> Vec<(Job, String)> + Send + Sync + 'static,
{
    let jobs = Arc::new(jobs);
    if !new.reuse_active {
        let outcome = state
            .group_write_batched(super::batch::Fresh { new, now, jobs })
            .await?;
        state.nudge_outbox_for(outcome.invitation.portal_id);
        return Ok(outcome);
    }
    let outcome = state
        .group_write(move |txn| {
            let (new, jobs) = (new.clone(), Arc::clone(&jobs));
            Box::pin(async move {
                let outcome = create_or_reuse(txn, &new, now).await?;
                outbox::enqueue_all(txn, new.portal_id, &jobs(&outcome)).await?;
                // A new link replaces the document's older ones: their waits answer
                // `revoked`.
                if let (false, Some(portal)) = (outcome.existing, new.portal_id) {
                    outbox::survey_wait::wake_document(txn, portal, new.entity, now).await?;
                }
                Ok(outcome)
            })
        })
        .await?;
    state.nudge_outbox_for(outcome.invitation.portal_id);
    Ok(outcome)
}

/// The name lookup (unless the caller knew the name) and the link field update for
/// a new invitation (`field`: the document has the link field); `key` makes a
/// repeat of the same request a no-op.
fn link_jobs(invitation: &str, key: &str, name_known: bool, field: bool) -> Vec<(Job, String)> {
    let mut jobs = Vec::with_capacity(2);
    if !name_known {
        jobs.push((
            Job::ResolvePatient {
                invitation: invitation.to_owned().into(),
            },
            format!("{key}:name"),
        ));
    }
    if field {
        jobs.push((
            Job::WriteLinkField {
                invitation: invitation.to_owned().into(),
            },
            format!("{key}:field"),
        ));
    }
    jobs
}

/// What the keys of a robot call's jobs start with. A run that never reuses a link
/// owns its invitation: the call's dedupe `key` is stored on it, and every repeat
/// of the call finds it by that key. Its keys begin with the invitation's id, so
/// that they append to their unique index as the id does (`db::ordered_id`). A run
/// that may reuse a link keys its jobs by its dedupe key alone: a repeat may meet
/// another link (the first one completed meanwhile), and must still queue nothing
/// twice. An invitation of the 12-character form, made before, keeps the keys its
/// jobs were queued under.
fn robot_job_key(invitation: &str, key: &str, reuse_active: bool) -> String {
    if reuse_active || invitation.len() == 12 {
        return key.to_owned();
    }
    format!("{invitation}:{key}")
}

/// The robot's jobs: its values back to the business process, then the link jobs,
/// all keyed by the robot run so a repeated call queues nothing new.
fn robot_jobs(
    inv: &str,
    event_token: &str,
    key: &str,
    name_known: bool,
    field: bool,
) -> Vec<(Job, String)> {
    let mut jobs = vec![(
        Job::ReturnRobotValues {
            invitation: inv.to_owned().into(),
            event_token: event_token.to_owned(),
        },
        format!("{key}:return"),
    )];
    jobs.extend(link_jobs(inv, key, name_known, field));
    jobs
}

fn log_link(state: &AppState, inv: &invitation::Model, existing: bool) {
    // The link's token is never logged, and signing one only to mask it cost a
    // robot call more than its whole JSON answer (issue 19's profile).
    tracing::info!(
        survey_id = %inv.id,
        entity = %format_args!("{}_{}", inv.entity_type, inv.entity_id),
        link = %format_args!("{}/s/{{token}}", state.config.public_url.as_str().trim_end_matches('/')),
        existing,
        "Сгенерирована ссылка для опроса"
    );
}

pub fn link_of(state: &AppState, inv: &invitation::Model) -> String {
    super::links::survey_url(&state.config, &state.links, inv)
}
