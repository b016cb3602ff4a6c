//! The patient page's JSON API (`/api/v1/surveys/{token}`) and `/healthz`, described
//! in the OpenAPI document.

use std::borrow::Cow;
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::registry::{MetaSchema, MetaSchemaRef, Registry};
use poem_openapi::types::{ParseFromJSON, ParseResult, ToJSON, Type};
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
    /// Any other form of the condition (`all`, `any`, `not_equals`, `in`, `gte`,
    /// `lte`, `answered`), as the questionnaire writes it.
    #[oai(skip_serializing_if_is_none)]
    pub show_if_rule: Option<Value>,
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
    pub draft: BTreeMap<String, AnswerValue>,
}

#[derive(Debug, Object)]
pub struct DraftSaved {
    pub ok: bool,
    pub saved_at: DateTime<Utc>,
    /// The draft as stored: invalid values and unknown questions are left out.
    pub draft: BTreeMap<String, AnswerValue>,
}

/// One answer as it travels: a string (`text`, `single`, `date`, `yes_no`), a number
/// (`number`, `scale`), a list of strings (`multi`) or a boolean (`consent`). Carried
/// as the JSON it came as: what fits the question is `survey::validate`'s to say, with
/// a 422 per question, not a parser's 400.
#[derive(Debug, Clone, PartialEq)]
pub struct AnswerValue(pub Value);

impl Type for AnswerValue {
    const IS_REQUIRED: bool = true;
    type RawValueType = Value;
    type RawElementValueType = Value;

    fn name() -> Cow<'static, str> {
        "AnswerValue".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Reference(Self::name().into_owned())
    }

    fn register(registry: &mut Registry) {
        registry.create_schema::<Self, _>(Self::name().into_owned(), |_| {
            let inline = |ty| MetaSchemaRef::Inline(Box::new(MetaSchema::new(ty)));
            let mut list = MetaSchema::new("array");
            list.items = Some(Box::new(inline("string")));
            MetaSchema {
                description: Some("Ответ: строка, число, список строк или да/нет"),
                one_of: vec![
                    inline("string"),
                    inline("number"),
                    MetaSchemaRef::Inline(Box::new(list)),
                    inline("boolean"),
                ],
                ..MetaSchema::ANY
            }
        });
    }

    fn as_raw_value(&self) -> Option<&Value> {
        Some(&self.0)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Value> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl ToJSON for AnswerValue {
    fn to_json(&self) -> Option<Value> {
        Some(self.0.clone())
    }
}

impl ParseFromJSON for AnswerValue {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        Ok(Self(value.unwrap_or_default()))
    }
}

fn answer_map(answers: Answers) -> BTreeMap<String, AnswerValue> {
    answers
        .into_iter()
        .map(|(id, value)| (id, AnswerValue(value)))
        .collect()
}

/// A draft's or a submit's body: `{"answers": {"<question id>": answer}}`.
#[derive(Debug, Object)]
#[oai(rename = "AnswersBody")]
struct AnswersShape {
    /// Answers by question id; what does not fit a question gets 422 with, per
    /// question, what is wrong.
    answers: BTreeMap<String, AnswerValue>,
}

/// A draft's or a submit's body: `{"answers": {"<question id>": answer}}` (a bare map
/// of answers is taken too). Read leniently by [`answers_from_body`], whose refusals
/// keep their own codes (`body_not_object`, `answers_not_object`) and reach the
/// caller from the handler.
#[derive(Debug)]
pub struct AnswersBody(Result<Answers, ApiError>);

impl Type for AnswersBody {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        AnswersShape::name()
    }

    fn schema_ref() -> MetaSchemaRef {
        AnswersShape::schema_ref()
    }

    fn register(registry: &mut Registry) {
        AnswersShape::register(registry);
    }

    fn as_raw_value(&self) -> Option<&Self> {
        Some(self)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl ParseFromJSON for AnswersBody {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        Ok(Self(answers_from_body(value.unwrap_or_default())))
    }
}

#[derive(Debug, Object)]
pub struct Submitted {
    pub ok: bool,
    pub survey_id: String,
    pub status: String,
    pub completed_at: DateTime<Utc>,
    /// SHA-256 printed in the PDF report's footer.
    pub report_sha256: String,
    /// Texts the questionnaire shows the patient on the "done" page for these
    /// answers (e.g. where to get help at once); absent when there are none.
    #[oai(skip_serializing_if_is_empty)]
    pub patient_messages: Vec<String>,
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
                show_if: question
                    .show_if
                    .as_ref()
                    .and_then(|c| c.as_simple_equals())
                    .map(|(question, equals)| ShowIfView {
                        question: question.to_owned(),
                        equals,
                    }),
                show_if_rule: question
                    .show_if
                    .as_ref()
                    .filter(|c| c.as_simple_equals().is_none())
                    .and_then(|c| serde_json::to_value(c).ok()),
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
        let q = lifecycle::questionnaire_of(&state, &inv).await?;
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
            draft: answer_map(draft),
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
        body: Json<AnswersBody>,
    ) -> Result<Json<DraftSaved>, ApiError> {
        let inv = lifecycle::by_token(&state, &token).await?;
        let answers = body.0.0?;
        let (saved_at, draft) = lifecycle::save_draft(&state, &inv, answers).await?;
        Ok(Json(DraftSaved {
            ok: true,
            saved_at,
            draft: answer_map(draft),
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
        body: Json<AnswersBody>,
    ) -> Result<Json<Submitted>, ApiError> {
        let inv = lifecycle::by_token(&state, &token).await?;
        let answers = body.0.0?;
        let done = lifecycle::submit(&state, &inv, answers).await?;
        Ok(Json(Submitted {
            ok: true,
            survey_id: inv.id,
            status: invitations::shown::COMPLETED.to_owned(),
            completed_at: done.completed_at,
            report_sha256: done.report_sha256,
            patient_messages: done.patient_messages,
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
