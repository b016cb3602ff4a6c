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
    robot_call_with(app, fake, deal, token, &event_token, &[]).await
}

/// [`robot_call`] with its event token and more fields (`properties[…]`).
async fn robot_call_with(
    app: &TestApp,
    fake: &FakePortal,
    deal: u64,
    token: &str,
    event_token: &str,
    more: &[(&str, &str)],
) -> (u16, Value) {
    let document = format!("DEAL_{deal}");
    let (member_id, domain) = (fake.member_id(), fake.domain());
    let mut form = vec![
        ("event_token", event_token),
        ("document_id[0]", "crm"),
        ("document_id[1]", "CCrmDocumentDeal"),
        ("document_id[2]", document.as_str()),
        ("auth[member_id]", member_id.as_str()),
        ("auth[application_token]", token),
        ("auth[domain]", domain.as_str()),
    ];
    form.extend_from_slice(more);
    let r = app
        .http
        .post(app.url("/b24/robot/send-survey"))
        .form(&form)
        .send()
        .await
        .expect("robot call");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

on_both_databases!(concurrent_robot_runs_written_together_each_keep_their_link_and_jobs);
/// Robot calls that do not reuse a link are written together by the group commit
/// (one multi-row INSERT for their invitations, one for their jobs): each run still
/// gets an invitation of its own on its own deal and its three jobs, a run repeated
/// at the same moment gets the first call's link and queues nothing twice, and every
/// link reaches its business process once.
async fn concurrent_robot_runs_written_together_each_keep_their_link_and_jobs(db: TestDb) {
    use opros::db::entities::outbox_job;
    use std::collections::HashMap;
    let (fake, app) = installed_on(&db.url).await;
    let token = fake.application_token();
    let no_reuse = [("reuse_active", "N")];
    // Runs the portal starts (their event tokens are the portal's own), and runs
    // each delivered twice at once (tokens of ours: only stored, never answered).
    let started: Vec<u64> = (0..24).map(|_| patient_deal(&fake)).collect();
    let repeated: Vec<(u64, String)> = (0..12)
        .map(|_| {
            let deal = patient_deal(&fake);
            (
                deal,
                format!("{}|A1_{deal}|x", uuid::Uuid::new_v4().simple()),
            )
        })
        .collect();
    let (portal_runs, repeats) = futures::join!(
        futures::future::join_all(started.iter().map(|d| fake.run_robot(
            "opros_send_survey",
            *d,
            &no_reuse
        ))),
        futures::future::join_all(repeated.iter().chain(repeated.iter()).map(|(deal, event)| {
            robot_call_with(
                &app,
                &fake,
                *deal,
                &token,
                event,
                &[("properties[reuse_active]", "N")],
            )
        }))
    );
    let mut link_of: HashMap<String, (u64, String)> = HashMap::new();
    for (deal, run) in started.iter().zip(portal_runs) {
        let (event, r) = run.expect("robot run");
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.expect("json");
        let id = body["survey_id"].as_str().expect("survey_id").to_owned();
        link_of.insert(event, (*deal, id));
    }
    for ((deal, event), (status, body)) in repeated.iter().chain(repeated.iter()).zip(repeats) {
        assert_eq!(status, 200, "{body}");
        let id = body["survey_id"].as_str().expect("survey_id").to_owned();
        let first = link_of
            .entry(event.clone())
            .or_insert_with(|| (*deal, id.clone()));
        assert_eq!(first.1, id, "a repeated run gets the first call's link");
    }

    let rows = invitations(&app).await;
    assert_eq!(rows.len(), started.len() + repeated.len(), "one per run");
    let jobs = outbox_job::Entity::find()
        .all(&app.state.db)
        .await
        .expect("jobs");
    for (deal, id) in link_of.values() {
        let row = rows
            .iter()
            .find(|r| &r.id == id)
            .expect("the run's invitation");
        assert_eq!(row.entity_id, *deal as i64, "on the run's own deal");
        let mut kinds: Vec<&str> = jobs
            .iter()
            .filter(|j| j.payload["invitation"] == id.as_str())
            .map(|j| j.kind.as_str())
            .collect();
        kinds.sort_unstable();
        assert_eq!(
            kinds,
            ["resolve_patient", "return_robot_values", "write_link_field"],
            "{id}"
        );
    }

    app.run_outbox().await;
    let sends = fake.event_sends();
    for deal in &started {
        let (event, (_, id)) = link_of
            .iter()
            .find(|(_, (d, _))| d == deal)
            .expect("the deal's run");
        let answers: Vec<_> = sends.iter().filter(|s| &s.0 == event).collect();
        assert_eq!(answers.len(), 1, "each run answered once");
        assert_eq!(&answers[0].1["SURVEY_ID"], id);
        assert_eq!(
            fake.deal(*deal).expect("deal")["UF_CRM_OPROS_LINK"],
            Value::from(answers[0].1["SURVEY_URL"].clone())
        );
    }
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
    // As the admin page does after saving (`local_app::admin`).
    app.state.portal_cache.forget_all();
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
/// The portal a robot call checks is kept for a moment (`db::portal_cache`) and
/// forgotten whenever this instance changes it: a new application token (a confirmed
/// `ONAPPUPDATE`) refuses the old one from the next call, and so does an uninstall
/// (confirmed by the outbox) the new one; a refused call stores and sends nothing.
async fn a_new_application_token_and_an_uninstall_count_from_the_next_robot_call(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let old = fake.application_token();
    let deal = patient_deal(&fake);
    let (status, body) = robot_call(&app, &fake, deal, &old).await;
    assert_eq!(status, 200, "{body}");
    let stored = invitations(&app).await.len();
    assert_eq!(stored, 1);

    let r = fake
        .update_app(true)
        .await
        .expect("ONAPPUPDATE bound")
        .expect("delivered");
    assert_eq!(r.status(), 200);
    let new = fake.application_token();
    assert_ne!(new, old);
    let queued = all_jobs(&app).await;
    let (status, body) = robot_call(&app, &fake, deal, &old).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["code"], "bad_application_token");
    assert_eq!(invitations(&app).await.len(), stored, "nothing stored");
    assert_eq!(all_jobs(&app).await, queued, "nothing queued");
    let (status, body) = robot_call(&app, &fake, deal, &new).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        all_jobs(&app).await > queued,
        "the accepted call queued its jobs"
    );
    let stored = invitations(&app).await.len();

    let r = fake
        .uninstall(false)
        .await
        .expect("ONAPPUNINSTALL delivered");
    assert_eq!(r.status(), 200);
    app.run_outbox().await;
    let queued = all_jobs(&app).await;
    let (status, body) = robot_call(&app, &fake, deal, &new).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["code"], "portal_uninstalled");
    assert_eq!(invitations(&app).await.len(), stored, "nothing stored");
    assert_eq!(all_jobs(&app).await, queued, "nothing queued");
}

