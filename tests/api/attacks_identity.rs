//! A portal's identity comes from the trusted OAuth server (CONTRACT "Trust rules"):
//! forged installs and `ONAPPINSTALL`s by portal users and outsiders, a hostile host
//! named in a request, squatting, a port scan through the install page and domain
//! moves. Every attack runs over HTTP; the attacker's own server records what it got.

use opros::db::entities::portal;
use opros::local_app::portals;
use opros::testing::{EVIL_MEMBER_ID, EvilServer, FakePortal, Fault};
use sea_orm::ActiveEnum;
use serde_json::Value;

use crate::support::db::{TestDb, on_both_databases};
use crate::support::portal::{app_for, app_for_db, fake, install, installed_on, patient_deal};
use crate::support::{TestApp, logs};

pub(crate) async fn evil() -> EvilServer {
    EvilServer::start().await.expect("evil server starts")
}

/// A form POST to the service; the status and the body as text.
pub(crate) async fn post(app: &TestApp, path: &str, fields: &[(&str, &str)]) -> (u16, String) {
    let r = app
        .http
        .post(app.url(path))
        .form(fields)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

pub(crate) fn code_of(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

pub(crate) async fn stored(app: &TestApp, member_id: &str) -> Option<portal::Model> {
    portals::by_member(&app.state.db, member_id)
        .await
        .expect("query")
}

/// Nothing reached the attacker's server at all: no client secret, no token.
pub(crate) fn untouched(evil: &EvilServer) {
    assert!(
        evil.requests().is_empty(),
        "the service called the attacker's host: {:?}",
        evil.requests()
    );
}

/// The stored identity and tokens of a portal, to compare before and after an attack.
pub(crate) fn identity(p: &portal::Model) -> Vec<Option<String>> {
    vec![
        Some(p.domain.clone()),
        Some(p.client_endpoint.clone()),
        p.server_endpoint.clone(),
        p.access_token.clone(),
        p.refresh_token.clone(),
        p.application_token.clone(),
        Some(p.status.to_value()),
    ]
}

/// An `ONAPPINSTALL` body forged from a user's own tokens, naming `endpoint` as both
/// the portal and the OAuth server.
fn forged_event<'a>(
    domain: &'a str,
    member_id: &'a str,
    access: &'a str,
    refresh: Option<&'a str>,
    endpoint: &'a str,
    application_token: &'a str,
) -> Vec<(&'a str, &'a str)> {
    let mut fields = vec![
        ("event", "ONAPPINSTALL"),
        ("data[VERSION]", "1"),
        ("auth[access_token]", access),
        ("auth[expires_in]", "3600"),
        ("auth[domain]", domain),
        ("auth[server_endpoint]", endpoint),
        ("auth[client_endpoint]", endpoint),
        ("auth[member_id]", member_id),
        ("auth[application_token]", application_token),
    ];
    if let Some(refresh) = refresh {
        fields.push(("auth[refresh_token]", refresh));
    }
    fields
}

pub(crate) fn install_path(domain: &str) -> String {
    format!("/b24/install?DOMAIN={domain}&PROTOCOL=0&LANG=ru")
}

/// An install page POST with these tokens, naming `server_endpoint`.
pub(crate) fn install_form<'a>(
    access: &'a str,
    refresh: &'a str,
    member_id: &'a str,
    server_endpoint: &'a str,
    application_token: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("AUTH_ID", access),
        ("AUTH_EXPIRES", "3600"),
        ("REFRESH_ID", refresh),
        ("SERVER_ENDPOINT", server_endpoint),
        ("APPLICATION_TOKEN", application_token),
        ("member_id", member_id),
        ("status", "L"),
        ("PLACEMENT", "DEFAULT"),
    ]
}

/// A doctor (not an admin) of the portal, with the tokens their deal tab POST carries.
pub(crate) fn doctor_tokens(fake: &FakePortal) -> (String, String) {
    fake.add_user(17, "Игорь", "Воронцов", false);
    fake.issue_user_token(17)
}

