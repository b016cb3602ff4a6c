//! The robot «Отправить опрос»: link back into the business process, field written,
//! patient's name looked up, once per event token, safe under load and restarts.

use std::collections::HashSet;

use sea_orm::EntityTrait;
use serde_json::Value;

use opros::db::entities::{invitation, portal};
use opros::local_app::portal_settings::PortalSettings;
use opros::testing::fake_portal::FakePortal;

use crate::support::TestApp;
use crate::support::db::{TestDb, on_both_databases};
use crate::support::logs;
use crate::support::portal::{app_for_db, installed_on, patient_deal, robot_link};

on_both_databases!(robot_returns_link_writes_field_and_resolves_name);
async fn robot_returns_link_writes_field_and_resolves_name(db: TestDb) {
    let log = logs::capture();
    let (fake, app) = installed_on(&db.url).await;
    let deal = patient_deal(&fake);
    let (event_token, r) = fake
        .run_robot("opros_send_survey", deal, &[])
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    app.run_outbox().await;

    let sends = fake.event_sends();
    assert_eq!(sends.len(), 1, "{sends:?}");
    let (token, values, _) = &sends[0];
    assert_eq!(token, &event_token);
    let url = values
        .get("SURVEY_URL")
        .expect("survey_url returned")
        .clone();
    let id = values.get("SURVEY_ID").expect("survey_id returned").clone();
    assert!(url.starts_with(&app.url("/s/")), "{url}");

    // The link works and names the patient from the deal's contact.
    let token = url.rsplit('/').next().unwrap();
    let (status, survey) = app.get_json(&format!("/api/v1/surveys/{token}")).await;
    assert_eq!(status, 200);
    assert_eq!(survey["survey_id"], Value::from(id));
    assert_eq!(survey["patient_name"], "Смирнова Анна Петровна");
    assert_eq!(
        fake.deal(deal).unwrap()["UF_CRM_OPROS_LINK"],
        Value::from(url.clone())
    );

    let text = log.text();
    assert!(text.contains("Получен вебхук от Битрикс24"));
    assert!(text.contains("Сгенерирована ссылка для опроса"));
    assert!(!text.contains(token), "the survey token must not be logged");
    assert!(
        !text.contains(&fake.client_secret()),
        "client secret logged"
    );
    assert!(
        !text.contains(&fake.application_token()),
        "application token logged"
    );
    // The tokens the service holds and used for these calls.
    let stored = opros::local_app::portals::by_member(&app.state.db, &fake.member_id())
        .await
        .unwrap()
        .unwrap();
    let (access, refresh) = (stored.access_token.unwrap(), stored.refresh_token.unwrap());
    assert!(!text.contains(&access[..24]) && !text.contains(&refresh[..24]));

    // The same robot call again: same link, nothing sent twice.
    let repeat = fake
        .run_robot("opros_send_survey", deal, &[])
        .await
        .unwrap();
    assert_eq!(repeat.1.status(), 200);
    app.run_outbox().await;
    let sends = fake.event_sends();
    assert_eq!(sends.len(), 2);
    assert_eq!(
        sends[1].1.get("SURVEY_URL"),
        Some(&url),
        "an active link is reused"
    );
}

