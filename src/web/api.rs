//! The patient page's JSON API (`/api/v1/surveys/{token}`) and `/healthz`, described
//! in the OpenAPI document.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi, Tags};
use serde_json::Value;

use crate::error::{ApiError, ErrorCode};
use crate::invitations::{self, lifecycle};
use crate::state::AppState;
use crate::survey::{Answers, Questionnaire};

#[derive(Tags)]
enum Tag {
    /// The patient's questionnaire.
    Surveys,
    /// Operations.
    Health,
}

#[derive(Debug, Object)]
pub struct OptionView {
    pub value: String,
    pub label: String,
}

#[derive(Debug, Object)]
pub struct ShowIfView {
    /// Id of the question this one depends on.
    pub question: String,
    /// Shown when that answer equals this value (for `multi`: contains it).
    pub equals: String,
}

#[derive(Debug, Object)]
pub struct QuestionView {
    pub id: String,
    /// `yes_no`, `text`, `textarea`, `single`, `multi`, `number`, `date`, `scale` or `consent`.
    #[oai(rename = "type")]
    pub kind: String,
    pub title: String,
    #[oai(skip_serializing_if_is_none)]
    pub hint: Option<String>,
    pub required: bool,
    pub options: Vec<OptionView>,
    #[oai(skip_serializing_if_is_none)]
    pub show_if: Option<ShowIfView>,
    /// Title of the section the question belongs to.
    pub section: String,
    #[oai(skip_serializing_if_is_none)]
    pub min: Option<f64>,
    #[oai(skip_serializing_if_is_none)]
    pub max: Option<f64>,
    #[oai(skip_serializing_if_is_none)]
    pub unit: Option<String>,
}

#[derive(Debug, Object)]
pub struct SurveyView {
    pub survey_id: String,
    pub title: String,
    #[oai(skip_serializing_if_is_none)]
    pub description: Option<String>,
    pub patient_name: String,
    /// `sent`, `opened`, `completed` or `expired`.
    pub status: String,
    pub expires_at: DateTime<Utc>,
    pub questions: Vec<QuestionView>,
    /// Saved partial answers; empty once the survey is completed (the answers are
    /// for the clinic's deal tab, not for whoever holds the link).
    pub draft: BTreeMap<String, Value>,
}

#[derive(Debug, Object)]
pub struct DraftSaved {
    pub ok: bool,
    pub saved_at: DateTime<Utc>,
    /// The draft as stored: invalid values and unknown questions are left out.
    pub draft: BTreeMap<String, Value>,
}

#[derive(Debug, Object)]
pub struct Submitted {
    pub ok: bool,
    pub survey_id: String,
    pub status: String,
    pub completed_at: DateTime<Utc>,
    /// SHA-256 printed in the PDF report's footer.
    pub report_sha256: String,
}

#[derive(Debug, Object)]
pub struct Health {
    pub status: String,
    pub database: String,
    pub version: String,
}

pub struct SurveyApi;

