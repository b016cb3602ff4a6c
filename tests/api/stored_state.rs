//! What is read back from the database is checked against its type: a stored state
//! nobody wrote (a hand edit, a bad restore, another version's value) and answers
//! that no longer decode are reported as errors, never taken for a deal, a fresh
//! link or an empty survey. Each runs on SQLite and, with `--include-ignored`,
//! PostgreSQL.

use opros::db::entities::{invitation, outbox_job, portal};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};
use serde_json::json;

use crate::support::db::{TestDb, on_both_databases};
use crate::support::portal::{app_for_db, fake, install, robot_link};
use crate::support::{TestApp, full_answers};

async fn set(app: &TestApp, sql: &str) {
    app.state
        .db
        .execute_unprepared(sql)
        .await
        .expect("hand edit");
}

async fn survey_id(app: &TestApp, token: &str) -> String {
    let (status, survey) = app.get_json(&format!("/api/v1/surveys/{token}")).await;
    assert_eq!(status, 200, "{survey}");
    survey["survey_id"].as_str().expect("survey_id").to_owned()
}

on_both_databases!(unknown_stored_states_fail_the_read);
async fn unknown_stored_states_fail_the_read(test_db: TestDb) {
    let fake = fake().await;
    let app = app_for_db(&fake, &test_db.url, &[]).await;
    install(&fake, &app).await;
    let (_, token) = robot_link(&fake, &app).await;
    let id = survey_id(&app, &token).await;

    // An entity type we never write: the read fails, the row is not taken for a deal.
    set(
        &app,
        &format!("UPDATE invitation SET entity_type = 'CONTACT' WHERE id = '{id}'"),
    )
    .await;
    let read = invitation::Entity::find_by_id(id.clone())
        .one(&app.state.db)
        .await;
    assert!(read.is_err(), "{}: read as {read:?}", test_db.backend);
    let (status, body) = app.get_json(&format!("/api/v1/surveys/{token}")).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["code"], "internal_error");
    assert!(!body.to_string().contains("Смирнова"), "{body}");

    // Nor a smart-process spelling we never write: a CRM kind below 128, another case,
    // a padded number.
    for stored in ["DYNAMIC_31", "dynamic_128", "DYNAMIC_0128", "DYNAMIC_"] {
        set(
            &app,
            &format!("UPDATE invitation SET entity_type = '{stored}' WHERE id = '{id}'"),
        )
        .await;
        let read = invitation::Entity::find_by_id(id.clone())
            .one(&app.state.db)
            .await;
        assert!(read.is_err(), "{stored} read as {read:?}");
    }

    // The same for a status and a channel.
    set(
        &app,
        &format!(
            "UPDATE invitation SET entity_type = 'DEAL', status = 'archived' WHERE id = '{id}'"
        ),
    )
    .await;
    assert!(
        invitation::Entity::find_by_id(id.clone())
            .one(&app.state.db)
            .await
            .is_err()
    );
    set(
        &app,
        &format!("UPDATE invitation SET status = 'sent', channel = 'sms' WHERE id = '{id}'"),
    )
    .await;
    assert!(
        invitation::Entity::find_by_id(id.clone())
            .one(&app.state.db)
            .await
            .is_err()
    );

    // Put back as written, the row reads again: the check is on the values only.
    set(
        &app,
        &format!("UPDATE invitation SET channel = 'app' WHERE id = '{id}'"),
    )
    .await;
    let inv = invitation::Entity::find_by_id(id.clone())
        .one(&app.state.db)
        .await
        .expect("reads")
        .expect("row");
    assert_eq!(inv.entity_type, invitation::EntityType::Deal);
    assert_eq!(inv.channel, invitation::Channel::App);

    // A portal status nobody wrote fails the read too.
    set(&app, "UPDATE portal SET status = 'paused'").await;
    assert!(portal::Entity::find().all(&app.state.db).await.is_err());
    let (status, _) = app.get_json("/healthz").await;
    assert_eq!(status, 200, "the service stays up");
}

on_both_databases!(corrupt_answers_are_reported_not_shown_empty);
async fn corrupt_answers_are_reported_not_shown_empty(test_db: TestDb) {
    let fake = fake().await;
    let app = app_for_db(&fake, &test_db.url, &[]).await;
    install(&fake, &app).await;
    let (_, token) = robot_link(&fake, &app).await;
    let id = survey_id(&app, &token).await;
    let (status, survey) = app.get_json(&format!("/api/v1/surveys/{token}")).await;
    assert_eq!(status, 200);
    let answers = full_answers(&survey);
    let (status, body) = app
        .send_json(
            reqwest::Method::PUT,
            &format!("/api/v1/surveys/{token}/draft"),
            &json!({"answers": answers}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // A draft that is no longer an object of answers: the page and the API say
    // something is wrong instead of offering an empty questionnaire.
    set(
        &app,
        &format!(
            "UPDATE response SET draft = '[\"Жалобы пациента\"]' WHERE invitation_id = '{id}'"
        ),
    )
    .await;
    let (status, body) = app.get_json(&format!("/api/v1/surveys/{token}")).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["code"], "internal_error");
    let page = app
        .http
        .get(app.url(&format!("/s/{token}")))
        .send()
        .await
        .expect("page");
    assert_eq!(page.status(), 500);
    let text = page.text().await.unwrap_or_default();
    assert!(!text.contains("<form"), "no empty questionnaire: {text}");

    // A submit replaces the broken draft with the answers and completes.
    let (status, body) = app
        .send_json(
            reqwest::Method::POST,
            &format!("/api/v1/surveys/{token}/submit"),
            &json!({"answers": answers}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // Final answers broken before the comment goes: the job dies with the reason
    // instead of posting an empty result to the doctor.
    set(&app, &format!("UPDATE response SET answers = '\"Жалобы пациента\"', report_pdf = NULL WHERE invitation_id = '{id}'")).await;
    app.run_outbox().await;
    let job = outbox_job::Entity::find()
        .filter(outbox_job::Column::Kind.eq("post_completion"))
        .one(&app.state.db)
        .await
        .expect("read")
        .expect("the completion job");
    assert!(job.dead_at.is_some(), "{job:?}");
    assert_eq!(
        job.last_error.as_deref(),
        Some("сохранённые ответы не читаются")
    );
    assert!(fake.timeline_comments().is_empty(), "nothing posted");
}
