//! The robot «Дождаться анкеты» (`opros_await_survey`, CONTRACT «Automation»,
//! bitrix24-automation.md §A4): it waits in the workflow and answers once, through
//! the outbox, with the survey's outcome — never an answer of the patient.

use std::collections::BTreeMap;

use opros::db::entities::{invitation, outbox_job};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::Value;

use crate::support::db::{TestDb, on_both_databases};
use crate::support::portal::{app_for_db, install, installed_on, patient_deal, robot_link};
use crate::support::{TestApp, full_answers};

const AWAIT: &str = "opros_await_survey";

/// The await robot on `deal`; returns its event token.
async fn await_on(
    fake: &opros::testing::fake_portal::FakePortal,
    deal: u64,
    props: &[(&str, &str)],
) -> String {
    let (token, r) = fake.run_robot(AWAIT, deal, props).await.expect("delivered");
    let status = r.status();
    let body = r.text().await.unwrap_or_default();
    assert_eq!(status, 200, "{body}");
    token
}

/// What the workflow got for `token`, if anything.
fn answer_for(
    fake: &opros::testing::fake_portal::FakePortal,
    token: &str,
) -> Vec<BTreeMap<String, String>> {
    fake.event_sends()
        .into_iter()
        .filter(|(t, _, _)| t == token)
        .map(|(_, values, _)| values)
        .collect()
}

/// The workflow got exactly one answer for `token`, with this `status`; returns it.
fn the_one_answer(
    fake: &opros::testing::fake_portal::FakePortal,
    token: &str,
    status: &str,
) -> BTreeMap<String, String> {
    let mut sent = answer_for(fake, token);
    assert_eq!(sent.len(), 1, "{sent:?}");
    let values = sent.remove(0);
    assert_eq!(values["STATUS"], status, "{values:?}");
    values
}

