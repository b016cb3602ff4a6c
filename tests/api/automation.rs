//! The survey result in the clinic's automation (issue #16, points 1, 3, 4, 6): app
//! triggers and the badge registered on install, triggers executed once per
//! completion, the red-flag activity, the responsible's notification without any
//! answer, the webhook setup's to-do, and a missing `im` scope degrading cleanly.

use opros::db::entities::{outbox_job, portal};
use opros::outbox::automation::{BADGE_CODE, TRIGGER_COMPLETED, TRIGGER_RED_FLAGS};
use opros::testing::fake_portal::{FakePortal, Fault, OWNER_DEAL};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};
use serde_json::Value;

use crate::support::TestApp;
use crate::support::db::{TestDb, on_both_databases};
use crate::support::portal::{
    app_for, app_for_db, complete_survey, fake, install, installed_on, press_seen,
};

/// Words of the distinctive free-text answer `full_answers` types.
const ANSWER_WORDS: [&str; 3] = ["пенициллин", "крапивница", "Головная боль"];

async fn registration(app: &TestApp) -> Vec<Value> {
    let row = portal::Entity::find()
        .one(&app.state.db)
        .await
        .unwrap()
        .unwrap();
    row.registration.unwrap()["steps"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn step<'a>(steps: &'a [Value], what: &str) -> &'a Value {
    steps
        .iter()
        .find(|s| s["what"].as_str().is_some_and(|w| w.contains(what)))
        .unwrap_or_else(|| panic!("no step {what}: {steps:?}"))
}

async fn automate_job(app: &TestApp) -> outbox_job::Model {
    outbox_job::Entity::find()
        .filter(outbox_job::Column::Kind.eq("automate"))
        .one(&app.state.db)
        .await
        .unwrap()
        .expect("an automation job per completed survey")
}

fn runs_for(fake: &FakePortal, deal: u64) -> Vec<String> {
    fake.trigger_runs()
        .into_iter()
        .filter(|(_, t, id)| *t == OWNER_DEAL && *id == deal)
        .map(|(code, _, _)| code)
        .collect()
}

on_both_databases!(install_registers_triggers_badge_and_the_seen_event_once);
async fn install_registers_triggers_badge_and_the_seen_event_once(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    // A reinstall registers again: nothing doubles.
    install(&fake, &app).await;
    let triggers = fake.triggers();
    assert_eq!(
        triggers,
        vec![
            (TRIGGER_COMPLETED.to_owned(), "Анкета заполнена".to_owned()),
            (
                TRIGGER_RED_FLAGS.to_owned(),
                "Анкета: есть отметки для врача".to_owned()
            ),
        ]
    );
    let badges = fake.badges();
    assert_eq!(badges.len(), 1, "{badges:?}");
    assert_eq!(badges[0]["code"], BADGE_CODE);
    assert_eq!(badges[0]["type"], "failure");
    let seen: Vec<Value> = fake
        .event_bindings()
        .into_iter()
        .filter(|e| {
            e["event"]
                .as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case("ONCRMTIMELINEITEMACTION"))
        })
        .collect();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        seen[0]["handler"]
            .as_str()
            .is_some_and(|h| h.ends_with("/b24/events")),
        "{seen:?}"
    );
    let steps = registration(&app).await;
    for what in [
        "Анкета заполнена»",
        "есть отметки для врача»",
        "Красный значок",
        "ONCRMTIMELINEITEMACTION",
    ] {
        assert_eq!(step(&steps, what)["ok"], true, "{what}: {steps:?}");
    }
}

on_both_databases!(a_flagged_completion_fires_both_triggers_once_and_moves_the_stage);
async fn a_flagged_completion_fires_both_triggers_once_and_moves_the_stage(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    fake.place_trigger(OWNER_DEAL, TRIGGER_COMPLETED, "C3:PREPARATION");
    let deal = complete_survey(&fake, &app).await;
    app.run_outbox().await;
    assert_eq!(
        runs_for(&fake, deal),
        vec![TRIGGER_COMPLETED.to_owned(), TRIGGER_RED_FLAGS.to_owned()]
    );
    assert_eq!(fake.deal(deal).unwrap()["STAGE_ID"], "C3:PREPARATION");
    // With the installer's token: an administrator in application context (§A1).
    assert!(
        fake.calls_of("crm.automation.trigger.execute")
            .iter()
            .all(|c| c.status == 200)
    );

    // The job runs again as if its worker died before recording Done: nothing fires
    // twice, no second activity.
    let job = automate_job(&app).await;
    assert!(job.done_at.is_some(), "{job:?}");
    let mut row: outbox_job::ActiveModel = job.into();
    row.done_at = Set(None);
    row.run_at = Set(0);
    row.attempts = Set(1);
    row.update(&app.state.db).await.unwrap();
    let db_url = app.stop().await;
    let app = app_for_db(&fake, &db_url, &[]).await;
    app.run_outbox().await;
    assert!(automate_job(&app).await.done_at.is_some());
    assert_eq!(runs_for(&fake, deal).len(), 2, "{:?}", fake.trigger_runs());
    assert_eq!(fake.activities().len(), 1);
}

