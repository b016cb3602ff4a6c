//! `opros demo`: the service and the fake Bitrix24 portal side by side on loopback, for
//! a clinic deciding whether to install and for newcomers. The app is installed into
//! the portal, a deal with a patient gets the robot, and three pages are ready: the
//! patient's questionnaire, a deal card whose «Анкета пациента» tab is the real
//! `/b24/placement/deal-tab` opened with a doctor's fresh token, and the admin page.
//! The `/demo/*` pages exist only in this process.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use poem::http::StatusCode;
use poem::listener::TcpAcceptor;
use poem::web::{Data, Html, Path};
use poem::{Endpoint, EndpointExt, IntoResponse, Response, Route, get, handler};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::state::{AppState, StartError};
use crate::testing::{FakePortal, FakePortalConfig, FakePortalError};
use crate::views::demo::{AppCard, DealCard, DemoActivity, DemoAutomation, DemoFrame};

/// The doctor who opens the deal card (not an administrator).
pub const DOCTOR_ID: u32 = 7;
/// The portal's administrator (user 1 of the fake portal).
pub const ADMIN_ID: u32 = 1;

/// The demo pages load only our files and frame only our pages.
const CARD_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    frame-src 'self'; form-action 'self'; base-uri 'none'";

/// Where the demo keeps its data and listens.
#[derive(Debug, Clone, Default)]
pub struct DemoOptions {
    /// `DATABASE_URL`; `None`: a fresh SQLite file in a temporary directory.
    pub database_url: Option<String>,
    /// `PORT`; 0 picks a free one.
    pub port: u16,
    /// Variables passed on to the service (`CLINIC_NAME`, `SURVEYS_DIR`, `RUST_LOG`…).
    pub extra: BTreeMap<String, String>,
    /// Install the process-wide log subscriber (the CLI does; tests keep their own).
    pub install_logging: bool,
}

