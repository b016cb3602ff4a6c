//! The patient's pages, rendered on the server as plain HTML.
//!
//! The questionnaire works without JavaScript (an ordinary form POST to
//! `/s/{token}`); `app.js` adds live conditions, progress, autosave and submission
//! through the JSON API. Pages are served under a strict CSP, so nothing inline:
//! no `<script>` bodies, no `style=` attributes, no `on…=` handlers.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::survey::{
    Answers, Question, QuestionType, Questionnaire, SCALE_MAX, normalise, parse_date, parse_number,
    range_message, required_message, visible,
};

/// The stylesheet, served by `web::asset` at `/assets/app.css`.
pub const APP_CSS: &str = include_str!("assets/app.css");
/// The script, served by `web::asset` at `/assets/app.js`.
pub const APP_JS: &str = include_str!("assets/app.js");

/// Content hashes, so a new build never meets a stale cached asset.
const CSS_HASH: u32 = fnv1a(APP_CSS.as_bytes());
const JS_HASH: u32 = fnv1a(APP_JS.as_bytes());

pub(crate) const fn fnv1a(bytes: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u32;
        hash = hash.wrapping_mul(0x0100_0193);
        i += 1;
    }
    hash
}

/// `/assets/app.css?v=<hash>`: the URL pages use for the stylesheet.
pub fn css_url() -> String {
    format!("/assets/app.css?v={CSS_HASH:08x}")
}

/// `/assets/app.js?v=<hash>`: the URL pages use for the script.
pub fn js_url() -> String {
    format!("/assets/app.js?v={JS_HASH:08x}")
}

/// Escapes text for HTML element content and double- or single-quoted attributes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

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

/// The one page frame every patient page (and the operator page) shares.
pub(super) fn layout(title: &str, body: &str, with_script: bool) -> String {
    let script = if with_script {
        format!("<script src=\"{}\" defer></script>\n", js_url())
    } else {
        String::new()
    };
    format!(
        "<!doctype html>\n<html lang=\"ru\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"robots\" content=\"noindex, nofollow\">\n\
         <meta name=\"referrer\" content=\"no-referrer\">\n\
         <title>{}</title>\n<link rel=\"icon\" href=\"data:,\">\n\
         <link rel=\"stylesheet\" href=\"{}\">\n{script}</head>\n<body>\n\
         <main class=\"page\" id=\"main\">\n{body}</main>\n</body>\n</html>\n",
        escape(title),
        css_url(),
    )
}

/// A message page body: a heading and paragraphs.
fn message_body(kind: &str, heading: &str, paragraphs: &[String]) -> String {
    let mut out = format!(
        "<div class=\"message message-{kind}\">\n<h1 tabindex=\"-1\">{}</h1>\n",
        escape(heading)
    );
    for p in paragraphs {
        out.push_str(&format!("<p>{}</p>\n", escape(p)));
    }
    out.push_str("</div>\n");
    out
}

fn thank_you_body(clinic: &str, title: &str) -> String {
    message_body(
        "done",
        "Спасибо! Ваши ответы получены",
        &[
            format!("Анкета «{title}» передана в {}.", clinic_or_default(clinic)),
            "Врач ознакомится с ответами перед приёмом. Эту страницу можно закрыть.".into(),
        ],
    )
}

fn already_completed_body(clinic: &str, title: &str) -> String {
    message_body(
        "done",
        "Ответы уже получены",
        &[
            format!(
                "Анкета «{title}» уже заполнена и передана в {}. Повторно заполнять её не нужно.",
                clinic_or_default(clinic)
            ),
            "Если вы хотите что-то уточнить, сообщите об этом врачу на приёме.".into(),
        ],
    )
}

fn expired_body() -> String {
    message_body(
        "expired",
        "Срок действия ссылки истёк",
        &["Срок действия ссылки истёк — обратитесь в клинику, чтобы получить новую.".into()],
    )
}

