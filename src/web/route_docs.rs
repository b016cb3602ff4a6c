//! The OpenAPI description of every route served by a plain poem handler: the pages,
//! the Bitrix24 callbacks (`/b24/*`) and the guides' two webhooks. Doc-only: the
//! routes themselves stay in `app::routes`.
//!
//! Why not `#[OpenApi]` operations: a Bitrix24 form must reach the one bounded decoder
//! (`bitrix24::form::decode`) before anything else reads it, and poem-openapi's `Form<T>`
//! would parse it with `serde_urlencoded` first (STYLE.md); the pages answer HTML whose
//! status and frame headers the handlers choose. So [`RouteDocs`] implements `OpenApi`
//! by hand: `meta` describes the routes with the typed forms below, `add_routes` adds
//! none. The form structs exist for their schema; Bitrix24's bracket keys
//! (`auth[member_id]`) are their field names, exactly as they travel.

use std::collections::HashMap;

use poem::endpoint::BoxEndpoint;
use poem::http::Method;
use poem_openapi::registry::{
    MetaApi, MetaMediaType, MetaOperation, MetaOperationParam, MetaParamIn, MetaPath, MetaRequest,
    MetaResponse, MetaResponses, MetaSchema, MetaSchemaRef, MetaTag, Registry,
};
use poem_openapi::types::Type;
use poem_openapi::{ApiResponse, Object, OpenApi};

use crate::error::{ApiError, ErrorBody};

const FORM: &str = "application/x-www-form-urlencoded";
const HTML: &str = "text/html; charset=utf-8";
const JSON: &str = "application/json; charset=utf-8";

const TAG_BITRIX24: &str = "Bitrix24";
const TAG_WEBHOOKS: &str = "Webhooks";
const TAG_PAGES: &str = "Pages";

/// The robot «Отправить опрос» called by automation (protocol §4.3, fixture
/// `robot-call.form.txt`): the document, the single-use event token, the robot's
/// properties and the `auth[...]` block; only `auth[member_id]` and
/// `auth[application_token]` are looked at there.
#[derive(Debug, Object)]
pub struct B24RobotCall {
    /// Business process instance id.
    pub workflow_id: Option<String>,
    /// The robot's `CODE`: `opros_send_survey` or `opros_await_survey`.
    pub code: Option<String>,
    /// `crm`.
    #[oai(rename = "document_id[0]")]
    pub document_module: Option<String>,
    /// `CCrmDocumentDeal`, `CCrmDocumentLead` or
    /// `Bitrix\Crm\Integration\BizProc\Document\Dynamic` (a smart-process item).
    #[oai(rename = "document_id[1]")]
    pub document_class: Option<String>,
    /// The document, e.g. `DEAL_4217`, `LEAD_15`, `DYNAMIC_128_5` (a smart-process
    /// item: type 128, item 5): the id follows the last `_`.
    #[oai(rename = "document_id[2]", validator(min_length = 1))]
    pub document: String,
    /// `crm`.
    #[oai(rename = "document_type[0]")]
    pub document_type_module: Option<String>,
    /// `CCrmDocumentDeal`, `CCrmDocumentLead` or the smart-process class.
    #[oai(rename = "document_type[1]")]
    pub document_type_class: Option<String>,
    /// `DEAL`, `LEAD` or `DYNAMIC_<entityTypeId>`.
    #[oai(rename = "document_type[2]")]
    pub document_type: Option<String>,
    /// Single-use token that `bizproc.event.send` returns the link with.
    #[oai(validator(min_length = 1))]
    pub event_token: String,
    /// The robot's property «Анкета»: a questionnaire code (the default one when absent).
    #[oai(rename = "properties[survey_code]")]
    pub survey_code: Option<String>,
    /// The robot's property «Срок действия ссылки, дней», 1–365 (else the portal's setting).
    #[oai(rename = "properties[link_days]")]
    pub link_days: Option<String>,
    /// The robot's property «Отправлять действующую ссылку повторно» (`Y`/`N`).
    #[oai(rename = "properties[reuse_active]")]
    pub reuse_active: Option<String>,
    /// The patient's name as the robot's template gives it; read from the deal's
    /// contact when empty or unusable.
    #[oai(rename = "properties[patient_name]")]
    pub patient_name: Option<String>,
    /// «Дождаться анкеты»: the survey to wait for (a `survey_id` of «Отправить
    /// опрос» in this document); empty: the document's latest link.
    #[oai(rename = "properties[survey_id]")]
    pub survey_id: Option<String>,
    /// `Y` or `N`.
    pub use_subscription: Option<String>,
    /// Seconds, as a string.
    pub timeout_duration: Option<String>,
    /// Unix seconds.
    pub ts: Option<String>,
    /// The portal's id; must name an installed portal.
    #[oai(rename = "auth[member_id]", validator(min_length = 1))]
    pub member_id: String,
    /// Compared with the token stored at install; the only proof of origin.
    #[oai(rename = "auth[application_token]", validator(min_length = 1))]
    pub application_token: String,
    /// The portal's domain.
    #[oai(rename = "auth[domain]")]
    pub domain: Option<String>,
    /// Access token of the user behind the robot; not used.
    #[oai(rename = "auth[access_token]")]
    pub access_token: Option<String>,
    /// Refresh token; not used.
    #[oai(rename = "auth[refresh_token]")]
    pub refresh_token: Option<String>,
    /// Unix seconds.
    #[oai(rename = "auth[expires]")]
    pub expires: Option<String>,
    /// Seconds.
    #[oai(rename = "auth[expires_in]")]
    pub expires_in: Option<String>,
    /// Comma-separated scopes.
    #[oai(rename = "auth[scope]")]
    pub scope: Option<String>,
    /// The OAuth server's REST address.
    #[oai(rename = "auth[server_endpoint]")]
    pub server_endpoint: Option<String>,
    /// The portal's REST address (compared with the vouched one, never called).
    #[oai(rename = "auth[client_endpoint]")]
    pub client_endpoint: Option<String>,
    /// `L` for a local application.
    #[oai(rename = "auth[status]")]
    pub status: Option<String>,
    /// The user the robot runs as.
    #[oai(rename = "auth[user_id]")]
    pub user_id: Option<String>,
}