on_both_databases!(tab_user_forging_onappinstall_changes_nothing_and_reaches_no_attacker);
async fn tab_user_forging_onappinstall_changes_nothing_and_reaches_no_attacker(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let evil = evil().await;
    let before = stored(&app, &fake.member_id()).await.expect("installed");
    doctor_tokens(&fake);
    let (member, app_token, domain) = (fake.member_id(), fake.application_token(), fake.domain());
    let endpoint = evil.rest_endpoint();
    let evil_domain = evil.domain();

    for path in ["/b24/events", "/b24/install"] {
        let (access, refresh) = fake.issue_user_token(17);
        // The doctor's genuine tokens, the real domain, the attacker's endpoints: the
        // OAuth server vouches for the portal, but the doctor is no admin.
        let (status, body) = post(
            &app,
            path,
            &forged_event(
                &domain,
                &member,
                &access,
                Some(&refresh),
                &endpoint,
                &app_token,
            ),
        )
        .await;
        assert_eq!(status, 403, "{path}: {body}");
        assert_eq!(code_of(&body), "not_admin", "{path}: {body}");

        // Naming the attacker's host as the portal: not what the OAuth server says.
        let (_, fresh_refresh) = fake.issue_user_token(17);
        let (status, body) = post(
            &app,
            path,
            &forged_event(
                &evil_domain,
                &member,
                &access,
                Some(&fresh_refresh),
                &endpoint,
                &app_token,
            ),
        )
        .await;
        assert_eq!(status, 403, "{path}: {body}");
        assert_eq!(code_of(&body), "portal_mismatch", "{path}: {body}");

        // No refresh token: nothing can vouch for the event.
        let (status, body) = post(
            &app,
            path,
            &forged_event(&domain, &member, &access, None, &endpoint, &app_token),
        )
        .await;
        assert_eq!(status, 403, "{path}: {body}");
        assert_eq!(code_of(&body), "install_not_vouched", "{path}: {body}");
    }
    // The same as the install page's POST.
    let (access, refresh) = fake.issue_user_token(17);
    let (status, page) = post(
        &app,
        &install_path(&domain),
        &install_form(&access, &refresh, &member, &endpoint, &app_token),
    )
    .await;
    assert_eq!(status, 403, "{page}");
    assert!(
        crate::support::html::text_of(&page).contains("только администратор"),
        "{page}"
    );

    let after = stored(&app, &member).await.expect("still installed");
    assert_eq!(identity(&before), identity(&after));

    // The clinic's next refresh goes to the trusted server, never to the attacker.
    fake.expire_access_tokens();
    let refreshes = fake.refresh_count();
    let deal = patient_deal(&fake);
    let (_, r) = fake
        .run_robot("opros_send_survey", deal, &[])
        .await
        .expect("robot delivered");
    assert_eq!(r.status(), 200);
    app.run_outbox().await;
    assert!(fake.refresh_count() > refreshes, "refreshed at the fake");
    let refreshed = stored(&app, &member).await.expect("installed");
    assert_eq!(refreshed.client_endpoint, fake.client_endpoint().as_str());
    untouched(&evil);
}

on_both_databases!(install_naming_an_attackers_host_sends_it_nothing);
async fn install_naming_an_attackers_host_sends_it_nothing(db: TestDb) {
    let fake = fake().await;
    let app = app_for_db(&fake, &db.url, &[]).await;
    let evil = evil().await;
    let endpoint = evil.rest_endpoint();

    // An outsider "installs" their own host with made-up tokens.
    let (status, page) = post(
        &app,
        &install_path(&evil.domain()),
        &install_form("a", "made-up-refresh", EVIL_MEMBER_ID, &endpoint, "t"),
    )
    .await;
    assert_eq!(status, 403, "{page}");
    assert!(
        crate::support::html::text_of(&page).contains("Сервер авторизации Битрикс24 не подтвердил"),
        "{page}"
    );

    // Even with a genuine admin token of the real portal, the attacker's DOMAIN is
    // not what the OAuth server vouches for.
    let (access, refresh) = fake.issue_user_token(1);
    let member = fake.member_id();
    let (status, page) = post(
        &app,
        &install_path(&evil.domain()),
        &install_form(&access, &refresh, &member, &endpoint, "t"),
    )
    .await;
    assert_eq!(status, 403, "{page}");
    assert!(
        crate::support::html::text_of(&page).contains("не совпадают"),
        "{page}"
    );

    untouched(&evil);
    assert!(!evil.saw(&fake.client_secret()));
    assert!(stored(&app, &member).await.is_none());
    assert!(stored(&app, EVIL_MEMBER_ID).await.is_none());
    assert!(fake.robots().is_empty());
}

