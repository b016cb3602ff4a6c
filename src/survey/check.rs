//! The one validator of a questionnaire definition: used by the SURVEYS_DIR loader,
//! the built-ins and anything else that stores a definition. Every problem is
//! collected with its place, a stable code and a Russian reason.

use std::collections::{BTreeMap, BTreeSet};

use chrono::NaiveDate;

use super::condition::{Condition, Test};
use super::evaluate::{is_scored, numeric_range};
use super::model::{
    Band, DefinitionProblem, Question, QuestionType, Questionnaire, SCALE_MAX, ScoreDef,
    ScoreQuestions, is_identifier,
};
use super::validate::{parse_date, parse_number, relative_date};

/// The longest questionnaire code: a portal's questionnaires are stored by code.
pub const MAX_CODE_LEN: usize = 64;

struct Problems(Vec<DefinitionProblem>);

impl Problems {
    fn add(&mut self, place: impl Into<String>, code: &'static str, reason: impl Into<String>) {
        self.0.push(DefinitionProblem {
            place: place.into(),
            code,
            reason: reason.into(),
        });
    }
}

/// Every problem of `q`; an empty list means it can be used.
pub(super) fn problems(q: &Questionnaire) -> Vec<DefinitionProblem> {
    let mut out = Problems(Vec::new());
    if !is_identifier(&q.code) {
        out.add(
            "code",
            "bad_id",
            "код анкеты должен состоять из латинских строчных букв, цифр и «_»",
        );
    } else if q.code.len() > MAX_CODE_LEN {
        out.add(
            "code",
            "code_too_long",
            format!("код анкеты длиннее {MAX_CODE_LEN} символов"),
        );
    }
    if q.version == 0 {
        out.add("version", "bad_version", "версия должна быть не меньше 1");
    }
    if q.title.trim().is_empty() {
        out.add("title", "no_title", "у анкеты нет названия");
    }
    if q.questions().next().is_none() {
        out.add("sections", "no_questions", "в анкете нет ни одного вопроса");
    }

    // Page position of every question id (the first, if repeated).
    let mut position: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, question) in q.questions().enumerate() {
        position.entry(question.id.as_str()).or_insert(i);
    }

    let mut section_ids = BTreeSet::new();
    let mut question_ids = BTreeSet::new();
    let mut consents = 0;
    let mut index = 0;
    for (si, section) in q.sections.iter().enumerate() {
        let place = format!("sections[{si}]");
        if !is_identifier(&section.id) {
            out.add(
                format!("{place}.id"),
                "bad_id",
                format!(
                    "id раздела «{}» должен состоять из латинских строчных букв, цифр и «_»",
                    section.id
                ),
            );
        } else if !section_ids.insert(section.id.as_str()) {
            out.add(
                format!("{place}.id"),
                "duplicate_id",
                format!("id раздела «{}» повторяется", section.id),
            );
        }
        if section.title.trim().is_empty() {
            out.add(
                format!("{place}.title"),
                "no_title",
                "у раздела нет названия",
            );
        }
        for (qi, question) in section.questions.iter().enumerate() {
            let place = format!("{place}.questions[{qi}] ({})", question.id);
            if !is_identifier(&question.id) {
                out.add(
                    &place,
                    "bad_id",
                    "id вопроса должен состоять из латинских строчных букв, цифр и «_»",
                );
            } else if !question_ids.insert(question.id.as_str()) {
                out.add(
                    &place,
                    "duplicate_id",
                    format!("id «{}» уже встречался в анкете", question.id),
                );
            }
            question_problems(question, &place, &mut out);
            if let Some(cond) = &question.show_if {
                show_if_problems(q, question, index, cond, &position, &place, &mut out);
            }
            if question.kind == QuestionType::Consent {
                consents += 1;
                if consents > 1 {
                    out.add(
                        &place,
                        "second_consent",
                        "в анкете может быть только одно согласие",
                    );
                }
            }
            index += 1;
        }
    }

    let mut score_ids = BTreeSet::new();
    for (i, score) in q.scores.iter().enumerate() {
        let place = format!("scores[{i}] ({})", score.id);
        if !is_identifier(&score.id) {
            out.add(
                &place,
                "bad_id",
                "id балла должен состоять из латинских строчных букв, цифр и «_»",
            );
        } else if !score_ids.insert(score.id.as_str()) {
            out.add(
                &place,
                "duplicate_id",
                format!("id балла «{}» повторяется", score.id),
            );
        }
        if score.title.trim().is_empty() {
            out.add(&place, "no_title", "у балла нет названия (title)");
        }
        score_problems(q, score, &place, &mut out);
    }

    for (i, message) in q.messages.iter().enumerate() {
        let place = format!("messages[{i}]");
        if message.text.trim().is_empty() {
            out.add(
                &place,
                "empty_message",
                "у сообщения для пациента нет текста",
            );
        }
        condition_problems(q, &message.when, &format!("{place}.when"), false, &mut out);
    }
    out.0
}