fn not_found_body() -> String {
    message_body(
        "not-found",
        "Страница не найдена",
        &["Проверьте ссылку или обратитесь в клинику.".into()],
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

/// The page after a successful submission.
pub fn render_thank_you(clinic: &str, title: &str) -> String {
    layout("Ответы получены", &thank_you_body(clinic, title), false)
}

/// The page (409) for a link whose answers were already received.
pub fn render_already_completed(clinic: &str, title: &str) -> String {
    layout(
        "Ответы уже получены",
        &already_completed_body(clinic, title),
        false,
    )
}

/// The page (410) for an expired link.
pub fn render_expired() -> String {
    layout("Срок действия ссылки истёк", &expired_body(), false)
}

/// The page (404) for an unknown or forged link; deliberately says nothing of why.
pub fn render_not_found() -> String {
    layout("Страница не найдена", &not_found_body(), false)
}

/// The questionnaire page.
pub fn render_survey(ctx: &SurveyPage) -> String {
    let q = ctx.questionnaire;
    let shown: BTreeSet<&str> = visible(q, ctx.answers)
        .into_iter()
        .map(|question| question.id.as_str())
        .collect();
    let mut body = String::with_capacity(32 * 1024);

    body.push_str("<header class=\"top\">\n");
    if !ctx.clinic.trim().is_empty() {
        body.push_str(&format!("<p class=\"clinic\">{}</p>\n", escape(ctx.clinic)));
    }
    body.push_str(&format!("<h1>{}</h1>\n", escape(&q.title)));
    if !ctx.patient_name.trim().is_empty() {
        body.push_str(&format!(
            "<p class=\"meta\">Анкета для: <strong>{}</strong></p>\n",
            escape(ctx.patient_name)
        ));
    }
    if let Some(expires) = ctx.expires_at {
        body.push_str(&format!(
            "<p class=\"meta\">Ссылка действует до {}</p>\n",
            escape(expires)
        ));
    }
    if let Some(description) = &q.description {
        body.push_str(&format!("<p>{}</p>\n", escape(description)));
    }
    body.push_str(
        "<p class=\"meta\">Вопросы, отмеченные <span class=\"req\">*</span>, обязательны.</p>\n</header>\n",
    );

    push_progress(&mut body, q, ctx.answers, &shown);
    push_error_summary(&mut body, q, ctx.errors);

    body.push_str(&format!(
        "<form class=\"survey\" id=\"survey\" method=\"post\" action=\"/s/{}\" data-token=\"{}\">\n",
        path_segment(ctx.token),
        escape(ctx.token)
    ));
    for section in &q.sections {
        body.push_str(&format!(
            "<section class=\"section\" aria-labelledby=\"s-{id}\">\n<h2 id=\"s-{id}\">{}</h2>\n",
            escape(&section.title),
            id = escape(&section.id),
        ));
        for question in &section.questions {
            push_question(
                &mut body,
                question,
                ctx.answers.get(&question.id),
                ctx.errors.get(&question.id).map(String::as_str),
                shown.contains(question.id.as_str()),
            );
        }
        body.push_str("</section>\n");
    }
    body.push_str(
        "<div class=\"submit\">\n\
         <div class=\"notice\" id=\"submit-notice\" role=\"alert\" hidden></div>\n\
         <button type=\"submit\" class=\"btn\">Отправить анкету</button>\n\
         <p class=\"status\" id=\"save-status\" role=\"status\" aria-live=\"polite\"></p>\n\
         </div>\n</form>\n",
    );

    // What the script shows after a JSON submission, rendered here so the words
    // live in one place.
    for (id, content) in [
        ("tpl-done", thank_you_body(ctx.clinic, &q.title)),
        (
            "tpl-completed",
            already_completed_body(ctx.clinic, &q.title),
        ),
        ("tpl-expired", expired_body()),
        ("tpl-not-found", not_found_body()),
    ] {
        body.push_str(&format!("<template id=\"{id}\">{content}</template>\n"));
    }

    let title = if ctx.errors.is_empty() {
        q.title.clone()
    } else {
        format!("Ошибка: {}", q.title)
    };
    layout(&title, &body, true)
}

fn push_progress(out: &mut String, q: &Questionnaire, answers: &Answers, shown: &BTreeSet<&str>) {
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
    out.push_str(&format!(
        "<div class=\"progress\">\n<p class=\"progress-label\" id=\"progress-label\">\
         Обязательные вопросы: <span id=\"progress-text\">{done} из {total}</span></p>\n\
         <progress id=\"progress\" max=\"{max}\" value=\"{done}\" aria-labelledby=\"progress-label\">\
         {done} из {total}</progress>\n</div>\n",
        total = required.len(),
        max = required.len().max(1),
    ));
}

fn push_error_summary(out: &mut String, q: &Questionnaire, errors: &BTreeMap<String, String>) {
    if errors.is_empty() {
        out.push_str(
            "<div class=\"summary\" id=\"error-summary\" role=\"alert\" tabindex=\"-1\" hidden></div>\n",
        );
        return;
    }
    out.push_str(
        "<div class=\"summary\" id=\"error-summary\" role=\"alert\" tabindex=\"-1\">\n\
         <h2>Проверьте ответы</h2>\n<ul>\n",
    );
    // Questionnaire order, so the list reads like the form.
    for question in q.questions() {
        if let Some(message) = errors.get(&question.id) {
            out.push_str(&format!(
                "<li><a href=\"#{}\">{} — {}</a></li>\n",
                first_input_id(question),
                escape(&question.title),
                escape(message)
            ));
        }
    }
    for (id, message) in errors {
        if q.question(id).is_none() {
            out.push_str(&format!("<li>{}</li>\n", escape(message)));
        }
    }
    out.push_str("</ul>\n</div>\n");
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
        format!("f-{}-0", escape(&q.id))
    } else {
        format!("f-{}", escape(&q.id))
    }
}

/// Attributes every input of a question shares.
fn common_attrs(q: &Question, describedby: &str, error: bool, shown: bool) -> String {
    let mut attrs = format!(
        " name=\"{}\" aria-describedby=\"{describedby}\"",
        escape(&q.id)
    );
    if error {
        attrs.push_str(" aria-invalid=\"true\"");
    }
    // Hidden inputs are disabled so the browser neither submits nor validates them.
    if !shown {
        attrs.push_str(" disabled");
    }
    attrs
}

fn push_question(
    out: &mut String,
    q: &Question,
    value: Option<&Value>,
    error: Option<&str>,
    shown: bool,
) {
    let id = &escape(&q.id);
    let mut wrapper = format!(
        "<div class=\"q{}\" id=\"q-{id}\" data-q=\"{id}\" data-type=\"{}\"",
        if error.is_some() { " q-error" } else { "" },
        q.kind.as_str()
    );
    if q.required {
        wrapper.push_str(&format!(
            " data-required-msg=\"{}\"",
            escape(required_message(q.kind))
        ));
    }
    if q.kind == QuestionType::Number {
        wrapper.push_str(&format!(
            " data-range-msg=\"{}\"",
            escape(&range_message(q))
        ));
    }
    if let Some(cond) = &q.show_if {
        wrapper.push_str(&format!(
            " data-show-if-question=\"{}\" data-show-if-equals=\"{}\"",
            escape(&cond.question),
            escape(&cond.equals)
        ));
    }
    if !shown {
        wrapper.push_str(" hidden");
    }
    wrapper.push_str(">\n");
    out.push_str(&wrapper);

    let title = format!(
        "<span class=\"q-text\">{}</span>{}",
        escape(&q.title),
        if q.required {
            "<span class=\"req\" aria-hidden=\"true\"> *</span>"
        } else {
            ""
        }
    );
    let hint_html = q.hint.as_deref().map(|hint| {
        let class = if q.kind == QuestionType::Consent {
            "hint consent-text"
        } else {
            "hint"
        };
        format!(
            "<div class=\"{class}\" id=\"h-{id}\">{}</div>\n",
            paragraphs(hint)
        )
    });
    let describedby = if hint_html.is_some() {
        format!("h-{id} e-{id}")
    } else {
        format!("e-{id}")
    };
    let error_html = format!(
        "<p class=\"err\" id=\"e-{id}\"{}>{}</p>\n",
        if error.is_none() { " hidden" } else { "" },
        escape(error.unwrap_or_default())
    );
    let attrs = common_attrs(q, &describedby, error.is_some(), shown);

    if is_group(q.kind) {
        out.push_str(&format!(
            "<fieldset>\n<legend class=\"q-title\">{title}</legend>\n"
        ));
        out.push_str(hint_html.as_deref().unwrap_or_default());
        out.push_str(&error_html);
        push_choices(out, q, value, &attrs, shown);
        out.push_str("</fieldset>\n");
    } else {
        out.push_str(&format!(
            "<label class=\"q-title\" for=\"f-{id}\">{title}</label>\n"
        ));
        out.push_str(hint_html.as_deref().unwrap_or_default());
        out.push_str(&error_html);
        push_field(out, q, value, &attrs, shown);
    }
    out.push_str("</div>\n");
}

/// Hint text as paragraphs (blank lines separate them), escaped.
fn paragraphs(text: &str) -> String {
    text.split("\n\n")
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| format!("<p>{}</p>", escape(p)))
        .collect()
}

