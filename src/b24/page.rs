//! Pages shown inside Bitrix24 iframes: install result, errors. They look like the
//! portal (its system font, spacing and colours) and load the BX24 library, which the
//! portal serves; everything else comes from this service.

use poem::http::StatusCode;
use poem::web::Html;
use poem::{IntoResponse, Response};

use super::registration::Report;
use crate::state::AppState;

/// Scripts from the portal's CDN (BX24) and from us; no inline code. Frames are
/// allowed from any portal: clinics' portals live on many domains.
pub const FRAME_CSP: &str = "default-src 'none'; script-src 'self' https://api.bitrix24.com http://api.bitrix24.com; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'";

pub const FRAME_CSS: &str = include_str!("assets/b24-frame.css");
pub const FRAME_JS: &str = include_str!("assets/b24-frame.js");

pub use crate::web::page::escape;

/// One content hash over the frame pages' files, so that a new build (new colours,
/// say) is never met by a stale cached copy under an unchanged version number.
const FRAME_ASSETS_HASH: u32 = crate::web::page::fnv1a(FRAME_CSS.as_bytes())
    ^ crate::web::page::fnv1a(FRAME_JS.as_bytes()).rotate_left(8)
    ^ crate::web::page::fnv1a(super::tab_view::TAB_CSS.as_bytes()).rotate_left(16)
    ^ crate::web::page::fnv1a(super::tab_view::TAB_JS.as_bytes()).rotate_left(24);

/// The `?v=` of the frame pages' asset URLs.
pub fn assets_version() -> String {
    format!("{FRAME_ASSETS_HASH:08x}")
}

/// The frame layout. `body_attrs` lets a page ask the frame script for
/// `installFinish()`.
pub fn layout(title: &str, body_attrs: &str, content: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"ru\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{title}</title><link rel=\"stylesheet\" href=\"/assets/b24-frame.css?v={v}\">\
<script src=\"//api.bitrix24.com/api/v1/\"></script>\
<script src=\"/assets/b24-frame.js?v={v}\" defer></script></head>\
<body {body_attrs}><main class=\"frame\">{content}</main></body></html>",
        title = escape(title),
        v = assets_version(),
    )
}

pub fn respond(status: StatusCode, html: String) -> Response {
    // `Html` sets the one content-type (`with_header` would add a second).
    Html(html)
        .with_status(status)
        .with_header("content-security-policy", FRAME_CSP)
        .with_header("x-content-type-options", "nosniff")
        .with_header("referrer-policy", "no-referrer")
        .with_header("cache-control", "no-store")
        .into_response()
}

pub fn error(status: StatusCode, message: &str) -> Response {
    let html = layout(
        "Анкета пациента",
        "",
        &format!(
            "<section class=\"card card--error\"><h1>Не получилось</h1><p>{}</p></section>",
            escape(message)
        ),
    );
    respond(status, html)
}

/// What was registered, or what failed and why, and the handler URLs to check.
pub fn install_result(domain: &str, report: &Report, state: &AppState) -> Response {
    let mut rows = String::new();
    for step in &report.steps {
        rows.push_str(&format!(
            "<li class=\"step step--{cls}\"><span class=\"step__mark\" aria-hidden=\"true\">{mark}</span>\
<span class=\"step__what\">{what}</span><span class=\"step__detail\">{detail}</span></li>",
            cls = if step.ok { "ok" } else { "fail" },
            mark = if step.ok { "✓" } else { "✕" },
            what = escape(&step.what),
            detail = escape(&step.detail),
        ));
    }
    let complete = report.all_critical_ok();
    let (heading, note, finish) = if complete {
        (
            "Приложение «Анкета пациента» установлено",
            "Добавьте робота «Отправить опрос» на нужную стадию сделки. Он вернёт ссылку \
             в переменные процесса (survey_url), и следующий робот сможет отправить её пациенту по SMS или в WhatsApp.",
            "data-install-finish=\"yes\"",
        )
    } else {
        (
            "Установка не завершена",
            "Исправьте то, что отмечено ниже (чаще всего — не хватает прав приложения: crm, bizproc, placement, user_brief), \
             и откройте приложение снова. Пока установка не завершена (BX24.installFinish), портал не показывает \
             вкладку «Анкета пациента» и не присылает события.",
            "",
        )
    };
    let html = layout(
        heading,
        finish,
        &format!(
            "<section class=\"card\"><h1>{heading}</h1><p class=\"muted\">Портал: {domain}</p>\
<ul class=\"steps\">{rows}</ul><p>{note}</p>\
<details><summary>Адреса обработчиков</summary><dl class=\"urls\">\
<dt>Робот</dt><dd><code>{robot}</code></dd><dt>Вкладка сделки</dt><dd><code>{tab}</code></dd>\
<dt>События</dt><dd><code>{events}</code></dd></dl></details></section>",
            heading = escape(heading),
            domain = escape(domain),
            note = escape(note),
            robot = escape(&state.config.public("/b24/robot/send-survey")),
            tab = escape(&state.config.public("/b24/placement/deal-tab")),
            events = escape(&state.config.public("/b24/events")),
        ),
    );
    respond(StatusCode::OK, html)
}