fn question_problems(q: &Question, place: &str, out: &mut Problems) {
    if q.title.trim().is_empty() {
        out.add(place, "no_title", "у вопроса нет текста (title)");
    }

    if q.kind.has_options() {
        if q.options.is_empty() {
            out.add(
                place,
                "empty_options",
                "для вопросов single и multi нужны варианты ответа (options)",
            );
        }
        let mut seen = BTreeSet::new();
        for option in &q.options {
            if option.value.trim().is_empty() || option.label.trim().is_empty() {
                out.add(
                    place,
                    "empty_option",
                    "у варианта ответа пустое значение или подпись",
                );
            } else if !seen.insert(option.value.as_str()) {
                out.add(
                    place,
                    "duplicate_option",
                    format!("вариант «{}» повторяется", option.value),
                );
            }
            if option
                .score
                .is_some_and(|s| !s.is_finite() || s.fract() != 0.0 || s.abs() > 1e6)
            {
                out.add(
                    place,
                    "bad_option_score",
                    format!(
                        "балл варианта «{}» должен быть целым числом (не больше миллиона по модулю)",
                        option.value
                    ),
                );
            }
        }
        if q.kind == QuestionType::Single && q.options.iter().any(|o| o.exclusive) {
            out.add(
                place,
                "exclusive_not_multi",
                "exclusive имеет смысл только в вопросах multi",
            );
        }
    } else if !q.options.is_empty() {
        out.add(
            place,
            "options_not_allowed",
            "варианты ответа (options) бывают только у вопросов single и multi",
        );
    }

    if q.kind == QuestionType::Number {
        if let (Some(min), Some(max)) = (q.min, q.max)
            && min > max
        {
            out.add(
                place,
                "bad_range",
                format!("min ({min}) больше max ({max})"),
            );
        }
        if q.min.is_some_and(|v| !v.is_finite()) || q.max.is_some_and(|v| !v.is_finite()) {
            out.add(
                place,
                "bad_range",
                "min и max должны быть конечными числами",
            );
        }
    } else if q.min.is_some() || q.max.is_some() {
        let why = if q.kind == QuestionType::Scale {
            "шкала всегда от 0 до 10, min и max не задаются"
        } else {
            "min и max бывают только у вопросов number"
        };
        out.add(place, "range_not_allowed", why);
    }
    if q.unit.is_some() && q.kind != QuestionType::Number {
        out.add(
            place,
            "unit_not_allowed",
            "единица измерения (unit) бывает только у вопросов number",
        );
    }
    if q.not_future && q.kind != QuestionType::Date {
        out.add(
            place,
            "not_future_not_allowed",
            "not_future бывает только у вопросов date",
        );
    }
    match (q.max_length, q.kind) {
        (Some(0), _) => out.add(
            place,
            "bad_max_length",
            "max_length должен быть больше нуля",
        ),
        (Some(_), QuestionType::Text | QuestionType::Textarea) | (None, _) => {}
        (Some(_), _) => out.add(
            place,
            "max_length_not_allowed",
            "max_length бывает только у вопросов text и textarea",
        ),
    }
    if q.format.is_some() && q.kind != QuestionType::Text {
        out.add(
            place,
            "format_not_allowed",
            "format (phone, email) бывает только у вопросов text",
        );
    }
    date_limit_problems(q, place, out);

    if let Some(flag) = &q.flag {
        match (&flag.equals, flag.any) {
            (Some(_), true) | (None, false) => out.add(
                place,
                "bad_flag",
                "у flag должно быть ровно одно из: equals или any: true",
            ),
            (Some(equals), false) => {
                if let Some(reason) = value_problem(q, equals) {
                    out.add(
                        format!("{place}.flag"),
                        "flag_never_holds",
                        format!("flag: {reason}"),
                    );
                }
            }
            (None, true) => {}
        }
    }
    if let Some(flag_if) = &q.flag_if {
        if q.flag.is_some() {
            out.add(
                place,
                "bad_flag",
                "у вопроса может быть только одно из: flag или flag_if",
            );
        }
        if let Some(reason) = test_problem(q, &flag_if.test, false) {
            out.add(
                format!("{place}.flag_if"),
                "flag_never_holds",
                format!("flag_if никогда не сработает: {reason}"),
            );
        }
    }
}

