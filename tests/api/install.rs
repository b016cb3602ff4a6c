//! Installing the local application: verified with the portal, registrations exactly
//! once, repairs after an app update, uninstall with and without CLEAN.

use sea_orm::ActiveEnum;
use serde_json::Value;

use crate::support::db::{TestDb, on_both_databases};
use crate::support::html::Doc;
use crate::support::portal::{app_for_db, fake, install, installed_on, robot_link};

on_both_databases!(install_registers_everything_once_even_twice);
async fn install_registers_everything_once_even_twice(db: TestDb) {
    let fake = fake().await;
    let app = app_for_db(&fake, &db.url, &[]).await;
    let page = install(&fake, &app).await;
    let doc = Doc::parse(&page);
    assert_eq!(
        doc.attr("body", "data-install-finish").as_deref(),
        Some("yes"),
        "{page}"
    );
    assert!(
        doc.texts(".step--ok .step__what")
            .iter()
            .any(|s| s == "Робот «Отправить опрос»"),
        "{page}"
    );

    // A second install (or a new version) updates, never duplicates.
    install(&fake, &app).await;

    let robots = fake.robots();
    assert_eq!(robots.len(), 2, "both robots, once each: {robots:?}");
    let robot = &robots[0];
    assert_eq!(robot["CODE"], "opros_send_survey");
    assert_eq!(robots[1]["CODE"], "opros_await_survey");
    assert_eq!(
        robot["HANDLER"],
        Value::from(app.url("/b24/robot/send-survey"))
    );
    assert_eq!(robot["USE_SUBSCRIPTION"], "Y");
    let returns = serde_json::to_string(&robot["RETURN_PROPERTIES"]).unwrap();
    assert!(
        returns.contains("survey_url") && returns.contains("survey_id"),
        "{returns}"
    );

    let deal_tabs: Vec<_> = fake
        .placements()
        .into_iter()
        .filter(|p| p["placement"] == "CRM_DEAL_DETAIL_TAB")
        .collect();
    assert_eq!(deal_tabs.len(), 1, "{deal_tabs:?}");
    assert_eq!(
        deal_tabs[0]["handler"],
        Value::from(app.url("/b24/placement/deal-tab"))
    );

    let uninstall: Vec<_> = fake
        .event_bindings()
        .into_iter()
        .filter(|e| {
            e["event"]
                .as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case("ONAPPUNINSTALL"))
        })
        .collect();
    assert_eq!(uninstall.len(), 1);
    assert_eq!(
        fake.userfields("deal").len(),
        1,
        "{:?}",
        fake.userfields("deal")
    );
    assert_eq!(
        fake.userfields("deal")[0]["FIELD_NAME"],
        "UF_CRM_OPROS_LINK"
    );
    assert!(fake.is_installed());
}

