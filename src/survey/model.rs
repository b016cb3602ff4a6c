//! The questionnaire as data, and the rules a definition must obey before it is used.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

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
    pub show_if: Option<ShowIf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flag: Option<Flag>,
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
}

/// Show a question only when an earlier question's answer equals `equals`
/// (for a `multi` answer: contains it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShowIf {
    pub question: String,
    pub equals: String,
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

    /// Checks the definition itself; an empty list means it can be used.
    pub fn check(&self) -> Vec<DefinitionProblem> {
        let mut problems = Vec::new();
        let mut report = |place: String, reason: String| {
            problems.push(DefinitionProblem { place, reason });
        };
        if !is_identifier(&self.code) {
            report(
                "code".into(),
                "код анкеты должен состоять из латинских строчных букв, цифр и «_»".into(),
            );
        }
        if self.version == 0 {
            report("version".into(), "версия должна быть не меньше 1".into());
        }
        if self.title.trim().is_empty() {
            report("title".into(), "у анкеты нет названия".into());
        }
        if self.questions().next().is_none() {
            report("sections".into(), "в анкете нет ни одного вопроса".into());
        }

        let mut section_ids = BTreeSet::new();
        let mut earlier: Vec<&Question> = Vec::new();
        let mut consents = 0;
        for (si, section) in self.sections.iter().enumerate() {
            let place = format!("sections[{si}]");
            if !is_identifier(&section.id) || !section_ids.insert(section.id.as_str()) {
                report(
                    format!("{place}.id"),
                    format!(
                        "id раздела «{}» повторяется или содержит не только латинские строчные буквы, цифры и «_»",
                        section.id
                    ),
                );
            }
            if section.title.trim().is_empty() {
                report(format!("{place}.title"), "у раздела нет названия".into());
            }
            for (qi, question) in section.questions.iter().enumerate() {
                let place = format!("{place}.questions[{qi}] ({})", question.id);
                for reason in question_problems(question, &earlier) {
                    report(place.clone(), reason);
                }
                if question.kind == QuestionType::Consent {
                    consents += 1;
                    if consents > 1 {
                        report(
                            place.clone(),
                            "в анкете может быть только одно согласие".into(),
                        );
                    }
                }
                earlier.push(question);
            }
        }
        problems
    }
}

/// What is wrong with a questionnaire definition, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionProblem {
    /// A path into the definition, e.g. `sections[1].questions[0] (allergies).show_if`.
    pub place: String,
    /// In Russian, for the administrator.
    pub reason: String,
}

fn question_problems(q: &Question, earlier: &[&Question]) -> Vec<String> {
    let mut out = Vec::new();
    if !is_identifier(&q.id) {
        out.push("id вопроса должен состоять из латинских строчных букв, цифр и «_»".into());
    } else if earlier.iter().any(|e| e.id == q.id) {
        out.push(format!("id «{}» уже встречался в анкете", q.id));
    }
    if q.title.trim().is_empty() {
        out.push("у вопроса нет текста (title)".into());
    }

    if q.kind.has_options() {
        if q.options.is_empty() {
            out.push("для вопросов single и multi нужны варианты ответа (options)".into());
        }
        let mut seen = BTreeSet::new();
        for option in &q.options {
            if option.value.trim().is_empty() || option.label.trim().is_empty() {
                out.push("у варианта ответа пустое значение или подпись".into());
            } else if !seen.insert(option.value.as_str()) {
                out.push(format!("вариант «{}» повторяется", option.value));
            }
        }
        if q.kind == QuestionType::Single && q.options.iter().any(|o| o.exclusive) {
            out.push("exclusive имеет смысл только в вопросах multi".into());
        }
    } else if !q.options.is_empty() {
        out.push("варианты ответа (options) бывают только у вопросов single и multi".into());
    }

    if q.kind == QuestionType::Number {
        if let (Some(min), Some(max)) = (q.min, q.max)
            && min > max
        {
            out.push(format!("min ({min}) больше max ({max})"));
        }
        if q.min.is_some_and(|v| !v.is_finite()) || q.max.is_some_and(|v| !v.is_finite()) {
            out.push("min и max должны быть конечными числами".into());
        }
    } else if q.min.is_some() || q.max.is_some() {
        let why = if q.kind == QuestionType::Scale {
            "шкала всегда от 0 до 10, min и max не задаются"
        } else {
            "min и max бывают только у вопросов number"
        };
        out.push(why.into());
    }
    if q.unit.is_some() && q.kind != QuestionType::Number {
        out.push("единица измерения (unit) бывает только у вопросов number".into());
    }
    if q.not_future && q.kind != QuestionType::Date {
        out.push("not_future бывает только у вопросов date".into());
    }
    match (q.max_length, q.kind) {
        (Some(0), _) => out.push("max_length должен быть больше нуля".into()),
        (Some(_), QuestionType::Text | QuestionType::Textarea) | (None, _) => {}
        (Some(_), _) => out.push("max_length бывает только у вопросов text и textarea".into()),
    }

    if let Some(show_if) = &q.show_if {
        match earlier.iter().find(|e| e.id == show_if.question) {
            None => out.push(format!(
                "show_if ссылается на «{}», а такого вопроса выше нет",
                show_if.question
            )),
            Some(controller) => {
                if let Some(reason) = comparable_problem(controller, &show_if.equals, "show_if") {
                    out.push(reason);
                }
            }
        }
    }
    if let Some(flag) = &q.flag {
        match (&flag.equals, flag.any) {
            (Some(_), true) | (None, false) => {
                out.push("у flag должно быть ровно одно из: equals или any: true".into());
            }
            (Some(equals), false) => {
                if let Some(reason) = comparable_problem(q, equals, "flag") {
                    out.push(reason);
                }
            }
            (None, true) => {}
        }
    }
    out
}

/// Whether `equals` can ever match an answer of `q`, so a typo in a condition is
/// caught at load time instead of silently hiding a question forever.
fn comparable_problem(q: &Question, equals: &str, what: &str) -> Option<String> {
    let ok = match q.kind {
        QuestionType::YesNo => matches!(equals, "yes" | "no"),
        QuestionType::Single | QuestionType::Multi => q.options.iter().any(|o| o.value == equals),
        QuestionType::Consent => equals == "yes",
        _ => true,
    };
    (!ok).then(|| {
        format!(
            "{what}: значение «{equals}» невозможно для вопроса «{}» ({})",
            q.id,
            q.kind.as_str()
        )
    })
}

/// `[a-z0-9_]+`: ids go into HTML ids, form field names and JSON keys.
pub fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}