fn questions_of(q: &Questionnaire) -> Vec<QuestionView> {
    q.sections
        .iter()
        .flat_map(|s| {
            s.questions.iter().map(move |question| QuestionView {
                id: question.id.clone(),
                kind: serde_json::to_value(question.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                title: question.title.clone(),
                hint: question.hint.clone(),
                required: question.required,
                options: question
                    .options
                    .iter()
                    .map(|o| OptionView {
                        value: o.value.clone(),
                        label: o.label.clone(),
                    })
                    .collect(),
                show_if: question.show_if.as_ref().map(|s| ShowIfView {
                    question: s.question.clone(),
                    equals: s.equals.clone(),
                }),
                section: s.title.clone(),
                min: question.min,
                max: question.max,
                unit: question.unit.clone(),
            })
        })
        .collect()
}

/// Accepts `{"answers": {...}}` (as documented) and, leniently, a bare map of answers.
pub fn answers_from_body(body: Value) -> Result<Answers, ApiError> {
    let map = match body {
        Value::Object(mut obj) => match obj.remove("answers") {
            Some(Value::Object(a)) => a,
            Some(Value::Null) => Default::default(),
            Some(_) => {
                return Err(ApiError::bad_request(
                    ErrorCode::AnswersNotObject,
                    "Поле answers должно быть объектом {\"<id вопроса>\": ответ}",
                ));
            }
            None => obj,
        },
        _ => {
            return Err(ApiError::bad_request(
                ErrorCode::BodyNotObject,
                "Ожидается JSON-объект {\"answers\": {\"<id вопроса>\": ответ}}",
            ));
        }
    };
    Ok(map.into_iter().collect())
}

#[OpenApi]
impl SurveyApi {
    /// The questionnaire behind a link, with the saved draft.
    #[oai(path = "/api/v1/surveys/:token", method = "get", tag = "Tag::Surveys")]
    async fn get_survey(
        &self,
        state: Data<&AppState>,
        token: Path<String>,
    ) -> Result<Json<SurveyView>, ApiError> {
        let mut inv = lifecycle::by_token(&state, &token).await?;
        lifecycle::mark_opened(&state, &mut inv).await?;
        let q = lifecycle::questionnaire_of(&state, &inv)?;
        let draft = lifecycle::draft_of(&state, &inv).await?;
        Ok(Json(SurveyView {
            survey_id: inv.id.clone(),
            title: q.title.clone(),
            description: q.description.clone(),
            // Whoever holds a completed link learns nothing about the patient.
            patient_name: if inv.status == invitations::COMPLETED {
                String::new()
            } else {
                inv.patient_name.clone()
            },
            status: invitations::status_of(&inv, Utc::now()).to_owned(),
            expires_at: inv.expires_at,
            questions: questions_of(&q),
            draft: draft.into_iter().collect(),
        }))
    }

    /// Saves partial answers. Body: `{"answers": {"<question id>": value}}`.
    #[oai(
        path = "/api/v1/surveys/:token/draft",
        method = "put",
        tag = "Tag::Surveys"
    )]
    async fn save_draft(
        &self,
        state: Data<&AppState>,
        token: Path<String>,
        body: Json<Value>,
    ) -> Result<Json<DraftSaved>, ApiError> {
        let inv = lifecycle::by_token(&state, &token).await?;
        let answers = answers_from_body(body.0)?;
        let (saved_at, draft) = lifecycle::save_draft(&state, &inv, answers).await?;
        Ok(Json(DraftSaved {
            ok: true,
            saved_at,
            draft: draft.into_iter().collect(),
        }))
    }

    /// Validates and stores the answers; the PDF and the timeline comment follow.
    /// Body: `{"answers": {"<question id>": string | number | [string] | bool}}`.
    #[oai(
        path = "/api/v1/surveys/:token/submit",
        method = "post",
        tag = "Tag::Surveys"
    )]
    async fn submit(
        &self,
        state: Data<&AppState>,
        token: Path<String>,
        body: Json<Value>,
    ) -> Result<Json<Submitted>, ApiError> {
        let inv = lifecycle::by_token(&state, &token).await?;
        let answers = answers_from_body(body.0)?;
        let done = lifecycle::submit(&state, &inv, answers).await?;
        Ok(Json(Submitted {
            ok: true,
            survey_id: inv.id,
            status: invitations::shown::COMPLETED.to_owned(),
            completed_at: done.completed_at,
            report_sha256: done.report_sha256,
        }))
    }

    /// Liveness, with the database reachable.
    #[oai(path = "/healthz", method = "get", tag = "Tag::Health")]
    async fn healthz(&self, state: Data<&AppState>) -> Result<Json<Health>, ApiError> {
        crate::db::ping(&state.db).await.map_err(|e| {
            tracing::error!(error = %e, "База данных недоступна");
            ApiError::unavailable(ErrorCode::DatabaseUnavailable, "База данных недоступна")
        })?;
        Ok(Json(Health {
            status: "ok".into(),
            database: "ok".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }))
    }
}
