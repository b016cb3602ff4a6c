//! `GET /`: the page whoever opens the service's address sees — what opros is, whether
//! it works (the same database check as `/healthz`), and the exact addresses to paste
//! into Bitrix24 for each of the three setups, built from `PUBLIC_URL`.
//!
//! It says only whether a secret is configured, never anything about its value: the
//! page is public, like the address itself.

use poem::http::StatusCode;
use poem::web::Data;
use poem::{IntoResponse, Response, handler};

use super::html;
use super::page::{escape, layout};
use crate::config::Config;
use crate::state::AppState;

/// The embedded README, served at `/README.md` so the page's link works on any
/// installation, with or without access to the source.
pub const README: &str = include_str!("../../README.md");

/// What the page shows; built from the configuration and one database check.
pub struct Home {
    pub public_url: String,
    pub database_ok: bool,
    /// `B24_CLIENT_ID` and `B24_CLIENT_SECRET` both set.
    pub local_app: bool,
    /// `BITRIX24_INCOMING_TOKEN` set.
    pub robot_token: bool,
    /// `BITRIX24_WEBHOOK_URL` set.
    pub portal_webhook: bool,
    /// `BITRIX24_OUTGOING_WEBHOOK_TOKEN` set.
    pub outgoing_token: bool,
    /// `PUBLIC_URL` points at this computer: Bitrix24 cannot reach it.
    pub loopback: bool,
}

impl Home {
    pub fn new(config: &Config, database_ok: bool) -> Self {
        let loopback = match config.public_url.host() {
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback() || ip.is_unspecified(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback() || ip.is_unspecified(),
            None => true,
        };
        Home {
            public_url: config.public(""),
            database_ok,
            local_app: config.b24_client_id.is_some() && config.b24_client_secret.is_some(),
            robot_token: config.incoming_token.is_some(),
            portal_webhook: config.webhook_url.is_some(),
            outgoing_token: config.outgoing_token.is_some(),
            loopback,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.public_url)
    }
}

/// 200 when the database answers, 503 otherwise (as `/healthz`), so a monitor
/// pointed at the bare address reads the same state a person does.
#[handler]
pub async fn home(Data(state): Data<&AppState>) -> Response {
    let database_ok = match crate::db::ping(&state.db).await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, "База данных недоступна");
            false
        }
    };
    let view = Home::new(&state.config, database_ok);
    let status = if database_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    html(status, render(&view))
}

/// The README as plain text (it is Markdown, readable as is).
#[handler]
pub fn readme() -> Response {
    // A &str answers as text/plain; charset=utf-8.
    README
        .with_header("x-content-type-options", "nosniff")
        .with_header("cache-control", "public, max-age=3600")
        .into_response()
}

fn configured(yes: bool) -> &'static str {
    if yes {
        "настроено"
    } else {
        "не настроено"
    }
}

/// One line of the state list: what, and a word that says whether it is in order.
fn state_row(what: &str, ok: bool, word: &str) -> String {
    format!(
        "<li class=\"state state--{cls}\"><span class=\"state__what\">{what}</span> \
         <strong class=\"state__word\">{word}</strong></li>\n",
        cls = if ok { "ok" } else { "off" },
        what = escape(what),
        word = escape(word),
    )
}

/// A labelled address to copy into a Bitrix24 form.
fn address(label: &str, url: &str) -> String {
    format!(
        "<dt>{}</dt><dd><code>{}</code></dd>\n",
        escape(label),
        escape(url)
    )
}

