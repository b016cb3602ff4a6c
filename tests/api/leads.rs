//! A lead end to end (CONTRACT «Automation», bitrix24-automation.md §A7): both robots
//! run on `LEAD_<id>`, the name comes from the lead itself, the comment lands in the
//! lead's timeline, the await robot answers, and the «Анкета пациента» tab of the
//! lead shows the answers; a card tab we never bound is refused. Its completion
//! executes the app triggers for the lead (`OWNER_TYPE_ID` 1) once, and a trigger a
//! manager placed on a lead status moves the lead.

use opros::outbox::automation::{TRIGGER_COMPLETED, TRIGGER_RED_FLAGS};
use opros::testing::fake_portal::{Document, OWNER_LEAD};
use serde_json::Value;

use crate::support::db::{TestDb, on_both_databases};
use crate::support::full_answers;
use crate::support::portal::installed_on;

on_both_databases!(a_lead_goes_from_robot_to_comment_to_the_await_robot_and_its_tab);
async fn a_lead_goes_from_robot_to_comment_to_the_await_robot_and_its_tab(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let lead = fake.add_lead("Запись с сайта", "Ольга", "Кузнецова");

    let (_, r) = fake
        .run_robot_on("opros_send_survey", Document::Lead(lead), &[])
        .await
        .expect("delivered");
    assert_eq!(r.status(), 200);
    let (wait, r) = fake
        .run_robot_on("opros_await_survey", Document::Lead(lead), &[])
        .await
        .expect("delivered");
    assert_eq!(r.status(), 200);
    app.run_outbox().await;
    let url = fake
        .event_sends()
        .iter()
        .find_map(|(_, v, _)| v.get("SURVEY_URL").cloned())
        .expect("the link went back to the workflow");
    assert_eq!(
        fake.lead(lead).expect("lead")["UF_CRM_OPROS_LINK"],
        Value::from(url.clone()),
        "the link field of the lead"
    );
    let token = url.rsplit('/').next().expect("token").to_owned();
    let (status, survey) = app.get_json(&format!("/api/v1/surveys/{token}")).await;
    assert_eq!(status, 200);
    assert_eq!(survey["patient_name"], "Кузнецова Ольга", "{survey}");
    assert!(
        fake.event_sends().iter().all(|(t, _, _)| t != &wait),
        "the await robot waits for the patient"
    );

    let (status, body) = app
        .send_json(
            reqwest::Method::POST,
            &format!("/api/v1/surveys/{token}/submit"),
            &serde_json::json!({"answers": full_answers(&survey)}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    app.run_outbox().await;

    let comments = fake.timeline_comments();
    assert_eq!(comments.len(), 1, "{comments:?}");
    assert_eq!(comments[0].entity_type, "lead");
    assert_eq!(comments[0].entity_id, lead);
    let answered: Vec<_> = fake
        .event_sends()
        .into_iter()
        .filter(|(t, _, _)| t == &wait)
        .collect();
    assert_eq!(answered.len(), 1, "{answered:?}");
    assert_eq!(answered[0].1["STATUS"], "completed");

    // The lead's tab shows the survey; the lead is read with the doctor's token.
    let r = fake
        .open_tab(1, "CRM_LEAD_DETAIL_TAB", lead)
        .await
        .expect("tab delivered");
    let status = r.status();
    let page = r.text().await.unwrap_or_default();
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Кузнецова Ольга"), "{page}");
    assert!(
        page.contains("Головная боль"),
        "the answers are shown: {page}"
    );
}

on_both_databases!(a_placement_we_never_bound_is_not_taken_for_a_deal);
async fn a_placement_we_never_bound_is_not_taken_for_a_deal(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let deal = crate::support::portal::complete_survey(&fake, &app).await;
    app.run_outbox().await;
    // The doctor opens the deal's own tab: the answers are there.
    let r = fake.open_deal_tab(1, deal).await.expect("tab delivered");
    assert_eq!(r.status(), 200);
    // The same number from a card tab we never bound (a contact's): nothing shown.
    fake.bind_placement(
        "CRM_CONTACT_DETAIL_TAB",
        &app.url("/b24/placement/deal-tab"),
    );
    let r = fake
        .open_tab(1, "CRM_CONTACT_DETAIL_TAB", deal)
        .await
        .expect("tab delivered");
    let status = r.status();
    let page = r.text().await.unwrap_or_default();
    assert_eq!(status, 400, "{page}");
    assert!(!page.contains("Головная боль"), "{page}");
    assert!(!page.contains("Смирнова"), "{page}");
}

on_both_databases!(a_completed_lead_executes_its_triggers_once_and_moves_its_status);
async fn a_completed_lead_executes_its_triggers_once_and_moves_its_status(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    fake.place_trigger(OWNER_LEAD, TRIGGER_COMPLETED, "IN_PROCESS");
    let lead = fake.add_lead("Запись с сайта", "Ольга", "Кузнецова");
    let (_, r) = fake
        .run_robot_on("opros_send_survey", Document::Lead(lead), &[])
        .await
        .expect("delivered");
    assert_eq!(r.status(), 200);
    app.run_outbox().await;
    let url = fake
        .event_sends()
        .iter()
        .find_map(|(_, v, _)| v.get("SURVEY_URL").cloned())
        .expect("the link went back to the workflow");
    let token = url.rsplit('/').next().expect("token").to_owned();
    let (_, survey) = app.get_json(&format!("/api/v1/surveys/{token}")).await;
    let (status, body) = app
        .send_json(
            reqwest::Method::POST,
            &format!("/api/v1/surveys/{token}/submit"),
            &serde_json::json!({"answers": full_answers(&survey)}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    app.run_outbox().await;
    // Run again: nothing fires twice.
    app.run_outbox().await;

    let runs: Vec<(String, u32, u64)> = fake.trigger_runs();
    assert_eq!(
        runs,
        vec![
            (TRIGGER_COMPLETED.to_owned(), OWNER_LEAD, lead),
            (TRIGGER_RED_FLAGS.to_owned(), OWNER_LEAD, lead),
        ],
        "both triggers once, for the lead (OWNER_TYPE_ID 1)"
    );
    assert_eq!(
        fake.lead(lead).expect("lead")["STATUS_ID"],
        "IN_PROCESS",
        "the trigger placed on the lead's status moved it"
    );
    let notes = fake.notifications();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(
        notes[0]
            .message
            .starts_with("Анкета пациента по лиду «Запись с сайта»: "),
        "{}",
        notes[0].message
    );
    assert!(
        notes[0]
            .tag
            .as_deref()
            .is_some_and(|t| t.ends_with(&format!("|LEAD_{lead}"))),
        "{:?}",
        notes[0].tag
    );
}
