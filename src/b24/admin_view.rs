//! The HTML of the application page: install status with «Переустановить», the handler
//! URLs, the questionnaires, the outbox and the portal's settings.

use chrono::{DateTime, Utc};
use sea_orm::DbErr;
use serde_json::Value;

use super::page::{escape, layout};
use super::portal_settings;
use crate::completion::moscow;
use crate::db::entities::{outbox_job, portal};
use crate::outbox::jobs::QueueSummary;
use crate::state::AppState;

/// How many open jobs the page lists.
const JOBS_SHOWN: u64 = 50;

pub async fn page(
    state: &AppState,
    portal: &portal::Model,
    session: &str,
    notice: Option<&str>,
) -> Result<String, DbErr> {
    let settings = portal_settings::load(&state.db, portal.id, state.config.link_days).await?;
    let jobs = crate::outbox::jobs::open_jobs(&state.db, Some(portal.id), JOBS_SHOWN).await?;
    let queue = crate::outbox::jobs::summary(&state.db, Some(portal.id)).await?;
    let v = env!("CARGO_PKG_VERSION");
    let mut html = format!(
        "<link rel=\"stylesheet\" href=\"/assets/deal-tab.css?v={v}\">\
<header class=\"tab-head\"><div><h1>Анкета пациента — настройки</h1>\
<p class=\"muted\">Портал {domain}</p></div></header>",
        domain = escape(&portal.domain)
    );
    if let Some(notice) = notice {
        html.push_str(&format!(
            "<section class=\"card notice\" role=\"status\"><p>{}</p></section>",
            escape(notice)
        ));
    }
    html.push_str("<div class=\"admin-grid\">");
    html.push_str(&status_card(portal, session));
    html.push_str(&settings_card(session, settings));
    html.push_str(&urls_card(state));
    html.push_str("</div>");
    html.push_str(&outbox_card(&jobs, &queue, session));
    html.push_str(&questionnaires_card(state));
    Ok(layout("Анкета пациента — настройки", "", &html))
}

fn hidden_session(session: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"s\" value=\"{}\">",
        escape(session)
    )
}

