//! The patient's pages: the view models of the questionnaire and the message pages,
//! built from the questionnaire and the answers and rendered by the templates of
//! `views::patient`. The questionnaire works without JavaScript (an ordinary form
//! POST to `/s/{token}`); `app.js` adds live conditions, progress, autosave and
//! submission through the JSON API.

use std::collections::{BTreeMap, BTreeSet};

use chrono::NaiveDate;
use serde_json::Value;

use crate::survey::{
    Answers, Question, QuestionType, Questionnaire, SCALE_MAX, TextFormat, date_range_message,
    normalise, parse_date, parse_number, range_message, relative_date, required_message, visible,
};
use crate::views::patient::{
    Choice, Chrome, Control, Hint, Message, MessagePage, Progress, QuestionView, SectionView,
    ShowIf, SummaryItem,
};
use crate::views::{self, patient};

/// Percent-encodes a path segment; signed links are URL-safe already, this keeps a
/// forged one from breaking out of the `action` URL.
fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Everything the questionnaire page shows.
pub struct SurveyPage<'a> {
    /// The link token; goes into the form's action and `data-token`.
    pub token: &'a str,
    pub questionnaire: &'a Questionnaire,
    pub patient_name: &'a str,
    pub clinic: &'a str,
    /// A saved draft, or the values of a form sent back with errors.
    pub answers: &'a Answers,
    /// Per question id, the message to show next to it.
    pub errors: &'a BTreeMap<String, String>,
    /// Already formatted for people, e.g. «31.05.2026».
    pub expires_at: Option<&'a str>,
}

fn message(kind: &'static str, heading: &str, paragraphs: Vec<String>) -> Message {
    Message {
        kind,
        heading: heading.to_owned(),
        paragraphs,
        notes: Vec::new(),
    }
}

fn thank_you(clinic: &str, title: &str) -> Message {
    message(
        "done",
        "Спасибо! Ваши ответы получены",
        vec![
            format!("Анкета «{title}» передана в {}.", clinic_or_default(clinic)),
            "Врач ознакомится с ответами перед приёмом. Эту страницу можно закрыть.".into(),
        ],
    )
}

fn already_completed(clinic: &str, title: &str) -> Message {
    message(
        "done",
        "Ответы уже получены",
        vec![
            format!(
                "Анкета «{title}» уже заполнена и передана в {}. Повторно заполнять её не нужно.",
                clinic_or_default(clinic)
            ),
            "Если вы хотите что-то уточнить, сообщите об этом врачу на приёме.".into(),
        ],
    )
}

fn expired() -> Message {
    message(
        "expired",
        "Срок действия ссылки истёк",
        vec!["Срок действия ссылки истёк — обратитесь в клинику, чтобы получить новую.".into()],
    )
}

fn not_found() -> Message {
    message(
        "not-found",
        "Страница не найдена",
        vec!["Проверьте ссылку или обратитесь в клинику.".into()],
    )
}

fn clinic_or_default(clinic: &str) -> String {
    let clinic = clinic.trim();
    if clinic.is_empty() {
        "клинику".into()
    } else {
        format!("клинику «{clinic}»")
    }
}

fn message_page(title: &str, message: Message) -> String {
    views::render(&MessagePage {
        chrome: Chrome::new(title, false),
        message,
    })
}

/// The page after a successful submission, with the questionnaire's messages for
/// these answers.
pub fn render_thank_you(clinic: &str, title: &str, notes: &[String]) -> String {
    let mut message = thank_you(clinic, title);
    message.notes = notes.to_vec();
    message_page("Ответы получены", message)
}

/// The page (409) for a link whose answers were already received.
pub fn render_already_completed(clinic: &str, title: &str) -> String {
    message_page("Ответы уже получены", already_completed(clinic, title))
}

/// The page (410) for an expired link.
pub fn render_expired() -> String {
    message_page("Срок действия ссылки истёк", expired())
}

/// The page (404) for an unknown or forged link; deliberately says nothing of why.
pub fn render_not_found() -> String {
    message_page("Страница не найдена", not_found())
}

