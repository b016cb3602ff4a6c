//! The route tree.

use std::sync::Arc;
use std::time::Duration;

use poem::{Endpoint, EndpointExt, IntoEndpoint, IntoResponse, Route, get, post};
use poem_openapi::OpenApiService;

use crate::state::AppState;
use crate::telemetry::RequestLog;
use crate::{legacy, local_app, web};

/// Bodies larger than this are refused with 413 before they are read.
pub const BODY_LIMIT: usize = 1024 * 1024;
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The OpenAPI service: the patient page's JSON API and health, served from here, and
/// every other route of [`routes`] described by `web::route_docs` (served below).
pub fn api_service() -> OpenApiService<(web::api::SurveyApi, web::route_docs::RouteDocs), ()> {
    OpenApiService::new(
        (web::api::SurveyApi, web::route_docs::RouteDocs),
        "opros",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "Анкеты пациентов для Битрикс24: ссылка из робота сделки, заполнение на телефоне, \
         PDF и ответы в карточке сделки. Обработчики Битрикс24 (/b24/*) и вебхуки \
         (/api/v1/bitrix/webhook, /api/bitrix/webhook) принимают формы \
         application/x-www-form-urlencoded с ключами в квадратных скобках, как их шлёт \
         Битрикс24 (`auth[member_id]`, `document_id[2]`); поля описаны в схемах форм.",
    )
}

/// Methods per route, for the `Allow` header of a 405.
fn allowed_methods(path: &str) -> Option<&'static str> {
    let p = path.trim_end_matches('/');
    if p.starts_with("/api/v1/surveys/") {
        return Some(if p.ends_with("/draft") {
            "PUT"
        } else if p.ends_with("/submit") {
            "POST"
        } else {
            "GET"
        });
    }
    match p {
        "" | "/healthz" | "/openapi.json" | "/README.md" | "/docs" => Some("GET"),
        _ if p.starts_with("/docs/") || p.starts_with("/assets/") => Some("GET"),
        "/api/v1/bitrix/webhook" => Some("GET, POST"),
        "/b24/admin/questionnaires" => Some("GET, POST"),
        _ if p.starts_with("/b24/admin/questionnaires/") => Some(
            if p.ends_with("/versions") || p.ends_with("/archive") || p.ends_with("/preview") {
                "POST"
            } else {
                "GET"
            },
        ),
        _ if p.starts_with("/s/") => Some("GET, POST"),
        _ if p.starts_with("/b24/") || p == "/api/bitrix/webhook" => Some("POST"),
        _ => None,
    }
}

pub fn routes(state: AppState) -> impl poem::Endpoint {
    let api = api_service();
    let spec = api.spec_endpoint();
    let docs = api.swagger_ui();
    // `/` is the operator's page. The API is nested at `/`, and a nest's catch-all wins
    // over a route at `/` itself, so the page is picked out in front of the API.
    let home = Arc::new(get(web::home::home));
    let api = api.into_endpoint().around(move |api, req| {
        let home = home.clone();
        async move {
            if req.uri().path() == "/" {
                home.call(req).await
            } else {
                api.call(req).await.map(IntoResponse::into_response)
            }
        }
    });
    Route::new()
        .nest("/", api)
        // The document and its UI are read-only: other methods get 405 with `Allow`.
        .at("/openapi.json", get(spec))
        .nest("/docs", get(docs))
        .at("/README.md", get(web::home::readme))
        .at(
            "/s/:token",
            get(web::survey_page).post(web::survey_form_submit),
        )
        .at("/assets/:name", get(web::asset))
        .at("/b24/install", post(local_app::install::install))
        .at(
            "/b24/robot/send-survey",
            post(local_app::robot::send_survey),
        )
        .at(
            "/b24/robot/await-survey",
            post(local_app::await_robot::await_survey),
        )
        .at("/b24/events", post(local_app::events::events))
        .at(
            "/b24/placement/deal-tab",
            post(local_app::placement::deal_tab),
        )
        .at(
            "/b24/tab/report/:invitation",
            post(local_app::placement::report),
        )
        .at("/b24/tab/new-link", post(local_app::placement::new_link))
        .at("/b24/app", post(local_app::admin::app_page))
        .at("/b24/app/action", post(local_app::admin::action))
        .at(
            "/b24/admin/questionnaires",
            get(local_app::questionnaire_api::list).post(local_app::questionnaire_api::create),
        )
        .at(
            "/b24/admin/questionnaires/:id",
            get(local_app::questionnaire_api::get),
        )
        .at(
            "/b24/admin/questionnaires/:id/versions",
            post(local_app::questionnaire_api::publish),
        )
        .at(
            "/b24/admin/questionnaires/:id/archive",
            post(local_app::questionnaire_api::archive),
        )
        .at(
            "/b24/admin/questionnaires/:id/export",
            get(local_app::questionnaire_api::export),
        )
        .at(
            "/b24/admin/questionnaires/preview",
            post(local_app::questionnaire_preview::preview).data(
                local_app::questionnaire_preview::PatientPage(web::page::render_preview),
            ),
        )
        .at(
            "/api/v1/bitrix/webhook",
            post(legacy::webhook_robot::webhook_robot).get(legacy::webhook_robot::webhook_robot),
        )
        .at("/api/bitrix/webhook", post(legacy::outgoing::outgoing))
        .with(crate::body_limit::BodyLimit(BODY_LIMIT))
        .around(|ep, req| async move {
            let path = req.uri().path().to_owned();
            let mut response = match ep.call(req).await {
                Ok(r) => r,
                Err(e) => crate::error::from_poem_error(e),
            };
            // RFC 9110: a 405 names the methods the resource supports.
            if response.status() == poem::http::StatusCode::METHOD_NOT_ALLOWED
                && let Some(allow) = allowed_methods(&path)
            {
                response.headers_mut().insert(
                    poem::http::header::ALLOW,
                    poem::http::HeaderValue::from_static(allow),
                );
            }
            Ok(response)
        })
        .data(state)
        .with(RequestLog {
            timeout: REQUEST_TIMEOUT,
        })
        .into_endpoint()
}
