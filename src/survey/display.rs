//! Answers as people read them: the PDF, the doctor's tab, the timeline comment.

use serde_json::Value;

use super::evaluate::test_holds;
use super::model::{Question, QuestionType, Questionnaire, SCALE_MAX};
use super::validate::{Answers, answer_matches, fmt_num, normalise, parse_date, visible};

/// Shown for a visible question left unanswered.
const NO_ANSWER: &str = "—";

/// An answer the questionnaire asks the doctor to notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlaggedAnswer {
    pub id: String,
    /// The flag's label, or the question title when the flag has none.
    pub label: String,
    pub question: String,
    pub answer: String,
}

/// One answer in words: option labels instead of values, «Да»/«Нет», numbers with
/// their unit, dates as `DD.MM.YYYY`, several options joined with «, ». A value
/// that does not fit the question is shown as it came rather than hidden.
pub fn answer_text(question: &Question, value: &Value) -> String {
    let normal = match normalise(question, value, None) {
        Ok(Some(v)) => v,
        Ok(None) => return NO_ANSWER.to_string(),
        Err(_) => return raw_text(value),
    };
    match (question.kind, &normal) {
        (QuestionType::YesNo, Value::String(s)) => {
            if s == "yes" { "Да" } else { "Нет" }.to_string()
        }
        (QuestionType::Single, Value::String(s)) => label(question, s),
        (QuestionType::Multi, Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(|s| label(question, s))
            .collect::<Vec<_>>()
            .join(", "),
        (QuestionType::Number, Value::Number(n)) => {
            let number = fmt_num(n.as_f64().unwrap_or_default());
            match &question.unit {
                Some(unit) => format!("{number} {unit}"),
                None => number,
            }
        }
        (QuestionType::Scale, Value::Number(n)) => format!("{n} из {SCALE_MAX}"),
        (QuestionType::Date, Value::String(s)) => parse_date(s)
            .map(|d| d.format("%d.%m.%Y").to_string())
            .unwrap_or_else(|| s.clone()),
        (QuestionType::Consent, Value::Bool(true)) => "Согласие дано".to_string(),
        _ => raw_text(&normal),
    }
}

fn label(question: &Question, value: &str) -> String {
    question.option_label(value).unwrap_or(value).to_string()
}

fn raw_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => NO_ANSWER.to_string(),
        Value::Array(items) => items.iter().map(raw_text).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

fn has_answer(question: &Question, value: Option<&Value>) -> bool {
    value.is_some_and(|v| matches!(normalise(question, v, None), Ok(Some(_))))
}

/// The flagged answers of visible questions, in questionnaire order.
pub fn flagged(q: &Questionnaire, answers: &Answers) -> Vec<FlaggedAnswer> {
    visible(q, answers)
        .into_iter()
        .filter_map(|question| {
            let value = answers.get(&question.id);
            let label = if let Some(flag) = &question.flag {
                let hit = match &flag.equals {
                    Some(expected) => answer_matches(question, value, expected),
                    None => flag.any && has_answer(question, value),
                };
                hit.then(|| flag.label.clone())?
            } else {
                let flag_if = question.flag_if.as_ref()?;
                test_holds(question, value, &flag_if.test).then(|| flag_if.label.clone())?
            };
            Some(FlaggedAnswer {
                id: question.id.clone(),
                label: label.unwrap_or_else(|| question.title.clone()),
                question: question.title.clone(),
                answer: value.map_or_else(|| NO_ANSWER.to_string(), |v| answer_text(question, v)),
            })
        })
        .collect()
}

/// Section titles with their visible questions and answers in words; hidden
/// questions and sections left with none are omitted, unanswered ones show «—».
pub fn sections_for_display(
    q: &Questionnaire,
    answers: &Answers,
) -> Vec<(String, Vec<(String, String)>)> {
    let shown: Vec<&str> = visible(q, answers).iter().map(|q| q.id.as_str()).collect();
    q.sections
        .iter()
        .filter_map(|section| {
            let rows: Vec<(String, String)> = section
                .questions
                .iter()
                .filter(|question| shown.contains(&question.id.as_str()))
                .map(|question| {
                    let text = answers
                        .get(&question.id)
                        .map_or_else(|| NO_ANSWER.to_string(), |v| answer_text(question, v));
                    (question.title.clone(), text)
                })
                .collect();
            (!rows.is_empty()).then(|| (section.title.clone(), rows))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::survey::Catalog;

    fn builtin() -> std::sync::Arc<Questionnaire> {
        Catalog::load(None).0.latest("pre_visit").expect("built-in")
    }

    fn answers(v: Value) -> Answers {
        serde_json::from_value(v).expect("object")
    }

    #[test]
    fn answers_read_as_words() {
        let q = builtin();
        let text = |id: &str, v: Value| answer_text(q.question(id).expect(id), &v);
        assert_eq!(text("allergies", json!("yes")), "Да");
        assert_eq!(text("allergies", json!(false)), "Нет");
        assert_eq!(text("weight", json!(72.5)), "72,5 кг");
        assert_eq!(text("height", json!("180")), "180 см");
        assert_eq!(text("birth_date", json!("1990-03-01")), "01.03.1990");
        assert_eq!(text("sex", json!("female")), "Женский");
        assert_eq!(
            text("chronic", json!(["diabetes", "hypertension"])),
            "Гипертоническая болезнь (повышенное давление), Сахарный диабет"
        );
        assert_eq!(text("wellbeing", json!(3)), "3 из 10");
        assert_eq!(text("consent", json!(true)), "Согласие дано");
        assert_eq!(text("complaints", Value::Null), "—");
        assert_eq!(text("sex", json!("unknown")), "unknown");
    }

    #[test]
    fn flagged_answers_include_allergy_and_anticoagulants() {
        let q = builtin();
        let a = answers(json!({
            "allergies": "yes",
            "allergy_details": "пенициллин — отёк",
            "takes_medications": "yes",
            "medications_list": "варфарин 5 мг",
            "anticoagulants": "yes",
            "red_flags": "no",
            "sex": "male",
            "pregnancy": "yes"
        }));
        let ids: Vec<String> = flagged(&q, &a).into_iter().map(|f| f.id).collect();
        assert_eq!(ids, ["allergies", "allergy_details", "anticoagulants"]);
        let details = flagged(&q, &a)
            .into_iter()
            .find(|f| f.id == "allergy_details")
            .expect("details flagged");
        assert_eq!(details.answer, "пенициллин — отёк");
        assert!(flagged(&q, &answers(json!({"allergies": "no"}))).is_empty());
    }

    #[test]
    fn display_leaves_hidden_questions_out() {
        let q = builtin();
        let a =
            answers(json!({"allergies": "no", "allergy_details": "орехи", "complaints": "кашель"}));
        let sections = sections_for_display(&q, &a);
        let all: Vec<&(String, String)> = sections.iter().flat_map(|(_, rows)| rows).collect();
        assert!(all.iter().any(|(_, v)| v == "кашель"));
        assert!(!all.iter().any(|(_, v)| v == "орехи"));
        assert!(all.iter().any(|(_, v)| v == "—"));
        assert_eq!(sections.len(), q.sections.len());
    }
}
