//! A patient's way through a link: open, save drafts, submit once.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
    sea_query::{Expr, ExprTrait, OnConflict},
};

use super::links::LinkError;
use super::{COMPLETED, OPENED, SENT};
use crate::crm::InvitationId;
use crate::db::entities::{invitation, response};
use crate::error::{ApiError, ErrorCode};
use crate::outbox::survey_wait::{self, Progress};
use crate::outbox::{self, Job};
use crate::report::RenderedReport;
use crate::state::AppState;
use crate::survey::{Answers, Questionnaire, decode_answers};

/// Drafts are partial answers; this bounds what one patient can make us store.
pub const MAX_DRAFT_BYTES: usize = 64 * 1024;

/// Why a patient's step did not go through. `Internal` keeps its cause (a database
/// error stays a `DbErr` in the chain) for the one log line `ApiError::internal` writes.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    #[error("link not found")]
    NotFound,
    #[error("link expired")]
    Expired,
    #[error("survey already completed")]
    Completed,
    #[error("answers invalid")]
    Invalid(BTreeMap<String, String>),
    #[error("answers too large")]
    TooLarge,
    #[error(transparent)]
    Internal(anyhow::Error),
}

impl From<sea_orm::DbErr> for FlowError {
    fn from(e: sea_orm::DbErr) -> Self {
        FlowError::Internal(e.into())
    }
}

impl From<FlowError> for ApiError {
    fn from(e: FlowError) -> Self {
        match e {
            FlowError::NotFound => {
                ApiError::not_found(ErrorCode::SurveyNotFound, "Ссылка не найдена")
            }
            FlowError::Expired => ApiError::gone(
                ErrorCode::SurveyExpired,
                "Срок действия ссылки истёк — обратитесь в клинику",
            ),
            FlowError::Completed => ApiError::conflict(
                ErrorCode::SurveyCompleted,
                "Ответы по этой ссылке уже получены. Спасибо!",
            ),
            FlowError::Invalid(errors) => ApiError::validation(errors),
            FlowError::TooLarge => ApiError::too_large("Слишком много данных в ответах"),
            FlowError::Internal(e) => ApiError::internal(format!("{e:#}")),
        }
    }
}

/// The invitation behind a link. A tampered or unknown token is `NotFound` with no
/// hint why; a genuine expired one is `Expired`.
pub async fn by_token(state: &AppState, token: &str) -> Result<invitation::Model, FlowError> {
    let now = Utc::now();
    let id = match state.links.verify(token, now) {
        Ok(id) => id,
        Err(LinkError::Expired { invitation }) => {
            // Only a link we know of is "expired"; a deleted one is simply unknown.
            return match invitation::Entity::find_by_id(invitation.into_string())
                .one(&state.db)
                .await?
            {
                Some(_) => Err(FlowError::Expired),
                None => Err(FlowError::NotFound),
            };
        }
        Err(LinkError::Invalid) => return Err(FlowError::NotFound),
    };
    let inv = invitation::Entity::find_by_id(id.into_string())
        .one(&state.db)
        .await?
        .ok_or(FlowError::NotFound)?;
    if inv.status != COMPLETED && inv.expires_at <= now {
        return Err(FlowError::Expired);
    }
    Ok(inv)
}

/// Exactly the version the link was sent with (`questionnaires::of_invitation`).
pub async fn questionnaire_of(
    state: &AppState,
    inv: &invitation::Model,
) -> Result<std::sync::Arc<Questionnaire>, FlowError> {
    crate::questionnaires::of_invitation(state, inv)
        .await?
        .ok_or_else(|| {
            FlowError::Internal(anyhow::anyhow!(
                "questionnaire {} v{} missing",
                inv.questionnaire_code,
                inv.questionnaire_version
            ))
        })
}

/// Records the first opening; later openings change nothing.
pub async fn mark_opened(state: &AppState, inv: &mut invitation::Model) -> Result<(), FlowError> {
    if inv.status != SENT {
        return Ok(());
    }
    let now = Utc::now();
    invitation::Entity::update_many()
        .col_expr(invitation::Column::Status, Expr::value(OPENED))
        .col_expr(invitation::Column::OpenedAt, Expr::value(now))
        .filter(invitation::Column::Id.eq(inv.id.clone()))
        .filter(invitation::Column::Status.eq(SENT))
        .exec(&state.db)
        .await?;
    note_wait_progress(state, inv, Progress::Opened).await;
    inv.status = OPENED;
    inv.opened_at = Some(now);
    Ok(())
}