/// An application event (protocol §7.1, §3.3, §7.3).
#[derive(Debug, Object)]
pub struct B24Event {
    /// `ONAPPINSTALL`, `ONAPPUPDATE`, `ONAPPUNINSTALL`, `ONCRMDEALADD`, `ONCRMLEADADD` or
    /// `ONCRMTIMELINEITEMACTION`; others are acknowledged and ignored.
    #[oai(validator(min_length = 1))]
    pub event: String,
    pub event_handler_id: Option<String>,
    /// The new deal's or lead's id (`ONCRMDEALADD`, `ONCRMLEADADD`).
    #[oai(rename = "data[FIELDS][ID]")]
    pub data_id: Option<String>,
    /// `ONAPPUNINSTALL`: `1` when the admin asked to clear the application's data.
    #[oai(rename = "data[CLEAN]")]
    pub data_clean: Option<String>,
    /// `ONAPPINSTALL`, `ONAPPUPDATE`: the application's version.
    #[oai(rename = "data[VERSION]")]
    pub data_version: Option<String>,
    #[oai(rename = "data[LANGUAGE_ID]")]
    pub data_language_id: Option<String>,
    /// `ONCRMTIMELINEITEMACTION`: the pressed button (`seen` = «Просмотрено»).
    #[oai(rename = "data[id]")]
    pub data_action: Option<String>,
    /// `ONCRMTIMELINEITEMACTION`: `2` deal, `1` lead.
    #[oai(rename = "data[entityTypeId]")]
    pub data_entity_type_id: Option<String>,
    #[oai(rename = "data[entityId]")]
    pub data_entity_id: Option<String>,
    /// `ONCRMTIMELINEITEMACTION`: must be an activity opros created on that record.
    #[oai(rename = "data[activityId]")]
    pub data_activity_id: Option<String>,
    /// `ONCRMTIMELINEITEMACTION`: the user who pressed; `auth[access_token]` must be
    /// theirs, confirmed by the portal, with the right to read the record.
    #[oai(rename = "data[userId]")]
    pub data_user_id: Option<String>,
    /// Unix seconds.
    pub ts: Option<String>,
    /// The portal's id; for the events above, must name an installed portal (except
    /// `ONAPPINSTALL`).
    #[oai(rename = "auth[member_id]")]
    pub member_id: Option<String>,
    /// For the events above, compared with the stored token: the only proof of origin.
    /// Other events are acknowledged without looking at it.
    #[oai(rename = "auth[application_token]")]
    pub application_token: Option<String>,
    #[oai(rename = "auth[domain]")]
    pub domain: Option<String>,
    /// Present only for events caused by a user, and on `ONAPPINSTALL`.
    #[oai(rename = "auth[access_token]")]
    pub access_token: Option<String>,
    /// `ONAPPINSTALL` only: exchanged once with the OAuth server, whose answer names
    /// the portal.
    #[oai(rename = "auth[refresh_token]")]
    pub refresh_token: Option<String>,
    #[oai(rename = "auth[expires]")]
    pub expires: Option<String>,
    #[oai(rename = "auth[expires_in]")]
    pub expires_in: Option<String>,
    #[oai(rename = "auth[scope]")]
    pub scope: Option<String>,
    #[oai(rename = "auth[server_endpoint]")]
    pub server_endpoint: Option<String>,
    #[oai(rename = "auth[client_endpoint]")]
    pub client_endpoint: Option<String>,
    #[oai(rename = "auth[status]")]
    pub status: Option<String>,
    #[oai(rename = "auth[user_id]")]
    pub user_id: Option<String>,
}

