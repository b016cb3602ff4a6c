//! Responses shown inside Bitrix24 iframes: who may frame them, their headers, and the
//! install result and error pages (templates in `views::frame`). They look like the
//! portal (its system font, spacing and colours) and load the BX24 library, which the
//! portal serves; everything else comes from this service.

use poem::http::StatusCode;
use poem::web::Html;
use poem::{IntoResponse, Response};

use super::registration::Report;
use crate::state::AppState;
use crate::views::frame::{Frame, FrameError, InstallResult};
use crate::views::{self, StepRow};

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
    let html = views::render(&FrameError {
        frame: Frame::new("Анкета пациента"),
        message: message.to_owned(),
    });
    respond(status, html)
}

/// What was registered, or what failed and why, and the handler URLs to check.
pub fn install_result(domain: &str, report: &Report, state: &AppState) -> Response {
    let complete = report.all_critical_ok();
    let (heading, note) = if complete {
        (
            "Приложение «Анкета пациента» установлено",
            "Добавьте робота «Отправить опрос» на нужную стадию сделки. Он вернёт ссылку \
             в переменные процесса (survey_url), и следующий робот сможет отправить её пациенту по SMS или в WhatsApp.",
        )
    } else {
        (
            "Установка не завершена",
            "Исправьте то, что отмечено ниже (чаще всего — не хватает прав приложения: crm, bizproc, placement, user_brief), \
             и откройте приложение снова. Пока установка не завершена (BX24.installFinish), портал не показывает \
             вкладку «Анкета пациента» и не присылает события.",
        )
    };
    let mut frame = Frame::new(heading);
    frame.install_finish = complete;
    let html = views::render(&InstallResult {
        frame,
        domain: domain.to_owned(),
        steps: report
            .steps
            .iter()
            .map(|step| StepRow {
                ok: step.ok,
                what: step.what.clone(),
                detail: step.detail.clone(),
            })
            .collect(),
        note,
        urls: vec![
            ("Робот", state.config.public("/b24/robot/send-survey")),
            (
                "Вкладка сделки",
                state.config.public("/b24/placement/deal-tab"),
            ),
            ("События", state.config.public("/b24/events")),
        ],
    });
    respond(StatusCode::OK, html)
}