fn push_choices(out: &mut String, q: &Question, value: Option<&Value>, attrs: &str, shown: bool) {
    let chosen = chosen_values(q, value);
    let required = if q.required && shown && q.kind != QuestionType::Multi {
        " required"
    } else {
        ""
    };
    let (input_type, class, options): (&str, &str, Vec<(String, String, bool)>) = match q.kind {
        QuestionType::YesNo => (
            "radio",
            "choices pair",
            vec![
                ("yes".into(), "Да".into(), false),
                ("no".into(), "Нет".into(), false),
            ],
        ),
        QuestionType::Scale => (
            "radio",
            "choices scale",
            (0..=SCALE_MAX)
                .map(|n| (n.to_string(), n.to_string(), false))
                .collect(),
        ),
        QuestionType::Consent => (
            "checkbox",
            "choices",
            vec![(
                "yes".into(),
                "Я прочитал(а) текст согласия и даю согласие на обработку моих персональных данных"
                    .into(),
                false,
            )],
        ),
        QuestionType::Multi => (
            "checkbox",
            "choices",
            q.options
                .iter()
                .map(|o| (o.value.clone(), o.label.clone(), o.exclusive))
                .collect(),
        ),
        _ => (
            "radio",
            "choices",
            q.options
                .iter()
                .map(|o| (o.value.clone(), o.label.clone(), false))
                .collect(),
        ),
    };
    out.push_str(&format!("<div class=\"{class}\">\n"));
    for (i, (value, label, exclusive)) in options.iter().enumerate() {
        out.push_str(&format!(
            "<label class=\"choice\"><input type=\"{input_type}\" id=\"f-{}-{i}\"{attrs} value=\"{}\"{}{}{required}><span>{}</span></label>\n",
            escape(&q.id),
            escape(value),
            if chosen.contains(value) { " checked" } else { "" },
            if *exclusive { " data-exclusive" } else { "" },
            escape(label),
        ));
    }
    out.push_str("</div>\n");
}