pub async fn saved(state: &AppState, id: &str) -> Result<Option<response::Model>, FlowError> {
    Ok(response::Entity::find_by_id(id.to_owned())
        .one(&state.db)
        .await?)
}

/// The patient's saved draft, for the link's page and JSON. Once the survey is
/// completed there is none: the link shows only «thank you», and the answers are for
/// the verified deal tab alone (anyone who sees the link — an SMS gateway, a
/// forwarded message, the deal's link field — must not read them).
pub async fn draft_of(state: &AppState, inv: &invitation::Model) -> Result<Answers, FlowError> {
    if inv.status == COMPLETED {
        return Ok(Answers::default());
    }
    answers_to_show(state, inv).await
}

/// The saved draft, or the final answers once completed: for the verified deal tab
/// (the patient's link reads [`draft_of`]).
pub async fn answers_to_show(
    state: &AppState,
    inv: &invitation::Model,
) -> Result<Answers, FlowError> {
    let row = saved(state, &inv.id).await?;
    let value = row.and_then(|r| {
        if inv.status == COMPLETED {
            r.answers
        } else {
            r.draft
        }
    });
    match value {
        Some(v) => decode_answers(&inv.id, v).map_err(|e| FlowError::Internal(e.into())),
        None => Ok(Answers::default()),
    }
}

async fn upsert_draft<C: ConnectionTrait>(
    db: &C,
    id: &str,
    draft: &Answers,
    now: DateTime<Utc>,
) -> Result<(), FlowError> {
    let value = serde_json::to_value(draft)
        .map_err(|e| FlowError::Internal(anyhow::Error::new(e).context("answers to JSON")))?;
    response::Entity::insert(response::ActiveModel {
        invitation_id: Set(id.to_owned()),
        draft: Set(Some(value)),
        draft_saved_at: Set(Some(now)),
        answers: Set(None),
        submitted_at: Set(None),
        report_sha256: Set(None),
        report_pdf: Set(None),
        outcome: Set(None),
    })
    .on_conflict(
        OnConflict::column(response::Column::InvitationId)
            .update_columns([response::Column::Draft, response::Column::DraftSavedAt])
            // A draft save that read the invitation just before a submit committed
            // must not write onto the completed answers' row.
            .action_and_where(
                Expr::col((response::Entity, response::Column::SubmittedAt)).is_null(),
            )
            .to_owned(),
    )
    .exec_without_returning(db)
    .await?;
    Ok(())
}

/// Saves partial answers: what is valid of known questions is kept, the rest dropped;
/// a draft is never refused for being incomplete.
pub async fn save_draft(
    state: &AppState,
    inv: &invitation::Model,
    answers: Answers,
) -> Result<(DateTime<Utc>, Answers), FlowError> {
    if inv.status == COMPLETED {
        return Err(FlowError::Completed);
    }
    if serde_json::to_vec(&answers)
        .map(|b| b.len())
        .unwrap_or(usize::MAX)
        > MAX_DRAFT_BYTES
    {
        return Err(FlowError::TooLarge);
    }
    let q = questionnaire_of(state, inv).await?;
    let draft = crate::survey::normalise_draft(&q, &answers);
    let now = Utc::now();
    upsert_draft(&state.db, &inv.id, &draft, now).await?;
    note_wait_progress(state, inv, Progress::DraftSaved).await;
    Ok((now, draft))
}

/// A waiting robot «Дождаться анкеты» hears of the patient's progress. Only a log
/// line: a failure is logged and never fails the patient's request.
async fn note_wait_progress(state: &AppState, inv: &invitation::Model, step: Progress) {
    match survey_wait::note_progress(&state.db, inv, step).await {
        Ok(0) => {}
        Ok(_) => state.nudge_outbox(),
        Err(e) => {
            tracing::warn!(survey_id = %inv.id, error = %e, "Не удалось записать ход анкеты в журнал робота")
        }
    }
}

/// What a submit stores with its claim.
#[derive(Clone)]
struct Claim {
    invitation: InvitationId,
    portal_id: Option<i64>,
    answers: serde_json::Value,
    sha256: String,
    at: DateTime<Utc>,
    /// The comment job's key, where results are delivered.
    job_key: Option<String>,
    /// Scores and the patient's messages (`response.outcome`).
    outcome: serde_json::Value,
    /// The key prefix of robots «Дождаться анкеты» waiting on this invitation: they
    /// are due with the claim's commit.
    waits: Option<String>,
}