fn date_limit_problems(q: &Question, place: &str, out: &mut Problems) {
    if q.min_date.is_none() && q.max_date.is_none() {
        return;
    }
    if q.kind != QuestionType::Date {
        out.add(
            place,
            "date_limit_not_allowed",
            "min_date и max_date бывают только у вопросов date",
        );
        return;
    }
    // Any fixed day shows whether the two limits leave room for a date.
    let probe = NaiveDate::from_ymd_opt(2000, 1, 1).unwrap_or_default();
    let read = |spec: &Option<String>, name: &str, out: &mut Problems| {
        let spec = spec.as_deref()?;
        let date = relative_date(spec, probe);
        if date.is_none() {
            out.add(
                format!("{place}.{name}"),
                "bad_date_limit",
                format!("{name} «{spec}» не понятен: пишите today, -1d, +30d, -6m или -120y"),
            );
        }
        date
    };
    let min = read(&q.min_date, "min_date", out);
    let max = read(&q.max_date, "max_date", out);
    if let (Some(min), Some(max)) = (min, max)
        && min > max
    {
        out.add(
            place,
            "bad_date_limit",
            "min_date позже max_date: ни одна дата не подойдёт",
        );
    }
}

/// A show_if: every question it reads exists and sits above (so the page settles
/// conditions in one pass); a reference back to itself, directly or through
/// others, is named as a cycle.
fn show_if_problems(
    q: &Questionnaire,
    question: &Question,
    index: usize,
    cond: &Condition,
    position: &BTreeMap<&str, usize>,
    place: &str,
    out: &mut Problems,
) {
    let place = format!("{place}.show_if");
    for target in cond.questions() {
        match position.get(target) {
            None => {}
            Some(&at) if at < index => {}
            Some(_) if reaches(q, target, &question.id) => out.add(
                &place,
                "show_if_cycle",
                format!(
                    "show_if образует цикл: «{}» зависит от «{target}», а «{target}» — от «{}»",
                    question.id, question.id
                ),
            ),
            Some(_) => out.add(
                &place,
                "show_if_forward",
                format!(
                    "show_if ссылается на «{target}», а этот вопрос ниже: условие может зависеть только от вопросов выше"
                ),
            ),
        }
    }
    condition_problems(q, cond, &place, true, out);
}

/// Whether `from`'s show_if leads (directly or through other show_ifs) to `to`.
fn reaches(q: &Questionnaire, from: &str, to: &str) -> bool {
    let mut stack = vec![from];
    let mut seen = BTreeSet::new();
    while let Some(id) = stack.pop() {
        if id == to {
            return true;
        }
        if !seen.insert(id) {
            continue;
        }
        if let Some(cond) = q.question(id).and_then(|x| x.show_if.as_ref()) {
            stack.extend(cond.questions());
        }
    }
    false
}

/// Unknown questions and tests that can never hold. `on_page`: the condition is
/// evaluated by the patient's page too, which knows no option scores, so `gte` and
/// `lte` there take only `number` and `scale` answers.
fn condition_problems(
    q: &Questionnaire,
    cond: &Condition,
    place: &str,
    on_page: bool,
    out: &mut Problems,
) {
    cond.walk(&mut |target, test| match q.question(target) {
        None => out.add(
            place,
            "unknown_question",
            format!("условие ссылается на «{target}», а такого вопроса в анкете нет"),
        ),
        Some(question) => {
            if let Some(reason) = test_problem(question, test, on_page) {
                out.add(
                    place,
                    "impossible_condition",
                    format!("условие на «{target}» никогда не выполнится: {reason}"),
                );
            }
        }
    });
}

