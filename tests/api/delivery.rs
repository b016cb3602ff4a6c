//! Exactly-once delivery when the portal's answer is lost, and a purge that a real
//! uninstall cannot miss. The fake portal carries a call out and then answers 502
//! (protocol §9/§10: a 5xx says nothing about whether the call ran), and answers
//! our dead tokens the ways a deleted app's portal does.

use opros::db::entities::{invitation, outbox_job, response};
use opros::testing::fake_portal::{FakePortal, Fault, UninstalledAnswer};
use sea_orm::ActiveEnum;
use sea_orm::{ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{Value, json};

use crate::support::TestApp;
use crate::support::db::{TestDb, on_both_databases};
use crate::support::portal::{installed_on, patient_deal, robot_link};

async fn jobs_of(app: &TestApp, kind: &str) -> Vec<outbox_job::Model> {
    outbox_job::Entity::find()
        .filter(outbox_job::Column::Kind.eq(kind))
        .all(&app.state.db)
        .await
        .expect("jobs")
}

async fn invitations(app: &TestApp) -> usize {
    invitation::Entity::find()
        .all(&app.state.db)
        .await
        .expect("invitations")
        .len()
}

async fn portal_status(app: &TestApp, fake: &FakePortal) -> String {
    opros::local_app::portals::by_member(&app.state.db, &fake.member_id())
        .await
        .expect("portal read")
        .expect("portal row")
        .status
        .to_value()
}

/// Makes every pending job due now, as time passing would.
async fn make_due(app: &TestApp) {
    for job in outbox_job::Entity::find()
        .filter(outbox_job::Column::DoneAt.is_null())
        .all(&app.state.db)
        .await
        .expect("jobs")
    {
        let mut row: outbox_job::ActiveModel = job.into();
        row.run_at = Set(0);
        row.locked_until = Set(None);
        row.update(&app.state.db).await.expect("job updated");
    }
}

/// `ONAPPUNINSTALL` with the stored application token, as Bitrix24 (or a tab user
/// who read the token) sends it.
async fn uninstall_event(app: &TestApp, fake: &FakePortal, clean: &str, token: &str) -> u16 {
    let form = [
        ("event", "ONAPPUNINSTALL".to_owned()),
        ("data[CLEAN]", clean.to_owned()),
        ("auth[member_id]", fake.member_id()),
        ("auth[domain]", fake.domain()),
        ("auth[application_token]", token.to_owned()),
    ];
    app.http
        .post(app.url("/b24/events"))
        .form(&form)
        .send()
        .await
        .expect("event delivered")
        .status()
        .as_u16()
}

/// Opens the link and submits the full answers with these overrides.
async fn submit_with(app: &TestApp, token: &str, overrides: Value) -> (u16, Value) {
    let (status, survey) = app.get_json(&format!("/api/v1/surveys/{token}")).await;
    assert_eq!(status, 200, "{survey}");
    let mut answers = crate::support::full_answers(&survey);
    if let (Some(a), Some(o)) = (answers.as_object_mut(), overrides.as_object()) {
        a.extend(o.clone());
    }
    app.send_json(
        reqwest::Method::POST,
        &format!("/api/v1/surveys/{token}/submit"),
        &json!({ "answers": answers }),
    )
    .await
}

on_both_databases!(a_comment_stored_then_answered_502_is_posted_once);
async fn a_comment_stored_then_answered_502_is_posted_once(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let (_, token) = robot_link(&fake, &app).await;
    fake.fail_next("crm.timeline.comment.add", Fault::ProcessThenStatus(502), 1);
    let (status, body) = submit_with(&app, &token, json!({})).await;
    assert_eq!(status, 200, "{body}");
    app.run_outbox().await;
    // The comment is there, but the service heard 502: not sent again at once.
    assert_eq!(fake.timeline_comments().len(), 1);
    assert_eq!(fake.calls_of("crm.timeline.comment.add").len(), 1);
    // The job's next try finds its marker instead of posting a second comment.
    make_due(&app).await;
    app.run_outbox().await;
    assert_eq!(fake.timeline_comments().len(), 1, "exactly one comment");
    assert_eq!(fake.calls_of("crm.timeline.comment.add").len(), 1);
    let jobs = jobs_of(&app, "post_completion").await;
    assert_eq!(jobs.len(), 1);
    assert!(jobs[0].done_at.is_some(), "{:?}", jobs[0].last_error);
    assert!(jobs[0].dead_at.is_none());
}

on_both_databases!(a_robot_answer_sent_then_answered_502_is_done_not_dead);
async fn a_robot_answer_sent_then_answered_502_is_done_not_dead(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let deal = patient_deal(&fake);
    // The batch carrying the single-use event token runs, its answer is lost.
    fake.fail_next("batch", Fault::ProcessThenStatus(502), 1);
    let (_, r) = fake
        .run_robot("opros_send_survey", deal, &[])
        .await
        .expect("robot call delivered");
    assert_eq!(r.status(), 200);
    app.run_outbox().await;
    assert_eq!(fake.event_sends().len(), 1, "the event went through once");
    make_due(&app).await;
    app.run_outbox().await;
    let jobs = jobs_of(&app, "return_robot_values").await;
    assert_eq!(jobs.len(), 1);
    assert!(jobs[0].dead_at.is_none(), "{:?}", jobs[0].last_error);
    assert!(jobs[0].done_at.is_some(), "{:?}", jobs[0].last_error);
    assert_eq!(fake.event_sends().len(), 1, "one event");
}

/// A genuine uninstall after which the portal answers our tokens with `answer`.
async fn uninstall_answered(db_url: &str, answer: UninstalledAnswer) -> (FakePortal, TestApp) {
    let (fake, app) = installed_on(db_url).await;
    let _ = robot_link(&fake, &app).await;
    fake.answer_after_uninstall(answer);
    let r = fake.uninstall(true).await.expect("event delivered");
    assert_eq!(r.status(), 200);
    app.run_outbox().await;
    (fake, app)
}

#[tokio::test]
async fn a_genuine_uninstall_is_confirmed_by_each_refusal_of_a_deleted_app() {
    for answer in [
        UninstalledAnswer::InvalidToken,
        UninstalledAnswer::NoAuthFound,
        UninstalledAnswer::PortalDeleted,
    ] {
        let db_url = crate::support::db::sqlite_for_process();
        let (fake, app) = uninstall_answered(&db_url, answer).await;
        assert_eq!(invitations(&app).await, 0, "{answer:?}: purged");
        assert_eq!(
            portal_status(&app, &fake).await,
            "uninstalled",
            "{answer:?}"
        );
        let jobs = jobs_of(&app, "confirm_uninstall").await;
        assert!(
            jobs.iter().all(|j| j.done_at.is_some()),
            "{answer:?}: {jobs:?}"
        );
    }
}

on_both_databases!(invalid_client_never_confirms_and_the_confirmation_never_dies);
async fn invalid_client_never_confirms_and_the_confirmation_never_dies(db: TestDb) {
    let (fake, app) = uninstall_answered(&db.url, UninstalledAnswer::InvalidClient).await;
    // More tries than make any other job dead.
    for _ in 0..12 {
        make_due(&app).await;
        app.run_outbox().await;
    }
    assert_eq!(
        invitations(&app).await,
        1,
        "a mistyped secret confirms nothing"
    );
    assert_eq!(portal_status(&app, &fake).await, "installed");
    let jobs = jobs_of(&app, "confirm_uninstall").await;
    assert_eq!(jobs.len(), 1);
    assert!(jobs[0].done_at.is_none() && jobs[0].dead_at.is_none());
    assert!(jobs[0].attempts > 10, "{}", jobs[0].attempts);
}

on_both_databases!(clean_1_after_a_forged_clean_0_still_purges);
async fn clean_1_after_a_forged_clean_0_still_purges(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let _ = robot_link(&fake, &app).await;
    // The portal is busy: the forged CLEAN=0's confirmation waits.
    fake.fail_next("app.info", Fault::QueryLimit, 200);
    let token = fake.application_token();
    assert_eq!(uninstall_event(&app, &fake, "0", &token).await, 200);
    let r = fake.uninstall(true).await.expect("event delivered");
    assert_eq!(r.status(), 200);
    let pending: Vec<outbox_job::Model> = jobs_of(&app, "confirm_uninstall")
        .await
        .into_iter()
        .filter(|j| j.done_at.is_none())
        .collect();
    assert_eq!(pending.len(), 1, "one confirmation per portal: {pending:?}");
    assert_eq!(pending[0].payload["clean"], json!(true));

    fake.clear_faults("app.info");
    make_due(&app).await;
    app.run_outbox().await;
    assert_eq!(portal_status(&app, &fake).await, "uninstalled");
    assert_eq!(invitations(&app).await, 0, "CLEAN=1 is not lost");
}

on_both_databases!(clean_1_after_the_portal_was_purged_without_it_still_purges);
async fn clean_1_after_the_portal_was_purged_without_it_still_purges(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let _ = robot_link(&fake, &app).await;
    let token = fake.application_token();
    // A CLEAN=0 (a tab user's, sent as the admin deletes the app) is confirmed first.
    assert_eq!(uninstall_event(&app, &fake, "0", &token).await, 200);
    let r = fake.uninstall(false).await.expect("event delivered");
    assert_eq!(r.status(), 200);
    app.run_outbox().await;
    assert_eq!(portal_status(&app, &fake).await, "uninstalled");
    assert_eq!(invitations(&app).await, 1, "CLEAN=0 keeps the data");

    // Someone without the stored token is refused, and nothing goes.
    assert_eq!(
        uninstall_event(&app, &fake, "1", "guessed-token").await,
        403
    );
    app.run_outbox().await;
    assert_eq!(invitations(&app).await, 1);

    // The admin's CLEAN=1 comes after: accepted, purged without asking the portal.
    assert_eq!(uninstall_event(&app, &fake, "1", &token).await, 200);
    app.run_outbox().await;
    assert_eq!(invitations(&app).await, 0);
    let jobs = jobs_of(&app, "confirm_uninstall").await;
    assert!(jobs.iter().all(|j| j.dead_at.is_none()), "{jobs:?}");
}

on_both_databases!(free_text_built_to_overflow_the_pdf_is_accepted_and_delivered);
async fn free_text_built_to_overflow_the_pdf_is_accepted_and_delivered(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let (_, token) = robot_link(&fake, &app).await;
    // Within each answer's length limit, but one PDF row per line: ~6 000 rows.
    let long = format!("x{}x", "\n".repeat(1_998));
    let short = format!("x{}x", "\n".repeat(998));
    let (status, body) = submit_with(
        &app,
        &token,
        json!({
            "complaints": long,
            "medications_list": long,
            "surgeries_details": short,
            "allergy_details": short,
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    app.run_outbox().await;
    let comments = fake.timeline_comments();
    assert_eq!(comments.len(), 1, "{comments:?}");
    assert_eq!(comments[0].files.len(), 1, "with its PDF");
}

on_both_databases!(a_result_whose_pdf_cannot_be_built_still_reaches_the_deal);
async fn a_result_whose_pdf_cannot_be_built_still_reaches_the_deal(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let (_, token) = robot_link(&fake, &app).await;
    let (status, body) = submit_with(&app, &token, json!({})).await;
    assert_eq!(status, 200, "{body}");
    app.run_outbox().await;
    assert_eq!(fake.timeline_comments().len(), 1);
    // Answers stored before free text was bounded, and another survey's comment:
    // the job builds the PDF again, and it runs past the page limit.
    let id = body["survey_id"].as_str().expect("id").to_owned();
    let row = response::Entity::find_by_id(id.clone())
        .one(&app.state.db)
        .await
        .expect("read")
        .expect("response");
    let mut answers = row.answers.clone().expect("answers");
    for q in ["complaints", "medications_list"] {
        answers[q] = json!("x\n".repeat(20_000));
    }
    let mut row: response::ActiveModel = row.into();
    row.answers = Set(Some(answers));
    row.report_pdf = Set(None);
    row.update(&app.state.db).await.expect("answers replaced");
    let job = jobs_of(&app, "post_completion").await.remove(0);
    let mut job: outbox_job::ActiveModel = job.into();
    job.done_at = Set(None);
    job.result = Set(None);
    job.attempts = Set(0);
    job.run_at = Set(0);
    job.update(&app.state.db).await.expect("job queued again");
    app.run_outbox().await;

    let comments = fake.timeline_comments();
    assert_eq!(comments.len(), 2, "{comments:?}");
    let last = &comments[1];
    assert!(last.files.is_empty());
    assert!(
        last.comment.contains("PDF-отчёт построить не удалось"),
        "{}",
        last.comment
    );
    assert!(
        last.comment.trim_end().ends_with(&format!("Опрос № {id}")),
        "{}",
        last.comment
    );
    let job = jobs_of(&app, "post_completion").await.remove(0);
    assert!(job.done_at.is_some(), "{:?}", job.last_error);
}

on_both_databases!(
    a_draft_racing_a_submit_stays_off_the_completed_row_and_the_link_forgets_the_name
);
async fn a_draft_racing_a_submit_stays_off_the_completed_row_and_the_link_forgets_the_name(
    db: TestDb,
) {
    let (fake, app) = installed_on(&db.url).await;
    let (_, token) = robot_link(&fake, &app).await;
    let (_, survey) = app.get_json(&format!("/api/v1/surveys/{token}")).await;
    assert!(
        !survey["patient_name"]
            .as_str()
            .unwrap_or_default()
            .is_empty()
    );
    let id = survey["survey_id"].as_str().expect("id").to_owned();
    // The draft request read the invitation before the submit committed.
    let stale = invitation::Entity::find_by_id(id.clone())
        .one(&app.state.db)
        .await
        .expect("read")
        .expect("invitation");
    let (status, body) = submit_with(&app, &token, json!({})).await;
    assert_eq!(status, 200, "{body}");
    let late = opros::invitations::lifecycle::save_draft(
        &app.state,
        &stale,
        serde_json::from_value(json!({"complaints": "черновик после отправки"})).expect("answers"),
    )
    .await;
    drop(late);
    let row = response::Entity::find_by_id(id)
        .one(&app.state.db)
        .await
        .expect("read")
        .expect("response");
    assert!(row.draft.is_none(), "{:?}", row.draft);
    assert!(row.answers.is_some());

    let (status, survey) = app.get_json(&format!("/api/v1/surveys/{token}")).await;
    assert_eq!(status, 200);
    assert_eq!(survey["status"], "completed");
    assert_eq!(survey["patient_name"], "", "{survey}");
    assert!(!survey.to_string().contains("Смирнова"), "{survey}");
}

on_both_databases!(a_comment_job_put_back_by_the_admin_looks_for_its_comment_first);
async fn a_comment_job_put_back_by_the_admin_looks_for_its_comment_first(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let (_, token) = robot_link(&fake, &app).await;
    // Posted, but every answer was lost until the job went dead.
    fake.fail_next("crm.timeline.comment.add", Fault::ProcessThenStatus(502), 1);
    let (status, body) = submit_with(&app, &token, json!({})).await;
    assert_eq!(status, 200, "{body}");
    app.run_outbox().await;
    assert_eq!(fake.timeline_comments().len(), 1);
    let job = jobs_of(&app, "post_completion").await.remove(0);
    assert!(job.done_at.is_none() && job.last_error.is_some(), "{job:?}");
    let mut dead: outbox_job::ActiveModel = job.clone().into();
    dead.dead_at = Set(Some(chrono::Utc::now()));
    dead.update(&app.state.db).await.expect("job dead");
    // «Повторить»: the attempt count starts again.
    let revived =
        opros::outbox::jobs::revive(&app.state.db, job.id, job.portal_id, chrono::Utc::now())
            .await
            .expect("revive");
    assert!(revived);
    app.run_outbox().await;
    assert_eq!(fake.timeline_comments().len(), 1, "no second comment");
    let job = jobs_of(&app, "post_completion").await.remove(0);
    assert!(job.done_at.is_some(), "{:?}", job.last_error);
}