on_both_databases!(another_instances_token_and_uninstall_count_here_within_the_cache_lifetime);
/// Another instance on the same database changes the portal (here: the row written
/// directly, as its commit would leave it). This instance, which checked the portal
/// a moment ago, refuses the old application token once its copy lapses
/// (`portal_cache::TTL`), and the uninstalled portal likewise; a refused call
/// stores and queues nothing.
async fn another_instances_token_and_uninstall_count_here_within_the_cache_lifetime(db: TestDb) {
    use sea_orm::{ActiveModelTrait, ActiveValue::Set};
    let (fake, app) = installed_on(&db.url).await;
    let old = fake.application_token();
    let deal = patient_deal(&fake);
    let (status, body) = robot_call(&app, &fake, deal, &old).await;
    assert_eq!(status, 200, "{body}");

    let portal = opros::local_app::portals::by_member(&app.state.db, &fake.member_id())
        .await
        .expect("portal read")
        .expect("portal installed");
    let mut row: portal::ActiveModel = portal.into();
    row.application_token = Set(Some("rotated-application-token".to_owned()));
    let portal = row.update(&app.state.db).await.expect("token rotated");
    refused_soon(&app, &fake, deal, &old, "bad_application_token").await;
    let (status, body) = robot_call(&app, &fake, deal, "rotated-application-token").await;
    assert_eq!(status, 200, "{body}");

    let mut row: portal::ActiveModel = portal.into();
    row.status = Set(portal::UNINSTALLED);
    row.update(&app.state.db).await.expect("uninstalled");
    refused_soon(
        &app,
        &fake,
        deal,
        "rotated-application-token",
        "portal_uninstalled",
    )
    .await;

    // Whatever was accepted before the copy lapsed, a refusal stores nothing.
    let (stored, queued) = (invitations(&app).await.len(), all_jobs(&app).await);
    let (status, _) = robot_call(&app, &fake, deal, "rotated-application-token").await;
    assert_eq!(status, 403);
    assert_eq!(invitations(&app).await.len(), stored, "nothing stored");
    assert_eq!(all_jobs(&app).await, queued, "nothing queued");
}