/// What the portal's frame POSTs when it opens the application (install page, admin
/// page, deal tab; protocol §3.2, §6.2). Submitted by a browser, so forgeable:
/// `AUTH_ID` is confirmed with the portal before anything is shown.
#[derive(Debug, Object)]
pub struct B24Frame {
    /// The user's access token.
    #[oai(rename = "AUTH_ID", validator(min_length = 1))]
    pub auth_id: String,
    /// Lifetime in seconds (`3600`), not a timestamp.
    #[oai(rename = "AUTH_EXPIRES")]
    pub auth_expires: Option<String>,
    /// The user's refresh token (install page: exchanged once with the OAuth server).
    #[oai(rename = "REFRESH_ID")]
    pub refresh_id: Option<String>,
    #[oai(rename = "SERVER_ENDPOINT")]
    pub server_endpoint: Option<String>,
    /// Visible to every user who opens a frame; proves nothing on its own.
    #[oai(rename = "APPLICATION_TOKEN")]
    pub application_token: Option<String>,
    /// Comma-separated scopes.
    #[oai(rename = "APPLICATION_SCOPE")]
    pub application_scope: Option<String>,
    /// The portal's id.
    #[oai(validator(min_length = 1))]
    pub member_id: String,
    /// `L` for a local application.
    pub status: Option<String>,
    /// `DEFAULT` (install and admin pages), `CRM_DEAL_DETAIL_TAB` or `CRM_LEAD_DETAIL_TAB`.
    #[oai(rename = "PLACEMENT")]
    pub placement: Option<String>,
    /// Deal tab: a JSON string `{"ID": "4217", "URI": "…"}`; `ID` names the deal or lead.
    #[oai(rename = "PLACEMENT_OPTIONS")]
    pub placement_options: Option<String>,
}

/// A follow-up from the deal tab: the PDF or «Отправить новую ссылку».
#[derive(Debug, Object)]
pub struct B24TabAction {
    /// The signed session the tab was given, bound to one deal.
    #[oai(validator(min_length = 1))]
    pub s: String,
    /// PDF only: present to download instead of showing it.
    pub download: Option<String>,
}

/// An action on the admin page.
#[derive(Debug, Object)]
pub struct B24AdminAction {
    /// The signed session the admin page was given.
    #[oai(validator(min_length = 1))]
    pub s: String,
    /// `reinstall`, `retry`, `retry_now` or `settings`.
    #[oai(validator(min_length = 1))]
    pub action: String,
    /// `retry`: the outbox job to put back.
    pub job: Option<String>,
    /// `settings`: link lifetime in days, 1–365.
    pub link_days: Option<String>,
    /// `settings`: present to reuse an active link instead of making a new one.
    pub reuse_active: Option<String>,
}

/// The guide's webhook robot (protocol §5.2): the built-in robot «Вебхук» sends only
/// `document_id[…]`; everything else comes from its URL's query string. The same
/// fields may also come as JSON or multipart, and from the query string.
#[derive(Debug, Object)]
pub struct WebhookRobotForm {
    /// `crm`.
    #[oai(rename = "document_id[0]")]
    pub document_module: Option<String>,
    /// `CCrmDocumentDeal` or `CCrmDocumentLead`.
    #[oai(rename = "document_id[1]")]
    pub document_class: Option<String>,
    /// `DEAL_4217` or `LEAD_15`.
    #[oai(rename = "document_id[2]")]
    pub document: Option<String>,
    /// `BITRIX24_INCOMING_TOKEN` (or `auth_token`).
    pub token: Option<String>,
    /// `BITRIX24_INCOMING_TOKEN` (or `token`).
    pub auth_token: Option<String>,
    /// The deal's (or lead's) id, when there is no `document_id`.
    pub lead_id: Option<String>,
    /// Same as `lead_id`.
    pub deal_id: Option<String>,
    /// `DEAL` or `LEAD`.
    pub entity_type: Option<String>,
    /// The deal's pipeline, checked against `BITRIX24_CATEGORY_ID`.
    pub category_id: Option<String>,
    /// Shown on the questionnaire; read from the portal when empty.
    pub patient_name: Option<String>,
    /// `1`, `true`, `yes` or `Y`: a new link even if an active one exists.
    pub force: Option<String>,
}

