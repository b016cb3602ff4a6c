//! Pages shown inside Bitrix24 iframes: install result, errors. They look like the
//! portal (its system font, spacing and colours) and load the BX24 library, which the
//! portal serves; everything else comes from this service.

use poem::http::StatusCode;
use poem::web::Html;
use poem::{IntoResponse, Response};

use super::registration::Report;
use crate::state::AppState;

/// Scripts from the portal's CDN (BX24) and from us; no inline code. Who may frame
/// the page is added per response ([`frame_for`]).
pub const FRAME_CSP: &str = "default-src 'none'; script-src 'self' https://api.bitrix24.com http://api.bitrix24.com; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'";

/// The CSP of a frame page that `origin` may frame; `None`: nobody may.
pub fn frame_csp(origin: Option<&str>) -> String {
    format!(
        "{FRAME_CSP}; frame-ancestors {}",
        origin.unwrap_or("'none'")
    )
}

/// Lets only `origin` frame this response (`None`: nobody). Pages that show data or
/// take actions name the installed portal's own origin ([`portal_origin`]); error
/// pages, which show a fixed message and nothing else, name the portal the request
/// claims to come from ([`claimed_origin`]), so that the message shows in that
/// portal's frame; a page that names no portal may not be framed at all.
pub fn frame_for(mut response: Response, origin: Option<&str>) -> Response {
    if let Ok(csp) = frame_csp(origin).parse() {
        response
            .headers_mut()
            .insert("content-security-policy", csp);
    }
    response
}

/// `scheme://domain[:port]` of a portal: where Bitrix24 shows the app's frames. The
/// scheme is that of the stored REST endpoint, the host its stored domain.
pub fn portal_origin(portal: &crate::db::entities::portal::Model) -> Option<String> {
    let scheme = url::Url::parse(&portal.client_endpoint)
        .ok()?
        .scheme()
        .to_owned();
    origin_of(&scheme, &portal.domain)
}

/// The origin a frame POST claims (`DOMAIN`, `PROTOCOL`: protocol §3.2, §6.2).
pub fn claimed_origin(query: &super::install::PortalQuery) -> Option<String> {
    let domain = query.domain.as_deref()?;
    let scheme = if query.protocol.as_deref() == Some("0") {
        "http"
    } else {
        "https"
    };
    origin_of(scheme, domain)
}

/// The origin of the portal a tab or admin session names. The session need not be
/// valid: a page it frames shows that portal's data only for a valid session, and
/// otherwise a fixed error message.
pub async fn session_origin(state: &AppState, token: Option<&str>) -> Option<String> {
    use sea_orm::EntityTrait;
    let portal_id = super::session::Session::portal_hint(token?)?;
    let portal = crate::db::entities::portal::Entity::find_by_id(portal_id)
        .one(&state.db)
        .await
        .ok()
        .flatten()?;
    portal_origin(&portal)
}

fn origin_of(scheme: &str, domain: &str) -> Option<String> {
    let scheme_ok = scheme == "http" || scheme == "https";
    // Only host characters: nothing that could end the directive or add a source.
    (scheme_ok && super::install::valid_domain(domain))
        .then(|| format!("{scheme}://{}", domain.to_ascii_lowercase()))
}

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
        .with_header("content-security-policy", frame_csp(None))
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