/// The page (500) for a failure on our side; `message` is the error's Russian text.
pub fn render_failure(message: &str) -> String {
    message_page(
        "Не получилось",
        self::message("error", "Не получилось", vec![message.to_owned()]),
    )
}

/// The questionnaire page.
pub fn render_survey(ctx: &SurveyPage) -> String {
    views::render(&questionnaire_page(ctx, false))
}

/// The questionnaire as a patient's phone first shows it, for the editor's live
/// preview (`local_app::questionnaire_preview`): the same view model and template,
/// but no link token, no script (so no draft and no JSON submission) and the submit
/// button disabled.
pub fn render_preview(q: &Questionnaire, clinic: &str) -> String {
    let ctx = SurveyPage {
        token: "",
        questionnaire: q,
        patient_name: "",
        clinic,
        answers: &Answers::new(),
        errors: &BTreeMap::new(),
        expires_at: None,
    };
    views::render(&questionnaire_page(&ctx, true))
}

fn questionnaire_page(ctx: &SurveyPage, preview: bool) -> patient::QuestionnairePage {
    let q = ctx.questionnaire;
    let shown: BTreeSet<&str> = visible(q, ctx.answers)
        .into_iter()
        .map(|question| question.id.as_str())
        .collect();
    let non_empty = |s: &str| (!s.trim().is_empty()).then(|| s.to_owned());
    let sections = q
        .sections
        .iter()
        .map(|section| SectionView {
            id: section.id.clone(),
            title: section.title.clone(),
            questions: section
                .questions
                .iter()
                .map(|question| {
                    question_view(
                        question,
                        ctx.answers.get(&question.id),
                        ctx.errors.get(&question.id).cloned(),
                        shown.contains(question.id.as_str()),
                    )
                })
                .collect(),
        })
        .collect();
    let title = if ctx.errors.is_empty() {
        q.title.clone()
    } else {
        format!("Ошибка: {}", q.title)
    };
    patient::QuestionnairePage {
        chrome: Chrome::new(title, !preview),
        preview,
        clinic: non_empty(ctx.clinic),
        heading: q.title.clone(),
        patient_name: non_empty(ctx.patient_name),
        expires_at: ctx.expires_at.map(str::to_owned),
        description: q.description.clone(),
        progress: progress(q, ctx.answers, &shown),
        summary: error_summary(q, ctx.errors),
        action: format!("/s/{}", path_segment(ctx.token)),
        token: ctx.token.to_owned(),
        sections,
        messages: if preview {
            Vec::new()
        } else {
            vec![
                ("tpl-done", thank_you(ctx.clinic, &q.title)),
                ("tpl-completed", already_completed(ctx.clinic, &q.title)),
                ("tpl-expired", expired()),
                ("tpl-not-found", not_found()),
            ]
        },
    }
}

fn progress(q: &Questionnaire, answers: &Answers, shown: &BTreeSet<&str>) -> Progress {
    let required: Vec<&Question> = q
        .questions()
        .filter(|question| question.required && shown.contains(question.id.as_str()))
        .collect();
    let done = required
        .iter()
        .filter(|question| {
            answers
                .get(&question.id)
                .is_some_and(|v| matches!(normalise(question, v, None), Ok(Some(_))))
        })
        .count();
    Progress {
        done,
        total: required.len(),
        max: required.len().max(1),
    }
}

fn error_summary(q: &Questionnaire, errors: &BTreeMap<String, String>) -> Vec<SummaryItem> {
    // Questionnaire order, so the list reads like the form.
    let known = q.questions().filter_map(|question| {
        errors.get(&question.id).map(|message| SummaryItem {
            href: Some(format!("#{}", first_input_id(question))),
            text: format!("{} — {message}", question.title),
        })
    });
    let unknown = errors
        .iter()
        .filter(|(id, _)| q.question(id).is_none())
        .map(|(_, message)| SummaryItem {
            href: None,
            text: message.clone(),
        });
    known.chain(unknown).collect()
}