/// Why `test` can never hold for an answer of `q`, if it cannot.
fn test_problem(q: &Question, test: &Test, on_page: bool) -> Option<String> {
    match test {
        Test::Answered(_) => None,
        Test::Equals(_) | Test::NotEquals(_) | Test::In(_) => {
            let values = test.values();
            if values.is_empty() {
                return Some("список in пуст".into());
            }
            values.iter().find_map(|v| value_problem(q, v))
        }
        Test::Gte(n) | Test::Lte(n) => {
            let numeric = if on_page {
                matches!(q.kind, QuestionType::Number | QuestionType::Scale)
                    .then(|| numeric_range(q))
                    .flatten()
            } else {
                numeric_range(q)
            };
            let Some((lo, hi)) = numeric else {
                return Some(format!(
                    "{} сравнивает числа, а ответ на вопрос «{}» ({}) — не число{}",
                    test.name(),
                    q.id,
                    q.kind.as_str(),
                    if on_page {
                        " (на странице пациента — только number и scale)"
                    } else {
                        " и не вариант с баллами"
                    }
                ));
            };
            let never = match test {
                Test::Gte(_) => *n > hi,
                _ => *n < lo,
            };
            (!n.is_finite() || never).then(|| {
                format!(
                    "{} {} вне возможных значений ответа ({} … {})",
                    test.name(),
                    n,
                    lo,
                    hi
                )
            })
        }
    }
}

/// Whether `value` can be an answer of `q`, so a typo in a condition is caught at
/// load time instead of silently hiding a question forever.
fn value_problem(q: &Question, value: &str) -> Option<String> {
    let ok = match q.kind {
        QuestionType::YesNo => matches!(value, "yes" | "no"),
        QuestionType::Single | QuestionType::Multi => q.options.iter().any(|o| o.value == value),
        QuestionType::Consent => value == "yes",
        QuestionType::Number => parse_number(value).is_some(),
        QuestionType::Scale => parse_number(value)
            .is_some_and(|n| n.fract() == 0.0 && (0.0..=SCALE_MAX as f64).contains(&n)),
        QuestionType::Date => parse_date(value).is_some(),
        QuestionType::Text | QuestionType::Textarea => true,
    };
    (!ok).then(|| {
        format!(
            "значение «{value}» невозможно для вопроса «{}» ({})",
            q.id,
            q.kind.as_str()
        )
    })
}

fn score_problems(q: &Questionnaire, score: &ScoreDef, place: &str, out: &mut Problems) {
    let members: Vec<&Question> = match &score.questions {
        ScoreQuestions::Keyword(k) if k == "all" => {
            q.questions().filter(|x| is_scored(x)).collect()
        }
        ScoreQuestions::Keyword(k) => {
            out.add(
                format!("{place}.questions"),
                "bad_score_questions",
                format!("questions — это список id вопросов или \"all\", а не «{k}»"),
            );
            return;
        }
        ScoreQuestions::List(ids) => {
            let mut members = Vec::new();
            let mut seen = BTreeSet::new();
            for id in ids {
                if !seen.insert(id.as_str()) {
                    out.add(
                        format!("{place}.questions"),
                        "duplicate_id",
                        format!("вопрос «{id}» указан в балле дважды"),
                    );
                    continue;
                }
                match q.question(id) {
                    None => out.add(
                        format!("{place}.questions"),
                        "unknown_question",
                        format!("балл ссылается на «{id}», а такого вопроса в анкете нет"),
                    ),
                    Some(x) if !is_scored(x) => out.add(
                        format!("{place}.questions"),
                        "unscored_question",
                        format!("у вариантов вопроса «{id}» нет баллов (score)"),
                    ),
                    Some(x) => members.push(x),
                }
            }
            members
        }
    };
    if members.is_empty() {
        out.add(
            format!("{place}.questions"),
            "unscored_question",
            "в балле нет ни одного вопроса с баллами вариантов",
        );
        return;
    }
    let (lo, hi) = members
        .iter()
        .filter_map(|x| numeric_range(x))
        .fold((0.0, 0.0), |(a, b), (lo, hi)| (a + lo, b + hi));
    band_problems(&score.bands, lo, hi, &format!("{place}.bands"), out);
}