/// An outgoing-webhook event (protocol §8).
#[derive(Debug, Object)]
pub struct OutgoingWebhookForm {
    /// `ONCRMDEALADD` makes a link; others are acknowledged and ignored.
    #[oai(validator(min_length = 1))]
    pub event: String,
    pub event_handler_id: Option<String>,
    /// The new deal's id.
    #[oai(rename = "data[FIELDS][ID]")]
    pub data_id: Option<String>,
    pub ts: Option<String>,
    /// The outgoing webhook's token, compared with `BITRIX24_OUTGOING_WEBHOOK_TOKEN`
    /// (may also come as the query's `application_token` or a header).
    #[oai(rename = "auth[application_token]")]
    pub application_token: Option<String>,
    #[oai(rename = "auth[member_id]")]
    pub member_id: Option<String>,
    #[oai(rename = "auth[domain]")]
    pub domain: Option<String>,
    #[oai(rename = "auth[client_endpoint]")]
    pub client_endpoint: Option<String>,
    #[oai(rename = "auth[server_endpoint]")]
    pub server_endpoint: Option<String>,
}

/// What a Bitrix24 callback answers when it has done its part.
#[derive(Debug, Object)]
pub struct CallbackDone {
    pub ok: bool,
    /// The invitation made or reused.
    #[oai(skip_serializing_if_is_none)]
    pub survey_id: Option<String>,
    /// An event this route does not handle, acknowledged.
    #[oai(skip_serializing_if_is_none)]
    pub ignored: Option<String>,
    /// `ONAPPINSTALL`, `ONAPPUPDATE`: whether anything stored changed.
    #[oai(skip_serializing_if_is_none)]
    pub changed: Option<bool>,
}

/// The webhook robot's link.
#[derive(Debug, Object)]
pub struct WebhookLink {
    pub ok: bool,
    pub survey_url: String,
    pub survey_id: String,
    pub expires_at: String,
}

/// The routes of `app::routes` served by plain handlers, for the document only.
pub struct RouteDocs;

impl OpenApi for RouteDocs {
    fn meta() -> Vec<MetaApi> {
        vec![MetaApi {
            paths: paths().into_iter().collect(),
        }]
    }

    fn register(registry: &mut Registry) {
        for (name, description) in [
            (
                TAG_BITRIX24,
                "Обработчики Битрикс24 (локальное приложение): формы с ключами в квадратных скобках",
            ),
            (
                TAG_WEBHOOKS,
                "Простые схемы подключения: робот «Вебхук» и исходящий вебхук",
            ),
            (TAG_PAGES, "Страницы и файлы"),
        ] {
            registry.tags.insert(MetaTag {
                name,
                description: Some(description),
                external_docs: None,
            });
        }
        B24RobotCall::register(registry);
        B24Event::register(registry);
        B24Frame::register(registry);
        B24TabAction::register(registry);
        B24AdminAction::register(registry);
        WebhookRobotForm::register(registry);
        OutgoingWebhookForm::register(registry);
        CallbackDone::register(registry);
        WebhookLink::register(registry);
        ErrorBody::register(registry);
        ApiError::register(registry);
    }

    fn add_routes(self, _: &mut HashMap<String, HashMap<Method, BoxEndpoint<'static>>>) {
        // Served by `app::routes`, behind the bounded decoder.
    }
}

fn schema(ty: &'static str) -> MetaSchemaRef {
    MetaSchemaRef::Inline(Box::new(MetaSchema::new(ty)))
}

fn form_of<T: Type>(description: &'static str) -> Option<MetaRequest> {
    Some(MetaRequest {
        description: Some(description),
        content: vec![MetaMediaType {
            content_type: FORM,
            schema: T::schema_ref(),
        }],
        required: true,
    })
}

fn param(name: &str, in_type: MetaParamIn, description: &str) -> MetaOperationParam {
    let required = matches!(in_type, MetaParamIn::Path);
    MetaOperationParam {
        name: name.to_owned(),
        schema: schema("string"),
        in_type,
        description: Some(description.to_owned()),
        required,
        deprecated: false,
        explode: true,
        style: None,
    }
}

/// `DOMAIN`, `PROTOCOL`, `LANG`, `APP_SID`: the query of a frame's address.
fn frame_query() -> Vec<MetaOperationParam> {
    [
        ("DOMAIN", "Портал, как его назвал запрос (не доверяется)"),
        ("PROTOCOL", "`1` — https"),
        ("LANG", "Язык портала"),
        ("APP_SID", "Идентификатор отрисовки фрейма"),
    ]
    .into_iter()
    .map(|(name, d)| param(name, MetaParamIn::Query, d))
    .collect()
}