async fn submit(app: &TestApp, link: &str) -> Value {
    let (status, survey) = app.get_json(&format!("/api/v1/surveys/{link}")).await;
    assert_eq!(status, 200);
    let answers = full_answers(&survey);
    let (status, body) = app
        .send_json(
            reqwest::Method::POST,
            &format!("/api/v1/surveys/{link}/submit"),
            &serde_json::json!({ "answers": answers }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    answers
}

async fn waits(app: &TestApp) -> u64 {
    outbox_job::Entity::find()
        .filter(outbox_job::Column::Kind.eq("await_survey"))
        .count(&app.state.db)
        .await
        .expect("count")
}

async fn dead_jobs(app: &TestApp) -> Vec<outbox_job::Model> {
    outbox_job::Entity::find()
        .filter(outbox_job::Column::DeadAt.is_not_null())
        .all(&app.state.db)
        .await
        .expect("jobs")
}

/// Every typed answer (free text) is absent from what the workflow got.
fn carries_no_answer(values: &BTreeMap<String, String>, answers: &Value) {
    let typed: Vec<&str> = answers
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
        .filter_map(Value::as_str)
        .filter(|s| s.chars().count() > 5)
        .collect();
    assert!(!typed.is_empty());
    for value in values.values() {
        for t in &typed {
            assert!(
                !value.contains(t),
                "an answer reached the workflow: {value}"
            );
        }
    }
}

on_both_databases!(the_robot_is_registered_once_next_to_the_send_robot);
async fn the_robot_is_registered_once_next_to_the_send_robot(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    install(&fake, &app).await;
    let robots = fake.robots();
    let ours: Vec<&Value> = robots.iter().filter(|r| r["CODE"] == AWAIT).collect();
    assert_eq!(ours.len(), 1, "{robots:?}");
    assert_eq!(
        robots
            .iter()
            .filter(|r| r["CODE"] == "opros_send_survey")
            .count(),
        1
    );
    let robot = ours[0];
    assert_eq!(robot["USE_SUBSCRIPTION"], "Y");
    assert_eq!(
        robot["HANDLER"],
        Value::from(app.url("/b24/robot/await-survey"))
    );
    assert_eq!(robot["PROPERTIES"]["survey_id"]["Required"], "N");
    let returns: Vec<&String> = robot["RETURN_PROPERTIES"]
        .as_object()
        .expect("return properties")
        .keys()
        .collect();
    for key in [
        "status",
        "red_flags",
        "red_flag_titles",
        "score",
        "completed_at",
    ] {
        assert!(returns.iter().any(|k| k.as_str() == key), "{returns:?}");
    }
    assert_eq!(robot["RETURN_PROPERTIES"]["red_flags"]["Type"], "int");
}

on_both_databases!(the_robot_waits_logs_progress_once_each_then_answers_on_completion);
async fn the_robot_waits_logs_progress_once_each_then_answers_on_completion(db: TestDb) {
    let logs = crate::support::logs::capture();
    let (fake, app) = installed_on(&db.url).await;
    let (deal, link) = robot_link(&fake, &app).await;
    let token = await_on(&fake, deal, &[]).await;
    app.run_outbox().await;
    assert!(
        answer_for(&fake, &token).is_empty(),
        "answered before the patient"
    );

    // Opened twice, a draft saved twice: one line each in the workflow log.
    for _ in 0..2 {
        let (status, _) = app.get_json(&format!("/s/{link}")).await;
        assert_eq!(status, 200);
        let (status, body) = app
            .send_json(
                reqwest::Method::PUT,
                &format!("/api/v1/surveys/{link}/draft"),
                &serde_json::json!({"answers": {"complaints": "кашель"}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        app.run_outbox().await;
    }
    let log: Vec<String> = fake
        .workflow_log()
        .into_iter()
        .filter(|(t, _)| t == &token)
        .map(|(_, m)| m)
        .collect();
    assert_eq!(log, ["Пациент открыл анкету", "Черновик сохранён"]);
    assert!(log.iter().all(|l| !l.contains("кашель")));
    assert!(answer_for(&fake, &token).is_empty());

    let answers = submit(&app, &link).await;
    app.run_outbox().await;
    let sent = answer_for(&fake, &token);
    assert_eq!(sent.len(), 1, "{sent:?}");
    let values = &sent[0];
    assert_eq!(values["STATUS"], "completed");
    let flags: usize = values["RED_FLAGS"].parse().expect("an integer");
    assert!(flags > 0, "{values:?}");
    assert_eq!(values["RED_FLAG_TITLES"].split("; ").count(), flags);
    assert_eq!(values["SCORE"], "");
    let at = chrono::DateTime::parse_from_rfc3339(&values["COMPLETED_AT"]).expect("ISO 8601");
    assert_eq!(at.offset().local_minus_utc(), 3 * 3600);
    carries_no_answer(values, &answers);

    // Nothing more later: the wait is over.
    app.run_outbox().await;
    assert_eq!(answer_for(&fake, &token).len(), 1);
    assert!(dead_jobs(&app).await.is_empty());

    let text = logs.text();
    assert!(text.contains("Робот ждёт анкету"), "{text}");
    assert!(!text.contains(&token), "the event token must not be logged");
    assert!(!text.contains(&link), "the link token must not be logged");
    assert!(
        !text.contains("кашель"),
        "a draft answer must not be logged"
    );
}

on_both_databases!(a_survey_already_completed_is_answered_at_once);
async fn a_survey_already_completed_is_answered_at_once(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let (deal, link) = robot_link(&fake, &app).await;
    submit(&app, &link).await;
    app.run_outbox().await;
    let token = await_on(&fake, deal, &[]).await;
    app.run_outbox().await;
    the_one_answer(&fake, &token, "completed");
}

on_both_databases!(a_document_without_a_survey_is_answered_missing);
async fn a_document_without_a_survey_is_answered_missing(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let deal = patient_deal(&fake);
    let token = await_on(&fake, deal, &[]).await;
    app.run_outbox().await;
    let values = the_one_answer(&fake, &token, "missing");
    assert_eq!(values["RED_FLAGS"], "0");
}

on_both_databases!(a_link_that_lapses_unanswered_is_answered_expired);
async fn a_link_that_lapses_unanswered_is_answered_expired(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let (deal, _) = robot_link(&fake, &app).await;
    let token = await_on(&fake, deal, &[]).await;
    app.run_outbox().await;
    // The wait is due at the link's expiry, days away.
    let wait = outbox_job::Entity::find()
        .filter(outbox_job::Column::Kind.eq("await_survey"))
        .one(&app.state.db)
        .await
        .expect("read")
        .expect("the wait is stored");
    let inv = invitation::Entity::find()
        .one(&app.state.db)
        .await
        .expect("read")
        .expect("invitation");
    assert!(wait.done_at.is_none());
    assert_eq!(wait.run_at, inv.expires_at.timestamp_millis());
    assert!(answer_for(&fake, &token).is_empty());

    // The days pass: the link lapses and its wait falls due.
    let lapsed = chrono::Utc::now() - chrono::Duration::seconds(1);
    invitation::Entity::update_many()
        .col_expr(invitation::Column::ExpiresAt, Expr::value(lapsed))
        .exec(&app.state.db)
        .await
        .expect("expire");
    outbox_job::Entity::update_many()
        .col_expr(
            outbox_job::Column::RunAt,
            Expr::value(lapsed.timestamp_millis()),
        )
        .filter(outbox_job::Column::Id.eq(wait.id))
        .exec(&app.state.db)
        .await
        .expect("due");
    app.run_outbox().await;
    the_one_answer(&fake, &token, "expired");
}

on_both_databases!(a_newer_link_for_the_document_answers_revoked);
async fn a_newer_link_for_the_document_answers_revoked(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let (deal, first) = robot_link(&fake, &app).await;
    let token = await_on(&fake, deal, &[]).await;
    app.run_outbox().await;
    assert!(answer_for(&fake, &token).is_empty());

    let (_, r) = fake
        .run_robot("opros_send_survey", deal, &[("reuse_active", "N")])
        .await
        .expect("delivered");
    assert_eq!(r.status(), 200);
    app.run_outbox().await;
    the_one_answer(&fake, &token, "revoked");

    // The old link completed afterwards answers nobody twice.
    submit(&app, &first).await;
    app.run_outbox().await;
    assert_eq!(answer_for(&fake, &token).len(), 1);
}

on_both_databases!(the_wait_survives_a_restart);
async fn the_wait_survives_a_restart(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let (deal, link) = robot_link(&fake, &app).await;
    let token = await_on(&fake, deal, &[]).await;
    app.run_outbox().await;
    let url = app.stop().await;

    let app = app_for_db(&fake, &url, &[]).await;
    submit(&app, &link).await;
    app.run_outbox().await;
    the_one_answer(&fake, &token, "completed");
}

on_both_databases!(a_step_closed_by_its_timeout_counts_as_delivered);
async fn a_step_closed_by_its_timeout_counts_as_delivered(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let (deal, link) = robot_link(&fake, &app).await;
    let token = await_on(&fake, deal, &[]).await;
    app.run_outbox().await;
    fake.close_robot_step(&token);
    let (status, _) = app.get_json(&format!("/s/{link}")).await;
    assert_eq!(status, 200);
    submit(&app, &link).await;
    app.run_outbox().await;
    assert!(answer_for(&fake, &token).is_empty());
    assert!(
        dead_jobs(&app).await.is_empty(),
        "ACCESS_DENIED is delivered"
    );
    let open = outbox_job::Entity::find()
        .filter(outbox_job::Column::DoneAt.is_null())
        .count(&app.state.db)
        .await
        .expect("count");
    assert_eq!(open, 0);
}

on_both_databases!(a_forged_call_or_another_records_survey_stores_nothing);
async fn a_forged_call_or_another_records_survey_stores_nothing(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let (deal, _) = robot_link(&fake, &app).await;

    // A wrong application token: refused before anything is read or stored.
    let form = [
        ("event_token", "wf|A1_1|forged"),
        ("code", AWAIT),
        ("document_id[0]", "crm"),
        ("document_id[1]", "CCrmDocumentDeal"),
        ("document_id[2]", &format!("DEAL_{deal}")),
        ("auth[member_id]", &fake.member_id()),
        ("auth[application_token]", "not-the-application-token"),
    ];
    let r = app
        .http
        .post(app.url("/b24/robot/await-survey"))
        .form(&form)
        .send()
        .await
        .expect("answered");
    assert_eq!(r.status(), 401);
    assert_eq!(waits(&app).await, 0);

    // The survey of another deal: refused, nothing stored, nothing read back.
    let other = patient_deal(&fake);
    let (_, r) = fake
        .run_robot("opros_send_survey", other, &[])
        .await
        .expect("delivered");
    let other_id = r.json::<Value>().await.expect("json")["survey_id"]
        .as_str()
        .expect("survey id")
        .to_owned();
    app.run_outbox().await;
    let (token, r) = fake
        .run_robot(AWAIT, deal, &[("survey_id", &other_id)])
        .await
        .expect("delivered");
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.expect("error body");
    assert_eq!(body["code"], "survey_not_found", "{body}");
    assert_eq!(waits(&app).await, 0);
    app.run_outbox().await;
    assert!(answer_for(&fake, &token).is_empty());

    // The same survey from its own deal is fine.
    await_on(&fake, other, &[("survey_id", &other_id)]).await;
    assert_eq!(waits(&app).await, 1);
}

on_both_databases!(another_questionnaire_for_the_same_deal_revokes_nothing);
async fn another_questionnaire_for_the_same_deal_revokes_nothing(db: TestDb) {
    let surveys = tempfile::tempdir().expect("temp dir");
    let follow_up = serde_json::json!({
        "code": "follow_up", "version": 1, "title": "Контроль через неделю",
        "sections": [{"id": "main", "title": "Самочувствие", "questions": [
            {"id": "better", "type": "yes_no", "title": "Стало лучше?", "required": true}
        ]}]
    });
    std::fs::write(surveys.path().join("follow_up.yaml"), follow_up.to_string()).expect("write");
    let dir = surveys.path().display().to_string();
    let fake = crate::support::portal::fake().await;
    let app = app_for_db(&fake, &db.url, &[("SURVEYS_DIR", &dir)]).await;
    install(&fake, &app).await;
    let (deal, _) = robot_link(&fake, &app).await;
    let token = await_on(&fake, deal, &[]).await;
    app.run_outbox().await;

    let (_, r) = fake
        .run_robot(
            "opros_send_survey",
            deal,
            &[("survey_code", "follow_up"), ("reuse_active", "N")],
        )
        .await
        .expect("delivered");
    assert_eq!(r.status(), 200);
    app.run_outbox().await;
    assert!(
        answer_for(&fake, &token).is_empty(),
        "another questionnaire is no replacement"
    );

    let (_, r) = fake
        .run_robot("opros_send_survey", deal, &[("reuse_active", "N")])
        .await
        .expect("delivered");
    assert_eq!(r.status(), 200);
    app.run_outbox().await;
    the_one_answer(&fake, &token, "revoked");
}

on_both_databases!(a_survey_of_another_portal_is_refused_even_for_the_same_deal_number);
async fn a_survey_of_another_portal_is_refused_even_for_the_same_deal_number(db: TestDb) {
    use opros::testing::fake_portal::{FakePortal, FakePortalConfig};

    let (fake, app) = installed_on(&db.url).await;
    let other = FakePortal::start(FakePortalConfig {
        member_id: "9b1d7e3a5c2f4e6a8b0d1f3e5a7c9b2d".into(),
        ..FakePortalConfig::default()
    })
    .await
    .expect("second portal");
    install(&other, &app).await;
    let (theirs, _) = robot_link(&other, &app).await;
    let their_id = other
        .event_sends()
        .last()
        .and_then(|(_, v, _)| v.get("SURVEY_ID").cloned())
        .expect("survey id");
    // The same deal number in this portal.
    let ours = patient_deal(&fake);
    assert_eq!(ours, theirs, "the fakes number deals alike");
    let (token, r) = fake
        .run_robot(AWAIT, ours, &[("survey_id", &their_id)])
        .await
        .expect("delivered");
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.expect("error body");
    assert_eq!(body["code"], "survey_not_found", "{body}");
    assert_eq!(waits(&app).await, 0);
    app.run_outbox().await;
    assert!(answer_for(&fake, &token).is_empty());
    assert!(fake.workflow_log().is_empty());
}

on_both_databases!(the_same_step_delivered_twice_waits_once_and_is_answered_once);
async fn the_same_step_delivered_twice_waits_once_and_is_answered_once(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let (deal, _) = robot_link(&fake, &app).await;
    let document = format!("DEAL_{deal}");
    let (member, app_token) = (fake.member_id(), fake.application_token());
    let form = [
        ("event_token", "wf.1|A7_1|repeated"),
        ("code", AWAIT),
        ("document_id[0]", "crm"),
        ("document_id[1]", "CCrmDocumentDeal"),
        ("document_id[2]", document.as_str()),
        ("auth[member_id]", member.as_str()),
        ("auth[application_token]", app_token.as_str()),
    ];
    for _ in 0..2 {
        let r = app
            .http
            .post(app.url("/b24/robot/await-survey"))
            .form(&form)
            .send()
            .await
            .expect("answered");
        assert_eq!(r.status(), 200);
    }
    assert_eq!(waits(&app).await, 1);
    // No event token, or no document: a clear 400, nothing stored.
    for (drop, code) in [
        ("event_token", "event_token_missing"),
        ("document_id[2]", "document_missing"),
    ] {
        let partial: Vec<_> = form.iter().filter(|(k, _)| *k != drop).collect();
        let r = app
            .http
            .post(app.url("/b24/robot/await-survey"))
            .form(&partial)
            .send()
            .await
            .expect("answered");
        assert_eq!(r.status(), 400, "{drop}");
        let body: Value = r.json().await.expect("error body");
        assert_eq!(body["code"], code, "{body}");
    }
    assert_eq!(waits(&app).await, 1);
}

on_both_databases!(the_admin_page_shows_a_waiting_robot_not_a_queue_in_arrears);
async fn the_admin_page_shows_a_waiting_robot_not_a_queue_in_arrears(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    fake.set_app_url(&app.url("/b24/app"));
    let (deal, _) = robot_link(&fake, &app).await;
    await_on(&fake, deal, &[]).await;
    app.run_outbox().await;
    let r = fake.open_app(1).await.expect("page delivered");
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap_or_default();
    let text = crate::support::html::text_of(&body);
    assert!(text.contains("В очереди: 0"), "{text}");
    assert!(text.contains("робот ждёт анкету"), "{text}");
}

// An attack with the application token, which any portal user can read from their
// own tab: waits piled on one record. Each would cost a portal call and a log line
// on every move of the patient; past the cap the call is refused and stores nothing,
// and another record is not affected.
on_both_databases!(waits_piled_on_one_record_stop_at_the_cap);
async fn waits_piled_on_one_record_stop_at_the_cap(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let (deal, _) = robot_link(&fake, &app).await;
    let cap = opros::outbox::survey_wait::MAX_OPEN_WAITS;
    for _ in 0..cap {
        await_on(&fake, deal, &[]).await;
    }
    assert_eq!(waits(&app).await, cap);
    let (_, r) = fake.run_robot(AWAIT, deal, &[]).await.expect("delivered");
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["code"], "too_many_waits", "{body}");
    assert_eq!(waits(&app).await, cap, "the refused call stored nothing");

    let (other, _) = robot_link(&fake, &app).await;
    await_on(&fake, other, &[]).await;
    assert_eq!(waits(&app).await, cap + 1);
}

on_both_databases!(a_scored_questionnaire_returns_its_score_and_no_answer);
async fn a_scored_questionnaire_returns_its_score_and_no_answer(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let deal = patient_deal(&fake);
    let (_, r) = fake
        .run_robot("opros_send_survey", deal, &[("survey_code", "phq9")])
        .await
        .expect("delivered");
    assert_eq!(r.status(), 200);
    app.run_outbox().await;
    let url = fake
        .event_sends()
        .last()
        .map(|s| s.1["SURVEY_URL"].clone())
        .expect("the link went back to the workflow");
    let link = url.rsplit('/').next().unwrap_or_default().to_owned();
    let token = await_on(&fake, deal, &[]).await;

    // 8 items «Более половины дней» (2 each), item 9 «Ни разу»: 16, «умеренно тяжёлая».
    let mut answers = serde_json::Map::new();
    for i in 1..=8 {
        answers.insert(format!("q{i}"), Value::from("more_than_half"));
    }
    answers.insert("q9".into(), Value::from("not_at_all"));
    answers.insert("difficulty".into(), Value::from("very"));
    let (status, body) = app
        .send_json(
            reqwest::Method::POST,
            &format!("/api/v1/surveys/{link}/submit"),
            &serde_json::json!({ "answers": answers }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    app.run_outbox().await;

    let values = the_one_answer(&fake, &token, "completed");
    assert_eq!(
        values["SCORE"], "PHQ-9: 16 — умеренно тяжёлая",
        "{values:?}"
    );
    // Totals and band names only: no option a patient chose, no question's wording.
    for value in values.values() {
        for said in [
            "Более половины дней",
            "Ни разу",
            "Очень затруднили",
            "more_than_half",
            "мало интересовались",
        ] {
            assert!(
                !value.contains(said),
                "an answer reached the workflow: {value}"
            );
        }
    }
}
