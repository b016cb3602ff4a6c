//! Answers: which questions are visible, what a valid answer is, and its normal form.
//!
//! Clients are accepted leniently (`true` for «да», `"72,5"` for a number,
//! `DD.MM.YYYY` dates) but stored strictly, so every reader sees one shape per type.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use chrono::{Datelike, NaiveDate};
use serde_json::Value;

use super::evaluate::condition_holds;
use super::model::{Question, QuestionType, Questionnaire, SCALE_MAX, TextFormat};

/// Answers by question id. Normal forms: `yes_no` → `"yes"`/`"no"`; `text`,
/// `textarea`, `single` → string; `multi` → array of strings; `number`, `scale` →
/// number; `date` → `"YYYY-MM-DD"`; `consent` → `true`.
pub type Answers = BTreeMap<String, Value>;

/// Per question id, a Russian message for the patient.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ValidationErrors(pub BTreeMap<String, String>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Анкета заполнена с ошибками: {}", self.0.len())
    }
}

impl std::error::Error for ValidationErrors {}

/// The earliest date a `date` answer may carry: anything older is a typo.
const EARLIEST_YEAR: i32 = 1900;

/// The message for a required question left unanswered.
pub fn required_message(kind: QuestionType) -> &'static str {
    match kind {
        QuestionType::Text | QuestionType::Textarea => "Заполните это поле",
        QuestionType::Multi => "Отметьте хотя бы один вариант",
        QuestionType::Single | QuestionType::Scale => "Выберите один из вариантов",
        QuestionType::Number => "Введите число",
        QuestionType::Date => "Укажите дату",
        QuestionType::Consent => "Подтвердите согласие, без него анкету нельзя отправить",
        QuestionType::YesNo => "Ответьте на этот вопрос",
    }
}

/// The message for a number outside the question's bounds.
pub fn range_message(q: &Question) -> String {
    match (q.min, q.max) {
        (Some(min), Some(max)) => format!("Введите число от {} до {}", fmt_num(min), fmt_num(max)),
        (Some(min), None) => format!("Введите число не меньше {}", fmt_num(min)),
        (None, Some(max)) => format!("Введите число не больше {}", fmt_num(max)),
        (None, None) => "Введите число".into(),
    }
}

/// The message for a date outside the question's limits.
pub fn date_range_message(min: Option<NaiveDate>, max: Option<NaiveDate>) -> String {
    let f = |d: NaiveDate| d.format("%d.%m.%Y").to_string();
    match (min, max) {
        (Some(a), Some(b)) => format!("Укажите дату с {} по {}", f(a), f(b)),
        (Some(a), None) => format!("Укажите дату не раньше {}", f(a)),
        (None, Some(b)) => format!("Укажите дату не позже {}", f(b)),
        (None, None) => "Укажите дату".into(),
    }
}

/// A number as a person writes it in Russian: no trailing `.0`, a decimal comma.
pub fn fmt_num(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        n.to_string().replace('.', ",")
    }
}

/// The questions shown for these answers, in order. A question is hidden when its
/// `show_if` does not hold; the answer of a hidden question counts as no answer, so
/// a question behind a hidden one is hidden too. Conditions point backwards (the
/// definition check refuses any other), so one pass in page order settles them.
pub fn visible<'q>(q: &'q Questionnaire, answers: &Answers) -> Vec<&'q Question> {
    let mut seen = Answers::new();
    let mut out = Vec::new();
    for question in q.questions() {
        let is_shown = question
            .show_if
            .as_ref()
            .is_none_or(|cond| condition_holds(q, cond, &seen));
        if is_shown {
            if let Some(value) = answers.get(&question.id) {
                seen.insert(question.id.clone(), value.clone());
            }
            out.push(question);
        }
    }
    out
}