on_both_databases!(the_red_flag_activity_names_titles_only_and_carries_the_badge);
async fn the_red_flag_activity_names_titles_only_and_carries_the_badge(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let deal = complete_survey(&fake, &app).await;
    app.run_outbox().await;
    let activities = fake.activities();
    assert_eq!(activities.len(), 1, "{activities:?}");
    let a = &activities[0];
    assert_eq!(
        (a.owner_type_id, a.owner_id, a.completed),
        (OWNER_DEAL, deal, false)
    );
    assert_eq!(a.fields["badgeCode"], BADGE_CODE);
    // Sent form-encoded: numbers arrive as text.
    assert_eq!(a.fields["responsibleId"], "1", "the deal's ASSIGNED_BY_ID");
    let job = automate_job(&app).await;
    let invitation = job.payload["invitation"].as_str().unwrap().to_owned();
    assert_eq!(a.fields["originId"], invitation.as_str());
    let header = a.layout["header"]["title"].as_str().unwrap();
    assert!(
        header.starts_with("Анкета: ") && header.ends_with(" для врача"),
        "{header}"
    );
    let tags = a.layout["header"]["tags"].as_object().unwrap();
    assert!(tags.values().any(|t| t["type"] == "failure"), "{tags:?}");
    let buttons = a.layout["footer"]["buttons"].as_object().unwrap();
    assert_eq!(buttons["seen"]["action"]["type"], "restEvent");
    assert_eq!(buttons["open"]["action"]["type"], "openRestApp");
    let blocks = a.layout["body"]["blocks"].as_object().unwrap();
    assert!(
        blocks
            .values()
            .any(|b| b["type"] == "link" && b["properties"]["action"]["type"] == "redirect"),
        "a link for the mobile app: {blocks:?}"
    );
    let layout = a.layout.to_string();
    for word in ANSWER_WORDS {
        assert!(
            !layout.contains(word),
            "an answer in the activity: {layout}"
        );
    }
    assert_eq!(job.result.unwrap()["activity_id"], a.id);
}

on_both_databases!(the_notification_names_the_deal_and_the_count_but_no_answer);
async fn the_notification_names_the_deal_and_the_count_but_no_answer(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let deal = complete_survey(&fake, &app).await;
    app.run_outbox().await;
    let notes = fake.notifications();
    assert_eq!(notes.len(), 1, "{notes:?}");
    let n = &notes[0];
    assert_eq!(n.user_id, 1, "the deal's ASSIGNED_BY_ID");
    let member = portal::Entity::find()
        .one(&app.state.db)
        .await
        .unwrap()
        .unwrap()
        .member_id;
    assert_eq!(
        n.tag.as_deref(),
        Some(format!("opros|{member}|DEAL_{deal}").as_str())
    );
    assert!(
        n.message
            .starts_with("Анкета пациента по сделке «Приём терапевта 14.01»: "),
        "{}",
        n.message
    );
    assert!(n.message.contains("внимания"), "{}", n.message);
    assert!(
        n.message
            .contains(&format!("[URL=/crm/deal/details/{deal}/]")),
        "{}",
        n.message
    );
    // No answer leaves the service but in the comment and its PDF.
    for call in fake.calls() {
        if call.method == "crm.timeline.comment.add" {
            continue;
        }
        let sent = call.params.to_string();
        for word in ANSWER_WORDS {
            assert!(
                !sent.contains(word),
                "{} carries an answer: {sent}",
                call.method
            );
        }
    }
}

