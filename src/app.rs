//! The route tree.

use std::time::Duration;

use poem::{EndpointExt, IntoEndpoint, Route, get, post};
use poem_openapi::OpenApiService;

use crate::state::AppState;
use crate::telemetry::RequestLog;
use crate::{b24, legacy, web};

/// Bodies larger than this are refused with 413 before they are read.
pub const BODY_LIMIT: usize = 1024 * 1024;
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The OpenAPI service: the JSON API of the patient page and health.
pub fn api_service() -> OpenApiService<web::api::SurveyApi, ()> {
    OpenApiService::new(web::api::SurveyApi, "opros", env!("CARGO_PKG_VERSION"))
        .description(
            "Анкеты пациентов для Битрикс24: ссылка из робота сделки, заполнение на телефоне, \
             PDF и ответы в карточке сделки. Обработчики Битрикс24 (/b24/*, /api/v1/bitrix/webhook, \
             /api/bitrix/webhook) принимают формат Битрикс24 и описаны в README.",
        )
}

pub fn routes(state: AppState) -> impl poem::Endpoint {
    let api = api_service();
    let spec = api.spec_endpoint();
    let docs = api.swagger_ui();
    Route::new()
        .nest("/", api)
        .at("/openapi.json", spec)
        .nest("/docs", docs)
        .at(
            "/s/:token",
            get(web::survey_page).post(web::survey_form_submit),
        )
        .at("/assets/:name", get(web::asset))
        .at("/b24/install", post(b24::install::install))
        .at("/b24/robot/send-survey", post(b24::robot::send_survey))
        .at("/b24/events", post(b24::events::events))
        .at("/b24/placement/deal-tab", post(b24::placement::deal_tab))
        .at("/b24/tab/report/:invitation", get(b24::placement::report))
        .at("/b24/tab/new-link", post(b24::placement::new_link))
        .at("/b24/app", post(b24::admin::app_page))
        .at("/b24/app/action", post(b24::admin::action))
        .at(
            "/api/v1/bitrix/webhook",
            post(legacy::webhook_robot::webhook_robot).get(legacy::webhook_robot::webhook_robot),
        )
        .at("/api/bitrix/webhook", post(legacy::outgoing::outgoing))
        .with(crate::body_limit::BodyLimit(BODY_LIMIT))
        .data(state)
        .with(RequestLog {
            timeout: REQUEST_TIMEOUT,
        })
        .into_endpoint()
}