on_both_databases!(wrong_application_token_sends_nothing);
async fn wrong_application_token_sends_nothing(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let deal = patient_deal(&fake);
    let r = app
        .http
        .post(app.url("/b24/robot/send-survey"))
        .form(&[
            ("event_token", "x|y|z"),
            ("document_id[0]", "crm"),
            ("document_id[1]", "CCrmDocumentDeal"),
            ("document_id[2]", &format!("DEAL_{deal}")),
            ("auth[member_id]", &fake.member_id()),
            ("auth[application_token]", "wrong"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    app.run_outbox().await;
    assert!(fake.event_sends().is_empty());
    assert!(fake.calls_of("crm.deal.update").is_empty());
}

on_both_databases!(a_burst_on_a_2_10_portal_is_coalesced_into_at_most_10_requests);
async fn a_burst_on_a_2_10_portal_is_coalesced_into_at_most_10_requests(db: TestDb) {
    use crate::support::portal::{fake as fake_portal, install};
    let fake = fake_portal().await;
    let app = app_for_db(&fake, &db.url, &[("B24_RATE_LIMIT", "2/10")]).await;
    install(&fake, &app).await;
    let deal_ids: Vec<u64> = (0..50).map(|_| patient_deal(&fake)).collect();
    // The portal's real limit from now on; 50 runs queue 200 commands.
    fake.set_rate(2.0, 10);
    let before = fake.http_request_count();
    let runs = deal_ids
        .iter()
        .map(|d| fake.run_robot("opros_send_survey", *d, &[]));
    for r in futures::future::join_all(runs).await {
        assert_eq!(r.unwrap().1.status(), 200);
    }
    crate::support::eventually("50 bizproc.event.send", || async {
        fake.event_sends().len() == 50
    })
    .await;
    let requests = fake.http_request_count() - before;
    assert!(requests <= 10, "{requests} HTTP requests for 50 robot runs");
    let limited = fake
        .calls()
        .iter()
        .filter(|c| c.error.as_deref() == Some("QUERY_LIMIT_EXCEEDED"))
        .count();
    assert_eq!(limited, 0);
}

on_both_databases!(fifty_concurrent_robot_runs_across_a_token_expiry_refresh_once);
async fn fifty_concurrent_robot_runs_across_a_token_expiry_refresh_once(db: TestDb) {
    let log = logs::capture();
    let (fake, app) = installed_on(&db.url).await;
    let deal_ids: Vec<u64> = (0..50).map(|_| patient_deal(&fake)).collect();
    fake.expire_access_tokens();
    let before = fake.refresh_count();
    let runs = deal_ids
        .iter()
        .map(|d| fake.run_robot("opros_send_survey", *d, &[]));
    for r in futures::future::join_all(runs).await {
        let status = r.unwrap().1.status();
        assert_eq!(
            status,
            200,
            "{}",
            log.text()
                .lines()
                .filter(|l| l.contains("ERROR"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    app.run_outbox().await;
    let sends = fake.event_sends();
    assert_eq!(sends.len(), 50);
    let urls: HashSet<_> = sends.iter().map(|s| s.1["SURVEY_URL"].clone()).collect();
    assert_eq!(urls.len(), 50, "each deal its own link");
    assert_eq!(fake.refresh_count() - before, 1, "exactly one refresh");
    // Coalesced: 50 runs × 4 commands (deal, contact, return, field) need at least 4
    // batches of 50; runs arriving while the worker is busy add a few more.
    let batches = fake.calls_of("batch").len();
    assert!(batches <= 12, "{batches} batch requests for 200 commands");
}

on_both_databases!(worker_killed_midway_runs_every_job_once_after_restart);
async fn worker_killed_midway_runs_every_job_once_after_restart(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let deal = patient_deal(&fake);
    // The portal hangs: the worker is stopped mid-call, its lease still held.
    fake.fail_next(
        "batch",
        opros::testing::fake_portal::Fault::Delay(std::time::Duration::from_secs(3)),
        1,
    );
    let before = fake.http_request_count();
    let (_, r) = fake
        .run_robot("opros_send_survey", deal, &[])
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let db_url = app.db_url.clone();
    // Stopped once the worker's batch is at the portal (counted on arrival, recorded
    // as a call only when answered).
    crate::support::eventually("the worker's batch reached the portal", || async {
        fake.http_request_count() > before
    })
    .await;
    app.stop().await;

    // Restart on the same database; expire the lease as time would.
    let app = app_for_db(&fake, &db_url, &[]).await;
    use opros::db::entities::outbox_job;
    use sea_orm::{ActiveModelTrait, ActiveValue::Set};
    for job in outbox_job::Entity::find().all(&app.state.db).await.unwrap() {
        if job.done_at.is_none() {
            let mut row: outbox_job::ActiveModel = job.into();
            row.locked_until = Set(Some(0));
            row.update(&app.state.db).await.unwrap();
        }
    }
    // The first worker's call runs at the portal after its delay, whoever waits for it.
    crate::support::eventually("the delayed batch answered", || async {
        !fake.calls_of("batch").is_empty()
    })
    .await;
    app.run_outbox().await;
    let sends = fake.event_sends();
    assert_eq!(sends.len(), 1, "delivered exactly once: {sends:?}");
    let jobs = outbox_job::Entity::find().all(&app.state.db).await.unwrap();
    assert!(jobs.iter().all(|j| j.done_at.is_some()), "{jobs:?}");
}

on_both_databases!(a_portal_refusing_batch_still_gets_every_call);
async fn a_portal_refusing_batch_still_gets_every_call(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    fake.fail_next(
        "batch",
        opros::testing::fake_portal::Fault::error(
            404,
            "ERROR_METHOD_NOT_FOUND",
            "Method not found!",
        ),
        1,
    );
    let (deal, token) = robot_link(&fake, &app).await;
    assert_eq!(fake.event_sends().len(), 1);
    assert!(
        fake.deal(deal).unwrap()["UF_CRM_OPROS_LINK"]
            .as_str()
            .unwrap()
            .contains("/s/")
    );
    let (_, survey) = app.get_json(&format!("/api/v1/surveys/{token}")).await;
    assert_eq!(
        survey["patient_name"], "Смирнова Анна Петровна",
        "the $result reference was resolved"
    );
}

/// The robot's own call (protocol §4.3) with `token` as `auth[application_token]`.
async fn robot_call(app: &TestApp, fake: &FakePortal, deal: u64, token: &str) -> (u16, Value) {
    let event_token = format!("{}|A1_{deal}|x", uuid::Uuid::new_v4().simple());
    let r = app
        .http
        .post(app.url("/b24/robot/send-survey"))
        .form(&[
            ("event_token", event_token.as_str()),
            ("document_id[0]", "crm"),
            ("document_id[1]", "CCrmDocumentDeal"),
            ("document_id[2]", &format!("DEAL_{deal}")),
            ("auth[member_id]", &fake.member_id()),
            ("auth[application_token]", token),
            ("auth[domain]", &fake.domain()),
        ])
        .send()
        .await
        .expect("robot call");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn invitations(app: &TestApp) -> Vec<invitation::Model> {
    invitation::Entity::find()
        .all(&app.state.db)
        .await
        .expect("invitations")
}

async fn set_settings(app: &TestApp, fake: &FakePortal, link_days: u32, reuse_active: bool) {
    let portal = opros::local_app::portals::by_member(&app.state.db, &fake.member_id())
        .await
        .expect("portal read")
        .expect("portal installed");
    opros::local_app::portal_settings::save(
        &app.state.db,
        portal.id,
        PortalSettings {
            link_days,
            reuse_active,
        },
    )
    .await
    .expect("settings saved");
}

on_both_databases!(the_robot_reads_the_admins_settings_with_its_portal_at_every_call);
/// The portal and its administrator's settings come from one statement written by
/// hand for each backend: the settings must be the stored ones, and a change must
/// count from the next call.
async fn the_robot_reads_the_admins_settings_with_its_portal_at_every_call(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let token = fake.application_token();
    let deal = patient_deal(&fake);
    set_settings(&app, &fake, 14, false).await;
    let (status, first) = robot_call(&app, &fake, deal, &token).await;
    assert_eq!(status, 200, "{first}");
    let (_, second) = robot_call(&app, &fake, deal, &token).await;
    assert_ne!(
        first["survey_id"], second["survey_id"],
        "reuse off: a new link"
    );
    let rows = invitations(&app).await;
    assert_eq!(rows.len(), 2);
    for row in &rows {
        assert_eq!((row.expires_at - row.created_at).num_days(), 14, "{row:?}");
    }

    set_settings(&app, &fake, 3, true).await;
    let (_, third) = robot_call(&app, &fake, deal, &token).await;
    assert_eq!(
        third["survey_id"], second["survey_id"],
        "reuse on: the active link"
    );
    set_settings(&app, &fake, 3, false).await;
    let (_, fourth) = robot_call(&app, &fake, deal, &token).await;
    let id = fourth["survey_id"].as_str().expect("survey_id");
    let rows = invitations(&app).await;
    assert_eq!(rows.len(), 3);
    let row = rows
        .iter()
        .find(|r| r.id == id)
        .expect("the new invitation");
    assert_eq!((row.expires_at - row.created_at).num_days(), 3);
}

on_both_databases!(a_new_application_token_and_an_uninstall_count_from_the_next_robot_call);
/// Nothing about the caller is kept between calls: a new application token (as a
/// confirmed `ONAPPUPDATE` stores it) refuses the old one at once, and an uninstalled
/// portal refuses the new one; a refused call stores and sends nothing.
async fn a_new_application_token_and_an_uninstall_count_from_the_next_robot_call(db: TestDb) {
    use sea_orm::{ActiveModelTrait, ActiveValue::Set};
    let (fake, app) = installed_on(&db.url).await;
    let old = fake.application_token();
    let deal = patient_deal(&fake);
    let (status, body) = robot_call(&app, &fake, deal, &old).await;
    assert_eq!(status, 200, "{body}");
    let stored = invitations(&app).await.len();
    assert_eq!(stored, 1);
    let jobs = || async {
        opros::db::entities::outbox_job::Entity::find()
            .all(&app.state.db)
            .await
            .expect("jobs")
            .len()
    };
    let queued = jobs().await;

    let portal = opros::local_app::portals::by_member(&app.state.db, &fake.member_id())
        .await
        .expect("portal read")
        .expect("portal installed");
    let mut row: portal::ActiveModel = portal.into();
    row.application_token = Set(Some("rotated-application-token".to_owned()));
    let portal = row.update(&app.state.db).await.expect("token rotated");
    let (status, body) = robot_call(&app, &fake, deal, &old).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["code"], "bad_application_token");
    assert_eq!(invitations(&app).await.len(), stored, "nothing stored");
    assert_eq!(jobs().await, queued, "nothing queued");
    let (status, body) = robot_call(&app, &fake, deal, "rotated-application-token").await;
    assert_eq!(status, 200, "{body}");
    let accepted = jobs().await;
    assert!(accepted > queued, "the accepted call queued its jobs");
    let queued = accepted;

    let mut row: portal::ActiveModel = portal.into();
    row.status = Set(portal::UNINSTALLED);
    row.update(&app.state.db).await.expect("uninstalled");
    let (status, body) = robot_call(&app, &fake, deal, "rotated-application-token").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["code"], "portal_uninstalled");
    assert_eq!(invitations(&app).await.len(), stored, "nothing stored");
    assert_eq!(jobs().await, queued, "nothing queued");
}