fn response(status: u16, description: &'static str, content: Vec<MetaMediaType>) -> MetaResponse {
    MetaResponse {
        description,
        status: Some(status),
        status_range: None,
        content,
        headers: vec![],
    }
}

fn html_page(description: &'static str) -> MetaResponse {
    response(200, description, vec![media(HTML, schema("string"))])
}

fn json_of<T: Type>(description: &'static str) -> MetaResponse {
    response(200, description, vec![media(JSON, T::schema_ref())])
}

fn media(content_type: &'static str, schema: MetaSchemaRef) -> MetaMediaType {
    MetaMediaType {
        content_type,
        schema,
    }
}

/// Any other status: a JSON error body, or a page saying it in Russian.
fn refusal() -> MetaResponse {
    MetaResponse {
        description: "Отказ: JSON `{code, message}` со стабильным `code` или страница с объяснением",
        status: None,
        status_range: None,
        content: vec![
            media(JSON, ErrorBody::schema_ref()),
            media(HTML, schema("string")),
        ],
        headers: vec![],
    }
}

/// A JSON handler's answer, the statuses of [`ApiError`], and any other refusal (the
/// frame check's guard, the body limit).
fn json_answers(done: MetaResponse) -> Vec<MetaResponse> {
    let mut responses = vec![done];
    responses.extend(ApiError::meta().responses);
    responses.push(refusal());
    responses
}

struct Route {
    path: &'static str,
    method: Method,
    tag: &'static str,
    summary: &'static str,
    description: &'static str,
    params: Vec<MetaOperationParam>,
    request: Option<MetaRequest>,
    responses: Vec<MetaResponse>,
}

fn paths() -> Vec<MetaPath> {
    let routes = routes();
    let mut paths: Vec<MetaPath> = Vec::new();
    for r in routes {
        let operation = MetaOperation {
            method: r.method,
            tags: vec![r.tag],
            summary: Some(r.summary),
            description: Some(r.description),
            external_docs: None,
            params: r.params,
            request: r.request,
            responses: MetaResponses {
                responses: r.responses,
            },
            deprecated: false,
            security: vec![],
            operation_id: None,
            code_samples: vec![],
        };
        match paths.iter_mut().find(|p| p.path == r.path) {
            Some(p) => p.operations.push(operation),
            None => paths.push(MetaPath {
                path: r.path.to_owned(),
                operations: vec![operation],
            }),
        }
    }
    paths
}

