//! The questionnaire as data, and the rules a definition must obey before it is used.

use serde::{Deserialize, Serialize};

use super::condition::{Condition, FlagIf};

/// The longest answer a `text` question takes unless its definition says otherwise.
pub const DEFAULT_TEXT_MAX_LENGTH: usize = 500;
/// The longest answer a `textarea` question takes unless its definition says otherwise.
pub const DEFAULT_TEXTAREA_MAX_LENGTH: usize = 4000;
/// A `scale` question always runs from 0 to 10.
pub const SCALE_MAX: i64 = 10;

/// A versioned questionnaire. Once sent with an invitation, a `(code, version)` pair
/// must never change meaning: edits go into a new version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Questionnaire {
    pub code: String,
    pub version: u32,
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub sections: Vec<Section>,
    /// Totals of option scores, each read through its bands (PHQ-9, GAD-7…).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scores: Vec<ScoreDef>,
    /// Texts for the patient on the "done" page, each when its condition holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<PatientMessage>,
}

/// A score: the sum of the option scores of `questions`, read through `bands`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreDef {
    pub id: String,
    /// Shown to the doctor before the total: «PHQ-9».
    pub title: String,
    pub questions: ScoreQuestions,
    pub bands: Vec<Band>,
}

/// Which questions a score adds up: a list of ids or `"all"` (every question with
/// scored options).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ScoreQuestions {
    List(Vec<String>),
    /// Only `"all"` is meaningful; anything else is a definition problem.
    Keyword(String),
}

/// A range of totals, both ends included, with its name for the doctor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Band {
    pub from: f64,
    pub to: f64,
    pub label: String,
    /// A total in this band is a red flag.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub flag: bool,
}

/// A message for the patient, shown on the "done" page when `when` holds for the
/// submitted answers. Stored with the response; never sent to the portal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatientMessage {
    pub when: Condition,
    pub text: String,
}

/// A format a `text` answer must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TextFormat {
    /// A Russian phone number: 10 digits after +7 or 8.
    Phone,
    Email,
}

/// A titled group of questions, shown as one block on the page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Section {
    pub id: String,
    pub title: String,
    pub questions: Vec<Question>,
}

/// What kind of answer a question takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuestionType {
    YesNo,
    Text,
    Textarea,
    Single,
    Multi,
    Number,
    Date,
    Scale,
    Consent,
}

impl QuestionType {
    /// The name used in definitions and in the JSON API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::YesNo => "yes_no",
            Self::Text => "text",
            Self::Textarea => "textarea",
            Self::Single => "single",
            Self::Multi => "multi",
            Self::Number => "number",
            Self::Date => "date",
            Self::Scale => "scale",
            Self::Consent => "consent",
        }
    }

    /// Whether answers are picked from `options`.
    pub fn has_options(self) -> bool {
        matches!(self, Self::Single | Self::Multi)
    }
}

/// One question of a questionnaire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Question {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: QuestionType,
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// Required when visible: a question hidden by `show_if` is never required.
    #[serde(default)]
    pub required: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<Choice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_if: Option<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flag: Option<Flag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flag_if: Option<FlagIf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub not_future: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<usize>,
    /// For `text`: the answer must be a phone number or an e-mail address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<TextFormat>,
    /// For `date`: the earliest date, relative to the day of filling
    /// (`today`, `-120y`, `+30d`, `-6m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_date: Option<String>,
    /// For `date`: the latest date, relative to the day of filling (`-1d`: before today).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_date: Option<String>,
}

impl Question {
    /// The effective length limit of a text answer, in characters.
    pub fn text_limit(&self) -> usize {
        match (self.max_length, self.kind) {
            (Some(limit), _) => limit,
            (None, QuestionType::Textarea) => DEFAULT_TEXTAREA_MAX_LENGTH,
            (None, _) => DEFAULT_TEXT_MAX_LENGTH,
        }
    }

    /// The label of an option value, if the question has that option.
    pub fn option_label(&self, value: &str) -> Option<&str> {
        self.options
            .iter()
            .find(|o| o.value == value)
            .map(|o| o.label.as_str())
    }
}

/// One answer option of a `single` or `multi` question.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Choice {
    pub value: String,
    pub label: String,
    /// For `multi`: this option («нет») cannot be combined with any other.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exclusive: bool,
    /// Points this option adds to the questionnaire's scores. Never shown to the
    /// patient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
}

/// When an answer deserves the doctor's attention: it equals (contains) `equals`,
/// or, with `any: true`, whenever it is given at all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flag {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub any: bool,
    /// A short label for the doctor; the question title when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

impl Questionnaire {
    /// Every question, in page order.
    pub fn questions(&self) -> impl Iterator<Item = &Question> {
        self.sections.iter().flat_map(|s| s.questions.iter())
    }

    /// The question with this id.
    pub fn question(&self, id: &str) -> Option<&Question> {
        self.questions().find(|q| q.id == id)
    }

    /// Checks the definition itself; an empty list means it can be used. Every
    /// problem is reported, not only the first (see `survey::check`).
    pub fn check(&self) -> Vec<DefinitionProblem> {
        super::check::problems(self)
    }
}

/// What is wrong with a questionnaire definition, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionProblem {
    /// A path into the definition, e.g. `sections[1].questions[0] (allergies).show_if`.
    pub place: String,
    /// A stable machine code, e.g. `unknown_question`, `show_if_cycle`, `band_gap`.
    pub code: &'static str,
    /// In Russian, for the administrator.
    pub reason: String,
}

/// `[a-z0-9_]+`: ids go into HTML ids, form field names and JSON keys.
pub fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}