pub fn render(view: &Home) -> String {
    let mut body = String::with_capacity(8 * 1024);
    body.push_str(
        "<header class=\"top\">\n<p class=\"clinic\">opros</p>\n\
         <h1>Анкета пациента для Битрикс24</h1>\n\
         <p>opros — сервис, который клиника подключает к своему порталу Битрикс24. Робот сделки \
         отправляет пациенту ссылку на анкету, пациент заполняет её с телефона, а врач видит \
         ответы — важные первыми — и PDF прямо в карточке сделки.</p>\n\
         <p class=\"meta\">Эта страница — для того, кто настраивает сервис. Пациенты получают \
         свои ссылки от клиники.</p>\n</header>\n",
    );

    body.push_str("<section class=\"section\" aria-labelledby=\"h-state\">\n<h2 id=\"h-state\">Состояние</h2>\n<ul class=\"states\">\n");
    body.push_str(&state_row(
        &format!("Сервис, версия {}", env!("CARGO_PKG_VERSION")),
        true,
        "работает",
    ));
    body.push_str(&state_row(
        "База данных",
        view.database_ok,
        if view.database_ok {
            "доступна"
        } else {
            "недоступна"
        },
    ));
    for (what, ok) in [
        (
            "Локальное приложение (B24_CLIENT_ID, B24_CLIENT_SECRET)",
            view.local_app,
        ),
        (
            "Токен робота «Вебхук» (BITRIX24_INCOMING_TOKEN)",
            view.robot_token,
        ),
        (
            "Входящий вебхук портала (BITRIX24_WEBHOOK_URL)",
            view.portal_webhook,
        ),
        (
            "Токен исходящего вебхука (BITRIX24_OUTGOING_WEBHOOK_TOKEN)",
            view.outgoing_token,
        ),
    ] {
        body.push_str(&state_row(what, ok, configured(ok)));
    }
    body.push_str(
        "</ul>\n<p class=\"meta\">Для мониторинга: <a href=\"/healthz\">/healthz</a> \
         (200 — сервис и база в порядке).</p>\n</section>\n",
    );

    body.push_str(
        "<section class=\"section\" aria-labelledby=\"h-setup\">\n\
         <h2 id=\"h-setup\">Адреса для Битрикс24</h2>\n",
    );
    if view.loopback {
        body.push_str(
            "<p class=\"notice\">Адрес сервиса указывает на этот компьютер — портал Битрикс24 \
             не сможет до него достучаться. Задайте внешний адрес в переменной PUBLIC_URL.</p>\n",
        );
    }
    body.push_str(&format!(
        "<p class=\"meta\">Адреса построены из PUBLIC_URL: <code>{}</code></p>\n",
        escape(&view.public_url)
    ));
    body.push_str(
        "<h3>1. Локальное приложение (рекомендуется)</h3>\n\
         <p>Приложения → Разработчикам → Другое → Локальное приложение, серверное, с \
         интерфейсом. Права: crm, bizproc, placement, user_brief, im. Код и ключ приложения — \
         в B24_CLIENT_ID и B24_CLIENT_SECRET.</p>\n<dl class=\"addresses\">\n",
    );
    body.push_str(&address("Путь вашего обработчика", &view.url("/b24/app")));
    body.push_str(&address(
        "Путь для первоначальной установки",
        &view.url("/b24/install"),
    ));
    body.push_str(
        "</dl>\n<h3>2. Робот «Вебхук» и входящий вебхук</h3>\n\
         <p>Адрес для встроенного робота «Вебхук». Вместо ВАШ_ТОКЕН подставьте значение \
         BITRIX24_INCOMING_TOKEN; BITRIX24_WEBHOOK_URL — входящий вебхук портала с правами \
         crm.</p>\n<dl class=\"addresses\">\n",
    );
    body.push_str(&address(
        "Адрес робота",
        &view.url(
            "/api/v1/bitrix/webhook?token=ВАШ_ТОКЕН&lead_id={{ID}}&category_id={{CATEGORY_ID}}",
        ),
    ));
    body.push_str(
        "</dl>\n<h3>3. Исходящий вебхук</h3>\n\
         <p>Разработчикам → Другое → Исходящий вебхук, событие «Создание сделки» \
         (ONCRMDEALADD). Токен из формы — в BITRIX24_OUTGOING_WEBHOOK_TOKEN.</p>\n\
         <dl class=\"addresses\">\n",
    );
    body.push_str(&address(
        "Адрес обработчика",
        &view.url("/api/bitrix/webhook"),
    ));
    body.push_str("</dl>\n</section>\n");

    body.push_str(
        "<section class=\"section\" aria-labelledby=\"h-docs\">\n<h2 id=\"h-docs\">Документация</h2>\n\
         <ul class=\"links\">\n\
         <li><a href=\"/README.md\">README</a> — настройка, три способа подключения, \
         если что-то не работает</li>\n\
         <li><a href=\"/docs\">/docs</a> — описание API (OpenAPI: \
         <a href=\"/openapi.json\">/openapi.json</a>)</li>\n</ul>\n</section>\n",
    );
    layout("opros — анкета пациента для Битрикс24", &body, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(database_ok: bool) -> Home {
        Home {
            public_url: "https://opros.clinic.ru".into(),
            database_ok,
            local_app: true,
            robot_token: false,
            portal_webhook: false,
            outgoing_token: true,
            loopback: false,
        }
    }

    #[test]
    fn addresses_are_built_from_the_public_url() {
        let html = render(&view(true));
        for url in [
            "https://opros.clinic.ru/b24/app",
            "https://opros.clinic.ru/b24/install",
            "https://opros.clinic.ru/api/v1/bitrix/webhook?token=ВАШ_ТОКЕН&amp;lead_id={{ID}}",
            "https://opros.clinic.ru/api/bitrix/webhook",
        ] {
            assert!(html.contains(url), "{url} not in the page");
        }
        assert!(!html.contains("не сможет до него достучаться"));
    }

    #[test]
    fn a_database_outage_is_named() {
        assert!(render(&view(false)).contains("недоступна"));
        assert!(!render(&view(true)).contains("недоступна"));
    }
}
