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
use crate::config::Config;
use crate::state::AppState;
use crate::views::{self, home::HomePage, home::StateRow, patient::Chrome};

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

/// The page's view model.
pub fn view(info: &Home) -> HomePage {
    let row = |what: String, ok: bool, word: &'static str| StateRow { what, ok, word };
    let mut states = vec![
        row(
            format!("Сервис, версия {}", env!("CARGO_PKG_VERSION")),
            true,
            "работает",
        ),
        row(
            "База данных".to_owned(),
            info.database_ok,
            if info.database_ok {
                "доступна"
            } else {
                "недоступна"
            },
        ),
    ];
    for (what, ok) in [
        (
            "Локальное приложение (B24_CLIENT_ID, B24_CLIENT_SECRET)",
            info.local_app,
        ),
        (
            "Токен робота «Вебхук» (BITRIX24_INCOMING_TOKEN)",
            info.robot_token,
        ),
        (
            "Входящий вебхук портала (BITRIX24_WEBHOOK_URL)",
            info.portal_webhook,
        ),
        (
            "Токен исходящего вебхука (BITRIX24_OUTGOING_WEBHOOK_TOKEN)",
            info.outgoing_token,
        ),
    ] {
        states.push(row(what.to_owned(), ok, configured(ok)));
    }
    HomePage {
        chrome: Chrome::new("opros — анкета пациента для Битрикс24", false),
        states,
        loopback: info.loopback,
        public_url: info.public_url.clone(),
        app_url: info.url("/b24/app"),
        install_url: info.url("/b24/install"),
        robot_url: info.url(
            "/api/v1/bitrix/webhook?token=ВАШ_ТОКЕН&lead_id={{ID}}&category_id={{CATEGORY_ID}}",
        ),
        outgoing_url: info.url("/api/bitrix/webhook"),
    }
}

pub fn render(info: &Home) -> String {
    views::render(&view(info))
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

    fn texts(html: &str, css: &str) -> Vec<String> {
        let doc = scraper::Html::parse_document(html);
        let selector = scraper::Selector::parse(css).expect("selector");
        doc.select(&selector)
            .map(|e| e.text().collect::<String>())
            .collect()
    }

    #[test]
    fn addresses_are_built_from_the_public_url() {
        let html = render(&view(true));
        let codes = texts(&html, "dl.addresses code");
        assert_eq!(
            codes,
            [
                "https://opros.clinic.ru/b24/app",
                "https://opros.clinic.ru/b24/install",
                "https://opros.clinic.ru/api/v1/bitrix/webhook?token=ВАШ_ТОКЕН&lead_id={{ID}}&category_id={{CATEGORY_ID}}",
                "https://opros.clinic.ru/api/bitrix/webhook",
            ]
        );
        assert!(texts(&html, "p.notice").is_empty());
    }

    #[test]
    fn a_database_outage_is_named() {
        let word = |ok| texts(&render(&view(ok)), "li.state:nth-child(2) .state__word");
        assert_eq!(word(false), ["недоступна"]);
        assert_eq!(word(true), ["доступна"]);
    }
}
