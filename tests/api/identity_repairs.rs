//! Follow-ups of the identity rework: genuine requests that carry a pair the OAuth
//! server already exchanged, `ONAPPUPDATE` with a new application token, rows stored
//! before identities were vouched for, a dead old installation, domain moves outside
//! `B24_ALLOWED_DOMAINS` and `ONAPPINSTALL` without OAuth configured.

use chrono::Utc;
use opros::db::entities::portal;
use opros::testing::Fault;
use sea_orm::{ActiveModelTrait, ActiveValue::Set};
use serde_json::Value;

use crate::attacks_identity::{
    code_of, doctor_tokens, evil, identity, install_form, install_path, post, stored, untouched,
};
use crate::support::db::{TestDb, on_both_databases};
use crate::support::portal::{app_for_db, fake, install, installed_on, patient_deal, robot_link};
use crate::support::spawn_app_on;

fn tokens(p: &portal::Model) -> (Option<String>, Option<String>) {
    (p.access_token.clone(), p.refresh_token.clone())
}

async fn json_of(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let body = r.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

on_both_databases!(onappinstall_carrying_the_pair_the_install_page_exchanged_is_accepted);
async fn onappinstall_carrying_the_pair_the_install_page_exchanged_is_accepted(db: TestDb) {
    let fake = fake().await;
    let app = app_for_db(&fake, &db.url, &[]).await;
    // protocol §3.3: ONAPPINSTALL carries the install's own tokens.
    fake.reuse_frame_tokens(true);
    let r = fake
        .post_install(&app.url("/b24/install"))
        .await
        .expect("install POST delivered");
    assert_eq!(r.status(), 200);
    let after_page = stored(&app, &fake.member_id()).await.expect("installed");

    let r = fake
        .finish_install()
        .await
        .expect("ONAPPINSTALL is bound by the install page")
        .expect("ONAPPINSTALL delivered");
    let (status, body) = json_of(r).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["changed"], false, "{body}");
    let after_event = stored(&app, &fake.member_id()).await.expect("installed");
    assert_eq!(identity(&after_page), identity(&after_event));
}

on_both_databases!(an_admin_reopening_the_install_page_within_the_hour_repairs);
async fn an_admin_reopening_the_install_page_within_the_hour_repairs(db: TestDb) {
    let fake = fake().await;
    let app = app_for_db(&fake, &db.url, &[]).await;
    fake.reuse_frame_tokens(true);
    install(&fake, &app).await;
    let before = stored(&app, &fake.member_id()).await.expect("installed");
    // An update removed the registrations (§3.4); the admin reopens the install page
    // with the very pair the first visit exchanged.
    fake.app_update();
    assert!(fake.robots().is_empty());
    let page = install(&fake, &app).await;
    assert!(
        crate::support::html::text_of(&page).contains("Робот «Отправить опрос»"),
        "{page}"
    );
    assert_eq!(fake.robots().len(), 2, "registered with the stored tokens");
    let after = stored(&app, &fake.member_id()).await.expect("installed");
    assert_eq!(tokens(&before), tokens(&after), "tokens unchanged");
    // The robot works with the repaired registration.
    robot_link(&fake, &app).await;

    // A doctor with an exchanged pair and the (visible) application token: the
    // stored endpoint says they are no admin.
    let (access, refresh) = doctor_tokens(&fake);
    let (member, app_token, domain) = (fake.member_id(), fake.application_token(), fake.domain());
    let server = fake.server_endpoint();
    let form = install_form(&access, &refresh, &member, &server, &app_token);
    let (status, page) = post(&app, &install_path(&domain), &form).await;
    assert_eq!(status, 403, "{page}");
    assert!(
        crate::support::html::text_of(&page).contains("только администратор"),
        "{page}"
    );
    let robots = fake.robots().len();
    let (status, page) = post(&app, &install_path(&domain), &form).await;
    assert_eq!(status, 403, "the exchanged pair: {page}");
    assert!(
        crate::support::html::text_of(&page).contains("только администратор"),
        "{page}"
    );
    assert_eq!(
        fake.robots().len(),
        robots,
        "nothing registered for a doctor"
    );
    let kept = stored(&app, &member).await.expect("installed");
    assert_eq!(identity(&after), identity(&kept));
}