on_both_databases!(install_page_cannot_scan_ports);
async fn install_page_cannot_scan_ports(db: TestDb) {
    let fake = fake().await;
    let app = app_for_db(&fake, &db.url, &[]).await;
    let open = evil().await;
    open.answer_with(
        400,
        serde_json::json!({"error": "REMOTE-CODE", "error_description": "REMOTE-TEXT\nINJECTED"}),
    );
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        l.local_addr().expect("addr").port()
    };
    let mut answers = Vec::new();
    for domain in [open.domain(), format!("127.0.0.1:{closed}")] {
        let server = format!("http://{domain}/rest/");
        let answer = post(
            &app,
            &install_path(&domain),
            &install_form("probe", "probe-refresh", EVIL_MEMBER_ID, &server, "t"),
        )
        .await;
        assert_eq!(answer.0, 403, "{}", answer.1);
        assert!(!answer.1.contains("REMOTE"), "{}", answer.1);
        answers.push(answer);
    }
    assert_eq!(answers[0], answers[1], "open and closed ports look alike");
    // A genuine admin pair gets past the OAuth server: the probed address is still
    // never called, and the answers still do not differ.
    let mut answers = Vec::new();
    for domain in [open.domain(), format!("127.0.0.1:{closed}")] {
        let (access, refresh) = fake.issue_user_token(1);
        let server = format!("http://{domain}/rest/");
        let member = fake.member_id();
        let refreshes = fake.refresh_count();
        let answer = post(
            &app,
            &install_path(&domain),
            &install_form(&access, &refresh, &member, &server, "t"),
        )
        .await;
        assert_eq!(fake.refresh_count(), refreshes + 1, "vouched for");
        assert_eq!(answer.0, 403, "{}", answer.1);
        assert!(
            crate::support::html::text_of(&answer.1).contains("не совпадают"),
            "{}",
            answer.1
        );
        assert!(!answer.1.contains("REMOTE"), "{}", answer.1);
        answers.push(answer);
    }
    assert_eq!(answers[0], answers[1], "open and closed ports look alike");
    untouched(&open);
}

on_both_databases!(remote_error_text_reaches_neither_page_nor_log_raw);
async fn remote_error_text_reaches_neither_page_nor_log_raw(db: TestDb) {
    let log = logs::capture();
    let fake = fake().await;
    let app = app_for_db(&fake, &db.url, &[]).await;

    fake.fail_next(
        "oauth.token",
        Fault::error(400, "weird\nINJECTED-OAUTH-LINE", "x"),
        1,
    );
    let r = fake
        .post_install(&app.url("/b24/install"))
        .await
        .expect("delivered");
    assert_eq!(r.status(), 403);
    let page = r.text().await.unwrap_or_default();
    assert!(
        crate::support::html::text_of(&page).contains("Сервер авторизации Битрикс24 не подтвердил"),
        "{page}"
    );
    assert!(
        !page.contains("INJECTED") && !page.contains("weird"),
        "{page}"
    );

    fake.fail_next(
        "app.info",
        Fault::error(403, "ACCESS_DENIED", "Denied\nINJECTED-REST-LINE"),
        1,
    );
    let r = fake
        .post_install(&app.url("/b24/install"))
        .await
        .expect("delivered");
    assert_eq!(r.status(), 403);
    let page = r.text().await.unwrap_or_default();
    assert!(
        crate::support::html::text_of(&page).contains("Портал не подтвердил установку"),
        "{page}"
    );
    assert!(
        !page.contains("INJECTED") && !page.contains("Denied"),
        "{page}"
    );
    assert!(stored(&app, &fake.member_id()).await.is_none());

    let text = log.text();
    // Logged, escaped: on the line of the record, never at the start of a new one.
    assert!(text.contains("weird\\nINJECTED-OAUTH-LINE"), "{text}");
    assert!(text.contains("Denied\\nINJECTED-REST-LINE"), "{text}");
    assert!(
        !text.lines().any(|l| l.starts_with("INJECTED")),
        "a remote newline forged a log line"
    );
}

