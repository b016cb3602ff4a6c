//! The patient's pages: the questionnaire and the message pages (thank you, already
//! completed, expired, not found). Built by `web::page` from the questionnaire and
//! the answers; nothing here knows the survey model.

use askama::Template;

use crate::assets;

/// The head of a patient (or operator) page.
pub struct Chrome {
    pub title: String,
    pub css: String,
    /// The page's script; message pages have none.
    pub js: Option<String>,
}

impl Chrome {
    pub fn new(title: impl Into<String>, with_script: bool) -> Chrome {
        Chrome {
            title: title.into(),
            css: assets::APP_CSS.url(),
            js: with_script.then(|| assets::APP_JS.url()),
        }
    }
}

/// A heading and paragraphs; `kind` names its style (`done`, `expired`…).
pub struct Message {
    pub kind: &'static str,
    pub heading: String,
    pub paragraphs: Vec<String>,
    /// What the questionnaire asks to tell the patient after these answers, set
    /// apart from the rest.
    pub notes: Vec<String>,
}

/// A page that only says something.
#[derive(Template)]
#[template(path = "message.html")]
pub struct MessagePage {
    pub chrome: Chrome,
    pub message: Message,
}

/// The questionnaire page.
#[derive(Template)]
#[template(path = "survey.html")]
pub struct QuestionnairePage {
    pub chrome: Chrome,
    /// The editor's preview: a form that goes nowhere, its submit button disabled.
    pub preview: bool,
    pub clinic: Option<String>,
    /// The questionnaire's title.
    pub heading: String,
    pub patient_name: Option<String>,
    pub expires_at: Option<String>,
    pub description: Option<String>,
    pub progress: Progress,
    /// The error summary, in questionnaire order; empty: no errors.
    pub summary: Vec<SummaryItem>,
    /// The form's action, the token percent-encoded as a path segment.
    pub action: String,
    pub token: String,
    pub sections: Vec<SectionView>,
    /// `<template id=…>` bodies the script shows after a JSON submission.
    pub messages: Vec<(&'static str, Message)>,
}

pub struct Progress {
    pub done: usize,
    pub total: usize,
    /// `total`, at least 1: a `<progress max=0>` is invalid.
    pub max: usize,
}

/// One line of the error summary, linking to the question when there is one.
pub struct SummaryItem {
    pub href: Option<String>,
    pub text: String,
}

pub struct SectionView {
    pub id: String,
    pub title: String,
    pub questions: Vec<QuestionView>,
}

/// A question's `show_if` for the page's script: the one-test form as two
/// attributes, any other form as its JSON (an attribute value, escaped by the
/// template like any other).
pub enum ShowIf {
    Equals { question: String, equals: String },
    Rule(String),
}

pub struct Hint {
    pub class: &'static str,
    pub paragraphs: Vec<String>,
}

pub struct QuestionView {
    pub id: String,
    pub kind: &'static str,
    pub title: String,
    pub required: bool,
    /// Whether the inputs carry `required` (shown, and not a multi choice).
    pub required_attr: bool,
    pub required_msg: Option<String>,
    pub range_msg: Option<String>,
    pub show_if: Option<ShowIf>,
    /// Hidden questions are rendered hidden and disabled, so the browser neither
    /// submits nor validates them.
    pub shown: bool,
    /// A radio or checkbox group (a `fieldset`), not a single field (a `label`).
    pub group: bool,
    pub hint: Option<Hint>,
    pub describedby: String,
    pub error: Option<String>,
    /// The value a single field shows.
    pub text: String,
    pub control: Control,
}

pub struct Choice {
    pub value: String,
    pub label: String,
    pub checked: bool,
    pub exclusive: bool,
}

pub enum Control {
    Choices {
        input_type: &'static str,
        class: &'static str,
        options: Vec<Choice>,
    },
    Textarea {
        maxlength: usize,
    },
    Number {
        min: Option<f64>,
        max: Option<f64>,
        unit: Option<String>,
    },
    Date {
        not_future: bool,
        /// The question's limits resolved for today, `YYYY-MM-DD`.
        min: Option<String>,
        max: Option<String>,
    },
    Text {
        maxlength: usize,
        /// `tel` or `email` for a text with a format, else `text`.
        input_type: &'static str,
        /// `phone` or `email`: the page's script checks the format.
        format: Option<&'static str>,
    },
}