on_both_databases!(a_retry_after_a_transient_failure_past_vouching_succeeds);
async fn a_retry_after_a_transient_failure_past_vouching_succeeds(db: TestDb) {
    let fake = fake().await;
    let app = app_for_db(&fake, &db.url, &[]).await;
    install(&fake, &app).await;
    fake.reuse_frame_tokens(true);
    // A new hour: the frame gets a new pair, which the first attempt exchanges
    // before the portal fails to answer app.info.
    fake.expire_access_tokens();
    fake.fail_next("app.info", Fault::Status(503), 20);
    let r = fake
        .post_install(&app.url("/b24/install"))
        .await
        .expect("delivered");
    assert_eq!(r.status(), 503);
    fake.clear_faults("app.info");
    fake.app_update();
    // The retry carries the same, now exchanged, pair.
    let page = install(&fake, &app).await;
    assert!(
        crate::support::html::text_of(&page).contains("Робот «Отправить опрос»"),
        "{page}"
    );
    assert_eq!(fake.robots().len(), 2);
}

on_both_databases!(a_row_from_before_vouching_is_revouched_before_a_tab_login);
async fn a_row_from_before_vouching_is_revouched_before_a_tab_login(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let evil = evil().await;
    let member = fake.member_id();
    // What the migration does to every stored row…
    {
        use migration::MigratorTrait;
        // Back to before the revouch migration, however many came after it.
        let steps = migration::Migrator::migrations()
            .iter()
            .rev()
            .position(|m| m.name() == "m20261207_000004_portal_revouch")
            .expect("the revouch migration")
            + 1;
        migration::Migrator::down(&app.state.db, Some(steps as u32))
            .await
            .expect("down");
        let row = stored(&app, &member).await.expect("installed");
        let mut row: portal::ActiveModel = row.into();
        // …to a row an unverified install left pointing at the attacker.
        row.client_endpoint = Set(evil.rest_endpoint());
        row.expires_at = Set(Some(Utc::now() + chrono::Duration::hours(1)));
        row.update(&app.state.db).await.expect("update");
        migration::Migrator::up(&app.state.db, None)
            .await
            .expect("up");
    }
    let marked = stored(&app, &member).await.expect("installed");
    assert!(
        marked.expires_at.expect("expiry") <= Utc::now(),
        "marked expired"
    );

    let deal = patient_deal(&fake);
    let r = fake.open_deal_tab(1, deal).await.expect("tab delivered");
    assert_eq!(r.status(), 200);
    untouched(&evil);
    let fixed = stored(&app, &member).await.expect("installed");
    assert_eq!(fixed.client_endpoint, fake.client_endpoint().as_str());
    assert!(fixed.expires_at.expect("expiry") > Utc::now());
}

on_both_databases!(a_reinstall_by_a_confirmed_admin_replaces_an_install_whose_client_is_gone);
async fn a_reinstall_by_a_confirmed_admin_replaces_an_install_whose_client_is_gone(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let member = fake.member_id();
    // The local app was deleted and created again: the old installation's refresh
    // token now gets invalid_client. The new vouch (first) goes through, the
    // question about the stored token (second) gets the refusal.
    fake.fail_next("oauth.token", Fault::Delay(std::time::Duration::ZERO), 1);
    fake.fail_next(
        "oauth.token",
        Fault::error(401, "invalid_client", "Invalid client"),
        1,
    );
    let (access, refresh) = fake.issue_user_token(1);
    let server = fake.server_endpoint();
    let form = install_form(&access, &refresh, &member, &server, "new-application-token");
    let (status, page) = post(&app, &install_path(&fake.domain()), &form).await;
    assert_eq!(status, 200, "{page}");
    let p = stored(&app, &member).await.expect("installed");
    assert_eq!(
        p.application_token.as_deref(),
        Some("new-application-token")
    );
}