pub struct Receipt {
    pub completed_at: DateTime<Utc>,
    pub report_sha256: String,
    /// The questionnaire's messages for the patient that the answers call for (the
    /// crisis message of PHQ-9): for the "done" page only, never sent anywhere.
    pub patient_messages: Vec<String>,
}

/// Validates against the questionnaire version the link was sent with, stores the
/// answers and the report's checksum, and queues the timeline comment — once: a
/// second submit gets `Completed`, even when two arrive together. Where results are
/// delivered, the comment job renders the PDF; otherwise it is rendered here.
pub async fn submit(
    state: &AppState,
    inv: &invitation::Model,
    answers: Answers,
) -> Result<Receipt, FlowError> {
    if inv.status == COMPLETED {
        return Err(FlowError::Completed);
    }
    if serde_json::to_vec(&answers)
        .map(|b| b.len())
        .unwrap_or(usize::MAX)
        > MAX_DRAFT_BYTES
    {
        return Err(FlowError::TooLarge);
    }
    let q = questionnaire_of(state, inv).await?;
    let now = Utc::now();
    let today = now.with_timezone(&crate::completion::MSK).date_naive();
    let valid = match crate::survey::validate_submit(&q, &answers, today) {
        Ok(v) => v,
        Err(errors) => {
            keep_valid_part(state, inv, &q, &answers, now).await;
            return Err(FlowError::Invalid(errors.0));
        }
    };
    // The report's checksum is that of its content, known before any PDF exists.
    let input = report_input(state, inv, &q, &valid, now).await;
    let sha256 = crate::report::content_sha256(&input);
    let job_key = format!("invitation:{}:completion", inv.id);
    let delivers = inv.portal_id.is_some() || state.config.webhook_url.is_some();
    let patient_messages = crate::survey::patient_messages(&q, &valid);
    let outcome = serde_json::json!({
        "scores": crate::survey::scores(&q, &valid),
        "patient_messages": patient_messages,
    });
    claim_completion(
        state,
        inv,
        &valid,
        &sha256,
        now,
        delivers.then_some(job_key),
        outcome,
    )
    .await?;
    if delivers {
        // The comment job renders the PDF (`completion::stored_or_rendered_pdf`) and
        // the patient does not wait for it (issue 19: 50 patients at once waited
        // 450 ms at p99 behind each other's PDFs).
        state.nudge_outbox();
    } else {
        // Nothing delivers the results: the PDF is built here, for the deal tab and
        // the API.
        let report = render_pdf(inv, input).await;
        release_completion(state, inv, report.as_ref()).await?;
    }
    tracing::info!(survey_id = %inv.id, "Пациент завершил опрос");
    Ok(Receipt {
        completed_at: now,
        report_sha256: sha256,
        patient_messages,
    })
}

/// A refused submit keeps what the patient typed: the draft gains the valid part of
/// this attempt. A draft that no longer decodes is replaced by it.
async fn keep_valid_part(
    state: &AppState,
    inv: &invitation::Model,
    q: &Questionnaire,
    answers: &Answers,
    now: DateTime<Utc>,
) {
    let mut draft = match draft_of(state, inv).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(survey_id = %inv.id, error = %format!("{e:#}"), "Сохранённый черновик не читается; он будет заменён");
            Answers::default()
        }
    };
    draft.extend(crate::survey::normalise_draft(q, answers));
    let _ = upsert_draft(&state.db, &inv.id, &draft, now).await;
}

/// The report of the answers as the invitation will read once completed.
async fn report_input(
    state: &AppState,
    inv: &invitation::Model,
    q: &Questionnaire,
    valid: &Answers,
    now: DateTime<Utc>,
) -> crate::report::ReportInput {
    let mut stored = inv.clone();
    stored.status = COMPLETED;
    stored.completed_at = Some(now);
    let clinic = crate::completion::clinic_name(state, inv).await;
    crate::completion::report_input(&clinic, q, &stored, valid, now)
}