impl DemoOptions {
    /// From the process environment; `opros demo` has loaded `.env` into it before
    /// (`Config::from_env`, which stops on a broken one).
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let mut extra = BTreeMap::new();
        for k in [
            "CLINIC_NAME",
            "SURVEYS_DIR",
            "SURVEY_LINK_DAYS",
            "RUST_LOG",
            "LOG_FORMAT",
        ] {
            if let Some(v) = var(k) {
                extra.insert(k.to_owned(), v);
            }
        }
        extra
            .entry("RUST_LOG".into())
            .or_insert_with(|| "warn".into());
        DemoOptions {
            database_url: var("DATABASE_URL"),
            port: var("PORT").and_then(|p| p.parse().ok()).unwrap_or(0),
            extra,
            install_logging: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("не удалось запустить демо-портал: {0}")]
    Portal(#[from] FakePortalError),
    #[error("не удалось занять порт: {0}")]
    Bind(std::io::Error),
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Start(#[from] StartError),
    #[error("не удалось подготовить демо: {0}")]
    Setup(String),
}

/// What the demo pages need from the portal.
#[derive(Clone)]
struct DemoData {
    portal: Arc<FakePortal>,
}

/// A running demo.
pub struct Demo {
    pub state: AppState,
    pub portal: Arc<FakePortal>,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    pub deal_id: u64,
    /// The link the robot returned to the business process.
    pub survey_url: String,
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    temp_dir: Option<PathBuf>,
}

impl Demo {
    /// Starts the portal and the service, installs the app and sends the survey.
    pub async fn start(options: DemoOptions) -> Result<Demo, DemoError> {
        let portal = Arc::new(FakePortal::start(FakePortalConfig::default()).await?);
        let listener =
            tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], options.port)))
                .await
                .map_err(DemoError::Bind)?;
        let addr = listener.local_addr().map_err(DemoError::Bind)?;
        let base = format!("http://{addr}");
        let (database_url, temp_dir) = match options.database_url {
            Some(url) => (url, None),
            None => {
                let dir = std::env::temp_dir().join(format!(
                    "opros-demo-{}-{:08x}",
                    std::process::id(),
                    rand::random::<u32>()
                ));
                std::fs::create_dir_all(&dir).map_err(|e| DemoError::Setup(e.to_string()))?;
                (
                    format!("sqlite://{}/demo.db?mode=rwc", dir.display()),
                    Some(dir),
                )
            }
        };
        let mut vars = options.extra.clone();
        vars.insert("DATABASE_URL".into(), database_url);
        vars.insert("HOST".into(), "127.0.0.1".into());
        vars.insert("PORT".into(), addr.port().to_string());
        vars.insert("PUBLIC_URL".into(), base.clone());
        vars.insert("B24_CLIENT_ID".into(), portal.client_id());
        vars.insert("B24_CLIENT_SECRET".into(), portal.client_secret());
        // The fake portal is its own OAuth server (over http on loopback): the token
        // URL is named, as an operator would for a test portal.
        vars.insert("B24_OAUTH_URL".into(), portal.token_url());
        let config = Config::from_map(&vars)?;
        if options.install_logging {
            crate::telemetry::init(&config);
        }
        let state = AppState::build(config).await?;

        let cancel = CancellationToken::new();
        let acceptor = TcpAcceptor::from_tokio(listener).map_err(DemoError::Bind)?;
        let endpoint = routes(
            state.clone(),
            DemoData {
                portal: portal.clone(),
            },
        );
        let stop = cancel.clone();
        let server = tokio::spawn(async move {
            let _ = poem::Server::new_with_acceptor(acceptor)
                .run_with_graceful_shutdown(
                    endpoint,
                    async move { stop.cancelled().await },
                    Some(Duration::from_secs(5)),
                )
                .await;
        });
        let worker = tokio::spawn(crate::outbox::Outbox::new(state.clone()).run(cancel.clone()));
        let mut demo = Demo {
            state,
            portal,
            base,
            deal_id: 0,
            survey_url: String::new(),
            cancel,
            tasks: vec![server, worker],
            temp_dir,
        };
        if let Err(e) = demo.prepare().await {
            demo.stop().await;
            return Err(e);
        }
        Ok(demo)
    }

    async fn prepare(&mut self) -> Result<(), DemoError> {
        let fake = &self.portal;
        fake.set_app_url(&self.url("/b24/app"));
        let installed = fake.post_install(&self.url("/b24/install")).await?;
        if !installed.status().is_success() {
            return Err(DemoError::Setup(format!(
                "установка ответила {}",
                installed.status()
            )));
        }
        if let Some(delivery) = fake.finish_install().await {
            delivery?;
        }
        // A manager dragged «Анкета заполнена» onto «Анкета получена» (§A1).
        fake.place_trigger(
            crate::testing::fake_portal::OWNER_DEAL,
            crate::outbox::automation::TRIGGER_COMPLETED,
            "PREPARATION",
        );
        fake.add_user(DOCTOR_ID, "Игорь", "Воронцов", false);
        let contact = fake.add_contact("Анна", "Петровна", "Смирнова", "+79161234567");
        self.deal_id = fake.add_deal("Консультация терапевта", 0, Some(contact));
        let (_, answer) = fake
            .run_robot(
                crate::local_app::registration::ROBOT_CODE,
                self.deal_id,
                &[],
            )
            .await?;
        if !answer.status().is_success() {
            return Err(DemoError::Setup(format!(
                "робот ответил {}",
                answer.status()
            )));
        }
        // The link reaches the business process through the outbox (bizproc.event.send).
        for _ in 0..400 {
            if let Some(url) = returned_survey_url(fake) {
                self.survey_url = url;
                return Ok(());
            }
            self.state.nudge_outbox();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(DemoError::Setup(
            "ссылка на анкету не вернулась в бизнес-процесс за 20 секунд".into(),
        ))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// The deal card with the «Анкета пациента» tab.
    pub fn deal_card_url(&self) -> String {
        self.url(&format!("/demo/deal/{}", self.deal_id))
    }

    /// The application page as the administrator sees it.
    pub fn admin_url(&self) -> String {
        self.url("/demo/app")
    }

    /// Stops the service and the worker and removes the temporary database.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        if let Some(dir) = self.temp_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn returned_survey_url(fake: &FakePortal) -> Option<String> {
    fake.event_sends().into_iter().find_map(|(_, values, _)| {
        values
            .into_iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("survey_url"))
            .map(|(_, v)| v)
    })
}

