//! The robot «Отправить опрос»: link back into the business process, field written,
//! patient's name looked up, once per event token, safe under load and restarts.

use std::collections::HashSet;

use sea_orm::EntityTrait;
use serde_json::Value;

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
    let stored = opros::b24::portals::by_member(&app.state.db, &fake.member_id())
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