/// Claim first: of concurrent submits only the one that flips the status goes on;
/// the others are answered `Completed` at once. The answers, the checksum and the
/// comment job (`job_key`, where results are delivered) are stored with the claim,
/// so nothing is lost if the process stops. With concurrent submits and robot calls,
/// in one transaction (`group_write`): 50 patients at once otherwise queue for a
/// commit each.
async fn claim_completion(
    state: &AppState,
    inv: &invitation::Model,
    valid: &Answers,
    sha256: &str,
    now: DateTime<Utc>,
    job_key: Option<String>,
    outcome: serde_json::Value,
) -> Result<(), FlowError> {
    let answers = serde_json::to_value(valid)
        .map_err(|e| FlowError::Internal(anyhow::Error::new(e).context("answers to JSON")))?;
    let claim = Claim {
        invitation: InvitationId::of(inv),
        portal_id: inv.portal_id,
        answers,
        sha256: sha256.to_owned(),
        at: now,
        job_key,
        outcome,
        waits: survey_wait::invitation_prefix(inv),
    };
    let claimed = state
        .group_write(move |txn| {
            let claim = claim.clone();
            Box::pin(async move { store_claim(txn, &claim).await })
        })
        .await?;
    if !claimed {
        return Err(FlowError::Completed);
    }
    Ok(())
}

/// Flips the invitation to completed unless it already is (false: someone else's
/// submit won) and stores the answers, the checksum and the comment job with it.
/// Safe to run again after a rollback, as `group_write` may.
async fn store_claim<C: ConnectionTrait>(txn: &C, c: &Claim) -> Result<bool, sea_orm::DbErr> {
    let id = c.invitation.as_str().to_owned();
    let claimed = invitation::Entity::update_many()
        .col_expr(invitation::Column::Status, Expr::value(COMPLETED))
        .col_expr(invitation::Column::CompletedAt, Expr::value(c.at))
        .filter(invitation::Column::Id.eq(id.clone()))
        .filter(invitation::Column::Status.ne(COMPLETED))
        .exec(txn)
        .await?;
    if claimed.rows_affected == 0 {
        return Ok(false);
    }
    response::Entity::insert(response::ActiveModel {
        invitation_id: Set(id),
        draft: Set(None),
        draft_saved_at: Set(None),
        answers: Set(Some(c.answers.clone())),
        submitted_at: Set(Some(c.at)),
        report_sha256: Set(Some(c.sha256.clone())),
        report_pdf: Set(None),
        outcome: Set(Some(c.outcome.clone())),
    })
    .on_conflict(
        OnConflict::column(response::Column::InvitationId)
            .update_columns([
                response::Column::Draft,
                response::Column::DraftSavedAt,
                response::Column::Answers,
                response::Column::SubmittedAt,
                response::Column::ReportSha256,
                response::Column::ReportPdf,
                response::Column::Outcome,
            ])
            .to_owned(),
    )
    .exec_without_returning(txn)
    .await?;
    if let Some(key) = &c.job_key {
        outbox::enqueue(
            txn,
            c.portal_id,
            &Job::PostCompletion {
                invitation: c.invitation.clone(),
            },
            key,
        )
        .await?;
        // The clinic's automation (triggers, red-flag activity, notification).
        outbox::enqueue(
            txn,
            c.portal_id,
            &Job::Automate {
                invitation: c.invitation.clone(),
            },
            &format!("invitation:{}:automate", c.invitation.as_str()),
        )
        .await?;
    }
    if let Some(prefix) = &c.waits {
        survey_wait::wake_prefix(txn, prefix, c.at).await?;
    }
    Ok(true)
}

/// The PDF of the claimed answers. The answers are stored: a PDF that does not build
/// is no reason to refuse the patient; the deal tab tries again
/// (`completion::stored_or_rendered_pdf`).
async fn render_pdf(
    inv: &invitation::Model,
    input: crate::report::ReportInput,
) -> Option<RenderedReport> {
    match crate::completion::render_report(input).await {
        Ok(report) => {
            tracing::info!(survey_id = %inv.id, "Отчёт PDF построен");
            Some(report)
        }
        Err(e) => {
            tracing::error!(survey_id = %inv.id, error = %e, "Отчёт PDF не построен");
            None
        }
    }
}

/// Stores the PDF, if one was built.
async fn release_completion(
    state: &AppState,
    inv: &invitation::Model,
    report: Option<&RenderedReport>,
) -> Result<(), FlowError> {
    let Some(report) = report else {
        return Ok(());
    };
    let (_turn, txn) = state.begin_write().await?;
    response::Entity::update_many()
        .col_expr(
            response::Column::ReportSha256,
            Expr::value(report.sha256.clone()),
        )
        .col_expr(response::Column::ReportPdf, Expr::value(report.pdf.clone()))
        .filter(response::Column::InvitationId.eq(inv.id.clone()))
        .exec(&txn)
        .await?;
    txn.commit().await?;
    Ok(())
}