fn routes() -> Vec<Route> {
    let token = || param("token", MetaParamIn::Path, "Токен из ссылки пациента");
    let mut routes = vec![
        Route {
            path: "/",
            method: Method::GET,
            tag: TAG_PAGES,
            summary: "Страница для того, кто настраивает сервис",
            description: "Что это за сервис, его состояние и адреса для Битрикс24 из `PUBLIC_URL`.",
            params: vec![],
            request: None,
            responses: vec![html_page("Страница"), refusal()],
        },
        Route {
            path: "/README.md",
            method: Method::GET,
            tag: TAG_PAGES,
            summary: "README",
            description: "Руководство по установке и настройке.",
            params: vec![],
            request: None,
            responses: vec![response(
                200,
                "README в Markdown",
                vec![media("text/plain; charset=utf-8", schema("string"))],
            )],
        },
        Route {
            path: "/openapi.json",
            method: Method::GET,
            tag: TAG_PAGES,
            summary: "Этот документ",
            description: "OpenAPI; тот же файл лежит в репозитории в `openapi/openapi.json`.",
            params: vec![],
            request: None,
            responses: vec![response(
                200,
                "Документ OpenAPI",
                vec![media(JSON, schema("object"))],
            )],
        },
        Route {
            path: "/docs",
            method: Method::GET,
            tag: TAG_PAGES,
            summary: "Документация API",
            description: "Swagger UI этого документа.",
            params: vec![],
            request: None,
            responses: vec![html_page("Swagger UI")],
        },
        Route {
            path: "/s/{token}",
            method: Method::GET,
            tag: TAG_PAGES,
            summary: "Анкета пациента",
            description: "Страница анкеты по ссылке; без JavaScript работает как обычная форма.",
            params: vec![token()],
            request: None,
            responses: vec![html_page("Анкета, «спасибо» или объяснение"), refusal()],
        },
        Route {
            path: "/s/{token}",
            method: Method::POST,
            tag: TAG_PAGES,
            summary: "Ответы из формы без JavaScript",
            description: "Поля формы — id вопросов; у вопроса с несколькими ответами id повторяется.",
            params: vec![token()],
            // One field per question id, so no fixed properties.
            request: Some(MetaRequest {
                description: Some("Ответы формы анкеты, например `allergies=yes`"),
                content: vec![media(FORM, {
                    let mut any_field = MetaSchema::new("object");
                    any_field.additional_properties = Some(Box::new(schema("string")));
                    MetaSchemaRef::Inline(Box::new(any_field))
                })],
                required: true,
            }),
            responses: vec![html_page("«Спасибо» или анкета с ошибками"), refusal()],
        },
        Route {
            path: "/assets/{name}",
            method: Method::GET,
            tag: TAG_PAGES,
            summary: "Стили и скрипты страниц",
            description: "`app.css`, `app.js`, `b24-frame.css`, `b24-frame.js`, `deal-tab.css`, `deal-tab.js`.",
            params: vec![param("name", MetaParamIn::Path, "Имя файла")],
            request: None,
            responses: vec![
                response(
                    200,
                    "Файл",
                    vec![
                        media("text/css; charset=utf-8", schema("string")),
                        media("text/javascript; charset=utf-8", schema("string")),
                    ],
                ),
                response(404, "Нет такого файла", vec![]),
            ],
        },
        Route {
            path: "/b24/install",
            method: Method::POST,
            tag: TAG_BITRIX24,
            summary: "Установка приложения",
            description: "«Путь для первоначальной установки»: страница установки во фрейме портала. \
                          Присланный refresh-токен один раз обменивается у сервера авторизации, и \
                          портал берётся из его ответа. Сюда же может прийти событие `ONAPPINSTALL` \
                          (поля — как у `/b24/events`); ответ на него — JSON.",
            params: frame_query(),
            request: Some(MetaRequest {
                description: Some(
                    "Форма фрейма установки (протокол §3.2) или событие `ONAPPINSTALL` (§3.3)",
                ),
                content: vec![media(FORM, {
                    let either = MetaSchema {
                        any_of: vec![B24Frame::schema_ref(), B24Event::schema_ref()],
                        ..MetaSchema::ANY
                    };
                    MetaSchemaRef::Inline(Box::new(either))
                })],
                required: true,
            }),
            responses: vec![
                html_page("Страница, вызывающая `BX24.installFinish()`"),
                refusal(),
            ],
        },
        Route {
            path: "/b24/app",
            method: Method::POST,
            tag: TAG_BITRIX24,
            summary: "Страница приложения для администратора",
            description: "«Путь вашего обработчика»: состояние, очередь, настройки. Только администратору \
                          портала, подтверждённому порталом.",
            params: frame_query(),
            request: form_of::<B24Frame>("Форма фрейма приложения"),
            responses: vec![html_page("Страница приложения"), refusal()],
        },
        Route {
            path: "/b24/app/action",
            method: Method::POST,
            tag: TAG_BITRIX24,
            summary: "Действие на странице приложения",
            description: "Переустановка, повтор задания, «Повторить сейчас», настройки; с сессией страницы.",
            params: vec![],
            request: form_of::<B24AdminAction>("Кнопка страницы приложения"),
            responses: vec![html_page("Страница приложения с итогом"), refusal()],
        },
        Route {
            path: "/b24/robot/send-survey",
            method: Method::POST,
            tag: TAG_BITRIX24,
            summary: "Робот «Отправить опрос»",
            description: "Проверяет `auth[application_token]`, создаёт или переиспользует приглашение и \
                          отвечает сразу; ссылка (`survey_url`, `survey_id`) уходит в бизнес-процесс \
                          через `bizproc.event.send`, в поле сделки или лида — через очередь (у \
                          элемента смарт-процесса такого поля нет).",
            params: vec![],
            request: form_of::<B24RobotCall>("Вызов робота (протокол §4.3)"),
            responses: json_answers(json_of::<CallbackDone>("Принято")),
        },
        Route {
            path: "/b24/robot/await-survey",
            method: Method::POST,
            tag: TAG_BITRIX24,
            summary: "Робот «Дождаться анкеты»",
            description: "Проверяет `auth[application_token]`, запоминает ожидание (опрос из \
                          `properties[survey_id]` этого документа или последний опрос документа) и \
                          отвечает сразу. Итог (`status`, `red_flags`, `red_flag_titles`, `score`, \
                          `completed_at`) уходит через `bizproc.event.send`, когда анкета заполнена, \
                          ссылка истекла или заменена новой; сразу — если опроса нет (`missing`).",
            params: vec![],
            request: form_of::<B24RobotCall>("Вызов робота (протокол §4.3)"),
            responses: json_answers(json_of::<CallbackDone>("Принято")),
        },
        Route {
            path: "/b24/events",
            method: Method::POST,
            tag: TAG_BITRIX24,
            summary: "События приложения",
            description: "`ONAPPINSTALL`, `ONAPPUPDATE`, `ONAPPUNINSTALL` (с `data[CLEAN]`), \
                          `ONCRMDEALADD`/`ONCRMLEADADD`, `ONCRMTIMELINEITEMACTION` («Просмотрено»). \
                          Удаление — только после того, как портал откажет нашим токенам; новая \
                          запись перечитывается у портала; «Просмотрено» закрывает только наше \
                          дело и только после того, как портал подтвердил нажавшего и его доступ.",
            params: vec![],
            request: form_of::<B24Event>("Событие (протокол §7.1)"),
            responses: json_answers(json_of::<CallbackDone>("Принято")),
        },
        Route {
            path: "/b24/placement/deal-tab",
            method: Method::POST,
            tag: TAG_BITRIX24,
            summary: "Вкладка «Анкета пациента»",
            description: "Ответы (важные первыми) и PDF — только после того, как портал подтвердил \
                          врача и его право читать документ: сделку, лид или элемент смарт-процесса \
                          (`CRM_DYNAMIC_<id>_DETAIL_TAB`; тип — из `PLACEMENT`).",
            params: frame_query(),
            request: form_of::<B24Frame>("Форма фрейма вкладки (протокол §6.2)"),
            responses: vec![html_page("Вкладка"), refusal()],
        },
        Route {
            path: "/b24/tab/report/{invitation}",
            method: Method::POST,
            tag: TAG_BITRIX24,
            summary: "PDF из вкладки",
            description: "Только с сессией вкладки того же документа CRM.",
            params: vec![param("invitation", MetaParamIn::Path, "Номер приглашения")],
            request: form_of::<B24TabAction>("Сессия вкладки"),
            responses: vec![
                response(200, "PDF", vec![media("application/pdf", schema("string"))]),
                refusal(),
            ],
        },
        Route {
            path: "/b24/tab/new-link",
            method: Method::POST,
            tag: TAG_BITRIX24,
            summary: "«Отправить новую ссылку» из вкладки",
            description: "Только с сессией вкладки того же документа CRM.",
            params: vec![],
            request: form_of::<B24TabAction>("Сессия вкладки"),
            responses: vec![html_page("Вкладка с итогом"), refusal()],
        },
    ];
    for method in [Method::GET, Method::POST] {
        let request = (method == Method::POST)
            .then(|| form_of::<WebhookRobotForm>("Поля робота (протокол §5.2)"))
            .flatten();
        let responses = json_answers(json_of::<WebhookLink>("Ссылка создана и записана в поле"));
        routes.push(Route {
            path: "/api/v1/bitrix/webhook",
            method,
            tag: TAG_WEBHOOKS,
            summary: "Робот «Вебхук»",
            description: "Поля — из строки запроса и тела (форма, JSON или multipart); тело важнее. \
                          401 при неверном токене, 403 «Эта воронка не обрабатывается» для чужой \
                          воронки, 503 без `BITRIX24_INCOMING_TOKEN`.",
            params: vec![
                param("token", MetaParamIn::Query, "`BITRIX24_INCOMING_TOKEN`"),
                param("lead_id", MetaParamIn::Query, "Id сделки (лида)"),
                param("category_id", MetaParamIn::Query, "Воронка сделки"),
            ],
            request,
            responses,
        });
    }
    routes.extend(editor_routes());
    let responses = json_answers(json_of::<CallbackDone>("Принято"));
    routes.push(Route {
        path: "/api/bitrix/webhook",
        method: Method::POST,
        tag: TAG_WEBHOOKS,
        summary: "Исходящий вебхук портала",
        description: "Проверяет `application_token` (заголовок, строка запроса или тело) по \
                      `BITRIX24_OUTGOING_WEBHOOK_TOKEN`; на `ONCRMDEALADD` создаёт ссылку и \
                      записывает её в сделку.",
        params: vec![param(
            "application_token",
            MetaParamIn::Query,
            "Токен исходящего вебхука",
        )],
        request: form_of::<OutgoingWebhookForm>("Событие (протокол §8)"),
        responses,
    });
    routes
}

