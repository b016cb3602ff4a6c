//! From the patient's submit to the deal: the timeline comment with the PDF, exactly
//! once across portal outages, restarts and lost answers.

use opros::db::entities::outbox_job;
use opros::testing::fake_portal::Fault;
use sea_orm::{ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};

use crate::support::db::{TestDb, on_both_databases};
use crate::support::portal::{app_for_db, complete_survey, installed, installed_on};
use crate::support::{TestApp, skip};

/// Makes every pending job due now, as time passing would.
async fn make_due(app: &TestApp) {
    for job in outbox_job::Entity::find()
        .filter(outbox_job::Column::DoneAt.is_null())
        .all(&app.state.db)
        .await
        .unwrap()
    {
        let mut row: outbox_job::ActiveModel = job.into();
        row.run_at = Set(0);
        row.locked_until = Set(None);
        row.update(&app.state.db).await.unwrap();
    }
}

fn pdf_text(pdf: &[u8]) -> Option<String> {
    if std::process::Command::new("pdftotext")
        .arg("-v")
        .output()
        .is_err()
    {
        skip(
            "completion::the_comment_pdf_reads_as_the_patient_s_answers",
            "pdftotext not installed (apt-get install poppler-utils)",
        );
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.pdf");
    std::fs::write(&path, pdf).unwrap();
    let out = std::process::Command::new("pdftotext")
        .arg(&path)
        .arg("-")
        .output()
        .unwrap();
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

on_both_databases!(submit_posts_comment_with_pdf_to_the_deal);
async fn submit_posts_comment_with_pdf_to_the_deal(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let deal = complete_survey(&fake, &app).await;
    app.run_outbox().await;
    let comments = fake.timeline_comments();
    assert_eq!(comments.len(), 1, "{comments:?}");
    let c = &comments[0];
    assert_eq!((c.entity_type.as_str(), c.entity_id), ("deal", deal));
    assert!(
        c.comment.starts_with("Пациент завершил опрос «"),
        "{}",
        c.comment
    );
    assert!(
        c.comment.contains("Обратите внимание"),
        "flagged answers in one line: {}",
        c.comment
    );
    assert_eq!(c.files.len(), 1);
    let (name, pdf) = &c.files[0];
    assert!(name.ends_with(".pdf"));
    assert!(pdf.starts_with(b"%PDF"));
    // Files never travel inside batch.
    assert!(
        fake.calls_of("crm.timeline.comment.add")
            .iter()
            .all(|c| !c.via_batch)
    );
}

#[tokio::test]
#[ignore = "needs pdftotext from poppler-utils (see README)"]
async fn the_comment_pdf_reads_as_the_patient_s_answers() {
    let (fake, app) = installed().await;
    complete_survey(&fake, &app).await;
    app.run_outbox().await;
    let comments = fake.timeline_comments();
    assert_eq!(comments.len(), 1, "{comments:?}");
    let (_, pdf) = &comments[0].files[0];
    if let Some(text) = pdf_text(pdf) {
        assert!(text.contains("Смирнова Анна Петровна"), "{text}");
        assert!(text.contains("пенициллин"), "a flagged answer: {text}");
    }
}

on_both_databases!(portal_outage_and_restart_deliver_the_comment_once);
async fn portal_outage_and_restart_deliver_the_comment_once(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    complete_survey(&fake, &app).await;
    // The portal is down for longer than the client's own retries.
    fake.fail_next("crm.timeline.comment.add", Fault::Status(503), 20);
    app.run_outbox().await;
    assert!(fake.timeline_comments().is_empty());
    let pending = outbox_job::Entity::find()
        .filter(outbox_job::Column::Kind.eq("post_completion"))
        .one(&app.state.db)
        .await
        .unwrap()
        .unwrap();
    assert!(
        pending.done_at.is_none() && pending.dead_at.is_none(),
        "{pending:?}"
    );
    assert!(pending.last_error.is_some());

    // Restart the service on the same database; the portal comes back.
    let db_url = app.stop().await;
    let app = app_for_db(&fake, &db_url, &[]).await;
    fake.clear_faults("crm.timeline.comment.add");
    make_due(&app).await;
    app.run_outbox().await;
    make_due(&app).await;
    app.run_outbox().await;
    assert_eq!(fake.timeline_comments().len(), 1);
}

/// The worker died after the portal created the comment, before recording it.
async fn lose_the_comment_answer(app: &TestApp) {
    let job = outbox_job::Entity::find()
        .filter(outbox_job::Column::Kind.eq("post_completion"))
        .one(&app.state.db)
        .await
        .unwrap()
        .unwrap();
    let mut row: outbox_job::ActiveModel = job.into();
    row.done_at = Set(None);
    row.dead_at = Set(None);
    row.run_at = Set(0);
    row.update(&app.state.db).await.unwrap();
}

on_both_databases!(a_lost_answer_does_not_post_twice);
async fn a_lost_answer_does_not_post_twice(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    complete_survey(&fake, &app).await;
    app.run_outbox().await;
    assert_eq!(fake.timeline_comments().len(), 1);
    lose_the_comment_answer(&app).await;
    app.run_outbox().await;
    assert_eq!(fake.timeline_comments().len(), 1, "posted twice");
    let job = outbox_job::Entity::find()
        .filter(outbox_job::Column::Kind.eq("post_completion"))
        .one(&app.state.db)
        .await
        .unwrap()
        .unwrap();
    assert!(job.done_at.is_some());
}

on_both_databases!(an_unverifiable_repeat_posts_only_when_listing_is_forbidden);
async fn an_unverifiable_repeat_posts_only_when_listing_is_forbidden(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    complete_survey(&fake, &app).await;
    app.run_outbox().await;
    // A portal that refuses us altogether: nothing is posted blindly.
    lose_the_comment_answer(&app).await;
    fake.fail_next(
        "crm.timeline.comment.list",
        Fault::error(503, "OVERLOAD_LIMIT", "Blocked"),
        1,
    );
    app.run_outbox().await;
    assert_eq!(fake.timeline_comments().len(), 1);
    // The app may not list comments: the doctor gets the result, at the risk of
    // a second copy.
    lose_the_comment_answer(&app).await;
    fake.fail_next(
        "crm.timeline.comment.list",
        Fault::error(403, "ACCESS_DENIED", "Access denied"),
        1,
    );
    app.run_outbox().await;
    assert_eq!(fake.timeline_comments().len(), 2);
}

on_both_databases!(the_submit_answers_before_the_pdf_and_the_pdf_bears_the_checksum_answered);
/// The submit answers before its PDF exists (the comment job renders it): the
/// checksum it answers is the one stored and the one printed in the PDF the job
/// builds from the committed answers.
async fn the_submit_answers_before_the_pdf_and_the_pdf_bears_the_checksum_answered(db: TestDb) {
    use opros::db::entities::response;
    let (fake, app) = installed_on(&db.url).await;
    let (_, token) = crate::support::portal::robot_link(&fake, &app).await;
    let (status, survey) = app.get_json(&format!("/api/v1/surveys/{token}")).await;
    assert_eq!(status, 200);
    let (status, done) = app
        .send_json(
            reqwest::Method::POST,
            &format!("/api/v1/surveys/{token}/submit"),
            &serde_json::json!({"answers": crate::support::full_answers(&survey)}),
        )
        .await;
    assert_eq!(status, 200, "{done}");
    let sha = done["report_sha256"].as_str().expect("checksum").to_owned();
    assert_eq!(sha.len(), 64);
    let id = survey["survey_id"].as_str().expect("id").to_owned();
    let stored = response::Entity::find_by_id(id.clone())
        .one(&app.state.db)
        .await
        .unwrap()
        .expect("answers stored with the answer");
    assert!(stored.answers.is_some());
    assert_eq!(stored.report_sha256.as_deref(), Some(sha.as_str()));

    app.run_outbox().await;
    assert_eq!(fake.timeline_comments().len(), 1);
    let stored = response::Entity::find_by_id(id)
        .one(&app.state.db)
        .await
        .unwrap()
        .expect("response");
    assert_eq!(stored.report_sha256.as_deref(), Some(sha.as_str()));
    let pdf = stored.report_pdf.expect("the job stored the PDF");
    if let Some(text) = pdf_text(&pdf) {
        assert!(text.contains(&sha), "the PDF's footer names the checksum");
    }
}