/// `opros demo`: starts, prints the three links, runs until Ctrl-C.
pub async fn run() -> Result<(), DemoError> {
    let demo = Demo::start(DemoOptions::from_env()).await?;
    println!(
        "Демо opros запущено: сервис {} и учебный портал Битрикс24 {}.",
        demo.base,
        demo.portal.base_url()
    );
    println!(
        "Приложение установлено, для сделки «Консультация терапевта» (пациент Смирнова Анна Петровна) робот создал ссылку."
    );
    println!();
    println!("1. Анкета пациента (откройте в браузере или на телефоне):");
    println!("   {}", demo.survey_url);
    println!("2. Карточка сделки с вкладкой «Анкета пациента» (глазами врача):");
    println!("   {}", demo.deal_card_url());
    println!("3. Страница приложения для администратора портала:");
    println!("   {}", demo.admin_url());
    println!();
    println!("Заполните анкету и обновите карточку сделки: появятся ответы и PDF.");
    println!("Остановить: Ctrl+C");
    let _ = tokio::signal::ctrl_c().await;
    println!("Останавливаем демо…");
    demo.stop().await;
    Ok(())
}

/// The service's routes plus `/demo/*`.
fn routes(state: AppState, data: DemoData) -> impl poem::Endpoint {
    let demo = Route::new()
        .at("/deal/:id", get(deal_card))
        .at("/app", get(app_card))
        .at("/assets/:name", get(asset))
        .data(data);
    Route::new()
        .nest("/demo", demo)
        .nest("/", crate::app::routes(state))
        .around(|ep, req| async move {
            let frame = req.uri().path().starts_with("/b24/");
            let mut response = ep.call(req).await?;
            if frame {
                framed_by_card(&mut response);
            }
            Ok(response)
        })
}

/// The demo's card stands in for the portal's page, and it lives on this process's
/// origin, not the fake portal's: the app's frames name it too.
fn framed_by_card(response: &mut Response) {
    let csp = response
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .map(|csp| csp.replace("frame-ancestors 'none'", "frame-ancestors 'self'"))
        .map(|csp| csp.replace("frame-ancestors http", "frame-ancestors 'self' http"));
    if let Some(value) = csp.and_then(|c| c.parse().ok()) {
        response
            .headers_mut()
            .insert("content-security-policy", value);
    }
}

fn html(body: String) -> Response {
    // `Html` sets the one content-type (`with_header` would add a second).
    Html(body)
        .with_header("content-security-policy", CARD_CSP)
        .with_header("cache-control", "no-store")
        .with_header("x-content-type-options", "nosniff")
        .with_header("referrer-policy", "no-referrer")
        .into_response()
}

#[handler]
fn asset(Path(name): Path<String>) -> Response {
    let Some(asset) = crate::assets::demo(&name) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    asset.response()
}

/// The hidden form that plays the portal's iframe POST (protocol §6.2), with a fresh
/// token of `user`; the card's script submits it into the frame.
fn frame_form(
    fake: &FakePortal,
    handler: &str,
    user: u32,
    placement: &str,
    options: Option<String>,
) -> DemoFrame {
    let (access, refresh) = fake.issue_user_token(user);
    let mut fields = vec![
        ("AUTH_ID", access),
        ("AUTH_EXPIRES", "3600".to_owned()),
        ("REFRESH_ID", refresh),
        ("SERVER_ENDPOINT", fake.server_endpoint()),
        ("APPLICATION_TOKEN", fake.application_token()),
        ("member_id", fake.member_id()),
        ("status", "L".to_owned()),
        ("PLACEMENT", placement.to_owned()),
    ];
    if let Some(options) = options {
        fields.push(("PLACEMENT_OPTIONS", options));
    }
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("DOMAIN", &fake.domain())
        .append_pair("PROTOCOL", "0")
        .append_pair("LANG", "ru")
        .finish();
    DemoFrame {
        action: format!("{handler}?{query}"),
        fields,
    }
}