on_both_databases!(forged_install_plants_nothing);
async fn forged_install_plants_nothing(db: TestDb) {
    let fake = fake().await;
    let app = app_for_db(&fake, &db.url, &[]).await;
    // The browser-side POST with a token the portal never issued.
    let url = format!(
        "{}?DOMAIN={}&PROTOCOL=0&LANG=ru",
        app.url("/b24/install"),
        fake.domain()
    );
    let r = app
        .http
        .post(url)
        .form(&[
            ("AUTH_ID", "forged-token-000000000000000000000"),
            ("AUTH_EXPIRES", "3600"),
            ("REFRESH_ID", "forged-refresh"),
            ("member_id", &fake.member_id()),
            ("APPLICATION_TOKEN", "attacker-chosen"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(fake.robots().is_empty());
    assert!(
        opros::local_app::portals::by_member(&app.state.db, &fake.member_id())
            .await
            .unwrap()
            .is_none()
    );
}

on_both_databases!(app_update_wiping_registrations_is_repaired_on_reinstall);
async fn app_update_wiping_registrations_is_repaired_on_reinstall(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    fake.app_update();
    assert!(fake.robots().is_empty());
    install(&fake, &app).await;
    assert_eq!(fake.robots().len(), 2);
    assert_eq!(
        fake.placements()
            .iter()
            .filter(|p| p["placement"] == "CRM_DEAL_DETAIL_TAB")
            .count(),
        1
    );
}

on_both_databases!(uninstall_with_clean_deletes_patients_data_and_rejects_the_robot);
async fn uninstall_with_clean_deletes_patients_data_and_rejects_the_robot(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let (deal, _) = robot_link(&fake, &app).await;
    use sea_orm::EntityTrait;
    let before = opros::db::entities::invitation::Entity::find()
        .all(&app.state.db)
        .await
        .unwrap();
    assert_eq!(before.len(), 1);

    let r = fake.uninstall(true).await.unwrap();
    assert_eq!(r.status(), 200);
    // The outbox confirms with the portal (its tokens are dead) before deleting.
    app.run_outbox().await;
    let after = opros::db::entities::invitation::Entity::find()
        .all(&app.state.db)
        .await
        .unwrap();
    assert!(after.is_empty(), "personal data must be gone");
    let portal = opros::local_app::portals::by_member(&app.state.db, &fake.member_id())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(portal.status.to_value(), "uninstalled");
    assert!(portal.access_token.is_none() && portal.refresh_token.is_none());

    // A later robot call for it is rejected and nothing is queued.
    let (_, r) = fake
        .run_robot("opros_send_survey", deal, &[])
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
}

on_both_databases!(uninstall_needs_the_application_token);
async fn uninstall_needs_the_application_token(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let r = app
        .http
        .post(app.url("/b24/events"))
        .form(&[
            ("event", "ONAPPUNINSTALL"),
            ("data[CLEAN]", "1"),
            ("auth[member_id]", &fake.member_id()),
            ("auth[application_token]", "not-the-token"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let portal = opros::local_app::portals::by_member(&app.state.db, &fake.member_id())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(portal.status.to_value(), "installed");
}

on_both_databases!(onappinstall_event_alone_installs_and_registers);
async fn onappinstall_event_alone_installs_and_registers(db: TestDb) {
    // The install page never reached us; the event did (protocol §3.3).
    let fake = fake().await;
    let app = app_for_db(&fake, &db.url, &[]).await;
    let (access, refresh) = fake.issue_user_token(1);
    let r = app
        .http
        .post(app.url("/b24/install"))
        .form(&[
            ("event", "ONAPPINSTALL"),
            ("data[VERSION]", "1"),
            ("auth[access_token]", access.as_str()),
            ("auth[refresh_token]", refresh.as_str()),
            ("auth[expires_in]", "3600"),
            ("auth[domain]", &fake.domain()),
            ("auth[client_endpoint]", fake.client_endpoint().as_str()),
            ("auth[member_id]", &fake.member_id()),
            ("auth[application_token]", &fake.application_token()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    assert_eq!(fake.robots().len(), 2);
    let portal = opros::local_app::portals::by_member(&app.state.db, &fake.member_id())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        portal.application_token.as_deref(),
        Some(fake.application_token().as_str())
    );

    // A later event with another application token is refused, even with an
    // admin's genuine tokens, while this installation is alive.
    let (access, refresh) = fake.issue_user_token(1);
    let r = app
        .http
        .post(app.url("/b24/events"))
        .form(&[
            ("event", "ONAPPINSTALL"),
            ("auth[access_token]", access.as_str()),
            ("auth[refresh_token]", refresh.as_str()),
            ("auth[domain]", &fake.domain()),
            ("auth[client_endpoint]", fake.client_endpoint().as_str()),
            ("auth[member_id]", &fake.member_id()),
            ("auth[application_token]", "another-token"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap_or_default();
    assert_eq!(body["code"], "application_token_mismatch", "{body}");
    let kept = opros::local_app::portals::by_member(&app.state.db, &fake.member_id())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept.application_token, portal.application_token);
}

on_both_databases!(portals_idle_for_a_week_get_their_tokens_renewed);
async fn portals_idle_for_a_week_get_their_tokens_renewed(db: TestDb) {
    use chrono::{TimeDelta, Utc};
    use opros::db::entities::portal;
    use opros::local_app::token_upkeep::renew_stale;
    use opros::testing::Fault;
    use sea_orm::{ActiveModelTrait, ActiveValue::Set, EntityTrait};

    let (fake, app) = installed_on(&db.url).await;
    let cancel = tokio_util::sync::CancellationToken::new();
    let db = &app.state.db;
    let row = portal::Entity::find()
        .one(db)
        .await
        .expect("query")
        .expect("installed portal");
    // Installed a moment ago: nothing to do.
    assert_eq!(renew_stale(&app.state, &cancel).await, 0);

    let last_used = Utc::now() - TimeDelta::days(10);
    let mut idle: portal::ActiveModel = row.clone().into();
    idle.expires_at = Set(Some(last_used));
    idle.update(db).await.expect("age the tokens");
    let refreshes = fake.refresh_count();
    assert_eq!(renew_stale(&app.state, &cancel).await, 1);
    assert_eq!(fake.refresh_count(), refreshes + 1);
    let renewed = portal::Entity::find_by_id(row.id)
        .one(db)
        .await
        .expect("query")
        .expect("portal");
    assert!(renewed.expires_at.expect("expiry") > Utc::now());
    assert_ne!(renewed.refresh_token, row.refresh_token);
    assert_eq!(renew_stale(&app.state, &cancel).await, 0, "renewed once");

    // The OAuth server refuses once: nothing stored is lost, and the next round
    // tries again.
    fake.fail_next(
        "oauth.token",
        Fault::error(400, "invalid_grant", "The refresh token is invalid"),
        1,
    );
    let mut idle: portal::ActiveModel = renewed.clone().into();
    idle.expires_at = Set(Some(last_used));
    idle.update(db).await.expect("age the tokens");
    assert_eq!(renew_stale(&app.state, &cancel).await, 0);
    let kept = portal::Entity::find_by_id(row.id)
        .one(db)
        .await
        .expect("query")
        .expect("portal");
    assert_eq!(kept.refresh_token, renewed.refresh_token);
    assert_eq!(renew_stale(&app.state, &cancel).await, 1);
}