on_both_databases!(app_update_with_a_new_application_token_keeps_robots_working);
async fn app_update_with_a_new_application_token_keeps_robots_working(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let before = fake.application_token();
    let r = fake
        .update_app(true)
        .await
        .expect("ONAPPUPDATE is bound")
        .expect("delivered");
    let (status, body) = json_of(r).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["changed"], true, "{body}");
    assert_ne!(fake.application_token(), before);
    let p = stored(&app, &fake.member_id()).await.expect("installed");
    assert_eq!(
        p.application_token.as_deref(),
        Some(fake.application_token().as_str())
    );
    // Registrations the update removed are back, and the robot's calls (with the
    // new token) are accepted.
    assert_eq!(fake.robots().len(), 2);
    robot_link(&fake, &app).await;

    // The same token again: nothing to do.
    let r = fake
        .update_app(false)
        .await
        .expect("ONAPPUPDATE is bound")
        .expect("delivered");
    let (status, body) = json_of(r).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["changed"], false, "{body}");
}

on_both_databases!(a_forged_app_update_changes_nothing);
async fn a_forged_app_update_changes_nothing(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let member = fake.member_id();
    let before = stored(&app, &member).await.expect("installed");
    let (access, _) = doctor_tokens(&fake);
    let evil = evil().await;
    let endpoint = evil.rest_endpoint();
    let update = |member: &str, access: &str| {
        vec![
            ("event".to_owned(), "ONAPPUPDATE".to_owned()),
            ("data[VERSION]".into(), "2".into()),
            ("data[PREVIOUS_VERSION]".into(), "1".into()),
            ("auth[access_token]".into(), access.to_owned()),
            ("auth[domain]".into(), evil.domain()),
            ("auth[client_endpoint]".into(), endpoint.clone()),
            ("auth[server_endpoint]".into(), endpoint.clone()),
            ("auth[member_id]".into(), member.to_owned()),
            ("auth[application_token]".into(), "attacker".into()),
        ]
    };
    let send = |fields: Vec<(String, String)>| {
        let app = &app;
        async move {
            let fields: Vec<(&str, &str)> = fields
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            post(app, "/b24/events", &fields).await
        }
    };
    // A doctor's genuine token: the stored endpoint says they are no admin.
    let (status, body) = send(update(&member, &access)).await;
    assert_eq!(
        (status, code_of(&body).as_str()),
        (403, "not_admin"),
        "{body}"
    );
    // A made-up token: the portal does not know it.
    let (status, body) = send(update(&member, "made-up")).await;
    assert_eq!(
        (status, code_of(&body).as_str()),
        (403, "install_not_verified"),
        "{body}"
    );
    // A portal not installed here.
    let (status, body) = send(update("ffffffffffffffffffffffffffffffff", &access)).await;
    assert_eq!(
        (status, code_of(&body).as_str()),
        (403, "app_update_refused"),
        "{body}"
    );
    let after = stored(&app, &member).await.expect("installed");
    assert_eq!(identity(&before), identity(&after));
    untouched(&evil);
    // Robots with the genuine token still work.
    robot_link(&fake, &app).await;
}

on_both_databases!(a_move_outside_the_allowed_domains_keeps_the_old_address);
async fn a_move_outside_the_allowed_domains_keeps_the_old_address(db: TestDb) {
    let fake = fake().await;
    let app = app_for_db(&fake, &db.url, &[("B24_ALLOWED_DOMAINS", &fake.domain())]).await;
    install(&fake, &app).await;
    let member = fake.member_id();
    let port = fake.base_url().port().expect("port");
    fake.move_to(&format!("localhost:{port}"));
    fake.expire_access_tokens();
    let refreshes = fake.refresh_count();
    app.state
        .b24
        .renew(&member)
        .await
        .expect("refreshed at the trusted server");
    assert!(fake.refresh_count() > refreshes);
    let p = stored(&app, &member).await.expect("installed");
    assert_eq!(p.domain, format!("127.0.0.1:{port}"));
    assert_eq!(p.client_endpoint, format!("http://127.0.0.1:{port}/rest/"));
}