fn is_group(kind: QuestionType) -> bool {
    matches!(
        kind,
        QuestionType::YesNo
            | QuestionType::Single
            | QuestionType::Multi
            | QuestionType::Scale
            | QuestionType::Consent
    )
}

/// Where a link to the question should put the focus.
fn first_input_id(q: &Question) -> String {
    if is_group(q.kind) {
        format!("f-{}-0", q.id)
    } else {
        format!("f-{}", q.id)
    }
}

fn question_view(
    q: &Question,
    value: Option<&Value>,
    error: Option<String>,
    shown: bool,
) -> QuestionView {
    let hint = q.hint.as_deref().map(|hint| Hint {
        class: if q.kind == QuestionType::Consent {
            "hint consent-text"
        } else {
            "hint"
        },
        // Blank lines separate paragraphs.
        paragraphs: hint
            .split("\n\n")
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect(),
    });
    let describedby = if hint.is_some() {
        format!("h-{id} e-{id}", id = q.id)
    } else {
        format!("e-{}", q.id)
    };
    let group = is_group(q.kind);
    QuestionView {
        id: q.id.clone(),
        kind: q.kind.as_str(),
        title: q.title.clone(),
        required: q.required,
        required_attr: q.required && shown && q.kind != QuestionType::Multi,
        required_msg: q.required.then(|| required_message(q.kind).to_owned()),
        range_msg: range_msg(q),
        show_if: q
            .show_if
            .as_ref()
            .map(|cond| match cond.as_simple_equals() {
                Some((question, equals)) => ShowIf::Equals {
                    question: question.to_owned(),
                    equals,
                },
                None => ShowIf::Rule(serde_json::to_string(cond).unwrap_or_default()),
            }),
        shown,
        group,
        hint,
        describedby,
        error,
        text: if group {
            String::new()
        } else {
            value.map(|v| field_text(q, v)).unwrap_or_default()
        },
        control: control(q, value),
    }
}

/// A date question's limits for today in Moscow, the day the server checks against.
fn date_limits(q: &Question) -> (Option<NaiveDate>, Option<NaiveDate>) {
    let today = chrono::Utc::now()
        .with_timezone(&crate::completion::MSK)
        .date_naive();
    let limit = |spec: &Option<String>| spec.as_deref().and_then(|s| relative_date(s, today));
    (limit(&q.min_date), limit(&q.max_date))
}

/// The message the page shows for an answer outside the question's limits.
fn range_msg(q: &Question) -> Option<String> {
    match q.kind {
        QuestionType::Number => Some(range_message(q)),
        QuestionType::Date if q.min_date.is_some() || q.max_date.is_some() => {
            let (min, max) = date_limits(q);
            Some(date_range_message(min, max))
        }
        _ => None,
    }
}

fn control(q: &Question, value: Option<&Value>) -> Control {
    let chosen = chosen_values(q, value);
    let choices = |input_type, class, options: Vec<(String, String, bool)>| Control::Choices {
        input_type,
        class,
        options: options
            .into_iter()
            .map(|(value, label, exclusive)| Choice {
                checked: chosen.contains(&value),
                value,
                label,
                exclusive,
            })
            .collect(),
    };
    match q.kind {
        QuestionType::YesNo => choices(
            "radio",
            "choices pair",
            vec![
                ("yes".into(), "Да".into(), false),
                ("no".into(), "Нет".into(), false),
            ],
        ),
        QuestionType::Scale => choices(
            "radio",
            "choices scale",
            (0..=SCALE_MAX)
                .map(|n| (n.to_string(), n.to_string(), false))
                .collect(),
        ),
        QuestionType::Consent => choices(
            "checkbox",
            "choices",
            vec![(
                "yes".into(),
                "Я прочитал(а) текст согласия и даю согласие на обработку моих персональных данных"
                    .into(),
                false,
            )],
        ),
        QuestionType::Multi => choices(
            "checkbox",
            "choices",
            q.options
                .iter()
                .map(|o| (o.value.clone(), o.label.clone(), o.exclusive))
                .collect(),
        ),
        QuestionType::Single => choices(
            "radio",
            "choices",
            q.options
                .iter()
                .map(|o| (o.value.clone(), o.label.clone(), false))
                .collect(),
        ),
        QuestionType::Textarea => Control::Textarea {
            maxlength: q.text_limit(),
        },
        QuestionType::Number => Control::Number {
            min: q.min,
            max: q.max,
            unit: q.unit.clone(),
        },
        QuestionType::Date => {
            let (min, max) = date_limits(q);
            let iso = |d: Option<NaiveDate>| d.map(|d| d.format("%Y-%m-%d").to_string());
            Control::Date {
                not_future: q.not_future,
                min: iso(min),
                max: iso(max),
            }
        }
        QuestionType::Text => Control::Text {
            maxlength: q.text_limit(),
            input_type: match q.format {
                Some(TextFormat::Phone) => "tel",
                Some(TextFormat::Email) => "email",
                None => "text",
            },
            format: q.format.map(|f| match f {
                TextFormat::Phone => "phone",
                TextFormat::Email => "email",
            }),
        },
    }
}