on_both_databases!(without_im_the_rest_is_delivered_and_the_reason_is_listed);
async fn without_im_the_rest_is_delivered_and_the_reason_is_listed(db: TestDb) {
    let fake = fake().await;
    fake.revoke_scope("im");
    let app = app_for_db(&fake, &db.url, &[]).await;
    install(&fake, &app).await;
    let steps = registration(&app).await;
    let im = step(&steps, "Уведомления врачу");
    assert_eq!(im["ok"], false);
    assert_eq!(
        im["detail"],
        "нет права im — уведомления врачу не отправляются"
    );

    // The admin page names the step and why.
    fake.set_app_url(&app.url("/b24/app"));
    let r = fake.open_app(1).await.unwrap();
    assert_eq!(r.status(), 200);
    let text = crate::support::html::Doc::parse(&r.text().await.unwrap()).text();
    assert!(
        text.contains("нет права im — уведомления врачу не отправляются"),
        "{text}"
    );
    assert!(text.contains("Приложение установлено и работает"), "{text}");

    let deal = complete_survey(&fake, &app).await;
    app.run_outbox().await;
    assert!(fake.notifications().is_empty());
    assert_eq!(runs_for(&fake, deal).len(), 2);
    assert_eq!(fake.activities().len(), 1);
    assert_eq!(fake.timeline_comments().len(), 1);
    let job = automate_job(&app).await;
    assert!(job.done_at.is_some() && job.dead_at.is_none(), "{job:?}");
    let result = job.result.unwrap();
    let steps = result["steps"].as_array().unwrap();
    let note = step(steps, "Уведомление ответственному");
    assert_eq!(note["ok"], false);
    assert_eq!(
        note["detail"],
        "нет права im — уведомления врачу не отправляются"
    );
    // … and the admin page lists the delivery step that was not done.
    let r = fake.open_app(1).await.unwrap();
    let text = crate::support::html::Doc::parse(&r.text().await.unwrap()).text();
    assert!(text.contains("Автоматизация: что не выполнено"), "{text}");
    assert!(text.contains("Уведомление ответственному"), "{text}");
}

#[tokio::test]
async fn a_service_without_completions_fires_nothing() {
    let fake = fake().await;
    let app = app_for(&fake, &[]).await;
    install(&fake, &app).await;
    app.run_outbox().await;
    assert!(fake.trigger_runs().is_empty());
    assert!(fake.activities().is_empty());
    assert!(fake.notifications().is_empty());
}

/// What a tab user can send: `ONCRMTIMELINEITEMACTION` with the application token
/// from their own tab POST and whatever else they like.
async fn forged_seen(app: &TestApp, fake: &FakePortal, fields: &[(&str, String)]) -> (u16, Value) {
    let mut form: Vec<(String, String)> = vec![
        ("event".into(), "ONCRMTIMELINEITEMACTION".into()),
        ("data[id]".into(), "seen".into()),
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

fn seen_jobs(fake: &FakePortal) -> usize {
    fake.calls_of("crm.activity.configurable.update").len()
}

on_both_databases!(seen_by_a_confirmed_doctor_completes_the_activity);
async fn seen_by_a_confirmed_doctor_completes_the_activity(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    complete_survey(&fake, &app).await;
    app.run_outbox().await;
    let activity = fake.activities()[0].id;
    fake.add_user(7, "Игорь", "Воронцов", false);
    assert_eq!(press_seen(&fake, activity, 7).await, 200);
    app.run_outbox().await;
    assert!(fake.activities()[0].completed, "the badge goes with it");
    assert_eq!(seen_jobs(&fake), 1);
}

on_both_databases!(a_forged_seen_changes_nothing);
async fn a_forged_seen_changes_nothing(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let deal = complete_survey(&fake, &app).await;
    app.run_outbox().await;
    let activity = fake.activities()[0].id;
    let other_deal = fake.add_deal("Другая сделка", 0, None);
    fake.add_user(7, "Игорь", "Воронцов", false);
    let (user_token, _) = fake.issue_user_token(7);
    fake.deny_deal_for_user(7, deal);

    let base = |entity: u64, activity: u64, token: &str, user: &str| {
        vec![
            ("data[entityTypeId]", "2".to_owned()),
            ("data[entityId]", entity.to_string()),
            ("data[activityId]", activity.to_string()),
            ("data[userId]", user.to_owned()),
            ("auth[access_token]", token.to_owned()),
        ]
    };
    // A made-up user token.
    let (status, body) = forged_seen(&app, &fake, &base(deal, activity, "made-up", "7")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("user_not_confirmed"))
    );
    // A real user who may not read the deal.
    let (status, body) = forged_seen(&app, &fake, &base(deal, activity, &user_token, "7")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("user_not_confirmed"))
    );
    // Someone else's token under another user's name.
    let (status, body) = forged_seen(&app, &fake, &base(deal, activity, &user_token, "1")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("user_not_confirmed"))
    );
    // Our activity named for another deal; an activity we never created.
    let (status, body) =
        forged_seen(&app, &fake, &base(other_deal, activity, &user_token, "7")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("activity_unknown"))
    );
    let (status, body) = forged_seen(&app, &fake, &base(deal, 999_999, &user_token, "7")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("activity_unknown"))
    );
    // No application token at all.
    let r = app
        .http
        .post(app.url("/b24/events"))
        .form(&[
            ("event", "ONCRMTIMELINEITEMACTION"),
            ("data[id]", "seen"),
            ("auth[member_id]", &fake.member_id()),
        ])
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());

    app.run_outbox().await;
    assert!(!fake.activities()[0].completed);
    assert_eq!(seen_jobs(&fake), 0, "nothing sent to the portal");
    let queued = outbox_job::Entity::find()
        .filter(outbox_job::Column::Kind.eq("complete_activity"))
        .all(&app.state.db)
        .await
        .unwrap();
    assert!(queued.is_empty(), "{queued:?}");
    // The service is alive and the genuine press still works.
    assert_eq!(press_seen(&fake, activity, 1).await, 200);
    app.run_outbox().await;
    assert!(fake.activities()[0].completed);
}

