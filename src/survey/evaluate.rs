//! Whether a condition holds for some answers, and what number an answer stands for.

use serde_json::Value;

use super::condition::{Condition, Test, value_text};
use super::model::{Question, QuestionType, Questionnaire, SCALE_MAX};
use super::validate::{Answers, answer_matches, normalise};

/// Whether `test` holds for one answer of `q` (`None`: unanswered).
pub fn test_holds(q: &Question, value: Option<&Value>, test: &Test) -> bool {
    let answered = value.is_some_and(|v| matches!(normalise(q, v, None), Ok(Some(_))));
    match test {
        Test::Answered(expected) => answered == *expected,
        Test::Equals(v) => answer_matches(q, value, &value_text(v)),
        Test::NotEquals(v) => answered && !answer_matches(q, value, &value_text(v)),
        Test::In(list) => list
            .iter()
            .any(|v| answer_matches(q, value, &value_text(v))),
        Test::Gte(n) => answer_number(q, value).is_some_and(|a| a >= *n),
        Test::Lte(n) => answer_number(q, value).is_some_and(|a| a <= *n),
    }
}

/// Whether `cond` holds for `answers`. A question the questionnaire lacks counts as
/// unanswered (the validator refuses such definitions anyway).
pub fn condition_holds(q: &Questionnaire, cond: &Condition, answers: &Answers) -> bool {
    match cond {
        Condition::All(list) => list.iter().all(|c| condition_holds(q, c, answers)),
        Condition::Any(list) => list.iter().any(|c| condition_holds(q, c, answers)),
        Condition::Answer { question, test } => match q.question(question) {
            Some(target) => test_holds(target, answers.get(question), test),
            None => false,
        },
    }
}

/// The number an answer stands for: a `number` or `scale` answer itself; for
/// `single` and `multi`, the sum of the chosen options' scores (none when no chosen
/// option has a score).
pub fn answer_number(q: &Question, value: Option<&Value>) -> Option<f64> {
    let normal = normalise(q, value?, None).ok()??;
    match (q.kind, &normal) {
        (QuestionType::Number | QuestionType::Scale, Value::Number(n)) => n.as_f64(),
        (QuestionType::Single, Value::String(s)) => option_score(q, s),
        (QuestionType::Multi, Value::Array(items)) => {
            let scores: Vec<f64> = items
                .iter()
                .filter_map(Value::as_str)
                .filter_map(|s| option_score(q, s))
                .collect();
            (!scores.is_empty()).then(|| scores.iter().sum())
        }
        _ => None,
    }
}

fn option_score(q: &Question, value: &str) -> Option<f64> {
    q.options.iter().find(|o| o.value == value)?.score
}

/// Whether any option of `q` carries a score.
pub fn is_scored(q: &Question) -> bool {
    q.kind.has_options() && q.options.iter().any(|o| o.score.is_some())
}

/// The lowest and highest number an answer of `q` can stand for, for questions
/// that stand for numbers at all. An unanswered question adds 0 to a score, so
/// for choice questions 0 is within the range.
pub fn numeric_range(q: &Question) -> Option<(f64, f64)> {
    match q.kind {
        QuestionType::Number => Some((
            q.min.unwrap_or(f64::NEG_INFINITY),
            q.max.unwrap_or(f64::INFINITY),
        )),
        QuestionType::Scale => Some((0.0, SCALE_MAX as f64)),
        QuestionType::Single if is_scored(q) => {
            let scores = q.options.iter().map(|o| o.score.unwrap_or(0.0));
            let lo = scores.clone().fold(0.0_f64, f64::min);
            let hi = scores.fold(0.0_f64, f64::max);
            Some((lo, hi))
        }
        QuestionType::Multi if is_scored(q) => {
            let scores = q.options.iter().map(|o| o.score.unwrap_or(0.0));
            let lo = scores.clone().filter(|s| *s < 0.0).sum();
            let hi = scores.filter(|s| *s > 0.0).sum();
            Some((lo, hi))
        }
        _ => None,
    }
}