/// The option values a radio or checkbox group shows as checked: the normal form
/// when the value is valid, otherwise whatever strings were sent, so a form
/// returned with errors keeps the patient's choices.
fn chosen_values(q: &Question, value: Option<&Value>) -> Vec<String> {
    let Some(value) = value else {
        return Vec::new();
    };
    let strings = |v: &Value| -> Vec<String> {
        match v {
            Value::String(s) => vec![s.clone()],
            Value::Number(n) => vec![n.to_string()],
            Value::Bool(true) => vec!["yes".into()],
            Value::Array(items) => items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        }
    };
    match normalise(q, value, None) {
        Ok(Some(normal)) => strings(&normal),
        Ok(None) => Vec::new(),
        Err(_) => strings(value),
    }
}

/// The text an input shows: dates as `YYYY-MM-DD` and numbers with a dot (what
/// `type=date` and `type=number` accept), anything else as sent.
fn field_text(q: &Question, value: &Value) -> String {
    match (q.kind, value) {
        (QuestionType::Date, Value::String(s)) => parse_date(s)
            .map(|d| d.format("%Y-%m-%d").to_string())
            .unwrap_or_else(|| s.clone()),
        (QuestionType::Number, Value::String(s)) => {
            parse_number(s).map_or_else(|| s.clone(), |n| n.to_string())
        }
        (_, Value::String(s)) => s.clone(),
        (_, Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

/// Turns the no-JavaScript form POST back into answers for
/// [`crate::survey::validate_submit`]: repeated keys of a `multi` question become
/// a list, the first value wins otherwise, empty values and unknown keys are dropped.
pub fn answers_from_form(q: &Questionnaire, pairs: &[(String, String)]) -> Answers {
    let mut out = Answers::new();
    for (key, raw) in pairs {
        let Some(question) = q.question(key) else {
            continue;
        };
        if raw.trim().is_empty() {
            continue;
        }
        if question.kind == QuestionType::Multi {
            let entry = out
                .entry(key.clone())
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(items) = entry {
                items.push(Value::String(raw.trim().to_string()));
            }
        } else {
            out.entry(key.clone())
                .or_insert_with(|| Value::String(raw.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::NaiveDate;
    use serde_json::json;

    use scraper::{Html, Selector};

    use super::*;
    use crate::survey::{Catalog, validate_submit};

    fn builtin() -> Arc<Questionnaire> {
        Catalog::load(None).0.latest("pre_visit").expect("built-in")
    }

    fn answers(v: Value) -> Answers {
        serde_json::from_value(v).expect("object")
    }

    fn full_answers() -> Answers {
        answers(json!({
            "complaints": "Головная боль <по утрам> & «тяжесть»",
            "complaints_duration": "week_month",
            "wellbeing": 4,
            "red_flags": "no",
            "birth_date": "1985-07-14",
            "sex": "female",
            "pregnancy": "no",
            "height": 168,
            "weight": 61.5,
            "chronic": ["hypertension", "other"],
            "chronic_other": "мигрень",
            "surgeries": "yes",
            "surgeries_details": "аппендэктомия, 2010",
            "allergies": "yes",
            "allergy_details": "пенициллин — крапивница",
            "takes_medications": "yes",
            "medications_list": "лозартан 50 мг",
            "anticoagulants": "no",
            "smoking": "never",
            "alcohol": "rarely",
            "consent": true
        }))
    }

    fn render(
        q: &Questionnaire,
        name: &str,
        a: &Answers,
        errors: &BTreeMap<String, String>,
    ) -> String {
        render_survey(&SurveyPage {
            token: "eyJ0.eyJz.c2ln",
            questionnaire: q,
            patient_name: name,
            clinic: "Клиника «Здоровье»",
            answers: a,
            errors,
            expires_at: Some("31.05.2026"),
        })
    }

    fn doc(html: &str) -> Html {
        Html::parse_document(html)
    }

    fn sel(css: &str) -> Selector {
        Selector::parse(css).expect("selector")
    }

    fn one<'a>(d: &'a Html, css: &str) -> scraper::ElementRef<'a> {
        d.select(&sel(css))
            .next()
            .unwrap_or_else(|| panic!("no {css}"))
    }

    fn text(d: &Html, css: &str) -> String {
        one(d, css).text().collect()
    }

    fn attr(d: &Html, css: &str, name: &str) -> Option<String> {
        one(d, css).value().attr(name).map(str::to_owned)
    }

    /// What a browser would post for this form: enabled fields, checked boxes.
    fn form_pairs(html: &str) -> Vec<(String, String)> {
        let d = doc(html);
        d.select(&sel("#survey input, #survey textarea"))
            .filter_map(|field| {
                let e = field.value();
                let name = e.attr("name")?;
                if e.attr("disabled").is_some() {
                    return None;
                }
                let value = if e.name() == "textarea" {
                    field.text().collect()
                } else {
                    if matches!(e.attr("type"), Some("radio" | "checkbox"))
                        && e.attr("checked").is_none()
                    {
                        return None;
                    }
                    e.attr("value").unwrap_or_default().to_owned()
                };
                Some((name.to_owned(), value))
            })
            .collect()
    }

    #[test]
    fn markup_in_answers_stays_text_and_attributes_stay_closed() {
        let q = builtin();
        let hostile = r#""'><img src=x onerror=alert(1)><script>alert(2)</script>"#;
        let a =
            answers(json!({"complaints": hostile, "chronic_other": hostile, "allergies": "yes"}));
        let html = render(&q, hostile, &a, &BTreeMap::new());
        let d = doc(&html);
        assert_eq!(d.select(&sel("img")).count(), 0, "{html}");
        assert_eq!(d.select(&sel("script:not([src])")).count(), 0);
        assert_eq!(text(&d, "#f-complaints"), hostile);
        assert_eq!(
            attr(&d, "#f-chronic_other", "value").as_deref(),
            Some(hostile)
        );
        assert_eq!(text(&d, ".meta strong"), hostile);
    }

    #[test]
    fn a_full_form_round_trips_through_a_plain_post() {
        let q = builtin();
        let original = full_answers();
        let html = render(&q, "Иванова Анна", &original, &BTreeMap::new());
        let pairs = form_pairs(&html);
        assert!(pairs.iter().any(|(k, v)| k == "chronic" && v == "other"));
        let posted = answers_from_form(&q, &pairs);
        let today = NaiveDate::from_ymd_opt(2026, 5, 20).expect("date");
        let accepted = validate_submit(&q, &posted, today).expect("round trip validates");
        let expected = validate_submit(&q, &original, today).expect("original validates");
        assert_eq!(accepted, expected);
    }

    #[test]
    fn form_values_become_answers() {
        let q = builtin();
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        let a = answers_from_form(
            &q,
            &[
                pair("chronic", "diabetes"),
                pair("chronic", "hypertension"),
                pair("consent", "yes"),
                pair("height", ""),
                pair("weight", "72,5"),
                pair("sex", "male"),
                pair("sex", "female"),
                pair("evil", "x"),
            ],
        );
        assert_eq!(
            a,
            answers(json!({
                "chronic": ["diabetes", "hypertension"],
                "consent": "yes",
                "weight": "72,5",
                "sex": "male"
            }))
        );
    }

    #[test]
    fn conditional_questions_follow_the_answers() {
        let q = builtin();
        let html = render(
            &q,
            "Пациент",
            &answers(json!({"allergies": "no"})),
            &BTreeMap::new(),
        );
        let d = doc(&html);
        let wrapper = one(&d, "#q-allergy_details").value();
        assert_eq!(wrapper.attr("data-q"), Some("allergy_details"));
        assert_eq!(wrapper.attr("data-type"), Some("textarea"));
        assert_eq!(
            wrapper.attr("data-required-msg"),
            Some("Заполните это поле")
        );
        assert_eq!(wrapper.attr("data-show-if-question"), Some("allergies"));
        assert_eq!(wrapper.attr("data-show-if-equals"), Some("yes"));
        assert!(wrapper.attr("hidden").is_some());
        assert!(attr(&d, "#f-allergy_details", "disabled").is_some());
        assert!(
            !form_pairs(&html)
                .iter()
                .any(|(k, _)| k == "allergy_details")
        );
        let html = render(
            &q,
            "Пациент",
            &answers(json!({"allergies": true})),
            &BTreeMap::new(),
        );
        let d = doc(&html);
        assert!(attr(&d, "#q-allergy_details", "hidden").is_none());
        let yes = one(&d, "input[name=allergies][value=yes]").value();
        assert_eq!(yes.attr("aria-describedby"), Some("e-allergies"));
        assert!(yes.attr("checked").is_some());
    }

    #[test]
    fn errors_are_summarised_and_attached_to_fields() {
        let q = builtin();
        let a = answers(json!({"height": "300", "sex": "female"}));
        let errors = validate_submit(&q, &a, NaiveDate::from_ymd_opt(2026, 1, 1).expect("date"))
            .expect_err("incomplete")
            .0;
        let html = render(&q, "Пациент", &a, &errors);
        let d = doc(&html);
        assert!(text(&d, "title").starts_with("Ошибка: "));
        assert!(attr(&d, "#error-summary", "hidden").is_none());
        assert_eq!(attr(&d, "#error-summary", "role").as_deref(), Some("alert"));
        assert_eq!(
            text(&d, "#error-summary a[href='#f-height']"),
            "Рост — Введите число от 50 до 250"
        );
        assert_eq!(
            d.select(&sel("#error-summary a[href='#f-pregnancy-0']"))
                .count(),
            1
        );
        let height = one(&d, "#f-height").value();
        assert_eq!(height.attr("name"), Some("height"));
        assert_eq!(height.attr("aria-describedby"), Some("e-height"));
        assert_eq!(height.attr("aria-invalid"), Some("true"));
        // The patient's wrong value is kept for correction.
        assert_eq!(height.attr("value"), Some("300"));
        assert_eq!(text(&d, "p.err#e-height"), "Введите число от 50 до 250");
        assert!(attr(&d, "#e-height", "hidden").is_none());
    }

    #[test]
    fn page_is_escaped_csp_clean_and_light() {
        let q = builtin();
        let html = render(
            &q,
            "<script>alert(1)</script>",
            &full_answers(),
            &BTreeMap::new(),
        );
        let d = doc(&html);
        assert_eq!(text(&d, ".meta strong"), "<script>alert(1)</script>");
        assert_eq!(
            text(&d, "#f-complaints"),
            "Головная боль <по утрам> & «тяжесть»"
        );
        let scripts: Vec<_> = d
            .select(&sel("script"))
            .map(|s| s.value().attr("src").unwrap_or_default().to_owned())
            .collect();
        assert_eq!(
            scripts,
            [crate::assets::APP_JS.url()],
            "only the page's script"
        );
        for element in d.select(&sel("*")) {
            for (name, _) in element.value().attrs() {
                assert!(name != "style", "inline style on {:?}", element.value());
                assert!(!name.starts_with("on"), "inline handler {name}");
            }
        }
        assert_eq!(attr(&d, "html", "lang").as_deref(), Some("ru"));
        assert!(text(&d, "header.top").contains("Ссылка действует до 31.05.2026"));
        assert!(text(&d, "#survey").contains("152-ФЗ"));
        let (css, js) = (crate::assets::APP_CSS.body, crate::assets::APP_JS.body);
        let weight = html.len() + css.len() + js.len();
        println!(
            "page weight: html {} + css {} + js {} = {weight} bytes",
            html.len(),
            css.len(),
            js.len()
        );
        assert!(weight < 60 * 1024, "page weight {weight} bytes");
    }

    #[test]
    fn message_pages_share_the_layout() {
        for page in [
            render_thank_you("Клиника <b>", "Анкета", &[]),
            render_already_completed("Клиника", "Анкета"),
            render_expired(),
            render_not_found(),
            render_failure("Внутренняя ошибка <b>"),
        ] {
            let d = doc(&page);
            assert!(page.starts_with("<!doctype html>"));
            assert_eq!(attr(&d, "html", "lang").as_deref(), Some("ru"));
            assert_eq!(
                attr(&d, "link[rel=stylesheet]", "href"),
                Some(crate::assets::APP_CSS.url())
            );
            assert_eq!(d.select(&sel("script")).count(), 0);
            assert_eq!(d.select(&sel("b")).count(), 0);
            assert_eq!(d.select(&sel("main#main h1")).count(), 1);
        }
        let d = doc(&render_thank_you("Клиника <b>", "А", &[]));
        assert_eq!(text(&d, "h1"), "Спасибо! Ваши ответы получены");
        assert!(text(&d, "p").contains("клинику «Клиника <b>»"));
        let d = doc(&render_expired());
        assert_eq!(
            text(&d, "p"),
            "Срок действия ссылки истёк — обратитесь в клинику, чтобы получить новую."
        );
        assert!(!text(&doc(&render_not_found()), "main").contains("истёк"));
    }

    /// Writes pages a person can open in a browser, styled by the real asset files.
    #[test]
    fn writes_viewable_artefacts() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = root.join("target/test-artefacts");
        std::fs::create_dir_all(&dir).expect("artefact dir");
        // `file!()` is relative to the workspace root in this crate, and absolute when
        // the module is included by path from elsewhere.
        let source = std::path::Path::new(file!());
        let source = if source.is_absolute() {
            source.to_path_buf()
        } else {
            root.join(source)
        };
        let assets = source.with_file_name("assets");
        let q = builtin();
        let draft = answers(
            json!({"allergies": "yes", "sex": "female", "wellbeing": 3, "complaints": "Кашель"}),
        );
        let errors = BTreeMap::from([(
            "allergy_details".to_string(),
            "Заполните это поле".to_string(),
        )]);
        for (name, errors) in [
            ("survey-page.html", BTreeMap::new()),
            ("survey-page-errors.html", errors),
        ] {
            let html = render(&q, "Иванова Анна Сергеевна", &draft, &errors)
                .replace(
                    &crate::assets::APP_CSS.url(),
                    &format!("file://{}", assets.join("app.css").display()),
                )
                .replace(
                    &crate::assets::APP_JS.url(),
                    &format!("file://{}", assets.join("app.js").display()),
                );
            std::fs::write(dir.join(name), html).expect("write artefact");
        }
        std::fs::write(
            dir.join("thank-you.html"),
            render_thank_you("Клиника «Здоровье»", &q.title, &[]).replace(
                &crate::assets::APP_CSS.url(),
                &format!("file://{}", assets.join("app.css").display()),
            ),
        )
        .expect("write");
        assert!(dir.join("survey-page.html").exists());
    }
}