/// Bands must be whole-numbered, in order, without overlaps or gaps, and cover
/// every possible total `lo ..= hi`.
fn band_problems(bands: &[Band], lo: f64, hi: f64, place: &str, out: &mut Problems) {
    if bands.is_empty() {
        out.add(place, "no_bands", "у балла нет диапазонов (bands)");
        return;
    }
    let mut sorted: Vec<&Band> = Vec::new();
    for (i, band) in bands.iter().enumerate() {
        let whole = |n: f64| n.is_finite() && n.fract() == 0.0;
        if band.label.trim().is_empty() {
            out.add(
                format!("{place}[{i}]"),
                "bad_band",
                "у диапазона нет названия (label)",
            );
        }
        if !whole(band.from) || !whole(band.to) || band.from > band.to {
            out.add(
                format!("{place}[{i}]"),
                "bad_band",
                format!(
                    "диапазон {}–{}: границы — целые числа, from не больше to",
                    band.from, band.to
                ),
            );
            continue;
        }
        sorted.push(band);
    }
    sorted.sort_by(|a, b| a.from.total_cmp(&b.from));
    for pair in sorted.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if b.from <= a.to {
            out.add(
                place,
                "band_overlap",
                format!(
                    "диапазоны «{}» ({}–{}) и «{}» ({}–{}) пересекаются",
                    a.label, a.from, a.to, b.label, b.from, b.to
                ),
            );
        } else if b.from > a.to + 1.0 {
            out.add(
                place,
                "band_gap",
                format!(
                    "между диапазонами «{}» и «{}» пропущены значения {}–{}",
                    a.label,
                    b.label,
                    a.to + 1.0,
                    b.from - 1.0
                ),
            );
        }
    }
    if let (Some(first), Some(last)) = (sorted.first(), sorted.last())
        && (first.from > lo || last.to < hi)
    {
        out.add(
            place,
            "band_not_covering",
            format!(
                "диапазоны покрывают {}–{}, а сумма баллов может быть от {lo} до {hi}",
                first.from, last.to
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn problems_of(v: serde_json::Value) -> Vec<DefinitionProblem> {
        let q: Questionnaire = serde_json::from_value(v).expect("reads");
        q.check()
    }

    fn has(problems: &[DefinitionProblem], code: &str, reason: &str) -> bool {
        problems
            .iter()
            .any(|p| p.code == code && p.reason.contains(reason))
    }

    fn scored(id: &str) -> serde_json::Value {
        json!({"id": id, "type": "single", "title": id, "options": [
            {"value": "a", "label": "A", "score": 0},
            {"value": "b", "label": "B", "score": 3}
        ]})
    }

    fn questionnaire(questions: serde_json::Value, extra: serde_json::Value) -> serde_json::Value {
        let mut q = json!({"code": "t", "version": 1, "title": "Т",
            "sections": [{"id": "s", "title": "Р", "questions": questions}]});
        if let (Some(q), Some(extra)) = (q.as_object_mut(), extra.as_object()) {
            q.extend(extra.clone());
        }
        q
    }

    #[test]
    fn the_readme_example_is_a_valid_questionnaire() {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("```json\n{\n  \"code\": \"mood_check\"")
            .expect("the example in README");
        let body = &readme[start + "```json\n".len()..];
        let end = body.find("```").expect("end of the example");
        let q: Questionnaire = serde_json::from_str(&body[..end]).expect("the example reads");
        assert_eq!(q.check(), Vec::new());
        assert_eq!(q.scores.len(), 1);
        assert_eq!(q.messages.len(), 1);
    }

    #[test]
    fn a_good_definition_has_no_problems() {
        let p = problems_of(questionnaire(
            json!([scored("x"), scored("y"),
                {"id": "z", "type": "text", "title": "Z", "format": "phone",
                 "show_if": {"all": [{"question": "x", "equals": "b"},
                                     {"any": [{"question": "y", "gte": 3}, {"question": "y", "answered": false}]}]}}]),
            json!({"scores": [{"id": "sum", "title": "Сумма", "questions": "all", "bands": [
                    {"from": 0, "to": 2, "label": "мало"}, {"from": 3, "to": 6, "label": "много", "flag": true}]}],
                   "messages": [{"when": {"question": "x", "in": ["b"]}, "text": "Позвоните врачу"}]}),
        ));
        // gte on a scored single is not for the page: the patient's page knows no scores.
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].code, "impossible_condition");
    }

    #[test]
    fn every_problem_is_named_with_its_code() {
        let p = problems_of(questionnaire(
            json!([
                scored("x"),
                scored("x"),
                {"id": "c", "type": "single", "title": "C", "options": []},
                {"id": "d", "type": "multi", "title": "D", "options": [
                    {"value": "v", "label": "V"}, {"value": "v", "label": "W"}]},
                {"id": "e", "type": "yes_no", "title": "E", "show_if": {"question": "f", "equals": "yes"}},
                {"id": "f", "type": "yes_no", "title": "F", "show_if": {"question": "e", "equals": "yes"}},
                {"id": "g", "type": "text", "title": "G", "show_if": {"question": "nope", "equals": "1"},
                 "flag_if": {"gte": 1}},
                {"id": "h", "type": "scale", "title": "H", "flag_if": {"gte": 11}},
                {"id": "i", "type": "yes_no", "title": "I", "flag_if": {"equals": "maybe"}},
                {"id": "j", "type": "date", "title": "J", "min_date": "-1x", "max_date": "-1d"},
                {"id": "k", "type": "number", "title": "K", "format": "email", "min_date": "today"},
                {"id": "l", "type": "text", "title": "L", "max_length": 0}
            ]),
            json!({"scores": [
                {"id": "s1", "title": "S1", "questions": ["x", "ghost", "e"], "bands": [
                    {"from": 0, "to": 2, "label": "a"}, {"from": 2, "to": 3, "label": "b"}]},
                {"id": "s1", "title": "S2", "questions": "all", "bands": [
                    {"from": 1, "to": 1, "label": "a"}, {"from": 3, "to": 4, "label": "b"}]},
                {"id": "s3", "title": "S3", "questions": "some", "bands": []}
            ], "messages": [{"when": {"question": "ghost", "answered": true}, "text": " "}]}),
        ));
        let text = format!("{p:#?}");
        for (code, reason) in [
            ("duplicate_id", "уже встречался"),
            ("empty_options", "нужны варианты"),
            ("duplicate_option", "«v» повторяется"),
            ("show_if_cycle", "цикл"),
            ("unknown_question", "«nope»"),
            ("flag_never_holds", "не число"),
            ("flag_never_holds", "gte 11"),
            ("flag_never_holds", "«maybe»"),
            ("bad_date_limit", "-1x"),
            ("date_limit_not_allowed", "только у вопросов date"),
            ("format_not_allowed", "только у вопросов text"),
            ("bad_max_length", "больше нуля"),
            ("unknown_question", "«ghost»"),
            ("unscored_question", "«e»"),
            ("band_overlap", "пересекаются"),
            ("duplicate_id", "id балла «s1»"),
            ("band_gap", "пропущены значения 2–2"),
            ("band_not_covering", "от 0 до 6"),
            ("bad_score_questions", "«some»"),
            ("empty_message", "нет текста"),
        ] {
            assert!(has(&p, code, reason), "{code} / {reason} missing in {text}");
        }
    }

    #[test]
    fn a_forward_reference_is_named_and_the_page_gets_no_score_tests() {
        let p = problems_of(questionnaire(
            json!([
                {"id": "a", "type": "yes_no", "title": "A", "show_if": {"question": "b", "not_equals": "no"}},
                {"id": "b", "type": "yes_no", "title": "B"},
                scored("c"),
                {"id": "d", "type": "text", "title": "D", "show_if": {"question": "c", "lte": 1}}
            ]),
            json!({}),
        ));
        assert!(has(&p, "show_if_forward", "ниже"), "{p:?}");
        assert!(
            has(&p, "impossible_condition", "только number и scale"),
            "{p:?}"
        );
        assert_eq!(p.len(), 2, "{p:?}");
    }
}
