//! Strangers cannot spend a clinic's Bitrix24 budget, exhaust the service's memory or
//! its connections, or frame its pages (issue 14, items 5, 9, 10, 11). Each test
//! performs the attack over HTTP and asserts what the portal saw and what the
//! service answered.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use opros::bitrix24::{B24Client, B24Error, ClientConfig, PortalAuth, RateLimit, Target};
use opros::secret::Secret;
use opros::testing::{FakePortal, MemoryTokenStore};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::portal::{app_for, fake, install, installed, patient_deal};
use crate::support::{TestApp, db, eventually, spawn_app_tuned};

// ---- item 5: the verification budget -------------------------------------------------

/// A client whose requests come from `127.0.<a>.<b>`: one stranger among many.
fn client_from(n: u16) -> reqwest::Client {
    let [a, b] = n.to_be_bytes();
    reqwest::Client::builder()
        .local_address(IpAddr::from([127, 0, a, b.max(2)]))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

fn tab_url(app: &TestApp, fake: &FakePortal) -> String {
    app.url(&format!(
        "/b24/placement/deal-tab?DOMAIN={}&PROTOCOL=0&LANG=ru",
        fake.domain()
    ))
}

fn tab_form(auth: &str, member_id: &str, deal: u64) -> Vec<(String, String)> {
    [
        ("AUTH_ID", auth.to_owned()),
        ("AUTH_EXPIRES", "3600".to_owned()),
        ("REFRESH_ID", "whatever".to_owned()),
        ("member_id", member_id.to_owned()),
        ("PLACEMENT", "CRM_DEAL_DETAIL_TAB".to_owned()),
        ("PLACEMENT_OPTIONS", format!(r#"{{"ID":"{deal}"}}"#)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

async fn post_form(
    http: &reqwest::Client,
    url: &str,
    form: &[(String, String)],
) -> reqwest::Response {
    http.post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(opros::bitrix24::form::encode(form))
        .send()
        .await
        .expect("request")
}

/// Identity-check calls the portal received (forged tokens never pass).
fn checks(fake: &FakePortal) -> usize {
    ["profile", "app.info", "user.admin", "crm.deal.get"]
        .iter()
        .map(|m| fake.calls_of(m).len())
        .sum()
}

/// A robot run after an attack: answered, its link sent back, and the portal's bucket
/// never overflowed (the attack spent none of the robot's budget).
async fn robot_goes_through_without_overflow(fake: &FakePortal, deal: u64) {
    let (_, r) = fake
        .run_robot("opros_send_survey", deal, &[])
        .await
        .expect("robot call delivered");
    assert_eq!(r.status(), 200);
    eventually("the robot's bizproc.event.send", || async {
        !fake.event_sends().is_empty()
    })
    .await;
    let limited = fake
        .calls()
        .iter()
        .filter(|c| c.error.as_deref() == Some("QUERY_LIMIT_EXCEEDED"))
        .count();
    assert_eq!(limited, 0, "the portal's bucket overflowed");
}

fn is_refusal(r: &reqwest::Response) -> bool {
    r.status() == 429
        && r.headers()
            .get("x-error-code")
            .and_then(|v| v.to_str().ok())
            == Some("too_many_attempts")
        && r.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|s| s > 0)
}

#[tokio::test]
async fn forged_tab_and_install_posts_from_many_addresses_do_not_delay_the_robot() {
    let fake = fake().await;
    // The cloud's usual plan: 2 requests a second, a bucket of 50 (protocol §10.1).
    let app = app_for(&fake, &[("B24_RATE_LIMIT", "2/50")]).await;
    install(&fake, &app).await;
    let deal = patient_deal(&fake);
    fake.set_rate(2.0, 50);
    let checks_before = checks(&fake);

    // 160 forged tab POSTs (the member_id is all they need) and 160 forged install
    // POSTs (the domain is all they need), each from an address of its own.
    let tab = tab_url(&app, &fake);
    let install_url = app.url(&format!(
        "/b24/install?DOMAIN={}&PROTOCOL=0&LANG=ru",
        fake.domain()
    ));
    let member_id = fake.member_id();
    let domain = fake.domain();
    let forged = (0..320u16).map(|n| {
        let (tab, install_url, member_id) = (tab.clone(), install_url.clone(), member_id.clone());
        let domain = domain.clone();
        async move {
            let http = client_from(n + 1);
            let auth = format!("forged-{n}");
            if n % 2 == 0 {
                post_form(&http, &tab, &tab_form(&auth, &member_id, deal)).await
            } else {
                let mut form = tab_form(&auth, &member_id, deal);
                form.push(("DOMAIN".into(), domain));
                post_form(&http, &install_url, &form).await
            }
        }
    });
    let answers = futures::future::join_all(forged).await;
    let refused = answers.iter().filter(|r| is_refusal(r)).count();
    for r in &answers {
        assert!(
            [403, 429].contains(&r.status().as_u16()),
            "a forged POST got {}",
            r.status()
        );
    }
    let reached = checks(&fake) - checks_before;
    // The checks' share of a 2/50 bucket is 10: 9 at once, two more within 5 s.
    assert!(reached <= 12, "{reached} forged checks reached the portal");
    // Checks under way count as failures until answered, so of each kind (tab, install)
    // at most 20 pass the door at once; the install ones then fail at the OAuth server
    // (403), a few tab ones at the portal (403).
    assert!(refused >= 270, "only {refused} of 320 refused with 429");

    // The robot runs at once: the forged checks spent none of its budget (before,
    // its answer waited for 160 spent slots to drain: about a minute).
    robot_goes_through_without_overflow(&fake, deal).await;
}

#[tokio::test]
async fn an_address_with_repeated_failures_is_refused_without_asking_the_portal() {
    // A budget large enough that only the address's failures can refuse.
    let fake = fake().await;
    let app = app_for(&fake, &[("B24_RATE_LIMIT", "50/500")]).await;
    install(&fake, &app).await;
    let deal = patient_deal(&fake);
    let tab = tab_url(&app, &fake);
    let http = client_from(7);
    let before = checks(&fake);
    let mut statuses = Vec::new();
    for n in 0..30 {
        let r = post_form(
            &http,
            &tab,
            &tab_form(&format!("forged-{n}"), &fake.member_id(), deal),
        )
        .await;
        statuses.push((r.status().as_u16(), is_refusal(&r)));
    }
    let reached = checks(&fake) - before;
    assert_eq!(reached, 10, "failed checks before the address is refused");
    assert!(
        statuses[..10].iter().all(|(s, _)| *s == 403),
        "{statuses:?}"
    );
    assert!(
        statuses[10..].iter().all(|(_, refused)| *refused),
        "{statuses:?}"
    );
    // The refusal is the address's: the clinic's own doctors still get in.
    let r = fake.open_deal_tab(1, deal).await.expect("genuine tab");
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_doctor_reopening_the_tab_costs_no_portal_call() {
    let (fake, app) = installed().await;
    let deal = patient_deal(&fake);
    let other_deal = patient_deal(&fake);
    let (auth, _) = fake.issue_user_token(1);
    let tab = tab_url(&app, &fake);
    let first = post_form(&app.http, &tab, &tab_form(&auth, &fake.member_id(), deal)).await;
    assert_eq!(first.status(), 200);
    let profiles = fake.calls_of("profile").len();
    let deal_reads = fake.calls_of("crm.deal.get").len();
    assert!(profiles >= 1 && deal_reads >= 1);

    let again = post_form(&app.http, &tab, &tab_form(&auth, &fake.member_id(), deal)).await;
    assert_eq!(again.status(), 200);
    assert_eq!(
        fake.calls_of("profile").len(),
        profiles,
        "no second profile call"
    );
    assert_eq!(
        fake.calls_of("crm.deal.get").len(),
        deal_reads,
        "no second deal read"
    );

    // Another deal with the same token: the portal is asked about the deal only.
    let other = post_form(
        &app.http,
        &tab,
        &tab_form(&auth, &fake.member_id(), other_deal),
    )
    .await;
    assert_eq!(other.status(), 200);
    assert_eq!(fake.calls_of("profile").len(), profiles);
    assert_eq!(fake.calls_of("crm.deal.get").len(), deal_reads + 1);

    // A remembered token is no way around the deal's rights.
    let third = patient_deal(&fake);
    fake.deny_deal_for_user(1, third);
    let denied = post_form(&app.http, &tab, &tab_form(&auth, &fake.member_id(), third)).await;
    assert_eq!(denied.status(), 403);
}

#[tokio::test]
async fn refusals_decided_without_asking_anyone_lock_nobody_out() {
    // Behind a proxy every visitor shares the proxy's address: one client here.
    let fake = fake().await;
    let allowed = format!("clinic.bitrix24.ru,{}", fake.domain());
    let app = app_for(
        &fake,
        &[
            ("B24_RATE_LIMIT", "50/500"),
            ("B24_ALLOWED_DOMAINS", &allowed),
        ],
    )
    .await;
    install(&fake, &app).await;
    let deal = patient_deal(&fake);
    let proxy = client_from(33);
    let member_id = fake.member_id();
    let checks_before = checks(&fake);
    let refreshes_before = fake.refresh_count();

    let tab = tab_url(&app, &fake);
    let foreign_tab = app.url("/b24/placement/deal-tab?DOMAIN=evil.example&PROTOCOL=1");
    let foreign_install = app.url("/b24/install?DOMAIN=other.example&PROTOCOL=1");
    let no_auth: Vec<_> = tab_form("x", &member_id, deal)
        .into_iter()
        .filter(|(k, _)| k != "AUTH_ID")
        .collect();
    let bare_event: Vec<(String, String)> = [
        ("event", "ONAPPINSTALL".to_owned()),
        ("auth[domain]", fake.domain()),
        ("auth[member_id]", member_id.clone()),
        ("auth[application_token]", "forged".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let mut statuses = Vec::new();
    for n in 0..15 {
        let unknown = tab_form(&format!("forged-{n}"), &format!("unknown-{n}"), deal);
        let wrong_domain = tab_form(&format!("forged-{n}"), &member_id, deal);
        for (url, form) in [
            // An unknown member_id.
            (&tab, &unknown),
            // A DOMAIN that is not the installed portal's.
            (&foreign_tab, &wrong_domain),
            // No AUTH_ID.
            (&tab, &no_auth),
            // An install for a portal B24_ALLOWED_DOMAINS does not list.
            (&foreign_install, &wrong_domain),
            // An ONAPPINSTALL without a refresh token.
            (&app.url("/b24/install"), &bare_event),
        ] {
            let r = post_form(&proxy, url, form).await;
            statuses.push(r.status().as_u16());
        }
    }
    assert!(
        statuses.iter().all(|s| [400, 403].contains(s)),
        "{statuses:?}"
    );
    assert_eq!(checks(&fake), checks_before, "no portal was asked");
    assert_eq!(
        fake.refresh_count(),
        refreshes_before,
        "nor the OAuth server"
    );

    // A doctor behind the same proxy, never seen before, still gets in.
    let (auth, _) = fake.issue_user_token(1);
    let r = post_form(&proxy, &tab, &tab_form(&auth, &member_id, deal)).await;
    assert_eq!(r.status(), 200, "the proxy's address was locked out");

    // A token the portal refuses still counts against the address.
    let stranger = client_from(34);
    for n in 0..10 {
        let r = post_form(
            &stranger,
            &tab,
            &tab_form(&format!("refused-{n}"), &member_id, deal),
        )
        .await;
        assert_eq!(r.status(), 403);
    }
    let r = post_form(&stranger, &tab, &tab_form("refused-10", &member_id, deal)).await;
    assert!(is_refusal(&r), "{}", r.status());
}

/// A forged `ONCRMDEALADD` as any tab user can send it (the application token is in
/// every tab POST).
fn forged_deal_add(fake: &FakePortal, deal: u64) -> Vec<(String, String)> {
    [
        ("event", "ONCRMDEALADD".to_owned()),
        ("data[FIELDS][ID]", deal.to_string()),
        ("auth[member_id]", fake.member_id()),
        ("auth[domain]", fake.domain()),
        ("auth[application_token]", fake.application_token()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

#[tokio::test]
async fn forged_deal_events_do_not_delay_the_robot() {
    let fake = fake().await;
    // The cloud's usual plan: 2 requests a second, a bucket of 50 (protocol §10.1).
    let app = app_for(&fake, &[("B24_RATE_LIMIT", "2/50")]).await;
    install(&fake, &app).await;
    let deal = patient_deal(&fake);
    fake.set_rate(2.0, 50);
    let reads_before = fake.calls_of("crm.deal.get").len();

    // 100 forged events for deals that do not exist; each asks for a confirmation read.
    let events = app.url("/b24/events");
    let forged = (0..100u64).map(|n| {
        let (http, events, form) = (
            app.http.clone(),
            events.clone(),
            forged_deal_add(&fake, 900_000 + n),
        );
        async move {
            let r = post_form(&http, &events, &form).await;
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            (status, body["code"].as_str().unwrap_or_default().to_owned())
        }
    });
    let answers = futures::future::join_all(forged).await;
    for (status, code) in &answers {
        assert!(
            (*status == 409 && code == "event_not_confirmed")
                || (*status == 503 && code == "checks_budget_spent"),
            "a forged event got {status} {code}"
        );
    }
    let reads = fake.calls_of("crm.deal.get").len() - reads_before;
    // The checks' share of a 2/50 bucket is 10: 9 at once, two more within 5 s.
    // Before, all 100 reads queued on the robot's budget.
    assert!(
        reads <= 12,
        "{reads} forged confirmations reached the portal"
    );

    robot_goes_through_without_overflow(&fake, deal).await;
    // A genuine new deal is still confirmed once the checks' share refills.
    let fresh = patient_deal(&fake);
    // A refused try costs the portal nothing (the checks' share refuses before sending).
    let genuine = forged_deal_add(&fake, fresh);
    let (http, events, genuine) = (&app.http, &events, &genuine);
    crate::support::eventually_within(
        Duration::from_secs(60),
        "the genuine event confirmed",
        || async move {
            let r = post_form(http, events, genuine).await;
            match r.status().as_u16() {
                200 => true,
                503 => false,
                other => panic!("a genuine event got {other}"),
            }
        },
    )
    .await;
    app.run_outbox().await;
    let link = fake.deal(fresh).expect("deal")[app.state.config.link_field.as_str()].clone();
    assert!(link.as_str().is_some_and(|l| l.contains("/s/")), "{link}");
}

// ---- item 9: capped reads ------------------------------------------------------------

/// 64 KiB of spaces, sent over and over: nothing is allocated per answer.
static CHUNK: [u8; 64 * 1024] = [b' '; 64 * 1024];
const HUGE: usize = 512 * 1024 * 1024;

/// A server answering every request with 512 MiB (chunked, no length).
async fn hostile_server() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let acceptor = poem::listener::TcpAcceptor::from_tokio(listener).expect("acceptor");
    let endpoint = poem::endpoint::make(|_req| async {
        let chunks = futures::stream::iter(0..HUGE / CHUNK.len())
            .map(|_| Ok::<_, std::io::Error>(Bytes::from_static(&CHUNK)));
        poem::Response::builder()
            .content_type("application/json")
            .body(poem::Body::from_bytes_stream(chunks))
    });
    let server = tokio::spawn(async move {
        let _ = poem::Server::new_with_acceptor(acceptor)
            .run(endpoint)
            .await;
    });
    (format!("http://{addr}/"), server)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn answers_larger_than_the_cap_are_cut_off_without_being_held() {
    let (hostile, server) = hostile_server().await;
    let base = url::Url::parse(&hostile).expect("url");
    let rss_before = rss_kib();

    // A REST call and a token refresh, three of each at once.
    let store = Arc::new(MemoryTokenStore::new());
    store.insert(
        "m",
        PortalAuth {
            client_endpoint: base.join("rest/").expect("url"),
            server_endpoint: None,
            access_token: Secret::new("a".into()),
            refresh_token: Secret::new("r".into()),
            // Expired: the first call refreshes through the hostile token URL.
            expires_at: chrono::Utc::now() - chrono::Duration::hours(1),
        },
    );
    let client = B24Client::new(
        ClientConfig {
            client_id: Some("local.x".into()),
            client_secret: Some(Secret::new("s".into())),
            oauth_url: Some(base.join("oauth/token/").expect("url")),
            rate: RateLimit {
                per_sec: 1000.0,
                burst: 1000,
            },
            request_timeout: Duration::from_secs(60),
            max_retries: 0,
            operating_limit: Duration::from_secs(480),
        },
        store,
    )
    .expect("client builds");
    let user = Target::UserToken {
        endpoint: base.join("rest/").expect("url"),
        access_token: Secret::new("t".into()),
    };
    let portal = Target::Portal {
        member_id: "m".into(),
    };
    let calls = (0..3).map(|_| client.call(&user, "profile", json!({})));
    let refreshes = (0..3).map(|_| client.call(&portal, "profile", json!({})));
    let (calls, refreshes) = tokio::join!(
        futures::future::join_all(calls),
        futures::future::join_all(refreshes)
    );
    for result in calls.into_iter().chain(refreshes) {
        assert!(
            matches!(result, Err(B24Error::ResponseTooLarge { .. })),
            "{result:?}"
        );
    }

    // Over HTTP: an installed portal whose endpoint answers 512 MiB to the tab's check.
    let (fake, app) = installed().await;
    let deal = patient_deal(&fake);
    {
        use opros::db::entities::portal;
        use sea_orm::{ActiveModelTrait, ActiveValue::Set, EntityTrait};
        let row = portal::Entity::find()
            .one(&app.state.db)
            .await
            .expect("db")
            .expect("portal");
        let mut row: portal::ActiveModel = row.into();
        row.client_endpoint = Set(base.join("rest/").expect("url").to_string());
        row.update(&app.state.db).await.expect("update");
    }
    let tab = tab_url(&app, &fake);
    let pages = (0..3).map(|n| {
        let form = tab_form(&format!("token-{n}"), &fake.member_id(), deal);
        let (http, tab) = (app.http.clone(), tab.clone());
        async move { post_form(&http, &tab, &form).await.status().as_u16() }
    });
    for status in futures::future::join_all(pages).await {
        assert_eq!(status, 503, "the portal's non-answer is its own trouble");
    }
    let grown_mib = rss_kib().saturating_sub(rss_before) / 1024;
    // Unbounded, nine 512 MiB answers would need gigabytes; other tests share the
    // process, hence the margin.
    assert!(grown_mib < 256, "resident memory grew by {grown_mib} MiB");
    let (status, _) = app.get_json("/healthz").await;
    assert_eq!(status, 200, "the service lives on");
    server.abort();
}

// ---- item 10: slow and idle connections ---------------------------------------------

async fn tuned_app(header: Duration, idle: Duration, max: Option<usize>) -> TestApp {
    spawn_app_tuned(&db::sqlite_for_process(), &[], |config| {
        config.connections.header_timeout = header;
        config.connections.idle_timeout = idle;
        config.connections.max_connections = max;
    })
    .await
}

fn local_addr(app: &TestApp) -> std::net::SocketAddr {
    let port = url::Url::parse(&app.base)
        .ok()
        .and_then(|u| u.port())
        .expect("the app's port");
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}

/// Whether the server closed the socket within `within` (end of stream or reset).
async fn closed_by_server(mut socket: TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, socket.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // An error page for the cut-off head is fine; the close must follow.
            Ok(Ok(_)) => {}
        }
    }
}

async fn open_idle(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut sockets = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(200) {
        let opened =
            futures::future::join_all(chunk.iter().map(|_| TcpStream::connect(addr))).await;
        sockets.extend(opened.into_iter().map(|s| s.expect("connect")));
    }
    sockets
}

#[tokio::test]
async fn idle_and_trickling_connections_are_closed_and_healthz_still_answers() {
    let app = tuned_app(Duration::from_secs(2), Duration::from_secs(2), None).await;
    let addr = local_addr(&app);
    let idle = open_idle(addr, 2000).await;

    // Slowloris: a request head a byte at a time, never finished in time.
    let mut trickler = TcpStream::connect(addr).await.expect("connect");
    let trickle = tokio::spawn(async move {
        for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "
            .iter()
            .cycle()
            .take(200)
        {
            if trickler.write_all(&[*byte]).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        false
    });

    // Everyone else still gets in while the 2 000 are held.
    let fresh = reqwest::Client::new();
    let r = fresh
        .get(app.url("/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("healthz answers");
    assert_eq!(r.status(), 200);

    let closed = futures::future::join_all(
        idle.into_iter()
            .map(|s| closed_by_server(s, Duration::from_secs(30))),
    )
    .await;
    let open = closed.iter().filter(|c| !**c).count();
    assert_eq!(open, 0, "{open} idle connections still open");
    assert!(
        tokio::time::timeout(Duration::from_secs(30), trickle)
            .await
            .expect("the trickler is cut off")
            .expect("task"),
        "the trickled head was never refused"
    );
    let (status, _) = app.get_json("/healthz").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn at_the_connection_cap_the_longest_idle_are_shed() {
    // Timeouts far beyond the test: only the cap can free the descriptors.
    let long = Duration::from_secs(600);
    let app = tuned_app(long, long, Some(100)).await;
    let addr = local_addr(&app);
    let idle = open_idle(addr, 300).await;
    let fresh = reqwest::Client::new();
    let r = fresh
        .get(app.url("/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("healthz answers at the cap");
    assert_eq!(r.status(), 200);
    let closed = futures::future::join_all(
        idle.into_iter()
            .map(|s| closed_by_server(s, Duration::from_secs(10))),
    )
    .await;
    let shed = closed.iter().filter(|c| **c).count();
    assert!(
        shed >= 200,
        "only {shed} of 300 idle connections shed at a cap of 100"
    );
}

/// Opens `n` connections and sends `bytes` on each.
async fn open_sending(
    addr: std::net::SocketAddr,
    n: usize,
    bytes: &'static [u8],
) -> Vec<TcpStream> {
    let mut sockets = open_idle(addr, n).await;
    for chunk in sockets.chunks_mut(200) {
        let sent = futures::future::join_all(chunk.iter_mut().map(|s| s.write_all(bytes))).await;
        // A socket already shed at the cap may refuse the write; it is closed either way.
        drop(sent);
    }
    sockets
}

#[tokio::test]
async fn empty_lines_and_h2_prior_knowledge_hold_no_connection() {
    // Before: `\r\n\r\n` was taken for a finished head, so such a connection counted
    // as handling a request: never shed at the cap, never closed (the HTTP parser
    // skips empty lines and waits for a request line for ever). Likewise an h2c
    // connection. A cap of 1 000 filled with them locked everyone out.
    let app = spawn_app_tuned(&db::sqlite_for_process(), &[], |config| {
        config.connections.header_timeout = Duration::from_secs(2);
        config.connections.idle_timeout = Duration::from_secs(2);
        config.connections.request_timeout = Duration::from_secs(2);
        config.connections.max_connections = Some(1000);
    })
    .await;
    let addr = local_addr(&app);
    let fresh = reqwest::Client::new();
    for (what, bytes) in [
        ("empty lines", &b"\r\n\r\n"[..]),
        ("the HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
    ] {
        let held = open_sending(addr, 2000, bytes).await;
        let r = fresh
            .get(app.url("/healthz"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .unwrap_or_else(|e| panic!("healthz does not answer past {what}: {e}"));
        assert_eq!(r.status(), 200, "{what}");
        let closed = futures::future::join_all(
            held.into_iter()
                .map(|s| closed_by_server(s, Duration::from_secs(30))),
        )
        .await;
        let open = closed.iter().filter(|c| !**c).count();
        assert_eq!(open, 0, "{open} connections sending {what} still open");
    }
    let (status, _) = app.get_json("/healthz").await;
    assert_eq!(status, 200);
}

// ---- item 11: framing ----------------------------------------------------------------

fn frame_ancestors(r: &reqwest::Response) -> String {
    r.headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .and_then(|csp| {
            csp.split(';')
                .map(str::trim)
                .find(|d| d.starts_with("frame-ancestors"))
                .map(str::to_owned)
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn frames_are_allowed_only_to_the_installed_portal() {
    let fake = fake().await;
    let app = app_for(&fake, &[]).await;
    let portal_origin = format!("frame-ancestors http://{}", fake.domain());

    let r = fake
        .post_install(&app.url("/b24/install"))
        .await
        .expect("install POST");
    assert_eq!(r.status(), 200);
    assert_eq!(frame_ancestors(&r), portal_origin, "install page");
    let _ = fake.finish_install().await;

    let deal = patient_deal(&fake);
    let r = fake.open_deal_tab(1, deal).await.expect("tab");
    assert_eq!(r.status(), 200);
    assert_eq!(frame_ancestors(&r), portal_origin, "deal tab");
    let body = r.text().await.expect("body");
    let session = body
        .split("name=\"s\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("tab session")
        .to_owned();

    fake.set_app_url(&app.url("/b24/app"));
    let r = fake.open_app(1).await.expect("admin page");
    assert_eq!(r.status(), 200);
    assert_eq!(frame_ancestors(&r), portal_origin, "admin page");

    // The tab's follow-up (a new link) answers in the same frame.
    let r = post_form(
        &app.http,
        &app.url("/b24/tab/new-link"),
        &[("s".to_owned(), session)],
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(frame_ancestors(&r), portal_origin, "new link");

    // Refusals show a fixed message, framed only by the portal the POST names...
    let r = post_form(
        &app.http,
        &app.url("/b24/placement/deal-tab?DOMAIN=clinic.example&PROTOCOL=1"),
        &tab_form("x", "unknown-member", deal),
    )
    .await;
    assert_eq!(r.status(), 403);
    assert_eq!(
        frame_ancestors(&r),
        "frame-ancestors https://clinic.example"
    );
    // ...and by nobody when it names none, or names something that is no host.
    let r = post_form(
        &app.http,
        &app.url("/b24/placement/deal-tab"),
        &tab_form("x", "unknown-member", deal),
    )
    .await;
    assert_eq!(frame_ancestors(&r), "frame-ancestors 'none'");
    let r = post_form(
        &app.http,
        &app.url("/b24/placement/deal-tab?DOMAIN=a.example%20https://evil.example"),
        &tab_form("x", "unknown-member", deal),
    )
    .await;
    assert_eq!(frame_ancestors(&r), "frame-ancestors 'none'");

    // The patient's page is never framed.
    fake.run_robot("opros_send_survey", deal, &[])
        .await
        .expect("robot");
    app.run_outbox().await;
    let url = fake
        .event_sends()
        .last()
        .and_then(|s| s.1.get("SURVEY_URL").cloned())
        .expect("survey url");
    let r = app.http.get(&url).send().await.expect("patient page");
    assert_eq!(r.status(), 200);
    assert_eq!(frame_ancestors(&r), "frame-ancestors 'none'");
    assert_eq!(
        r.headers()
            .get("x-frame-options")
            .and_then(|v| v.to_str().ok()),
        Some("DENY")
    );
}

#[tokio::test]
#[ignore = "needs OPROS_TEST_POSTGRES_URL (see README)"]
async fn instances_share_the_checks_budget_and_a_refusal_takes_no_slot() {
    use opros::bitrix24::SharedBucket;
    use opros::db::rate_bucket::DbRateBucket;
    let Some(pg) = db::postgres("attacks_resources::checks_bucket").await else {
        return;
    };
    let conn = opros::db::connect(&pg.url).await.expect("connect");
    opros::db::migrate(&conn).await.expect("migrate");
    let bucket = DbRateBucket::for_shared_db(&conn).expect("PostgreSQL shares buckets");
    // One slot every 10 s, a bucket of 4: three go at once, then nothing for long.
    let rate = RateLimit {
        per_sec: 0.1,
        burst: 4,
    };
    let key = "verify:clinic.example:443";
    for _ in 0..3 {
        let wait = bucket
            .try_reserve(key, rate, Duration::ZERO)
            .await
            .expect("store")
            .expect("admitted at once");
        assert_eq!(wait, Duration::ZERO);
    }
    for _ in 0..20 {
        let retry = bucket
            .try_reserve(key, rate, Duration::ZERO)
            .await
            .expect("store")
            .expect_err("refused");
        assert!(retry > Duration::ZERO);
    }
    // The refusals took nothing: the next slot is still one interval away, so a
    // caller willing to wait that long gets it.
    let wait = bucket
        .try_reserve(key, rate, Duration::from_secs(11))
        .await
        .expect("store")
        .expect("admitted within 11 s");
    assert!(wait <= Duration::from_secs(10), "{wait:?}");
}