/// Whether `value` (in any accepted shape) equals `expected`, or for a `multi`
/// answer contains it. Used by `show_if` and `flag`.
pub fn answer_matches(q: &Question, value: Option<&Value>, expected: &str) -> bool {
    let Some(Ok(Some(normal))) = value.map(|v| normalise(q, v, None)) else {
        return false;
    };
    match &normal {
        Value::String(s) => s == expected,
        Value::Array(items) => items.iter().any(|i| i.as_str() == Some(expected)),
        Value::Bool(b) => *b && matches!(expected, "yes" | "true"),
        Value::Number(n) => n
            .as_f64()
            .is_some_and(|n| parse_number(expected) == Some(n)),
        Value::Null | Value::Object(_) => false,
    }
}

/// Validates a submission: the normalised answers of visible questions only
/// (hidden questions and unknown ids are dropped), every visible required
/// question answered, dates checked against `today`.
pub fn validate_submit(
    q: &Questionnaire,
    answers: &Answers,
    today: NaiveDate,
) -> Result<Answers, ValidationErrors> {
    let mut out = Answers::new();
    let mut errors = BTreeMap::new();
    for question in visible(q, answers) {
        let result = answers
            .get(&question.id)
            .map_or(Ok(None), |v| normalise(question, v, Some(today)));
        match result {
            Ok(Some(value)) => {
                out.insert(question.id.clone(), value);
            }
            Ok(None) if question.required => {
                errors.insert(
                    question.id.clone(),
                    required_message(question.kind).to_string(),
                );
            }
            Ok(None) => {}
            Err(message) => {
                errors.insert(question.id.clone(), message);
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ValidationErrors(errors))
    }
}

/// Keeps whatever is valid in a draft, of any known question, visible or not (so
/// flipping a controlling answer back and forth loses nothing); drops the rest
/// silently. A draft is never rejected for being incomplete.
pub fn normalise_draft(q: &Questionnaire, answers: &Answers) -> Answers {
    answers
        .iter()
        .filter_map(|(id, value)| {
            let question = q.question(id)?;
            let normal = normalise(question, value, None).ok()??;
            Some((id.clone(), normal))
        })
        .collect()
}

/// One answer in its normal form: `Ok(None)` when there is no answer (`null`, an
/// empty string or list, an unticked consent), `Err` with a message for the
/// patient when the value is unacceptable. `today` enables the `not_future` check.
pub fn normalise(
    q: &Question,
    value: &Value,
    today: Option<NaiveDate>,
) -> Result<Option<Value>, String> {
    if value.is_null() || value.as_str().is_some_and(|s| s.trim().is_empty()) {
        return Ok(None);
    }
    match q.kind {
        QuestionType::YesNo => yes_no(value)
            .map(|b| Some(Value::from(if b { "yes" } else { "no" })))
            .ok_or_else(|| "Выберите «Да» или «Нет»".to_string()),
        QuestionType::Text | QuestionType::Textarea => text(q, value),
        QuestionType::Single => {
            let s = scalar_string(value).ok_or_else(bad_option)?;
            if q.option_label(&s).is_some() {
                Ok(Some(Value::String(s)))
            } else {
                Err(bad_option())
            }
        }
        QuestionType::Multi => multi(q, value),
        QuestionType::Number => {
            let n = number(value).ok_or_else(|| "Введите число".to_string())?;
            if q.min.is_some_and(|min| n < min) || q.max.is_some_and(|max| n > max) {
                return Err(range_message(q));
            }
            Ok(Some(number_value(n)))
        }
        QuestionType::Date => date(q, value, today),
        QuestionType::Scale => {
            let message = || format!("Выберите значение от 0 до {SCALE_MAX}");
            let n = number(value).ok_or_else(message)?;
            if n.fract() != 0.0 || !(0.0..=SCALE_MAX as f64).contains(&n) {
                return Err(message());
            }
            Ok(Some(Value::from(n as i64)))
        }
        QuestionType::Consent => match yes_no(value) {
            Some(true) => Ok(Some(Value::Bool(true))),
            Some(false) => Ok(None),
            None if value.as_str() == Some("on") => Ok(Some(Value::Bool(true))),
            None => Err("Отметьте согласие".into()),
        },
    }
}

fn bad_option() -> String {
    "Выберите один из предложенных вариантов".into()
}

fn yes_no(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.trim().to_lowercase().as_str() {
            "yes" | "true" | "да" => Some(true),
            "no" | "false" | "нет" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

fn scalar_string(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn text(q: &Question, value: &Value) -> Result<Option<Value>, String> {
    let Value::String(s) = value else {
        return Err("Введите текст".into());
    };
    // Browsers post line breaks as CRLF; stored text uses LF only.
    let cleaned: String = s
        .replace("\r\n", "\n")
        .chars()
        .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
        .collect();
    let tidied = tidy_lines(&cleaned);
    let trimmed = tidied.trim();
    if trimmed.is_empty() {
        return Ok(None);
    }
    let limit = q.text_limit();
    if trimmed.chars().count() > limit {
        return Err(format!("Слишком длинный ответ: не больше {limit} символов"));
    }
    match q.format {
        Some(TextFormat::Phone) => {
            return normal_phone(trimmed)
                .map(|p| Some(Value::String(p)))
                .ok_or_else(|| "Введите номер телефона, например +7 912 345-67-89".into());
        }
        Some(TextFormat::Email) if !is_email(trimmed) => {
            return Err("Введите адрес электронной почты, например name@example.ru".into());
        }
        _ => {}
    }
    Ok(Some(Value::String(trimmed.to_string())))
}

/// A Russian phone number as `+7XXXXXXXXXX`: 11 digits starting with 7 or 8 (or
/// 10 digits), spaces, brackets and dashes ignored.
pub fn normal_phone(s: &str) -> Option<String> {
    if s.contains(|c: char| !(c.is_ascii_digit() || " ()-+".contains(c))) {
        return None;
    }
    if s.matches('+').count() > 1 || (s.contains('+') && !s.starts_with('+')) {
        return None;
    }
    let digits: String = s.chars().filter(char::is_ascii_digit).collect();
    let national = match digits.len() {
        11 if digits.starts_with('7') || (digits.starts_with('8') && !s.starts_with('+')) => {
            &digits[1..]
        }
        10 if !s.starts_with('+') => digits.as_str(),
        _ => return None,
    };
    Some(format!("+7{national}"))
}

/// `local@domain.tld`: one `@`, no spaces, a dot in the domain with text on both
/// sides. Deliverability is the clinic's mail server's business.
pub fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.contains('@')
        && !s.contains(char::is_whitespace)
        && s.chars().count() <= 254
        && domain
            .split_once('.')
            .is_some_and(|_| !domain.starts_with('.') && !domain.ends_with('.'))
        && !domain.contains("..")
}

/// A date relative to `today`: `today`, or a signed count of days, months or
/// years (`-1d`, `+30d`, `-6m`, `-120y`). `None` when the text is none of these.
pub fn relative_date(spec: &str, today: NaiveDate) -> Option<NaiveDate> {
    let spec = spec.trim();
    if spec == "today" {
        return Some(today);
    }
    let (sign, rest) = match spec.as_bytes().first()? {
        b'+' => (1_i64, &spec[1..]),
        b'-' => (-1_i64, &spec[1..]),
        _ => return None,
    };
    let unit = rest.chars().last()?;
    let count: i64 = rest[..rest.len() - unit.len_utf8()].parse().ok()?;
    if !(0..=100_000).contains(&count) {
        return None;
    }
    let n = sign * count;
    match unit {
        'd' => today.checked_add_signed(chrono::Duration::days(n)),
        'm' => add_months(today, n),
        'y' => add_months(today, n.checked_mul(12)?),
        _ => None,
    }
}

fn add_months(d: NaiveDate, n: i64) -> Option<NaiveDate> {
    let months = chrono::Months::new(u32::try_from(n.unsigned_abs()).ok()?);
    if n >= 0 {
        d.checked_add_months(months)
    } else {
        d.checked_sub_months(months)
    }
}

/// Most lines a free-text answer keeps; what follows joins the last one. The PDF
/// gives every line a row, and its page count is capped (`report::MAX_PAGES`): a
/// few answers of "x" and empty lines within the length limit would otherwise run
/// to thousands of rows and no PDF at all.
pub const MAX_TEXT_LINES: usize = 40;

/// Runs of empty lines become one, trailing spaces go, and lines past
/// [`MAX_TEXT_LINES`] are joined with spaces into the last: every word the patient
/// typed stays.
fn tidy_lines(text: &str) -> String {
    let mut lines: Vec<&str> = Vec::new();
    for line in text.lines().map(str::trim_end) {
        let gap = line.trim().is_empty();
        if gap && lines.last().is_none_or(|l| l.is_empty()) {
            continue;
        }
        lines.push(if gap { "" } else { line });
    }
    if lines.len() <= MAX_TEXT_LINES {
        return lines.join("\n");
    }
    let rest = lines.split_off(MAX_TEXT_LINES - 1);
    let tail: Vec<&str> = rest
        .iter()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
        .collect();
    let mut out = lines.join("\n");
    out.push('\n');
    out.push_str(&tail.join(" "));
    out
}

fn multi(q: &Question, value: &Value) -> Result<Option<Value>, String> {
    let items: Vec<String> = match value {
        Value::Array(items) => items
            .iter()
            .map(|i| scalar_string(i).ok_or_else(bad_option))
            .collect::<Result<_, _>>()?,
        other => vec![scalar_string(other).ok_or_else(bad_option)?],
    };
    let items: Vec<String> = items.into_iter().filter(|s| !s.is_empty()).collect();
    if items.is_empty() {
        return Ok(None);
    }
    let mut seen = BTreeSet::new();
    for item in &items {
        if q.option_label(item).is_none() {
            return Err(bad_option());
        }
        if !seen.insert(item.as_str()) {
            return Err("Варианты ответа не должны повторяться".into());
        }
    }
    if items.len() > 1
        && let Some(exclusive) = q
            .options
            .iter()
            .find(|o| o.exclusive && seen.contains(o.value.as_str()))
    {
        return Err(format!(
            "«{}» нельзя выбрать вместе с другими вариантами",
            exclusive.label
        ));
    }
    // Option order, not click order, so equal answers compare equal.
    let ordered = q
        .options
        .iter()
        .filter(|o| seen.contains(o.value.as_str()))
        .map(|o| Value::String(o.value.clone()))
        .collect();
    Ok(Some(Value::Array(ordered)))
}

fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => parse_number(s),
        _ => None,
    }
    .filter(|n| n.is_finite())
}

/// Parses `72.5`, `72,5` and ` 72 ` alike.
pub fn parse_number(s: &str) -> Option<f64> {
    let s = s.trim().replace(',', ".");
    if s.is_empty() || s.contains(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | '+'))) {
        return None;
    }
    s.parse::<f64>().ok().filter(|n| n.is_finite())
}

