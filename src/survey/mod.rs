//! Questionnaires: their definitions, the catalog they are loaded into, answer
//! validation and the human-readable form of answers. Knows nothing of HTTP.

mod catalog;
mod display;
mod model;
mod validate;

pub use catalog::{Catalog, DEFAULT_CODE, InsertError, LoadProblem};
pub use display::{FlaggedAnswer, answer_text, flagged, sections_for_display};
pub use model::{
    Choice, DEFAULT_TEXT_MAX_LENGTH, DEFAULT_TEXTAREA_MAX_LENGTH, DefinitionProblem, Flag,
    Question, QuestionType, Questionnaire, SCALE_MAX, Section, ShowIf, is_identifier,
};
pub use validate::{
    Answers, ValidationErrors, answer_matches, fmt_num, normalise, normalise_draft, parse_date,
    parse_number, range_message, required_message, validate_submit, visible,
};