fn push_field(out: &mut String, q: &Question, value: Option<&Value>, attrs: &str, shown: bool) {
    let id = &escape(&q.id);
    let text = value.map(|v| field_text(q, v)).unwrap_or_default();
    let required = if q.required && shown { " required" } else { "" };
    match q.kind {
        QuestionType::Textarea => out.push_str(&format!(
            "<textarea id=\"f-{id}\"{attrs} rows=\"4\" maxlength=\"{}\"{required}>{}</textarea>\n",
            q.text_limit(),
            escape(&text)
        )),
        QuestionType::Number => {
            let bound = |name: &str, v: Option<f64>| {
                v.map(|v| format!(" {name}=\"{v}\"")).unwrap_or_default()
            };
            out.push_str(&format!(
                "<div class=\"num\"><input type=\"number\" inputmode=\"decimal\" id=\"f-{id}\"{attrs}{}{} step=\"any\" value=\"{}\"{required}>{}</div>\n",
                bound("min", q.min),
                bound("max", q.max),
                escape(&text),
                q.unit
                    .as_deref()
                    .map(|u| format!("<span class=\"unit\">{}</span>", escape(u)))
                    .unwrap_or_default(),
            ));
        }
        QuestionType::Date => out.push_str(&format!(
            "<input type=\"date\" id=\"f-{id}\"{attrs} value=\"{}\"{}{required}>\n",
            escape(&text),
            if q.not_future { " data-not-future" } else { "" },
        )),
        _ => out.push_str(&format!(
            "<input type=\"text\" id=\"f-{id}\"{attrs} maxlength=\"{}\" value=\"{}\"{required}>\n",
            q.text_limit(),
            escape(&text)
        )),
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

    fn unescape(s: &str) -> String {
        s.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&amp;", "&")
    }

    /// The attributes of one tag body (`type="radio" name="x" checked`).
    fn attributes(tag: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let mut rest = tag.trim();
        while !rest.is_empty() {
            let end = rest
                .find(|c: char| c == '=' || c.is_whitespace())
                .unwrap_or(rest.len());
            let name = rest[..end].to_string();
            rest = &rest[end..];
            if let Some(after) = rest.strip_prefix("=\"") {
                let close = after.find('"').expect("closing quote");
                out.insert(name, unescape(&after[..close]));
                rest = after[close + 1..].trim_start();
            } else {
                out.insert(name, String::new());
                rest = rest.trim_start();
            }
        }
        out
    }

    /// What a browser would post for this form: enabled fields, checked boxes.
    fn form_pairs(html: &str) -> Vec<(String, String)> {
        let mut pairs = Vec::new();
        let mut rest = html;
        while let Some(start) = rest.find('<') {
            rest = &rest[start + 1..];
            let end = rest.find('>').expect("tag end");
            let tag = &rest[..end];
            let (name, attrs) = tag.split_once(' ').unwrap_or((tag, ""));
            if name != "input" && name != "textarea" {
                continue;
            }
            let attrs = attributes(attrs);
            if attrs.contains_key("disabled") {
                continue;
            }
            let Some(field) = attrs.get("name") else {
                continue;
            };
            let value = if name == "textarea" {
                let body = &rest[end + 1..];
                unescape(&body[..body.find("</textarea>").expect("textarea end")])
            } else {
                let checkable = matches!(
                    attrs.get("type").map(String::as_str),
                    Some("radio" | "checkbox")
                );
                if checkable && !attrs.contains_key("checked") {
                    continue;
                }
                attrs.get("value").cloned().unwrap_or_default()
            };
            pairs.push((field.clone(), value));
        }
        pairs
    }

    #[test]
    fn escape_covers_markup_and_quotes() {
        assert_eq!(
            escape(r#"<script>alert('x') & "y"</script>"#),
            "&lt;script&gt;alert(&#39;x&#39;) &amp; &quot;y&quot;&lt;/script&gt;"
        );
        assert_eq!(escape("Иванов"), "Иванов");
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
        assert!(html.contains(
            "id=\"q-allergy_details\" data-q=\"allergy_details\" data-type=\"textarea\" \
             data-required-msg=\"Заполните это поле\" data-show-if-question=\"allergies\" \
             data-show-if-equals=\"yes\" hidden>"
        ));
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
        assert!(html.contains("data-show-if-equals=\"yes\">"));
        assert!(
            html.contains(
                "name=\"allergies\" aria-describedby=\"e-allergies\" value=\"yes\" checked"
            )
        );
    }

    #[test]
    fn errors_are_summarised_and_attached_to_fields() {
        let q = builtin();
        let a = answers(json!({"height": "300", "sex": "female"}));
        let errors = validate_submit(&q, &a, NaiveDate::from_ymd_opt(2026, 1, 1).expect("date"))
            .expect_err("incomplete")
            .0;
        let html = render(&q, "Пациент", &a, &errors);
        assert!(html.contains("<title>Ошибка: "));
        assert!(html.contains("id=\"error-summary\" role=\"alert\" tabindex=\"-1\">"));
        assert!(html.contains("<a href=\"#f-height\">Рост — Введите число от 50 до 250</a>"));
        assert!(html.contains("<a href=\"#f-pregnancy-0\">"));
        assert!(html.contains(
            "id=\"f-height\" name=\"height\" aria-describedby=\"e-height\" aria-invalid=\"true\""
        ));
        assert!(html.contains("<p class=\"err\" id=\"e-height\">Введите число от 50 до 250</p>"));
        // The patient's wrong value is kept for correction.
        assert!(html.contains("value=\"300\""));
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
        assert!(!html.contains("<script>alert(1)"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("Головная боль &lt;по утрам&gt; &amp; «тяжесть»"));
        assert!(!html.contains("style="));
        for (i, _) in html.match_indices("<script") {
            let tag = &html[i..i + html[i..].find('>').expect("tag end")];
            assert!(
                tag.contains(" src=\"/assets/app.js?v="),
                "inline script: {tag}"
            );
        }
        for word in html.split(|c: char| c.is_whitespace() || c == '<') {
            let lower = word.to_lowercase();
            assert!(
                !(lower.starts_with("on") && lower.contains('=')),
                "inline handler: {word}"
            );
        }
        assert!(html.contains("<html lang=\"ru\">"));
        assert!(html.contains("Анкета для: <strong>"));
        assert!(html.contains("Ссылка действует до 31.05.2026"));
        assert!(html.contains("152-ФЗ"));
        let weight = html.len() + APP_CSS.len() + APP_JS.len();
        println!(
            "page weight: html {} + css {} + js {} = {weight} bytes",
            html.len(),
            APP_CSS.len(),
            APP_JS.len()
        );
        assert!(weight < 60 * 1024, "page weight {weight} bytes");
    }

    #[test]
    fn message_pages_share_the_layout() {
        for page in [
            render_thank_you("Клиника <b>", "Анкета"),
            render_already_completed("Клиника", "Анкета"),
            render_expired(),
            render_not_found(),
        ] {
            assert!(page.starts_with("<!doctype html>\n<html lang=\"ru\">"));
            assert!(page.contains(&css_url()));
            assert!(!page.contains("<script"));
            assert!(!page.contains("<b>"));
        }
        assert!(render_thank_you("К", "А").contains("Спасибо! Ваши ответы получены"));
        assert!(render_expired().contains("Срок действия ссылки истёк — обратитесь в клинику"));
        assert!(!render_not_found().contains("истёк"));
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
                    &css_url(),
                    &format!("file://{}", assets.join("app.css").display()),
                )
                .replace(
                    &js_url(),
                    &format!("file://{}", assets.join("app.js").display()),
                );
            std::fs::write(dir.join(name), html).expect("write artefact");
        }
        std::fs::write(
            dir.join("thank-you.html"),
            render_thank_you("Клиника «Здоровье»", &q.title).replace(
                &css_url(),
                &format!("file://{}", assets.join("app.css").display()),
            ),
        )
        .expect("write");
        assert!(dir.join("survey-page.html").exists());
    }
}