/// Whole numbers stay integers in JSON (`170`, not `170.0`).
fn number_value(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        Value::from(n as i64)
    } else {
        Value::from(n)
    }
}

/// Parses `YYYY-MM-DD` or `DD.MM.YYYY`.
pub fn parse_date(s: &str) -> Option<NaiveDate> {
    let s = s.trim();
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .or_else(|_| NaiveDate::parse_from_str(s, "%d.%m.%Y"))
        .ok()
}

fn date(q: &Question, value: &Value, today: Option<NaiveDate>) -> Result<Option<Value>, String> {
    let parsed = value
        .as_str()
        .and_then(parse_date)
        .ok_or_else(|| "Укажите дату в формате ДД.ММ.ГГГГ".to_string())?;
    if parsed.year() < EARLIEST_YEAR {
        return Err("Проверьте год: дата слишком ранняя".into());
    }
    if let Some(today) = today {
        if q.not_future && parsed > today {
            return Err("Дата не может быть в будущем".into());
        }
        let limit = |spec: &Option<String>| spec.as_deref().and_then(|s| relative_date(s, today));
        let (min, max) = (limit(&q.min_date), limit(&q.max_date));
        if min.is_some_and(|m| parsed < m) || max.is_some_and(|m| parsed > m) {
            return Err(date_range_message(min, max));
        }
    }
    Ok(Some(Value::String(parsed.format("%Y-%m-%d").to_string())))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::survey::Catalog;

    fn builtin() -> std::sync::Arc<Questionnaire> {
        let (catalog, problems) = Catalog::load(None);
        assert!(problems.is_empty(), "{problems:?}");
        catalog.latest("pre_visit").expect("built-in questionnaire")
    }

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 5, 20).expect("valid date")
    }

    fn answers(v: Value) -> Answers {
        serde_json::from_value(v).expect("an object")
    }

    /// Every required question of the built-in questionnaire answered, allergies no.
    fn minimal() -> Answers {
        answers(json!({
            "complaints": "Болит голова",
            "red_flags": "no",
            "birth_date": "1980-02-29",
            "sex": "male",
            "allergies": "no",
            "takes_medications": "no",
            "consent": true
        }))
    }

    #[test]
    fn minimal_answers_pass_and_come_back_normalised() {
        let q = builtin();
        let ok = validate_submit(&q, &minimal(), today()).expect("valid");
        assert_eq!(ok["consent"], json!(true));
        assert_eq!(ok["birth_date"], json!("1980-02-29"));
        assert_eq!(ok.len(), minimal().len());
    }

    #[test]
    fn missing_required_answers_are_reported_per_question() {
        let q = builtin();
        let mut a = minimal();
        a.remove("complaints");
        a.insert("allergies".into(), json!(""));
        let err = validate_submit(&q, &a, today()).expect_err("incomplete");
        assert_eq!(err.0["complaints"], "Заполните это поле");
        assert_eq!(err.0["allergies"], "Ответьте на этот вопрос");
        assert_eq!(err.0.len(), 2);
    }

    #[test]
    fn hidden_follow_up_is_ignored_and_visible_one_is_required() {
        let q = builtin();
        let mut a = minimal();
        a.insert("allergy_details".into(), json!("пенициллин"));
        let ok = validate_submit(&q, &a, today()).expect("allergies=no hides details");
        assert!(!ok.contains_key("allergy_details"));

        a.insert("allergies".into(), json!(true));
        a.remove("allergy_details");
        let err = validate_submit(&q, &a, today()).expect_err("details required on yes");
        assert_eq!(err.0.keys().collect::<Vec<_>>(), ["allergy_details"]);

        a.insert("allergy_details".into(), json!("  пенициллин — сыпь \r\n"));
        let ok = validate_submit(&q, &a, today()).expect("valid");
        assert_eq!(ok["allergies"], json!("yes"));
        assert_eq!(ok["allergy_details"], json!("пенициллин — сыпь"));
    }

    #[test]
    fn unknown_ids_are_dropped() {
        let q = builtin();
        let mut a = minimal();
        a.insert("injected".into(), json!("x"));
        let ok = validate_submit(&q, &a, today()).expect("valid");
        assert!(!ok.contains_key("injected"));
    }

    #[test]
    fn bad_values_get_patient_messages() {
        let q = builtin();
        let mut a = minimal();
        a.insert("height".into(), json!(300));
        a.insert("weight".into(), json!("abc"));
        a.insert("sex".into(), json!("other"));
        a.insert("birth_date".into(), json!("21.05.2026"));
        a.insert("chronic".into(), json!(["diabetes", "diabetes"]));
        a.insert("consent".into(), json!(false));
        a.insert("wellbeing".into(), json!(11));
        let err = validate_submit(&q, &a, today()).expect_err("invalid").0;
        assert_eq!(err["height"], "Введите число от 50 до 250");
        assert_eq!(err["weight"], "Введите число");
        assert_eq!(err["sex"], "Выберите один из предложенных вариантов");
        assert_eq!(err["birth_date"], "Дата не может быть в будущем");
        assert_eq!(err["chronic"], "Варианты ответа не должны повторяться");
        assert_eq!(
            err["consent"],
            "Подтвердите согласие, без него анкету нельзя отправить"
        );
        assert_eq!(err["wellbeing"], "Выберите значение от 0 до 10");
    }

    #[test]
    fn exclusive_option_cannot_be_combined() {
        let q = builtin();
        let chronic = q.question("chronic").expect("chronic");
        let err = normalise(chronic, &json!(["none", "diabetes"]), None).expect_err("mixed");
        assert!(err.contains("нельзя выбрать вместе"), "{err}");
    }

    #[test]
    fn lenient_inputs_are_normalised() {
        let q = builtin();
        let get = |id: &str| q.question(id).expect(id);
        let n = |id: &str, v: Value| normalise(get(id), &v, Some(today()));
        assert_eq!(n("allergies", json!(false)), Ok(Some(json!("no"))));
        assert_eq!(n("allergies", json!(" Да ")), Ok(Some(json!("yes"))));
        assert_eq!(n("weight", json!("72,5")), Ok(Some(json!(72.5))));
        assert_eq!(n("height", json!("180")), Ok(Some(json!(180))));
        assert_eq!(
            n("birth_date", json!("01.03.1990")),
            Ok(Some(json!("1990-03-01")))
        );
        assert_eq!(n("wellbeing", json!("7")), Ok(Some(json!(7))));
        assert_eq!(n("chronic", json!("lungs")), Ok(Some(json!(["lungs"]))));
        assert_eq!(
            n("chronic", json!(["diabetes", "hypertension"])),
            Ok(Some(json!(["hypertension", "diabetes"])))
        );
        for yes in [json!(true), json!("yes"), json!("on"), json!("true")] {
            assert_eq!(n("consent", yes), Ok(Some(json!(true))));
        }
        assert_eq!(n("complaints", json!("   ")), Ok(None));
        assert_eq!(n("complaints", Value::Null), Ok(None));
        assert_eq!(n("chronic", json!([])), Ok(None));
        assert!(n("complaints", json!("x".repeat(2001))).is_err());
        assert!(n("birth_date", json!("31.02.1990")).is_err());
        assert!(n("birth_date", json!("1850-01-01")).is_err());
        assert!(n("wellbeing", json!(2.5)).is_err());
        assert!(n("height", json!("1e3")).is_err());
    }

    #[test]
    fn visibility_follows_chained_conditions() {
        let q = builtin();
        let ids =
            |a: &Answers| -> Vec<String> { visible(&q, a).iter().map(|q| q.id.clone()).collect() };
        let mut a = minimal();
        assert!(!ids(&a).contains(&"anticoagulants".to_string()));
        assert!(!ids(&a).contains(&"pregnancy".to_string()));
        a.insert("takes_medications".into(), json!("yes"));
        a.insert("sex".into(), json!("female"));
        let shown = ids(&a);
        assert!(shown.contains(&"medications_list".to_string()));
        assert!(shown.contains(&"anticoagulants".to_string()));
        assert!(shown.contains(&"pregnancy".to_string()));
    }

    #[test]
    fn a_question_behind_a_hidden_one_is_hidden() {
        let yaml = r#"
code: chain
version: 1
title: Цепочка
sections:
  - id: s
    title: Раздел
    questions:
      - {id: a, type: yes_no, title: A}
      - {id: b, type: single, title: B, show_if: {question: a, equals: "yes"},
         options: [{value: x, label: X}, {value: y, label: Y}]}
      - {id: c, type: text, title: C, required: true, show_if: {question: b, equals: x}}
"#;
        let q: Questionnaire = serde_yaml_ng::from_str(yaml).expect("yaml");
        assert!(q.check().is_empty());
        let ids = |a: Value| -> Vec<String> {
            visible(&q, &answers(a))
                .iter()
                .map(|q| q.id.clone())
                .collect()
        };
        assert_eq!(ids(json!({"a": "yes", "b": "x"})), ["a", "b", "c"]);
        // b keeps its stale answer, but b itself is hidden, so c is too.
        assert_eq!(ids(json!({"a": "no", "b": "x"})), ["a"]);
        let ok = validate_submit(&q, &answers(json!({"a": "no", "b": "x"})), today());
        assert_eq!(ok, Ok(answers(json!({"a": "no"}))));
    }

    #[test]
    fn text_answers_keep_their_words_in_few_lines() {
        let hostile = "x\n\n\n  \n".repeat(400);
        assert_eq!(tidy_lines("a\n\n\n\nb  \n\nc"), "a\n\nb\n\nc");
        let tidied = tidy_lines(&hostile);
        assert_eq!(tidied.lines().count(), MAX_TEXT_LINES);
        assert_eq!(tidied.matches('x').count(), 400, "no word is lost");
        let short = "первая строка\nвторая";
        assert_eq!(tidy_lines(short), short);
    }

    #[test]
    fn phones_emails_and_relative_dates() {
        for (typed, normal) in [
            ("+7 912 345-67-89", "+79123456789"),
            ("8 (912) 345-67-89", "+79123456789"),
            ("9123456789", "+79123456789"),
        ] {
            assert_eq!(normal_phone(typed).as_deref(), Some(normal), "{typed}");
        }
        for bad in [
            "12345",
            "+8 912 345 67 89",
            "7+9123456789",
            "+7 912 345 67 89 0",
            "тел",
        ] {
            assert_eq!(normal_phone(bad), None, "{bad}");
        }
        assert!(is_email("anna@example.ru"));
        for bad in [
            "anna",
            "@example.ru",
            "anna@",
            "anna@ru",
            "a b@example.ru",
            "a@b@c.ru",
            "a@.ru",
        ] {
            assert!(!is_email(bad), "{bad}");
        }
        let t = today();
        let d = |y, m, d| NaiveDate::from_ymd_opt(y, m, d);
        assert_eq!(relative_date("today", t), Some(t));
        assert_eq!(relative_date("-1d", t), d(2026, 5, 19));
        assert_eq!(relative_date("+30d", t), d(2026, 6, 19));
        assert_eq!(relative_date("-6m", t), d(2025, 11, 20));
        assert_eq!(relative_date("-120y", t), d(1906, 5, 20));
        for bad in ["", "yesterday", "1d", "-d", "-1w", "-999999999y"] {
            assert_eq!(relative_date(bad, t), None, "{bad}");
        }
    }

    #[test]
    fn date_limits_and_formats_are_checked_at_submit() {
        let q: Questionnaire = serde_json::from_value(json!({
            "code": "t", "version": 1, "title": "T", "sections": [{"id": "s", "title": "S", "questions": [
                {"id": "birth", "type": "date", "title": "B", "min_date": "-120y", "max_date": "-1d"},
                {"id": "phone", "type": "text", "title": "P", "format": "phone"}
            ]}]
        }))
        .expect("reads");
        let check = |a: Value| validate_submit(&q, &answers(a), today());
        let err = check(json!({"birth": "2026-05-20", "phone": "1"}))
            .expect_err("bad")
            .0;
        assert_eq!(err["birth"], "Укажите дату с 20.05.1906 по 19.05.2026");
        assert!(err["phone"].contains("номер телефона"));
        assert!(
            check(json!({"birth": "1906-05-19"})).is_err(),
            "older than 120"
        );
        let ok = check(json!({"birth": "1906-05-20", "phone": "8 912 345 67 89"})).expect("ok");
        assert_eq!(ok["phone"], json!("+79123456789"));
    }

    #[test]
    fn drafts_keep_what_is_valid() {
        let q = builtin();
        let draft = answers(json!({
            "complaints": "кашель",
            "height": 1000,
            "allergy_details": "орехи",
            "allergies": "no",
            "unknown": 1,
            "weight": "80,0"
        }));
        let kept = normalise_draft(&q, &draft);
        assert_eq!(
            kept,
            answers(json!({
                "complaints": "кашель",
                "allergy_details": "орехи",
                "allergies": "no",
                "weight": 80
            }))
        );
    }
}