on_both_databases!(the_webhook_setup_gets_a_to_do_and_the_notification_but_no_app_features);
async fn the_webhook_setup_gets_a_to_do_and_the_notification_but_no_app_features(db: TestDb) {
    let fake = fake().await;
    let hook = fake.webhook_url();
    let app = crate::support::spawn_app_on(
        &db.url,
        &[
            ("BITRIX24_WEBHOOK_URL", &hook),
            ("BITRIX24_INCOMING_TOKEN", "mySecretToken2026SuperSecure"),
        ],
    )
    .await;
    let deal = crate::support::portal::patient_deal(&fake);
    let r = app
        .http
        .get(app.url(&format!(
            "/api/v1/bitrix/webhook?token=mySecretToken2026SuperSecure&lead_id={deal}"
        )))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    let token = body["survey_url"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    let (_, survey) = app.get_json(&format!("/api/v1/surveys/{token}")).await;
    let (status, _) = app
        .send_json(
            reqwest::Method::POST,
            &format!("/api/v1/surveys/{token}/submit"),
            &serde_json::json!({"answers": crate::support::full_answers(&survey)}),
        )
        .await;
    assert_eq!(status, 200);
    app.run_outbox().await;

    let todos = fake.todos();
    assert_eq!(todos.len(), 1, "{todos:?}");
    let todo = &todos[0];
    assert_eq!(todo["title"], "Проверьте анкету пациента");
    assert_eq!(
        (todo["ownerTypeId"].as_u64(), todo["ownerId"].as_u64()),
        (Some(2), Some(deal))
    );
    assert_eq!(todo["responsibleId"], 1);
    assert!(
        todo["deadline"]
            .as_str()
            .is_some_and(|d| d.ends_with("T10:00:00+03:00")),
        "{todo}"
    );
    let notes = fake.notifications();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(
        notes[0]
            .tag
            .as_deref()
            .is_some_and(|t| t.ends_with(&format!("|DEAL_{deal}")))
    );
    // App triggers and configurable activities need the local application.
    assert!(fake.trigger_runs().is_empty());
    assert!(fake.activities().is_empty());
    assert!(fake.calls_of("crm.automation.trigger.execute").is_empty());
    for call in fake.calls() {
        if call.method == "crm.timeline.comment.add" {
            continue;
        }
        let sent = call.params.to_string();
        for word in ANSWER_WORDS {
            assert!(
                !sent.contains(word),
                "{} carries an answer: {sent}",
                call.method
            );
        }
    }
    // Once: a repeat of the job adds no second to-do.
    let job = automate_job(&app).await;
    let mut row: outbox_job::ActiveModel = job.into();
    row.done_at = Set(None);
    row.run_at = Set(0);
    row.update(&app.state.db).await.unwrap();
    app.run_outbox().await;
    assert_eq!(fake.todos().len(), 1);
    assert_eq!(fake.notifications().len(), 1, "the same TAG replaces");
}

/// A real `opros` process is killed with SIGKILL in the middle of the red-flag
/// activity's call (after the triggers went out), once while the call hangs before
/// the portal ran it and once after it ran with its answer lost; started again on
/// the same database, it delivers each trigger and the activity exactly once.
async fn killed_mid_automation(fault: Fault) {
    use opros::testing::recovery::{install, link_tokens, robot_run, submit};
    use opros::testing::{ServiceProcess, free_port, within};
    use std::time::Duration;

    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_opros"));
    let db = crate::support::db::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let fake = fake().await;
    fake.place_trigger(OWNER_DEAL, TRIGGER_COMPLETED, "C3:PREPARATION");
    let mut first = ServiceProcess::start(bin, &db.url, port, &fake, dir.path(), "first")
        .await
        .unwrap();
    install(&fake, &first).await.unwrap();
    let deal = robot_run(&fake).await.unwrap();
    within(Duration::from_secs(20), "the robot's link", || async {
        fake.event_sends().len() == 1
    })
    .await
    .unwrap();
    let token = link_tokens(&fake).pop().unwrap();
    fake.fail_next("crm.activity.configurable.add", fault, 1);
    let reads_before = fake.calls_of("crm.deal.get").len();
    submit(&reqwest::Client::new(), &first, &token)
        .await
        .unwrap();
    // In flight: the portal has the request (counted on arrival) but has not
    // answered it (recorded when it answers), after the document was read; or the
    // portal ran it and holds the answer back.
    let in_flight = || {
        let answered = fake.calls().iter().filter(|c| !c.via_batch).count();
        fake.http_request_count() > answered
    };
    within(
        Duration::from_secs(30),
        "the activity's call in flight",
        || async {
            !fake.calls_of("crm.activity.configurable.add").is_empty()
                || (runs_for(&fake, deal).len() == 2
                    && fake.calls_of("crm.deal.get").len() > reads_before
                    && in_flight())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", first.log_tail()));
    first.kill();
    fake.clear_faults("crm.activity.configurable.add");

    let second = ServiceProcess::start(bin, &db.url, port, &fake, dir.path(), "second")
        .await
        .unwrap();
    within(
        Duration::from_secs(30),
        "the activity after the restart",
        || async { fake.notifications().len() == 1 },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", second.log_tail()));
    assert_eq!(
        runs_for(&fake, deal),
        vec![TRIGGER_COMPLETED.to_owned(), TRIGGER_RED_FLAGS.to_owned()],
        "each trigger once"
    );
    assert_eq!(
        fake.activities().len(),
        1,
        "one activity, not lost, not doubled"
    );
    assert_eq!(fake.deal(deal).unwrap()["STAGE_ID"], "C3:PREPARATION");
}

#[tokio::test]
async fn killed_while_the_activity_call_hangs_unsent_delivers_it_once_after_restart() {
    killed_mid_automation(Fault::Delay(opros::testing::recovery::HANG)).await;
}

#[tokio::test]
async fn killed_after_the_portal_made_the_activity_delivers_it_once_after_restart() {
    killed_mid_automation(Fault::ProcessThenHang(opros::testing::recovery::HANG)).await;
}

on_both_databases!(a_trigger_the_portal_pushed_back_is_sent_on_the_next_try);
async fn a_trigger_the_portal_pushed_back_is_sent_on_the_next_try(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    // QUERY_LIMIT_EXCEEDED proves the call did not run: longer than the client's
    // own retries, so the job itself must try again.
    fake.fail_next("crm.automation.trigger.execute", Fault::QueryLimit, 20);
    let deal = complete_survey(&fake, &app).await;
    app.run_outbox().await;
    assert!(runs_for(&fake, deal).is_empty());
    let job = automate_job(&app).await;
    assert!(job.done_at.is_none(), "{job:?}");
    fake.clear_faults("crm.automation.trigger.execute");
    let mut row: outbox_job::ActiveModel = job.into();
    row.run_at = Set(0);
    row.locked_until = Set(None);
    row.update(&app.state.db).await.unwrap();
    app.run_outbox().await;
    assert_eq!(
        runs_for(&fake, deal),
        vec![TRIGGER_COMPLETED.to_owned(), TRIGGER_RED_FLAGS.to_owned()]
    );
    assert!(automate_job(&app).await.done_at.is_some());
}