/// Robot calls with `token` until one is refused with `code` (generous deadline).
async fn refused_soon(app: &TestApp, fake: &FakePortal, deal: u64, token: &str, code: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, body) = robot_call(app, fake, deal, token).await;
        if status != 200 {
            assert_eq!(body["code"], code, "{body}");
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still accepted after 30 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn all_jobs(app: &TestApp) -> usize {
    opros::db::entities::outbox_job::Entity::find()
        .all(&app.state.db)
        .await
        .expect("jobs")
        .len()
}

on_both_databases!(a_robot_call_repeated_for_a_link_of_the_older_id_form_queues_nothing_new);
/// Invitation ids begin with their time (`db::ordered_id`) and the robot's job keys
/// with the invitation's id. A link made before, with a 12-character id and its
/// jobs under the keys of then, still takes a repeat of its robot call without a
/// second set of jobs; a new one's keys carry its id.
async fn a_robot_call_repeated_for_a_link_of_the_older_id_form_queues_nothing_new(db: TestDb) {
    use opros::db::entities::outbox_job;
    use sea_orm::{ConnectionTrait, Statement};
    let (fake, app) = installed_on(&db.url).await;
    let token = fake.application_token();
    let no_reuse = [("properties[reuse_active]", "N")];
    let deal = patient_deal(&fake);
    let event = format!("{}|A1_{deal}|x", uuid::Uuid::new_v4().simple());
    let (status, body) = robot_call_with(&app, &fake, deal, &token, &event, &no_reuse).await;
    assert_eq!(status, 200, "{body}");
    let id = body["survey_id"].as_str().expect("survey_id").to_owned();
    assert_eq!(id.len(), 20, "{id}");
    let jobs = outbox_job::Entity::find()
        .all(&app.state.db)
        .await
        .expect("jobs");
    assert_eq!(jobs.len(), 3);
    for job in &jobs {
        assert!(
            job.idempotency_key.starts_with(&format!("{id}:robot:")),
            "{}",
            job.idempotency_key
        );
    }

    // The same rows as an older version stored them.
    let old = "Ab3dEf6hJk8m";
    let backend = app.state.db.get_database_backend();
    for sql in [
        format!("UPDATE invitation SET id = '{old}' WHERE id = '{id}'"),
        format!(
            "UPDATE outbox_job SET idempotency_key = SUBSTR(idempotency_key, {}), \
             payload = REPLACE(CAST(payload AS TEXT), '{id}', '{old}')",
            id.len() + 2
        ),
    ] {
        let sql = if backend == sea_orm::DatabaseBackend::Postgres {
            sql.replace(
                "REPLACE(CAST(payload AS TEXT)",
                "CAST(REPLACE(CAST(payload AS TEXT)",
            )
            .replace(&format!("'{old}')"), &format!("'{old}') AS JSON)"))
        } else {
            sql
        };
        app.state
            .db
            .execute_raw(Statement::from_string(backend, sql))
            .await
            .expect("rewritten");
    }
    let (status, body) = robot_call_with(&app, &fake, deal, &token, &event, &no_reuse).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["survey_id"], old, "the repeat gets the older link");
    let keys: HashSet<String> = outbox_job::Entity::find()
        .all(&app.state.db)
        .await
        .expect("jobs")
        .into_iter()
        .map(|j| j.idempotency_key)
        .collect();
    assert_eq!(keys.len(), 3, "nothing new queued: {keys:?}");
    assert!(keys.iter().all(|k| k.starts_with("robot:")), "{keys:?}");
}

on_both_databases!(a_repeated_run_that_reuses_links_answers_once_whichever_link_it_meets);
/// A run that reuses the document's active link keys its jobs by the run alone: its
/// repeat, after a newer link replaced the one it first met, meets that newer link
/// and still queues no second answer to the business process.
async fn a_repeated_run_that_reuses_links_answers_once_whichever_link_it_meets(db: TestDb) {
    use opros::db::entities::outbox_job;
    let (fake, app) = installed_on(&db.url).await;
    let token = fake.application_token();
    let deal = patient_deal(&fake);
    let run = |tag: &str| format!("{}|A1_{deal}|{tag}", uuid::Uuid::new_v4().simple());
    let (own, reuse) = (
        [("properties[reuse_active]", "N")],
        [("properties[reuse_active]", "Y")],
    );
    let (first, second, repeated) = (run("a"), run("b"), run("r"));
    // Each run in turn, the link it got.
    let mut links = Vec::new();
    for (event, more) in [
        (&first, &own),
        (&repeated, &reuse),
        (&second, &own),
        (&repeated, &reuse),
    ] {
        let (status, body) = robot_call_with(&app, &fake, deal, &token, event, more).await;
        assert_eq!(status, 200, "{body}");
        links.push(body["survey_id"].clone());
    }
    assert_eq!(links[1], links[0], "the active link is reused");
    assert_eq!(links[3], links[2], "the repeat meets the newer link");
    let answers = outbox_job::Entity::find()
        .all(&app.state.db)
        .await
        .expect("jobs")
        .into_iter()
        .filter(|j| {
            j.kind == "return_robot_values" && j.payload["event_token"] == repeated.as_str()
        })
        .count();
    assert_eq!(answers, 1, "{}: one answer for the run", db.backend);
}