#[handler]
fn deal_card(Path(id): Path<u64>, Data(data): Data<&DemoData>) -> Response {
    let fake = &data.portal;
    let Some(deal) = fake.deal(id) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let title = deal
        .get("TITLE")
        .and_then(Value::as_str)
        .unwrap_or("Сделка")
        .to_owned();
    let patient = deal
        .get("CONTACT_ID")
        .and_then(Value::as_str)
        .and_then(|c| c.parse().ok())
        .and_then(|c| fake.contact(c))
        .map(|c| {
            ["LAST_NAME", "NAME", "SECOND_NAME"]
                .iter()
                .filter_map(|k| c.get(*k).and_then(Value::as_str))
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    let options =
        serde_json::json!({"ID": id.to_string(), "URI": format!("/crm/deal/details/{id}/")})
            .to_string();
    let form = frame_form(
        fake,
        "/b24/placement/deal-tab",
        DOCTOR_ID,
        "CRM_DEAL_DETAIL_TAB",
        Some(options),
    );
    let stage = deal
        .get("STAGE_ID")
        .and_then(Value::as_str)
        .unwrap_or("NEW");
    html(crate::views::render(&DealCard::new(
        title,
        patient,
        id,
        form,
        stages(stage),
        automation_on(fake, id),
    )))
}

/// The demo pipeline; «Анкета получена» is where the app trigger moves the deal.
const STAGES: [(&str, &str); 4] = [
    ("NEW", "Новая"),
    ("PREPARATION", "Анкета получена"),
    ("EXECUTING", "Приём"),
    ("WON", "Сделка завершена"),
];

fn stages(current: &str) -> Vec<(&'static str, &'static str)> {
    let at = STAGES
        .iter()
        .position(|(id, _)| *id == current)
        .unwrap_or(0);
    STAGES
        .iter()
        .enumerate()
        .map(|(i, (_, name))| {
            let class = match i.cmp(&at) {
                std::cmp::Ordering::Less => "is-done",
                std::cmp::Ordering::Equal => "is-current",
                std::cmp::Ordering::Greater => "",
            };
            (*name, class)
        })
        .collect()
}

/// The red-flag activity and the notification the fake portal holds for the deal.
fn automation_on(fake: &FakePortal, deal: u64) -> DemoAutomation {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let activity = fake
        .activities()
        .into_iter()
        .find(|a| a.owner_type_id == crate::testing::fake_portal::OWNER_DEAL && a.owner_id == deal)
        .map(|a| {
            let header = &a.layout["header"];
            let tag = header["tags"]
                .as_object()
                .and_then(|t| t.values().next())
                .map(|t| text(&t["title"]))
                .unwrap_or_default();
            let titles = a.layout["body"]["blocks"]
                .as_object()
                .map(|blocks| {
                    blocks
                        .values()
                        .filter(|b| b["type"] == "withTitle")
                        .map(|b| text(&b["properties"]["block"]["properties"]["value"]))
                        .collect()
                })
                .unwrap_or_default();
            DemoActivity {
                header: text(&header["title"]),
                tag,
                titles,
                completed: a.completed,
            }
        });
    let suffix = format!("|DEAL_{deal}");
    let notification = fake
        .notifications()
        .into_iter()
        .find(|n| n.tag.as_deref().is_some_and(|t| t.ends_with(&suffix)))
        .map(|n| n.message);
    DemoAutomation {
        activity,
        notification,
    }
}

#[handler]
fn app_card(Data(data): Data<&DemoData>) -> Response {
    let form = frame_form(&data.portal, "/b24/app", ADMIN_ID, "DEFAULT", None);
    html(crate::views::render(&AppCard::new(form)))
}
