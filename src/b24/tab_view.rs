//! The HTML of the deal tab: the document's invitations with their status, the answers
//! of the latest completed one (flagged first, hidden questions left out), its PDF and
//! the «Отправить новую ссылку» form. Everything shown is escaped; no inline code.

use chrono::{DateTime, Utc};
use sea_orm::DbErr;

use super::page::{escape, layout};
use crate::completion::moscow;
use crate::db::entities::invitation;
use crate::invitations::lifecycle::{self, FlowError};
use crate::invitations::{COMPLETED, EntityRef, EntityType, of_entity, status_label, status_of};
use crate::state::AppState;
use crate::survey::{flagged, sections_for_display};

/// Stylesheet and script of the tab, served from `placement/`.
pub const TAB_CSS: &str = include_str!("../../placement/deal-tab.css");
pub const TAB_JS: &str = include_str!("../../placement/deal-tab.js");

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("database: {0}")]
    Db(#[from] DbErr),
    #[error("answers: {0:?}")]
    Flow(FlowError),
}

impl From<FlowError> for ViewError {
    fn from(e: FlowError) -> Self {
        ViewError::Flow(e)
    }
}

/// The whole tab page. `session` is the signed token its links and forms carry;
/// `new_link` is a link just created, shown for copying.
pub async fn page(
    state: &AppState,
    portal_id: i64,
    entity: EntityRef,
    session: &str,
    new_link: Option<&str>,
) -> Result<String, ViewError> {
    let now = Utc::now();
    let rows = of_entity(&state.db, Some(portal_id), entity).await?;
    let mut html = String::new();
    html.push_str(&assets());
    let what = match entity.kind {
        EntityType::Deal => "Сделка",
        EntityType::Lead => "Лид",
    };
    let patient = rows
        .iter()
        .map(|r| r.patient_name.as_str())
        .find(|n| *n != crate::invitations::patient::PLACEHOLDER)
        .unwrap_or("");
    html.push_str(&format!(
        "<header class=\"tab-head\"><div><h1>Анкета пациента</h1><p class=\"muted\">{what} № {id}{patient}</p></div>{form}</header>",
        id = entity.id,
        patient = if patient.is_empty() {
            String::new()
        } else {
            format!(" · {}", escape(patient))
        },
        form = new_link_form(session),
    ));
    if let Some(link) = new_link {
        html.push_str(&new_link_box(link));
    }
    let latest_done = rows.iter().find(|r| r.status == COMPLETED);
    match latest_done {
        Some(inv) => html.push_str(&answers_block(state, inv, session).await?),
        None => html.push_str(
            "<section class=\"card empty\"><h2>Пациент ещё не заполнил анкету</h2>\
<p class=\"muted\">Когда пациент отправит ответы, они появятся здесь, а PDF — в ленте сделки. \
Ссылку можно отправить повторно кнопкой «Отправить новую ссылку».</p></section>",
        ),
    }
    if !rows.is_empty() {
        html.push_str(&invitations_table(&rows, now));
    }
    Ok(layout("Анкета пациента", "class=\"tab\"", &html))
}

fn assets() -> String {
    let v = super::page::assets_version();
    format!(
        "<link rel=\"stylesheet\" href=\"/assets/deal-tab.css?v={v}\">\
<script src=\"/assets/deal-tab.js?v={v}\" defer></script>"
    )
}

fn new_link_form(session: &str) -> String {
    format!(
        "<form method=\"post\" action=\"/b24/tab/new-link\" class=\"tab-head__action\">\
<input type=\"hidden\" name=\"s\" value=\"{s}\">\
<button type=\"submit\" class=\"btn\">Отправить новую ссылку</button></form>",
        s = escape(session)
    )
}

fn new_link_box(link: &str) -> String {
    format!(
        "<section class=\"card notice\" role=\"status\"><h2>Новая ссылка создана</h2>\
<p class=\"muted\">Ссылка записана в поле сделки. Скопируйте её и отправьте пациенту, \
если робот не отправит её сам.</p><div class=\"copy\">\
<input type=\"text\" readonly value=\"{link}\" id=\"new-link\" aria-label=\"Ссылка на анкету\">\
<button type=\"button\" class=\"btn btn--light\" data-copy=\"new-link\">Скопировать</button>\
<span class=\"copy__done muted\" hidden>Скопировано</span></div></section>",
        link = escape(link)
    )
}

