//! Questionnaires: their definitions, the catalog they are loaded into, answer
//! validation and the human-readable form of answers. Knows nothing of HTTP.

mod catalog;
mod check;
mod condition;
mod display;
mod evaluate;
mod model;
mod score;
mod validate;

pub use catalog::{
    Catalog, DEFAULT_CODE, InsertError, LoadProblem, TemplateSource, join_load_problems,
};
pub use check::MAX_CODE_LEN;
pub use condition::{Condition, FlagIf, Test};
pub use display::{FlaggedAnswer, answer_text, flagged, sections_for_display};
pub use evaluate::condition_holds;
pub use model::{
    Band, Choice, DEFAULT_TEXT_MAX_LENGTH, DEFAULT_TEXTAREA_MAX_LENGTH, DefinitionProblem, Flag,
    PatientMessage, Question, QuestionType, Questionnaire, SCALE_MAX, ScoreDef, ScoreQuestions,
    Section, TextFormat, is_identifier,
};
pub use score::{ScoreResult, patient_messages, score_summary, scores};
pub use validate::{
    Answers, ValidationErrors, answer_matches, date_range_message, fmt_num, normalise,
    normalise_draft, parse_date, parse_number, range_message, relative_date, required_message,
    validate_submit, visible,
};

/// Stored answers or a draft that no longer decode: reported, never shown as an
/// empty survey. serde's message is left out, since it may quote what the patient
/// typed.
#[derive(Debug, thiserror::Error)]
#[error("stored answers of survey {survey_id} do not decode ({category:?} error)")]
pub struct CorruptAnswers {
    pub survey_id: String,
    pub category: serde_json::error::Category,
}

/// Decodes stored answers (or a draft) of `survey_id`.
pub fn decode_answers(
    survey_id: &str,
    value: serde_json::Value,
) -> Result<Answers, CorruptAnswers> {
    serde_json::from_value(value).map_err(|e| CorruptAnswers {
        survey_id: survey_id.to_owned(),
        category: e.classify(),
    })
}