/// The questionnaire editor's JSON API (`local_app::questionnaire_api`): the admin
/// page's session in the `X-Opros-Session` header, JSON in and out.
fn editor_routes() -> Vec<Route> {
    let session = || MetaOperationParam {
        required: true,
        ..param(
            "X-Opros-Session",
            MetaParamIn::Header,
            "Сессия страницы приложения (администратор портала); без неё или с истёкшей — 401 `session_expired`",
        )
    };
    let id = || param("id", MetaParamIn::Path, "Id анкеты портала");
    let json_request = |description: &'static str| {
        Some(MetaRequest {
            description: Some(description),
            content: vec![media(JSON, schema("object"))],
            required: true,
        })
    };
    let json_answer = |status: u16, description: &'static str| {
        vec![
            response(status, description, vec![media(JSON, schema("object"))]),
            refusal(),
        ]
    };
    const LIST: &str = "/b24/admin/questionnaires";
    const ONE: &str = "/b24/admin/questionnaires/{id}";
    vec![
        Route {
            path: LIST,
            method: Method::GET,
            tag: TAG_BITRIX24,
            summary: "Анкеты портала и шаблоны",
            description: "`items`: анкеты портала (`id`, `code`, `title`, `archived`, `version`, \
                          `published_at`, `published_by`); `templates`: встроенные и из `SURVEYS_DIR` \
                          (`code`, `title`, `source`: `builtin` | `file`).",
            params: vec![session()],
            request: None,
            responses: json_answer(200, "Список"),
        },
        Route {
            path: LIST,
            method: Method::POST,
            tag: TAG_BITRIX24,
            summary: "Создать анкету",
            description: "Одно из: `{\"from_template\": code}`, `{\"duplicate_of\": id}` (код \
                          `<code>_2`…, название «… (копия)»), `{\"definition\": {…}}` (импорт файла \
                          `SURVEYS_DIR`). 201 — анкета, как `GET …/{id}`; 422 `invalid_definition` \
                          с `problems`; 409 `code_taken`; 400 `bad_json`.",
            params: vec![session()],
            request: json_request("Источник анкеты"),
            responses: json_answer(201, "Анкета создана (версия 1)"),
        },
        Route {
            path: ONE,
            method: Method::GET,
            tag: TAG_BITRIX24,
            summary: "Анкета портала",
            description: "`id`, `code`, `title`, `archived`, `versions` (`version`, `published_at`, \
                          `published_by`), `definition` — последняя версия в схеме файлов \
                          `SURVEYS_DIR`. Чужая или несуществующая — 404 `questionnaire_not_found`.",
            params: vec![session(), id()],
            request: None,
            responses: json_answer(200, "Анкета"),
        },
        Route {
            path: "/b24/admin/questionnaires/{id}/versions",
            method: Method::POST,
            tag: TAG_BITRIX24,
            summary: "Опубликовать новую версию",
            description: "`{\"definition\": {…}}`: проверяется единым валидатором; `code` менять \
                          нельзя (`code_changed`), `version` назначает сервер. 201 `{version, \
                          published_at, published_by}`; 422 `invalid_definition` с каждой ошибкой \
                          (`place`, `code`, `reason`).",
            params: vec![session(), id()],
            request: json_request("Определение анкеты"),
            responses: json_answer(201, "Версия опубликована"),
        },
        Route {
            path: "/b24/admin/questionnaires/{id}/archive",
            method: Method::POST,
            tag: TAG_BITRIX24,
            summary: "В архив или из архива",
            description: "`{\"archived\": true|false}`. Архивная анкета не предлагается роботу; \
                          отправленные ссылки работают.",
            params: vec![session(), id()],
            request: json_request("Флаг архива"),
            responses: json_answer(200, "Анкета"),
        },
        Route {
            path: "/b24/admin/questionnaires/{id}/export",
            method: Method::GET,
            tag: TAG_BITRIX24,
            summary: "Экспорт анкеты",
            description: "Последняя версия как файл `SURVEYS_DIR` (`Content-Disposition: attachment; \
                          filename=\"<code>.json\"`); импорт этого файла даёт то же определение.",
            params: vec![session(), id()],
            request: None,
            responses: json_answer(200, "Файл анкеты (JSON)"),
        },
        Route {
            path: "/b24/admin/questionnaires/preview",
            method: Method::POST,
            tag: TAG_BITRIX24,
            summary: "Предпросмотр анкеты в редакторе",
            description: "`{\"definition\": {…}}`, проверенное так же, как при публикации, — в виде \
                          страницы пациента на телефоне (`text/html`): без ссылки, без черновика, \
                          кнопка отправки отключена. Ничего не сохраняет. 422 `invalid_definition` \
                          с `problems`; 400 `bad_json`.",
            params: vec![session()],
            request: json_request("Определение анкеты из редактора"),
            responses: vec![html_page("Страница анкеты для предпросмотра"), refusal()],
        },
    ]
}