#[tokio::test]
async fn allowed_domains_refuse_every_other_portal() {
    let fake = fake().await;
    let app = app_for(&fake, &[("B24_ALLOWED_DOMAINS", "clinic.bitrix24.ru")]).await;
    let refreshes = fake.refresh_count();
    let r = fake
        .post_install(&app.url("/b24/install"))
        .await
        .expect("delivered");
    assert_eq!(r.status(), 403);
    let page = r.text().await.unwrap_or_default();
    assert!(
        crate::support::html::text_of(&page).contains("B24_ALLOWED_DOMAINS"),
        "{page}"
    );
    // Refused before any call: the OAuth server was not even asked.
    assert_eq!(fake.refresh_count(), refreshes);
    assert!(stored(&app, &fake.member_id()).await.is_none());

    // Listed, it installs.
    let allowed = format!("clinic.bitrix24.ru,{}", fake.domain());
    let app = app_for(&fake, &[("B24_ALLOWED_DOMAINS", &allowed)]).await;
    install(&fake, &app).await;
    assert!(stored(&app, &fake.member_id()).await.is_some());
}

on_both_databases!(a_member_id_cannot_be_squatted_before_the_genuine_install);
async fn a_member_id_cannot_be_squatted_before_the_genuine_install(db: TestDb) {
    let fake = fake().await;
    let app = app_for_db(&fake, &db.url, &[]).await;
    let evil = evil().await;
    let member = fake.member_id();
    let endpoint = evil.rest_endpoint();

    // The victim's member_id from the attacker's host, by page and by event.
    let (status, page) = post(
        &app,
        &install_path(&evil.domain()),
        &install_form("a", "r", &member, &endpoint, "attacker"),
    )
    .await;
    assert_eq!(status, 403);
    assert!(
        crate::support::html::text_of(&page).contains("Сервер авторизации Битрикс24 не подтвердил"),
        "{page}"
    );
    let (status, body) = post(
        &app,
        "/b24/events",
        &forged_event(
            &evil.domain(),
            &member,
            "a",
            Some("r"),
            &endpoint,
            "attacker",
        ),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(code_of(&body), "install_not_vouched", "{body}");
    // A genuine admin token, but another member_id than the OAuth server names.
    let (access, refresh) = fake.issue_user_token(1);
    let squatted = "ffffffffffffffffffffffffffffffff";
    let (status, body) = post(
        &app,
        &install_path(&fake.domain()),
        &install_form(&access, &refresh, squatted, &endpoint, "attacker"),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        crate::support::html::text_of(&body).contains("не совпадают"),
        "{body}"
    );
    assert!(stored(&app, &member).await.is_none());
    assert!(stored(&app, squatted).await.is_none());
    untouched(&evil);

    // The genuine install goes through and stores what the OAuth server vouched for.
    install(&fake, &app).await;
    let p = stored(&app, &member).await.expect("installed");
    assert_eq!(p.domain, fake.domain());
    assert_eq!(p.client_endpoint, fake.client_endpoint().as_str());
    assert_eq!(
        p.application_token.as_deref(),
        Some(fake.application_token().as_str())
    );
    assert_eq!(fake.robots().len(), 2);
}

on_both_databases!(a_domain_moves_only_when_the_oauth_server_says_so);
async fn a_domain_moves_only_when_the_oauth_server_says_so(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let member = fake.member_id();
    let port = fake.base_url().port().expect("port");
    let new_host = format!("localhost:{port}");

    // An admin's genuine token with a DOMAIN the OAuth server does not name.
    let (access, refresh) = fake.issue_user_token(1);
    let server = fake.server_endpoint();
    let (status, page) = post(
        &app,
        &install_path(&new_host),
        &install_form(
            &access,
            &refresh,
            &member,
            &server,
            &fake.application_token(),
        ),
    )
    .await;
    assert_eq!(status, 403, "{page}");
    assert_eq!(
        stored(&app, &member).await.expect("installed").domain,
        fake.domain()
    );

    // The portal really moves: the OAuth server names the new endpoint.
    fake.move_to(&new_host);
    install(&fake, &app).await;
    let p = stored(&app, &member).await.expect("installed");
    assert_eq!(p.domain, new_host);
    assert_eq!(p.client_endpoint, format!("http://{new_host}/rest/"));
    // The tab follows the new address.
    let deal = patient_deal(&fake);
    let r = fake.open_deal_tab(1, deal).await.expect("tab delivered");
    assert_eq!(r.status(), 200);
}

on_both_databases!(a_new_application_token_replaces_the_installation_only_once_it_is_dead);
async fn a_new_application_token_replaces_the_installation_only_once_it_is_dead(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let member = fake.member_id();
    let before = stored(&app, &member).await.expect("installed");

    // An admin's genuine token with another application token, while the stored
    // installation is alive: refused.
    let (access, refresh) = fake.issue_user_token(1);
    let (status, page) = post(
        &app,
        &install_path(&fake.domain()),
        &install_form(
            &access,
            &refresh,
            &member,
            &fake.server_endpoint(),
            "another",
        ),
    )
    .await;
    assert_eq!(status, 403, "{page}");
    let kept = stored(&app, &member).await.expect("installed");
    assert_eq!(kept.application_token, before.application_token);
    assert_eq!(kept.status, portal::INSTALLED);
    // Asking about the stored pair renewed it; the portal keeps working.
    let deal = patient_deal(&fake);
    let (_, r) = fake
        .run_robot("opros_send_survey", deal, &[])
        .await
        .expect("robot delivered");
    assert_eq!(r.status(), 200);

    // The app was deleted without ONAPPUNINSTALL reaching us, then installed again.
    fake.reinstall_after_lost_uninstall();
    install(&fake, &app).await;
    let p = stored(&app, &member).await.expect("installed");
    assert_eq!(
        p.application_token.as_deref(),
        Some(fake.application_token().as_str())
    );
    assert_ne!(p.application_token, before.application_token);
    assert_eq!(fake.robots().len(), 2, "registered again");
}

on_both_databases!(a_token_of_another_application_is_refused);
async fn a_token_of_another_application_is_refused(db: TestDb) {
    let fake = fake().await;
    let app = app_for_db(&fake, &db.url, &[]).await;
    fake.set_app_code("local.0000000000aaaa.11111111");
    let r = fake
        .post_install(&app.url("/b24/install"))
        .await
        .expect("delivered");
    assert_eq!(r.status(), 403);
    let page = r.text().await.unwrap_or_default();
    assert!(
        crate::support::html::text_of(&page).contains("другому приложению"),
        "{page}"
    );
    assert!(stored(&app, &fake.member_id()).await.is_none());
    assert!(fake.robots().is_empty());
}

on_both_databases!(a_tab_post_is_checked_only_with_the_stored_endpoint);
async fn a_tab_post_is_checked_only_with_the_stored_endpoint(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let evil = evil().await;
    let deal = patient_deal(&fake);
    let (access, refresh) = fake.issue_user_token(1);
    let options = format!(r#"{{"ID":"{deal}"}}"#);
    let member = fake.member_id();
    let endpoint = evil.rest_endpoint();
    let fields = [
        ("AUTH_ID", access.as_str()),
        ("AUTH_EXPIRES", "3600"),
        ("REFRESH_ID", refresh.as_str()),
        ("SERVER_ENDPOINT", endpoint.as_str()),
        ("member_id", member.as_str()),
        ("PLACEMENT", "CRM_DEAL_DETAIL_TAB"),
        ("PLACEMENT_OPTIONS", options.as_str()),
    ];
    // The attacker's DOMAIN: refused without a call.
    let url = app.url(&format!(
        "/b24/placement/deal-tab?DOMAIN={}&PROTOCOL=0&LANG=ru",
        evil.domain()
    ));
    let r = fake
        .open_placement_forged(&url, &fields)
        .await
        .expect("delivered");
    assert_eq!(r.status(), 403);
    let page = r.text().await.unwrap_or_default();
    assert!(
        crate::support::html::text_of(&page).contains("портал не узнал пользователя"),
        "{page}"
    );
    // The right DOMAIN but the attacker's SERVER_ENDPOINT: checked with the stored
    // endpoint, which knows the token.
    let url = app.url(&format!(
        "/b24/placement/deal-tab?DOMAIN={}&PROTOCOL=0&LANG=ru",
        fake.domain()
    ));
    let r = fake
        .open_placement_forged(&url, &fields)
        .await
        .expect("delivered");
    assert_eq!(r.status(), 200);
    untouched(&evil);
}

// ---- the refresh path every later call uses ----------------------------------------

/// A client whose token URL is the fake portal's (as `B24_OAUTH_URL` names it), and a
/// store holding `auth` under `member_id`.
fn client_with(
    fake: &FakePortal,
    member_id: &str,
    auth: opros::bitrix24::PortalAuth,
) -> (
    opros::bitrix24::B24Client,
    std::sync::Arc<opros::testing::MemoryTokenStore>,
) {
    use opros::bitrix24::{B24Client, ClientConfig};
    let store = std::sync::Arc::new(opros::testing::MemoryTokenStore::new());
    store.insert(member_id, auth);
    let config = ClientConfig {
        client_id: Some(fake.client_id()),
        client_secret: Some(opros::secret::Secret::new(fake.client_secret())),
        oauth_url: url::Url::parse(&fake.token_url()).ok(),
        ..ClientConfig::default()
    };
    (
        B24Client::new(config, store.clone()).expect("client builds"),
        store,
    )
}

#[tokio::test]
async fn a_stored_untrusted_server_endpoint_never_receives_a_refresh() {
    let fake = fake().await;
    let evil = evil().await;
    let member = fake.member_id();
    // A row written before the trust rules: the attacker's endpoints, an expired
    // token. The refresh goes to the trusted server, and its answer, not the row,
    // says where the portal is.
    let mut auth = fake.issue_portal_auth(1);
    auth.server_endpoint = url::Url::parse(&evil.rest_endpoint()).ok();
    auth.client_endpoint = url::Url::parse(&evil.rest_endpoint()).expect("url");
    auth.expires_at = chrono::Utc::now() - chrono::Duration::hours(1);
    let (client, store) = client_with(&fake, &member, auth);
    let target = opros::bitrix24::Target::Portal {
        member_id: member.clone(),
    };
    client
        .call(&target, "profile", serde_json::json!({}))
        .await
        .expect("refreshed at the trusted server");
    assert_eq!(fake.refresh_count(), 1);
    assert_eq!(
        fake.calls_of("profile").len(),
        1,
        "the call went to the fake"
    );
    untouched(&evil);
    let saved = store.get(&member).expect("stored");
    assert_eq!(saved.client_endpoint, fake.client_endpoint());
}

#[tokio::test]
async fn a_refresh_answer_about_another_portal_is_not_saved() {
    let fake = fake().await;
    let other = "0123456789abcdef0123456789abcdef";
    let auth = fake.issue_portal_auth(1);
    let (client, store) = client_with(&fake, other, auth.clone());
    fake.expire_access_tokens();
    let target = opros::bitrix24::Target::Portal {
        member_id: other.to_owned(),
    };
    let err = client
        .call(&target, "profile", serde_json::json!({}))
        .await
        .expect_err("the answer names the fake's member_id");
    assert!(!err.is_retryable(), "{err}");
    let kept = store.get(other).expect("stored");
    assert_eq!(kept, auth, "nothing of the foreign answer was saved");
}