fn status_card(portal: &portal::Model, session: &str) -> String {
    let steps = portal
        .registration
        .as_ref()
        .and_then(|r| r.get("steps"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut rows = String::new();
    for step in &steps {
        let ok = step.get("ok").and_then(Value::as_bool).unwrap_or(false);
        let field = |k: &str| step.get(k).and_then(Value::as_str).unwrap_or_default();
        rows.push_str(&format!(
            "<li class=\"step step--{cls}\"><span class=\"step__mark\" aria-hidden=\"true\">{mark}</span>\
<span class=\"step__what\">{what}</span><span class=\"step__detail\">{detail}</span></li>",
            cls = if ok { "ok" } else { "fail" },
            mark = if ok { "✓" } else { "✕" },
            what = escape(field("what")),
            detail = escape(field("detail")),
        ));
    }
    let summary = if steps.is_empty() {
        "Проверка регистраций ещё не выполнялась."
    } else if steps.iter().all(|s| {
        s.get("ok").and_then(Value::as_bool).unwrap_or(false)
            || !s.get("critical").and_then(Value::as_bool).unwrap_or(true)
    }) {
        "Приложение установлено и работает."
    } else {
        "Установка не завершена: исправьте отмеченное и нажмите «Переустановить»."
    };
    format!(
        "<section class=\"card\"><h2>Состояние установки</h2><p>{summary}</p>\
<p class=\"muted\">Обновлено {updated}</p><ul class=\"steps\">{rows}</ul>\
<form method=\"post\" action=\"/b24/app/action\">{s}\
<input type=\"hidden\" name=\"action\" value=\"reinstall\">\
<button type=\"submit\" class=\"btn\">Переустановить</button></form></section>",
        updated = escape(&moscow(portal.updated_at)),
        s = hidden_session(session),
    )
}

fn settings_card(session: &str, settings: portal_settings::PortalSettings) -> String {
    format!(
        "<section class=\"card settings\"><h2>Настройки ссылок</h2>\
<form method=\"post\" action=\"/b24/app/action\">{s}\
<input type=\"hidden\" name=\"action\" value=\"settings\">\
<label>Срок действия ссылки, дней <input type=\"number\" name=\"link_days\" min=\"1\" max=\"365\" required value=\"{days}\"></label>\
<label><input type=\"checkbox\" name=\"reuse_active\" value=\"Y\"{checked}> \
Отправлять действующую ссылку повторно, а не создавать новую</label>\
<button type=\"submit\" class=\"btn btn--light\">Сохранить</button></form></section>",
        s = hidden_session(session),
        days = settings.link_days,
        checked = if settings.reuse_active {
            " checked"
        } else {
            ""
        },
    )
}

fn urls_card(state: &AppState) -> String {
    let rows = [
        ("Установка", "/b24/install"),
        ("Приложение", "/b24/app"),
        ("Робот «Отправить опрос»", "/b24/robot/send-survey"),
        ("Вкладка сделки", "/b24/placement/deal-tab"),
        ("События", "/b24/events"),
    ]
    .iter()
    .map(|(what, path)| {
        format!(
            "<dt>{what}</dt><dd><code>{}</code></dd>",
            escape(&state.config.public(path))
        )
    })
    .collect::<String>();
    format!(
        "<section class=\"card\"><h2>Адреса обработчиков</h2><dl class=\"urls\">{rows}</dl></section>"
    )
}

fn job_state(job: &outbox_job::Model) -> &'static str {
    if job.dead_at.is_some() {
        "не удалось"
    } else if job.last_error.is_some() {
        "повторяется"
    } else {
        "ожидает"
    }
}

fn run_at(job: &outbox_job::Model) -> String {
    DateTime::<Utc>::from_timestamp_millis(job.run_at)
        .map(moscow)
        .unwrap_or_default()
}

/// The portal's queue in one line: counts, the next try, the last portal error, and
/// «Повторить сейчас» for whatever waits.
fn queue_summary(queue: &QueueSummary, session: &str) -> String {
    let next = queue
        .next_at
        .and_then(DateTime::<Utc>::from_timestamp_millis)
        .map(|at| {
            format!(
                "<p>Следующая попытка: <time>{}</time></p>",
                escape(&moscow(at))
            )
        })
        .unwrap_or_default();
    let error = queue
        .last_error
        .as_deref()
        .map(|e| {
            format!(
                "<p class=\"job-error\">Последняя ошибка портала: {}</p>",
                escape(e)
            )
        })
        .unwrap_or_default();
    let retry_now = if queue.queued + queue.retrying > 0 {
        format!(
            "<form method=\"post\" action=\"/b24/app/action\" class=\"inline-form\">{s}\
<input type=\"hidden\" name=\"action\" value=\"retry_now\">\
<button type=\"submit\" class=\"btn btn--light btn--small\">Повторить сейчас</button></form>",
            s = hidden_session(session),
        )
    } else {
        String::new()
    };
    format!(
        "<div class=\"queue-summary\"><p>В очереди: {queued} · повторяется: {retrying} · \
не удалось: {dead}</p>{next}{error}{retry_now}</div>",
        queued = queue.queued,
        retrying = queue.retrying,
        dead = queue.dead,
    )
}

fn outbox_card(jobs: &[outbox_job::Model], queue: &QueueSummary, session: &str) -> String {
    if jobs.is_empty() {
        return "<section class=\"card\"><h2>Очередь отправки в Битрикс24</h2>\
<p class=\"muted\">Очередь пуста: всё доставлено.</p></section>"
            .to_owned();
    }
    let mut rows = String::new();
    for job in jobs {
        let retry = if job.dead_at.is_some() {
            format!(
                "<form method=\"post\" action=\"/b24/app/action\" class=\"inline-form\">{s}\
<input type=\"hidden\" name=\"action\" value=\"retry\"><input type=\"hidden\" name=\"job\" value=\"{id}\">\
<button type=\"submit\" class=\"btn btn--light btn--small\">Повторить</button></form>",
                s = hidden_session(session),
                id = job.id,
            )
        } else {
            String::new()
        };
        rows.push_str(&format!(
            "<tr><td>{id}</td><td>{kind}</td><td>{state}</td><td class=\"optional\">{attempts}</td>\
<td class=\"optional\">{at}</td><td>{error}{retry}</td></tr>",
            id = job.id,
            kind = escape(&job.kind),
            state = job_state(job),
            attempts = job.attempts,
            at = escape(&run_at(job)),
            error = job
                .last_error
                .as_deref()
                .map(|e| format!("<div class=\"job-error\">{}</div>", escape(e)))
                .unwrap_or_default(),
        ));
    }
    format!(
        "<section class=\"card\"><h2>Очередь отправки в Битрикс24</h2>{summary}<div class=\"table-wrap\"><table>\
<thead><tr><th>№</th><th>Задание</th><th>Состояние</th><th class=\"optional\">Попыток</th>\
<th class=\"optional\">Следующая попытка</th><th>Ошибка</th></tr></thead><tbody>{rows}</tbody></table></div></section>",
        summary = queue_summary(queue, session),
    )
}

fn questionnaires_card(state: &AppState) -> String {
    let catalog = state.catalog();
    let default = catalog.default_code();
    let mut html = String::from("<section class=\"card\"><h2>Анкеты</h2>");
    for q in catalog.list() {
        let questions: String = q
            .questions()
            .map(|question| {
                format!(
                    "<li>{}{}</li>",
                    escape(&question.title),
                    if question.required { " *" } else { "" }
                )
            })
            .collect();
        html.push_str(&format!(
            "<details><summary><strong>{title}</strong> <span class=\"muted\">({code}, версия {version}{default}, вопросов: {count})</span></summary>\
<ol class=\"questions\">{questions}</ol></details>",
            title = escape(&q.title),
            code = escape(&q.code),
            version = q.version,
            default = if q.code == default { ", по умолчанию" } else { "" },
            count = q.questions().count(),
        ));
    }
    html.push_str("<p class=\"muted\">* — обязательный вопрос.</p></section>");
    html
}
