//! Attacks on the callbacks Bitrix24 makes and on the patient's link: forged events
//! with the application token a tab user can read, bodies built to exhaust the
//! stack, BB code typed by a patient, answers read back through the link, and
//! concurrent submits. Each test performs the attack over HTTP and asserts the safe
//! outcome.

use opros::db::entities::{invitation, outbox_job};
use opros::testing::fake_portal::{FakePortal, Fault};
use reqwest::StatusCode;
use sea_orm::ActiveEnum;
use sea_orm::{ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{Value, json};

use crate::support::db::{TestDb, on_both_databases};
use crate::support::portal::{installed_on, patient_deal, robot_link};
use crate::support::{TestApp, logs, spawn_app_on};

const LINK_FIELD: &str = "UF_CRM_OPROS_LINK";
const BB_ANSWER: &str = "[URL=https://evil.example]Результаты готовы[/URL] [USER=1]";

async fn invitations(app: &TestApp) -> Vec<invitation::Model> {
    invitation::Entity::find()
        .all(&app.state.db)
        .await
        .expect("invitations")
}

async fn portal_status(app: &TestApp, fake: &FakePortal) -> String {
    opros::local_app::portals::by_member(&app.state.db, &fake.member_id())
        .await
        .expect("portal read")
        .expect("portal row")
        .status
        .to_value()
}

/// What a tab user can send: the event with the application token from their own
/// deal-tab POST (the fake portal sends `APPLICATION_TOKEN` there, as Bitrix24 does).
async fn forged_event(app: &TestApp, fake: &FakePortal, fields: &[(&str, String)]) -> (u16, Value) {
    let mut form: Vec<(String, String)> = vec![
        ("auth[member_id]".into(), fake.member_id()),
        ("auth[domain]".into(), fake.domain()),
        ("auth[application_token]".into(), fake.application_token()),
    ];
    form.extend(fields.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    let r = app
        .http
        .post(app.url("/b24/events"))
        .form(&form)
        .send()
        .await
        .expect("event delivered");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
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

async fn assert_alive(app: &TestApp) {
    let (status, body) = app.get_json("/healthz").await;
    assert_eq!(status, 200, "{body}");
}

on_both_databases!(forged_uninstall_with_the_tab_token_deletes_nothing);
async fn forged_uninstall_with_the_tab_token_deletes_nothing(db: TestDb) {
    forged_uninstall_on(&db.url).await;
}

async fn forged_uninstall_on(db_url: &str) {
    let (fake, app) = installed_on(db_url).await;
    let (deal, _) = robot_link(&fake, &app).await;
    let (status, body) = forged_event(
        &app,
        &fake,
        &[
            ("event", "ONAPPUNINSTALL".into()),
            ("data[CLEAN]", "1".into()),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // The confirmation job asks the portal, which still accepts our tokens.
    app.run_outbox().await;
    assert_eq!(invitations(&app).await.len(), 1, "nothing may be deleted");
    assert_eq!(portal_status(&app, &fake).await, "installed");
    assert!(fake.calls_of("app.info").iter().any(|c| c.error.is_none()));
    // The app keeps working for the clinic.
    let (_, r) = fake
        .run_robot("opros_send_survey", deal, &[("reuse_active", "N")])
        .await
        .expect("robot call delivered");
    assert_eq!(r.status(), 200);
    assert_alive(&app).await;
}

on_both_databases!(genuine_uninstall_waits_out_an_unreachable_portal_then_purges);
async fn genuine_uninstall_waits_out_an_unreachable_portal_then_purges(db: TestDb) {
    genuine_uninstall_on(&db.url).await;
}

async fn genuine_uninstall_on(db_url: &str) {
    let (fake, app) = installed_on(db_url).await;
    let (deal, _) = robot_link(&fake, &app).await;
    // The portal is overloaded when the job first asks: nothing is deleted yet.
    fake.fail_next("app.info", Fault::QueryLimit, 50);
    let r = fake.uninstall(true).await.expect("event delivered");
    assert_eq!(r.status(), 200);
    app.run_outbox().await;
    assert_eq!(invitations(&app).await.len(), 1, "kept until confirmed");
    let pending = outbox_job::Entity::find()
        .filter(outbox_job::Column::Kind.eq("confirm_uninstall"))
        .filter(outbox_job::Column::DoneAt.is_null())
        .filter(outbox_job::Column::DeadAt.is_null())
        .all(&app.state.db)
        .await
        .expect("jobs");
    assert_eq!(pending.len(), 1, "the confirmation is retried later");

    fake.clear_faults("app.info");
    make_due(&app).await;
    app.run_outbox().await;
    assert!(invitations(&app).await.is_empty(), "purged once confirmed");
    assert_eq!(portal_status(&app, &fake).await, "uninstalled");
    let (_, r) = fake
        .run_robot("opros_send_survey", deal, &[])
        .await
        .expect("robot call delivered");
    assert!(r.status().is_client_error(), "{}", r.status());
}

on_both_databases!(forged_deal_add_for_an_old_deal_leaves_its_link_alone);
async fn forged_deal_add_for_an_old_deal_leaves_its_link_alone(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let (deal, _) = robot_link(&fake, &app).await;
    let link = fake.deal(deal).expect("deal")[LINK_FIELD].clone();
    assert!(link.as_str().is_some_and(|l| l.contains("/s/")), "{link}");
    fake.backdate_deal(deal, std::time::Duration::from_secs(3 * 24 * 3600));
    // An old deal without a link, too.
    let other = patient_deal(&fake);
    fake.backdate_deal(other, std::time::Duration::from_secs(3 * 24 * 3600));
    for id in [deal, other] {
        let (status, body) = forged_event(
            &app,
            &fake,
            &[
                ("event", "ONCRMDEALADD".into()),
                ("data[FIELDS][ID]", id.to_string()),
            ],
        )
        .await;
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["code"], "event_not_confirmed");
    }
    app.run_outbox().await;
    assert_eq!(fake.deal(deal).expect("deal")[LINK_FIELD], link);
    assert!(
        fake.deal(other).expect("deal")[LINK_FIELD]
            .as_str()
            .is_none_or(str::is_empty)
    );
    assert_eq!(invitations(&app).await.len(), 1, "no invitation for them");
    // A deal that does not exist is refused the same way.
    let (status, _) = forged_event(
        &app,
        &fake,
        &[
            ("event", "ONCRMDEALADD".into()),
            ("data[FIELDS][ID]", "987654".into()),
        ],
    )
    .await;
    assert_eq!(status, 409);
}

on_both_databases!(deal_add_for_a_new_deal_still_writes_its_link);
async fn deal_add_for_a_new_deal_still_writes_its_link(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let deal = patient_deal(&fake);
    let (status, body) = forged_event(
        &app,
        &fake,
        &[
            ("event", "ONCRMDEALADD".into()),
            ("data[FIELDS][ID]", deal.to_string()),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    app.run_outbox().await;
    let link = fake.deal(deal).expect("deal")[LINK_FIELD].clone();
    assert!(link.as_str().is_some_and(|l| l.contains("/s/")), "{link}");
}

fn nested(depth: usize) -> String {
    format!("a{}=1", "[a]".repeat(depth))
}

on_both_databases!(deep_nesting_is_refused_on_every_callback_and_the_process_lives);
async fn deep_nesting_is_refused_on_every_callback_and_the_process_lives(db: TestDb) {
    let (fake, _) = installed_on(&db.url).await;
    let app = crate::support::portal::app_for(
        &fake,
        &[
            ("BITRIX24_INCOMING_TOKEN", "incoming-token-1234567890"),
            (
                "BITRIX24_OUTGOING_WEBHOOK_TOKEN",
                "outgoing-token-1234567890",
            ),
        ],
    )
    .await;
    let body = nested(50_000);
    assert!(body.len() > 140 * 1024);
    for path in [
        "/b24/events",
        "/b24/robot/send-survey",
        "/api/bitrix/webhook",
        "/api/v1/bitrix/webhook",
    ] {
        let r = app
            .http
            .post(app.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.clone())
            .send()
            .await
            .expect("answered");
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{path}");
        let json: Value = r.json().await.expect("error body");
        assert_eq!(json["code"], "form_too_deep", "{path}: {json}");
        assert_alive(&app).await;
    }
    // The iframe POSTs go through the same decoder: refused, never a crash.
    for path in [
        "/b24/install",
        "/b24/placement/deal-tab",
        "/b24/tab/new-link",
        "/b24/app",
        "/b24/app/action",
    ] {
        let r = app
            .http
            .post(app.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.clone())
            .send()
            .await
            .expect("answered");
        assert!(r.status().is_client_error(), "{path}: {}", r.status());
        assert_alive(&app).await;
    }
    let r = app
        .http
        .get(app.url(&format!("/api/v1/bitrix/webhook?{}", nested(15_000))))
        .send()
        .await
        .expect("answered");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let json: Value = r.json().await.expect("error body");
    assert_eq!(json["code"], "form_too_deep", "{json}");
    // Percent-encoded brackets count the same.
    let encoded = format!("event=ONAPPUNINSTALL&a{}=1", "%5Ba%5D".repeat(9));
    let r = app
        .http
        .post(app.url("/b24/events"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encoded)
        .send()
        .await
        .expect("answered");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_alive(&app).await;
}

on_both_databases!(too_many_keys_and_non_utf8_bodies_are_refused);
async fn too_many_keys_and_non_utf8_bodies_are_refused(db: TestDb) {
    let app = spawn_app_on(&db.url, &[]).await;
    let many: Vec<String> = (0..5_000).map(|i| format!("k{i}=v")).collect();
    for path in [
        "/b24/events",
        "/b24/robot/send-survey",
        "/api/bitrix/webhook",
    ] {
        let r = app
            .http
            .post(app.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(many.join("&"))
            .send()
            .await
            .expect("answered");
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{path}");
        let json: Value = r.json().await.expect("error body");
        assert_eq!(json["code"], "form_too_many_keys", "{path}: {json}");
    }
    let r = app
        .http
        .post(app.url("/b24/events"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(b"event=ONAPPUNINSTALL&auth%5Bmember_id%5D=\xff\xfe\xfd".to_vec())
        .send()
        .await
        .expect("answered");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let json: Value = r.json().await.expect("error body");
    assert_eq!(json["code"], "bad_encoding", "{json}");
    assert_alive(&app).await;
}

/// Opens the link and submits the full set of answers with these overrides.
async fn submit_with(app: &TestApp, token: &str, overrides: Value) -> (u16, Value, String) {
    let (status, survey) = app.get_json(&format!("/api/v1/surveys/{token}")).await;
    assert_eq!(status, 200, "{survey}");
    let mut answers = crate::support::full_answers(&survey);
    if let (Some(a), Some(o)) = (answers.as_object_mut(), overrides.as_object()) {
        a.extend(o.clone());
    }
    let (status, body) = app
        .send_json(
            reqwest::Method::POST,
            &format!("/api/v1/surveys/{token}/submit"),
            &json!({ "answers": answers }),
        )
        .await;
    let id = survey["survey_id"].as_str().unwrap_or_default().to_owned();
    (status, body, id)
}

on_both_databases!(bb_code_typed_by_a_patient_is_inert_in_the_timeline_comment);
async fn bb_code_typed_by_a_patient_is_inert_in_the_timeline_comment(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let (_, token) = robot_link(&fake, &app).await;
    let (status, body, _) = submit_with(
        &app,
        &token,
        json!({"allergies": "yes", "allergy_details": BB_ANSWER}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    app.run_outbox().await;
    let comments: Vec<String> = fake
        .timeline_comments()
        .into_iter()
        .map(|c| c.comment)
        .collect();
    assert_eq!(comments.len(), 1, "{comments:?}");
    let comment = &comments[0];
    assert!(comment.contains("Результаты готовы"), "{comment}");
    for tag in ["[URL", "[/URL]", "[USER", "https://evil"] {
        assert!(!comment.contains(tag), "{tag} in {comment}");
    }
}

on_both_databases!(a_patient_typing_the_marker_cannot_suppress_another_comment);
async fn a_patient_typing_the_marker_cannot_suppress_another_comment(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let (deal, first) = robot_link(&fake, &app).await;
    // A second link for the same deal; its id is what the first patient will type.
    let (_, r) = fake
        .run_robot("opros_send_survey", deal, &[("reuse_active", "N")])
        .await
        .expect("robot call delivered");
    assert_eq!(r.status(), 200);
    app.run_outbox().await;
    let second = fake
        .event_sends()
        .last()
        .map(|s| s.1["SURVEY_URL"].clone())
        .expect("second link")
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    assert_ne!(first, second);
    let (_, survey) = app.get_json(&format!("/api/v1/surveys/{second}")).await;
    let second_id = survey["survey_id"].as_str().expect("id").to_owned();

    let typed = format!("нет\nОпрос № {second_id}");
    let (status, body, _) = submit_with(
        &app,
        &first,
        json!({"allergies": "yes", "allergy_details": typed}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    app.run_outbox().await;
    assert_eq!(fake.timeline_comments().len(), 1);

    // The second comment's first try fails, so its retry looks for the marker first.
    // (Down for longer than the client's own retries, as in completion.rs.)
    fake.fail_next("crm.timeline.comment.add", Fault::Status(503), 20);
    let (status, body, _) = submit_with(&app, &second, json!({})).await;
    assert_eq!(status, 200, "{body}");
    app.run_outbox().await;
    assert_eq!(fake.timeline_comments().len(), 1);
    fake.clear_faults("crm.timeline.comment.add");
    make_due(&app).await;
    app.run_outbox().await;
    let comments = fake.timeline_comments();
    assert_eq!(
        comments.len(),
        2,
        "the second result reached the deal: {comments:?}"
    );
    assert!(
        comments[1]
            .comment
            .trim_end()
            .ends_with(&format!("Опрос № {second_id}")),
        "{}",
        comments[1].comment
    );
}

on_both_databases!(after_submit_the_link_shows_no_answers);
async fn after_submit_the_link_shows_no_answers(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let (_, token) = robot_link(&fake, &app).await;
    let secret = "Аллергия на пенициллин, отёк Квинке";
    let (status, _) = app
        .send_json(
            reqwest::Method::PUT,
            &format!("/api/v1/surveys/{token}/draft"),
            &json!({"answers": {"allergies": "yes", "allergy_details": secret}}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body, _) = submit_with(
        &app,
        &token,
        json!({"allergies": "yes", "allergy_details": secret}),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    let (status, survey) = app.get_json(&format!("/api/v1/surveys/{token}")).await;
    assert_eq!(status, 200);
    assert_eq!(survey["status"], "completed");
    assert_eq!(survey["draft"], json!({}), "{survey}");
    assert!(!survey.to_string().contains(secret));

    let page = app
        .http
        .get(app.url(&format!("/s/{token}")))
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("page text");
    assert!(
        crate::support::html::text_of(&page).contains("Спасибо"),
        "{page}"
    );
    assert!(!page.contains(secret));
    assert!(!page.contains("пенициллин"));
}

on_both_databases!(concurrent_submits_render_one_pdf_and_post_one_comment);
async fn concurrent_submits_render_one_pdf_and_post_one_comment(db: TestDb) {
    concurrent_submits_on(&db.url).await;
}

async fn concurrent_submits_on(db_url: &str) {
    let log = logs::capture();
    let (fake, app) = installed_on(db_url).await;
    let (_, token) = robot_link(&fake, &app).await;
    let (_, survey) = app.get_json(&format!("/api/v1/surveys/{token}")).await;
    let id = survey["survey_id"].as_str().expect("id").to_owned();
    let answers = json!({ "answers": crate::support::full_answers(&survey) });
    let path = format!("/api/v1/surveys/{token}/submit");
    let submits = (0..8).map(|_| app.send_json(reqwest::Method::POST, &path, &answers));
    let statuses: Vec<u16> = futures::future::join_all(submits)
        .await
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 409),
        "{statuses:?}"
    );
    app.run_outbox().await;
    assert_eq!(fake.timeline_comments().len(), 1);
    let rendered = log
        .text()
        .lines()
        .filter(|l| l.contains("Отчёт PDF построен") && l.contains(&id))
        .count();
    assert_eq!(rendered, 1, "one PDF for one survey");
}

on_both_databases!(a_submit_that_stopped_after_its_claim_still_reaches_the_deal);
async fn a_submit_that_stopped_after_its_claim_still_reaches_the_deal(db: TestDb) {
    use opros::db::entities::response;
    let (fake, app) = installed_on(&db.url).await;
    let (_, token) = robot_link(&fake, &app).await;
    let (status, body, id) = submit_with(&app, &token, json!({})).await;
    assert_eq!(status, 200, "{body}");
    app.run_outbox().await;
    assert_eq!(fake.timeline_comments().len(), 1);
    // What a request that died between its claim and its PDF leaves behind: the
    // answers and a comment job never tried, no PDF.
    let row = response::Entity::find_by_id(id.clone())
        .one(&app.state.db)
        .await
        .expect("read")
        .expect("answers stored");
    let mut row: response::ActiveModel = row.into();
    row.report_pdf = Set(None);
    row.report_sha256 = Set(None);
    row.update(&app.state.db).await.expect("update");
    let job = outbox_job::Entity::find()
        .filter(outbox_job::Column::Kind.eq("post_completion"))
        .one(&app.state.db)
        .await
        .expect("read")
        .expect("job");
    let mut job: outbox_job::ActiveModel = job.into();
    job.done_at = Set(None);
    job.attempts = Set(0);
    job.update(&app.state.db).await.expect("update");
    make_due(&app).await;
    app.run_outbox().await;
    let comments = fake.timeline_comments();
    assert_eq!(comments.len(), 2);
    assert!(!comments[1].files.is_empty(), "the PDF is attached");
    let stored = response::Entity::find_by_id(id)
        .one(&app.state.db)
        .await
        .expect("read")
        .expect("row");
    assert!(
        stored.report_pdf.is_some(),
        "the job's PDF is kept for the tab"
    );
    assert!(stored.report_sha256.is_some());
}

/// Install-kind events make the service ask the OAuth server (`ONAPPINSTALL`: the
/// offered refresh token) or the portal (`ONAPPUPDATE` with a new token: who sent
/// it). Anyone who read the application token and `member_id` from a tab POST can
/// send them in a loop: the guard bounds what that spends, and an answer that
/// confirmed nobody trusts nobody.
#[tokio::test]
async fn install_kind_events_in_a_loop_are_bounded_by_the_guard() {
    let db = crate::support::db::sqlite();
    let (fake, app) = installed_on(&db.url).await;
    let stored_token = fake.application_token();
    // From an address of its own: the installing admin's (this test's) address has
    // passed a check for this portal and is trusted by the guard.
    let attacker = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 77]))
        .build()
        .expect("client");
    let send = |event: &'static str, extra: Vec<(&'static str, String)>| {
        let mut form: Vec<(String, String)> = vec![
            ("event".into(), event.into()),
            ("auth[member_id]".into(), fake.member_id()),
            ("auth[domain]".into(), fake.domain()),
        ];
        form.extend(extra.into_iter().map(|(k, v)| (k.to_owned(), v)));
        let request = attacker.post(app.url("/b24/events")).form(&form).send();
        async move {
            let r = request.await.expect("event delivered");
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            (status, body["code"].as_str().unwrap_or_default().to_owned())
        }
    };

    // ONAPPINSTALL with the genuine application token and a refresh token the OAuth
    // server refuses: "already installed, nothing changed" — 20 times at most.
    let oauth_before = fake.oauth_request_count();
    let mut answers = Vec::new();
    for n in 0..30 {
        answers.push(
            send(
                "ONAPPINSTALL",
                vec![
                    ("auth[application_token]", stored_token.clone()),
                    ("auth[access_token]", format!("junk-access-{n}")),
                    ("auth[refresh_token]", format!("junk-refresh-{n}")),
                ],
            )
            .await,
        );
    }
    let asked = fake.oauth_request_count() - oauth_before;
    assert!(asked <= 20, "the OAuth server was asked {asked} times");
    let refused = answers
        .iter()
        .filter(|(s, c)| *s == 429 && c == "too_many_attempts")
        .count();
    assert!(refused >= 10, "{answers:?}");

    // ONAPPUPDATE naming another application token with a junk access token: each
    // makes the portal check the token, 10 times at most from one address.
    let rest_before = fake.http_request_count();
    let mut answers = Vec::new();
    for n in 0..30 {
        answers.push(
            send(
                "ONAPPUPDATE",
                vec![
                    ("auth[application_token]", format!("forged-app-token-{n}")),
                    ("auth[access_token]", format!("junk-access-{n}")),
                ],
            )
            .await,
        );
    }
    let checked = fake.http_request_count() - rest_before;
    assert!(checked <= 10, "the portal was asked {checked} times");
    assert!(
        answers
            .iter()
            .filter(|(s, c)| *s == 429 && c == "too_many_attempts")
            .count()
            >= 20,
        "{answers:?}"
    );
    assert!(
        answers.iter().all(|(s, _)| [403, 429].contains(s)),
        "{answers:?}"
    );
    // Nothing changed: robots still carry the stored token and are accepted.
    let (_, r) = fake
        .run_robot("opros_send_survey", patient_deal(&fake), &[])
        .await
        .expect("robot call delivered");
    assert_eq!(r.status(), 200);
    assert_alive(&app).await;
}
