//! The durable outbox: every side effect on a portal is a row written in the same
//! transaction as the change that causes it, and a worker carries it out.
//!
//! Guarantees: a job is never lost (it stays until done or dead); a repeated request
//! cannot enqueue it twice (unique idempotency key); a job cut off mid-way runs again
//! when its lease lapses (seconds: leases are renewed while a job runs), and each job
//! kind is made harmless to repeat (see `run`, `post_completion`). A portal that pushes back pauses its
//! own queue only (`backpressure`).

pub mod automation;
pub mod backpressure;
pub mod jobs;
pub mod link_field;
pub mod post_completion;
pub mod robot_select;
pub mod run;
pub mod survey_wait;
pub mod uninstall;
pub mod worker;

use sea_orm::{ConnectionTrait, DbErr};
use serde::{Deserialize, Serialize};

use crate::crm::InvitationId;
use crate::db::prepared::NewJob;

/// A side effect to carry out. The payload names rows, not their content, so a job
/// always works with the current data (e.g. a name resolved after the job was queued).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Job {
    /// Read the deal/lead and its contact and store «Фамилия Имя Отчество».
    ResolvePatient { invitation: InvitationId },
    /// `bizproc.event.send` with `survey_url`/`survey_id` for the waiting robot.
    ReturnRobotValues {
        invitation: InvitationId,
        event_token: String,
    },
    /// Write the link into the deal's/lead's link field.
    WriteLinkField { invitation: InvitationId },
    /// Timeline comment «Пациент завершил опрос …» with the PDF attached.
    PostCompletion { invitation: InvitationId },
    /// The robot «Дождаться анкеты» waits for the survey (`survey_wait`); no
    /// invitation: the document had none when the step began (`status=missing`).
    AwaitSurvey {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        invitation: Option<InvitationId>,
        event_token: String,
    },
    /// A waiting step's progress line in the workflow log (`bizproc.activity.log`).
    LogWaitProgress {
        invitation: InvitationId,
        event_token: String,
        step: survey_wait::Progress,
    },
    /// The clinic's automation on a completed survey: app triggers; when flagged, the
    /// red-flag activity (or the webhook setup's to-do) and the responsible's
    /// notification (`automation`).
    Automate { invitation: InvitationId },
    /// «Просмотрено» was pressed by a confirmed user: complete the red-flag activity,
    /// which clears its kanban badge.
    CompleteActivity {
        invitation: InvitationId,
        activity_id: i64,
    },
    /// `ONAPPUNINSTALL` arrived: confirm with the portal that our tokens are dead,
    /// then drop them and, with `clean`, the portal's invitations and answers.
    ConfirmUninstall { clean: bool },
    /// The portal's questionnaires changed: send the robot «Отправить опрос» its
    /// «Анкета» select again (`robot_select`).
    RefreshRobotSelect,
}

impl Job {
    pub fn kind(&self) -> &'static str {
        match self {
            Job::ResolvePatient { .. } => "resolve_patient",
            Job::ReturnRobotValues { .. } => "return_robot_values",
            Job::WriteLinkField { .. } => "write_link_field",
            Job::PostCompletion { .. } => "post_completion",
            Job::AwaitSurvey { .. } => survey_wait::KIND,
            Job::LogWaitProgress { .. } => "log_wait_progress",
            Job::Automate { .. } => "automate",
            Job::CompleteActivity { .. } => "complete_activity",
            Job::ConfirmUninstall { .. } => "confirm_uninstall",
            Job::RefreshRobotSelect => "refresh_robot_select",
        }
    }

    /// The invitation the job works on; `None` for portal-wide jobs.
    pub fn invitation(&self) -> Option<&InvitationId> {
        match self {
            Job::ResolvePatient { invitation }
            | Job::ReturnRobotValues { invitation, .. }
            | Job::WriteLinkField { invitation }
            | Job::PostCompletion { invitation }
            | Job::LogWaitProgress { invitation, .. } => Some(invitation),
            Job::AwaitSurvey { invitation, .. } => invitation.as_ref(),
            Job::Automate { invitation } | Job::CompleteActivity { invitation, .. } => {
                Some(invitation)
            }
            Job::ConfirmUninstall { .. } | Job::RefreshRobotSelect => None,
        }
    }
}

/// Queues a job inside the caller's transaction. A job with the same key is kept as
/// it is: the second enqueue is a no-op.
pub async fn enqueue<C: ConnectionTrait>(
    db: &C,
    portal_id: Option<i64>,
    job: &Job,
    key: &str,
) -> Result<(), DbErr> {
    enqueue_all(db, portal_id, &[(job.clone(), key.to_owned())]).await
}

/// Queues several jobs with their keys in one statement, as [`enqueue`] does each.
pub async fn enqueue_all<C: ConnectionTrait>(
    db: &C,
    portal_id: Option<i64>,
    jobs: &[(Job, String)],
) -> Result<(), DbErr> {
    if jobs.is_empty() {
        return Ok(());
    }
    let mut rows = Vec::with_capacity(jobs.len());
    rows_of(&mut rows, portal_id, jobs, chrono::Utc::now())?;
    // A key already queued keeps its job (ON CONFLICT DO NOTHING).
    crate::db::prepared::insert_jobs(db, rows).await
}

/// The outbox rows `jobs` of `portal_id` are queued as, due at `now`, appended to
/// `rows`: for a caller queueing several portals' jobs in one statement.
pub fn rows_of(
    rows: &mut Vec<NewJob>,
    portal_id: Option<i64>,
    jobs: &[(Job, String)],
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), DbErr> {
    for (job, key) in jobs {
        let payload =
            serde_json::value::to_raw_value(job).map_err(|e| DbErr::Custom(e.to_string()))?;
        // A key of at most 255 bytes has at most 255 characters.
        let idempotency_key = if key.len() <= 255 {
            key.clone()
        } else {
            key.chars().take(255).collect()
        };
        rows.push(NewJob {
            portal_id,
            kind: job.kind(),
            payload,
            idempotency_key,
            run_at: now.timestamp_millis(),
            created_at: now,
        });
    }
    Ok(())
}

pub use worker::Outbox;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_keep_their_stored_shape() {
        // Rows queued before the invitation id had a type of its own read the same.
        let stored = serde_json::json!({"kind": "return_robot_values", "invitation": "a2B3c4D5e6F7", "event_token": "t|1"});
        let job: Job = serde_json::from_value(stored.clone()).expect("reads");
        assert_eq!(
            job.invitation().map(InvitationId::as_str),
            Some("a2B3c4D5e6F7")
        );
        assert_eq!(serde_json::to_value(&job).expect("writes"), stored);
        let portal_wide = Job::ConfirmUninstall { clean: true };
        assert_eq!(portal_wide.invitation(), None);
    }
}