on_both_databases!(onappinstall_without_oauth_configured_is_a_client_error);
async fn onappinstall_without_oauth_configured_is_a_client_error(db: TestDb) {
    let app = spawn_app_on(&db.url, &[]).await;
    let (status, body) = post(
        &app,
        "/b24/events",
        &[
            ("event", "ONAPPINSTALL"),
            ("auth[domain]", "clinic.bitrix24.ru"),
            ("auth[member_id]", "4f2a"),
            ("auth[refresh_token]", "r"),
            ("auth[application_token]", "t"),
        ],
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(code_of(&body), "oauth_not_configured", "{body}");
}

on_both_databases!(tab_posts_for_a_portal_whose_refresh_is_dead_stop_at_the_guard);
async fn tab_posts_for_a_portal_whose_refresh_is_dead_stop_at_the_guard(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let member = fake.member_id();
    let row = stored(&app, &member).await.expect("installed");
    let mut row: portal::ActiveModel = row.into();
    row.expires_at = Set(Some(Utc::now() - chrono::Duration::hours(1)));
    row.update(&app.state.db).await.expect("update");
    fake.fail_next(
        "oauth.token",
        Fault::error(400, "invalid_grant", "Invalid grant"),
        1_000,
    );
    let deal = patient_deal(&fake);
    let mut statuses = Vec::new();
    for _ in 0..25 {
        let r = fake.open_deal_tab(1, deal).await.expect("tab delivered");
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses[0], 403, "{statuses:?}");
    // Each refused renewal counts as a failed check: the guard stops asking.
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
}

on_both_databases!(an_app_update_revouches_a_stale_row_before_confirming_its_sender);
/// An update arriving for a row whose endpoint no OAuth server has named since the
/// upgrade: the admin's event token goes to the endpoint the renewal names, never
/// to the stored one.
async fn an_app_update_revouches_a_stale_row_before_confirming_its_sender(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let evil = evil().await;
    let member = fake.member_id();
    let row = stored(&app, &member).await.expect("installed");
    let mut row: portal::ActiveModel = row.into();
    row.client_endpoint = Set(evil.rest_endpoint());
    row.expires_at = Set(Some(Utc::now() - chrono::Duration::minutes(1)));
    row.update(&app.state.db).await.expect("update");

    let r = fake
        .update_app(true)
        .await
        .expect("ONAPPUPDATE is bound")
        .expect("delivered");
    let (status, body) = json_of(r).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["changed"], true, "{body}");
    untouched(&evil);
    let fixed = stored(&app, &member).await.expect("installed");
    assert_eq!(fixed.client_endpoint, fake.client_endpoint().as_str());
    assert_eq!(
        fixed.application_token.as_deref(),
        Some(fake.application_token().as_str())
    );
}

on_both_databases!(a_refused_move_does_not_keep_an_endpoint_on_another_host);
/// A move the operator's list refuses keeps the stored domain; a stored endpoint on
/// another host (a row from before vouching) is not kept with it.
async fn a_refused_move_does_not_keep_an_endpoint_on_another_host(db: TestDb) {
    let fake = fake().await;
    let app = app_for_db(&fake, &db.url, &[("B24_ALLOWED_DOMAINS", &fake.domain())]).await;
    install(&fake, &app).await;
    let member = fake.member_id();
    let port = fake.base_url().port().expect("port");
    let evil = evil().await;
    let row = stored(&app, &member).await.expect("installed");
    let mut row: portal::ActiveModel = row.into();
    row.client_endpoint = Set(evil.rest_endpoint());
    row.update(&app.state.db).await.expect("update");
    fake.move_to(&format!("localhost:{port}"));
    fake.expire_access_tokens();
    app.state
        .b24
        .renew(&member)
        .await
        .expect("refreshed at the trusted server");
    let p = stored(&app, &member).await.expect("installed");
    assert_eq!(p.domain, format!("127.0.0.1:{port}"));
    assert_eq!(p.client_endpoint, format!("http://127.0.0.1:{port}/rest/"));
    untouched(&evil);
}