async fn answers_block(
    state: &AppState,
    inv: &invitation::Model,
    session: &str,
) -> Result<String, ViewError> {
    let q = lifecycle::questionnaire_of(state, inv)?;
    let answers = lifecycle::answers_to_show(state, inv).await?;
    let flags = flagged(&q, &answers);
    let flagged_titles: Vec<&str> = flags.iter().map(|f| f.question.as_str()).collect();
    let mut html = String::new();
    let when = inv.completed_at.map(moscow).unwrap_or_default();
    // The session goes in a form field, never in a URL (history, proxies' logs).
    let pdf = format!("/b24/tab/report/{id}", id = escape(&inv.id));
    let s = escape(session);
    html.push_str(&format!(
        "<section class=\"card result\"><div class=\"result__head\"><div><h2>{title}</h2>\
<p class=\"muted\">Заполнена {when}</p></div><div class=\"result__pdf\">\
<form method=\"post\" action=\"{pdf}\" target=\"_blank\"><input type=\"hidden\" name=\"s\" value=\"{s}\">\
<button type=\"submit\" class=\"btn btn--light\">Открыть PDF</button></form>\
<form method=\"post\" action=\"{pdf}\"><input type=\"hidden\" name=\"s\" value=\"{s}\">\
<input type=\"hidden\" name=\"download\" value=\"1\">\
<button type=\"submit\" class=\"btn btn--light\">Скачать PDF</button></form></div></div>",
        title = escape(&q.title),
        when = escape(&when),
    ));
    if !flags.is_empty() {
        html.push_str("<div class=\"flagged\"><h2>Обратите внимание</h2><dl class=\"answers\">");
        for f in &flags {
            html.push_str(&format!(
                "<div class=\"is-flagged\"><dt>{label}</dt><dd>{answer}</dd></div>",
                label = escape(&f.label),
                answer = escape(&f.answer),
            ));
        }
        html.push_str("</dl></div>");
    }
    for (title, items) in sections_for_display(&q, &answers) {
        html.push_str(&format!(
            "<h3 class=\"section-title\">{}</h3><dl class=\"answers\">",
            escape(&title)
        ));
        for (question, answer) in items {
            let class = if flagged_titles.contains(&question.as_str()) {
                " class=\"is-flagged\""
            } else {
                ""
            };
            html.push_str(&format!(
                "<div{class}><dt>{q}</dt><dd>{a}</dd></div>",
                q = escape(&question),
                a = escape(&answer),
            ));
        }
        html.push_str("</dl>");
    }
    html.push_str("</section>");
    Ok(html)
}

fn when(at: Option<DateTime<Utc>>) -> String {
    at.map(moscow).unwrap_or_else(|| "—".to_owned())
}

fn invitations_table(rows: &[invitation::Model], now: DateTime<Utc>) -> String {
    let mut html = String::from(
        "<section class=\"card\"><h2>Отправленные анкеты</h2><div class=\"table-wrap\"><table>\
<thead><tr><th>Отправлена</th><th>Статус</th><th class=\"optional\">Открыта</th>\
<th>Заполнена</th><th class=\"optional\">Действует до</th></tr></thead><tbody>",
    );
    for row in rows {
        let status = status_of(row, now);
        html.push_str(&format!(
            "<tr><td>{created}</td><td><span class=\"badge badge--{status}\">{label}</span></td>\
<td class=\"optional\">{opened}</td><td>{completed}</td><td class=\"optional\">{expires}</td></tr>",
            created = escape(&moscow(row.created_at)),
            label = status_label(status),
            opened = escape(&when(row.opened_at)),
            completed = escape(&when(row.completed_at)),
            expires = escape(&moscow(row.expires_at)),
        ));
    }
    html.push_str("</tbody></table></div></section>");
    html
}
