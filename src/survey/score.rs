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

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::survey::{Catalog, flagged, validate_submit};

    fn builtin(code: &str) -> std::sync::Arc<Questionnaire> {
        let (catalog, problems) = Catalog::load(None);
        assert!(problems.is_empty(), "{problems:?}");
        catalog.latest(code).expect("built-in")
    }

    const FREQ: [&str; 4] = [
        "not_at_all",
        "several_days",
        "more_than_half",
        "nearly_every_day",
    ];

    /// Item answers adding up to `total`, item 9 (when asked) answered `item9`.
    fn answers_for(items: usize, total: usize, item9: usize) -> Answers {
        let mut left = total - item9;
        let mut a = Answers::new();
        for i in 1..=items {
            let v = if items == 9 && i == 9 {
                item9
            } else {
                let v = left.min(3);
                left -= v;
                v
            };
            a.insert(format!("q{i}"), Value::from(FREQ[v]));
        }
        assert_eq!(left, 0, "total {total} does not fit");
        a
    }

    fn submitted(q: &Questionnaire, a: &Answers) -> Answers {
        let today = chrono::NaiveDate::from_ymd_opt(2026, 12, 7).expect("date");
        validate_submit(q, a, today).expect("valid answers")
    }

    #[test]
    fn phq9_bands_change_at_the_published_cut_points() {
        let q = builtin("phq9");
        for (total, band, flag) in [
            (0, "минимальная", false),
            (4, "минимальная", false),
            (5, "лёгкая", false),
            (9, "лёгкая", false),
            (10, "умеренная", false),
            (14, "умеренная", false),
            (15, "умеренно тяжёлая", true),
            (19, "умеренно тяжёлая", true),
            (20, "тяжёлая", true),
            (27, "тяжёлая", true),
        ] {
            let a = submitted(&q, &answers_for(9, total, total.min(27) / 27 * 3));
            let result = scores(&q, &a);
            assert_eq!(result.len(), 1);
            assert_eq!(result[0].total, total as f64, "total {total}");
            assert_eq!(result[0].band.as_deref(), Some(band), "total {total}");
            assert_eq!(result[0].flag, flag, "total {total}");
        }
        let a = submitted(&q, &answers_for(9, 12, 0));
        assert_eq!(score_summary(&scores(&q, &a)), "PHQ-9: 12 — умеренная");
    }

    #[test]
    fn gad7_bands_change_at_the_published_cut_points() {
        let q = builtin("gad7");
        for (total, band, flag) in [
            (4, "минимальная", false),
            (5, "лёгкая", false),
            (9, "лёгкая", false),
            (10, "умеренная", true),
            (14, "умеренная", true),
            (15, "тяжёлая", true),
            (21, "тяжёлая", true),
        ] {
            let a = submitted(&q, &answers_for(7, total, 0));
            let result = scores(&q, &a);
            assert_eq!(result[0].total, total as f64);
            assert_eq!(result[0].band.as_deref(), Some(band), "total {total}");
            assert_eq!(result[0].flag, flag, "total {total}");
        }
    }

    #[test]
    fn phq9_item_9_above_zero_is_flagged_and_brings_the_crisis_message() {
        let q = builtin("phq9");
        let calm = submitted(&q, &answers_for(9, 3, 0));
        assert!(flagged(&q, &calm).is_empty());
        assert!(patient_messages(&q, &calm).is_empty());
        for item9 in 1..=3 {
            // Even with a minimal total, item 9 alone raises the flag.
            let a = submitted(&q, &answers_for(9, item9, item9));
            assert_eq!(scores(&q, &a)[0].band.as_deref(), Some("минимальная"));
            let flags = flagged(&q, &a);
            assert_eq!(flags.len(), 1, "{flags:?}");
            assert_eq!(flags[0].id, "q9");
            assert!(flags[0].label.contains("пункт 9"));
            let messages = patient_messages(&q, &a);
            assert_eq!(messages.len(), 1);
            assert!(messages[0].contains("112"), "{}", messages[0]);
            assert!(messages[0].contains("8-800-2000-122"), "{}", messages[0]);
        }
    }

    #[test]
    fn phq9_difficulty_item_shows_only_after_a_problem() {
        let q = builtin("phq9");
        let shown = |a: &Answers| visible(&q, a).iter().any(|x| x.id == "difficulty");
        assert!(!shown(&answers_for(9, 0, 0)));
        assert!(shown(&answers_for(9, 1, 0)));
        // Unscored: it never changes the total.
        let mut a = answers_for(9, 1, 0);
        a.insert("difficulty".into(), json!("extremely"));
        assert_eq!(scores(&q, &submitted(&q, &a))[0].total, 1.0);
    }
}
