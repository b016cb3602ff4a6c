//! Scores (sums of option scores read through bands) and the patient's messages.

use serde::{Deserialize, Serialize};

use super::evaluate::{answer_number, condition_holds, is_scored};
use super::model::{Question, Questionnaire, ScoreQuestions};
use super::validate::{Answers, fmt_num, visible};

/// One score of a completed survey, as the doctor reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreResult {
    pub id: String,
    pub title: String,
    pub total: f64,
    /// The band's label; `None` only for a total no band covers (the validator
    /// refuses such definitions).
    pub band: Option<String>,
    /// The band is marked as a red flag.
    pub flag: bool,
}

impl ScoreResult {
    /// «PHQ-9: 12 — умеренная»: the form the tab, the PDF, the comment and the
    /// await robot's `score` share.
    pub fn text(&self) -> String {
        match &self.band {
            Some(band) => format!("{}: {} — {band}", self.title, fmt_num(self.total)),
            None => format!("{}: {}", self.title, fmt_num(self.total)),
        }
    }
}

/// Every score of `q` for the answers: each visible listed question adds its
/// chosen options' scores (an unanswered or hidden one adds nothing).
pub fn scores(q: &Questionnaire, answers: &Answers) -> Vec<ScoreResult> {
    let shown: Vec<&Question> = visible(q, answers);
    q.scores
        .iter()
        .map(|def| {
            let counts = |question: &Question| match &def.questions {
                ScoreQuestions::List(ids) => ids.contains(&question.id),
                ScoreQuestions::Keyword(_) => is_scored(question),
            };
            let total: f64 = shown
                .iter()
                .filter(|question| counts(question))
                .filter_map(|question| answer_number(question, answers.get(&question.id)))
                .sum();
            let band = def.bands.iter().find(|b| b.from <= total && total <= b.to);
            ScoreResult {
                id: def.id.clone(),
                title: def.title.clone(),
                total,
                band: band.map(|b| b.label.clone()),
                flag: band.is_some_and(|b| b.flag),
            }
        })
        .collect()
}

/// Several scores in one line, «; » between them (the await robot's `score`).
pub fn score_summary(results: &[ScoreResult]) -> String {
    results
        .iter()
        .map(ScoreResult::text)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The texts for the patient whose conditions hold for these (submitted) answers.
/// Hidden questions' answers count as none.
pub fn patient_messages(q: &Questionnaire, answers: &Answers) -> Vec<String> {
    let shown: Answers = visible(q, answers)
        .into_iter()
        .filter_map(|question| {
            answers
                .get(&question.id)
                .map(|v| (question.id.clone(), v.clone()))
        })
        .collect();
    q.messages
        .iter()
        .filter(|m| condition_holds(q, &m.when, &shown))
        .map(|m| m.text.clone())
        .collect()
}
