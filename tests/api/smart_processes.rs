//! Smart-process items end to end (issue #16 point 5, bitrix24-automation.md §A7):
//! both robots on `DYNAMIC_<type>_<id>`, the name from the item's contact, the comment
//! with its PDF in the item's timeline, the app triggers for the item's
//! `OWNER_TYPE_ID`, the red-flag activity, the notification, «Просмотрено», and the
//! card tab bound per smart process with automation — refreshed on reinstall. Items
//! of different types (and a deal) may share an id, so the type is part of every
//! check: a tab, a session and a forged event for one never reach another.

use opros::db::entities::portal;
use opros::outbox::automation::{BADGE_CODE, TRIGGER_COMPLETED, TRIGGER_RED_FLAGS};
use opros::testing::fake_portal::{Document, FakePortal, FakePortalConfig};
use sea_orm::EntityTrait;
use serde_json::Value;

use crate::support::db::{TestDb, on_both_databases};
use crate::support::html::Doc;
use crate::support::portal::{app_for_db, fake, install, patient_deal, press_seen};
use crate::support::{TestApp, full_answers};

const APPOINTMENTS: u32 = 128;
const REFERRALS: u32 = 1038;
const NO_AUTOMATION: u32 = 130;
const TAB: &str = "/b24/placement/deal-tab";
/// Words of the distinctive free-text answer `full_answers` types.
const ANSWER_WORDS: [&str; 3] = ["пенициллин", "крапивница", "Головная боль"];

fn tab(entity_type_id: u32) -> String {
    format!("CRM_DYNAMIC_{entity_type_id}_DETAIL_TAB")
}

/// A portal with two smart processes with automation and one without, installed.
async fn clinic(db_url: &str) -> (FakePortal, TestApp) {
    let fake = fake().await;
    fake.add_smart_type(APPOINTMENTS, "Приёмы", true);
    fake.add_smart_type(REFERRALS, "Направления", true);
    fake.add_smart_type(NO_AUTOMATION, "Склад", false);
    let app = app_for_db(&fake, db_url, &[]).await;
    install(&fake, &app).await;
    (fake, app)
}

/// «Отправить опрос» on the item; returns the link's token.
async fn item_link(fake: &FakePortal, app: &TestApp, item: Document) -> String {
    let (_, r) = fake
        .run_robot_on("opros_send_survey", item, &[])
        .await
        .expect("the robot is offered for smart processes");
    assert_eq!(r.status(), 200);
    app.run_outbox().await;
    let url = fake
        .event_sends()
        .last()
        .and_then(|(_, v, _)| v.get("SURVEY_URL").cloned())
        .expect("the link went back to the workflow");
    url.rsplit('/').next().expect("token").to_owned()
}

async fn submit(app: &TestApp, token: &str) -> Value {
    let (status, survey) = app.get_json(&format!("/api/v1/surveys/{token}")).await;
    assert_eq!(status, 200);
    let answers = full_answers(&survey);
    let (status, body) = app
        .send_json(
            reqwest::Method::POST,
            &format!("/api/v1/surveys/{token}/submit"),
            &serde_json::json!({ "answers": answers }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    survey
}

async fn page(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

fn bound_tabs(fake: &FakePortal, app: &TestApp) -> Vec<String> {
    let handler = app.url(TAB);
    fake.placements()
        .into_iter()
        .filter(|p| p["handler"].as_str() == Some(handler.as_str()))
        .filter_map(|p| p["placement"].as_str().map(str::to_owned))
        .collect()
}

on_both_databases!(an_item_goes_from_the_robot_to_its_timeline_automation_and_tab);
async fn an_item_goes_from_the_robot_to_its_timeline_automation_and_tab(db: TestDb) {
    let (fake, app) = clinic(&db.url).await;
    let contact = fake.add_contact("Анна", "Петровна", "Смирнова", "+79161234567");
    let item = fake.add_item(APPOINTMENTS, "Приём кардиолога", Some(contact));
    let doc = Document::Item {
        entity_type_id: APPOINTMENTS,
        id: item,
    };
    fake.place_trigger(APPOINTMENTS, TRIGGER_COMPLETED, "DT128_1:SUCCESS");

    let token = item_link(&fake, &app, doc).await;
    let (wait, r) = fake
        .run_robot_on("opros_await_survey", doc, &[])
        .await
        .expect("the await robot is offered for smart processes");
    assert_eq!(r.status(), 200);
    app.run_outbox().await;
    assert!(
        fake.event_sends().iter().all(|(t, _, _)| t != &wait),
        "the await robot waits for the patient"
    );
    // No link field on an item (its user fields need `userfieldconfig`): the link
    // reaches the workflow only.
    for call in fake.calls() {
        assert!(
            !call.method.ends_with(".update") || call.method.starts_with("bizproc."),
            "{} {}",
            call.method,
            call.params
        );
    }

    let survey = submit(&app, &token).await;
    assert_eq!(
        survey["patient_name"], "Смирнова Анна Петровна",
        "the item's contact"
    );
    app.run_outbox().await;

    // The comment with its PDF in the item's timeline.
    let comments = fake.timeline_comments();
    assert_eq!(comments.len(), 1, "{comments:?}");
    assert_eq!(comments[0].entity_type, format!("dynamic_{APPOINTMENTS}"));
    assert_eq!(comments[0].entity_id, item);
    assert_eq!(comments[0].files.len(), 1);
    assert!(comments[0].files[0].1.starts_with(b"%PDF"));

    // Both triggers once, for the item's own OWNER_TYPE_ID; the stage moved.
    let runs: Vec<(String, u32, u64)> = fake.trigger_runs();
    assert_eq!(
        runs,
        vec![
            (TRIGGER_COMPLETED.to_owned(), APPOINTMENTS, item),
            (TRIGGER_RED_FLAGS.to_owned(), APPOINTMENTS, item),
        ]
    );
    assert_eq!(
        fake.item(APPOINTMENTS, item).expect("item")["stageId"],
        "DT128_1:SUCCESS"
    );

    // The red-flag activity with its badge on the item.
    let activities = fake.activities();
    assert_eq!(activities.len(), 1, "{activities:?}");
    let a = &activities[0];
    assert_eq!(
        (a.owner_type_id, a.owner_id, a.completed),
        (APPOINTMENTS, item, false)
    );
    assert_eq!(a.fields["badgeCode"], BADGE_CODE);
    assert_eq!(a.fields["responsibleId"], "1", "the item's assignedById");

    // The notification names the item, links its card, carries no answer.
    let notes = fake.notifications();
    assert_eq!(notes.len(), 1, "{notes:?}");
    let member = portal::Entity::find()
        .one(&app.state.db)
        .await
        .unwrap()
        .unwrap()
        .member_id;
    assert_eq!(
        notes[0].tag.as_deref(),
        Some(format!("opros|{member}|DYNAMIC_{APPOINTMENTS}_{item}").as_str())
    );
    assert!(
        notes[0]
            .message
            .starts_with("Анкета пациента по элементу «Приём кардиолога»: "),
        "{}",
        notes[0].message
    );
    assert!(
        notes[0]
            .message
            .contains(&format!("[URL=/crm/type/{APPOINTMENTS}/details/{item}/]")),
        "{}",
        notes[0].message
    );
    for call in fake.calls() {
        if call.method == "crm.timeline.comment.add" {
            continue;
        }
        let sent = call.params.to_string();
        for word in ANSWER_WORDS {
            assert!(!sent.contains(word), "{} carries an answer", call.method);
        }
    }

    // The await robot answered once.
    let answered: Vec<_> = fake
        .event_sends()
        .into_iter()
        .filter(|(t, _, _)| t == &wait)
        .collect();
    assert_eq!(answered.len(), 1, "{answered:?}");
    assert_eq!(answered[0].1["STATUS"], "completed");
    assert_ne!(answered[0].1["RED_FLAGS"], "0");

    // The item's tab shows the survey to a doctor who may read the item.
    let (status, body) = page(
        fake.open_tab(1, &tab(APPOINTMENTS), item)
            .await
            .expect("the tab is bound"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Смирнова Анна Петровна"), "{body}");
    assert!(body.contains("Головная боль"), "the answers are shown");
    assert!(body.contains("Элемент смарт-процесса"), "{body}");

    // «Просмотрено» completes the activity (the badge goes with it).
    assert_eq!(press_seen(&fake, a.id, 1).await, 200);
    app.run_outbox().await;
    assert!(fake.activities()[0].completed);
    // Nothing more on another run: each step was once.
    app.run_outbox().await;
    assert_eq!(fake.trigger_runs().len(), 2);
    assert_eq!(fake.timeline_comments().len(), 1);
}

on_both_databases!(tabs_follow_the_smart_processes_on_reinstall);
async fn tabs_follow_the_smart_processes_on_reinstall(db: TestDb) {
    let (fake, app) = clinic(&db.url).await;
    let mut tabs = bound_tabs(&fake, &app);
    tabs.sort();
    assert_eq!(
        tabs,
        vec![
            "CRM_DEAL_DETAIL_TAB".to_owned(),
            tab(REFERRALS),
            tab(APPOINTMENTS),
            "CRM_LEAD_DETAIL_TAB".to_owned(),
        ],
        "no tab where automation is off"
    );
    // A type appears, another goes, automation is switched on for the third; the
    // reinstall follows, and a second one changes nothing.
    fake.add_smart_type(140, "Анализы", true);
    fake.delete_smart_type(REFERRALS);
    install(&fake, &app).await;
    install(&fake, &app).await;
    let mut tabs = bound_tabs(&fake, &app);
    tabs.sort();
    assert_eq!(
        tabs,
        vec![
            "CRM_DEAL_DETAIL_TAB".to_owned(),
            tab(APPOINTMENTS),
            tab(140),
            "CRM_LEAD_DETAIL_TAB".to_owned(),
        ]
    );
    let row = portal::Entity::find()
        .one(&app.state.db)
        .await
        .unwrap()
        .unwrap();
    let steps = row.registration.unwrap()["steps"].clone();
    let step = steps
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["what"] == "Вкладка «Анкета пациента» в смарт-процессе «Анализы»")
        .cloned()
        .unwrap_or_else(|| panic!("{steps}"));
    assert_eq!(step["ok"], true, "{step}");
    // The deleted type's tab, should Bitrix24 still post it, names a type the portal
    // does not know: refused, nothing shown.
    fake.bind_placement(&tab(REFERRALS), &app.url(TAB));
    let (status, body) = page(fake.open_tab(1, &tab(REFERRALS), 501).await.unwrap()).await;
    assert_eq!(status, 403, "{body}");
}

on_both_databases!(a_tab_or_session_of_one_item_never_opens_another_or_a_deal);
async fn a_tab_or_session_of_one_item_never_opens_another_or_a_deal(db: TestDb) {
    let (fake, app) = clinic(&db.url).await;
    // The same id for a deal, an item of each type.
    let deal = patient_deal(&fake);
    let contact = fake.add_contact("Анна", "Петровна", "Смирнова", "+79161234567");
    fake.add_item_with_id(APPOINTMENTS, deal, "Приём кардиолога", Some(contact));
    fake.add_item_with_id(REFERRALS, deal, "Направление", None);
    let token = item_link(
        &fake,
        &app,
        Document::Item {
            entity_type_id: APPOINTMENTS,
            id: deal,
        },
    )
    .await;
    submit(&app, &token).await;
    app.run_outbox().await;

    let (status, own) = page(fake.open_tab(1, &tab(APPOINTMENTS), deal).await.unwrap()).await;
    assert_eq!(status, 200, "{own}");
    assert!(own.contains("Головная боль"));
    let own_doc = Doc::parse(&own);
    let report = own_doc
        .attr("form[action^='/b24/tab/report/']", "action")
        .expect("PDF form");
    let own_session = own_doc.attr("input[name=s]", "value").expect("session");
    assert!(own_session.contains(&format!(".T{APPOINTMENTS}_{deal}.")));

    // The deal and the other type's item with the same id: empty, their own sessions.
    let mut others = Vec::new();
    for r in [
        fake.open_deal_tab(1, deal).await.unwrap(),
        fake.open_tab(1, &tab(REFERRALS), deal).await.unwrap(),
    ] {
        let (status, body) = page(r).await;
        assert_eq!(status, 200, "{body}");
        for word in ANSWER_WORDS {
            assert!(!body.contains(word), "{body}");
        }
        assert!(!body.contains("Смирнова"), "{body}");
        others.push(Doc::parse(&body).attr("input[name=s]", "value").unwrap());
    }
    let pdf = |session: String| {
        let (http, url) = (app.http.clone(), app.url(&report));
        async move {
            http.post(url)
                .form(&[("s", session)])
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(pdf(own_session.clone()).await, 200);
    for other in others {
        assert_eq!(pdf(other).await, 403, "another document's session");
    }
    // The scope rewritten to the other type: the signature no longer holds.
    let forged = own_session.replacen(&format!(".T{APPOINTMENTS}_"), &format!(".T{REFERRALS}_"), 1);
    assert_eq!(pdf(forged).await, 403);

    // A tab for a type named in the placement whose item does not exist there (it
    // exists in another type): the portal refuses the read, nothing is shown.
    let elsewhere = 9_001;
    fake.add_item_with_id(REFERRALS, elsewhere, "Только в направлениях", None);
    let (status, body) = page(
        fake.open_tab(1, &tab(APPOINTMENTS), elsewhere)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403, "{body}");

    // Another portal with the same type and item id sees nothing of ours.
    let other = FakePortal::start(FakePortalConfig {
        member_id: "9b1d7e3a5c2f4e6a8b0d1f3e5a7c9b2d".into(),
        ..FakePortalConfig::default()
    })
    .await
    .expect("second portal");
    other.add_smart_type(APPOINTMENTS, "Приёмы", true);
    other.add_item_with_id(APPOINTMENTS, deal, "Чужой приём", None);
    install(&other, &app).await;
    let (status, body) = page(other.open_tab(1, &tab(APPOINTMENTS), deal).await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    for word in ANSWER_WORDS {
        assert!(!body.contains(word), "another portal's answers: {body}");
    }
    assert!(!body.contains("Смирнова"), "{body}");
}

on_both_databases!(a_forged_seen_for_an_item_changes_nothing);
async fn a_forged_seen_for_an_item_changes_nothing(db: TestDb) {
    let (fake, app) = clinic(&db.url).await;
    let deal = patient_deal(&fake);
    fake.add_item_with_id(APPOINTMENTS, deal, "Приём кардиолога", None);
    fake.add_item_with_id(REFERRALS, deal, "Направление", None);
    let token = item_link(
        &fake,
        &app,
        Document::Item {
            entity_type_id: APPOINTMENTS,
            id: deal,
        },
    )
    .await;
    submit(&app, &token).await;
    app.run_outbox().await;
    let activity = fake.activities()[0].id;
    let (user_token, _) = fake.issue_user_token(1);

    // Our activity, named for the deal, the other type's item, a CRM kind that is no
    // smart process, and a type that does not parse: nothing is ours there.
    for owner_type in ["2", &REFERRALS.to_string(), "31", "DYNAMIC_128", "-128"] {
        let form: Vec<(String, String)> = vec![
            ("event".into(), "ONCRMTIMELINEITEMACTION".into()),
            ("data[id]".into(), "seen".into()),
            ("data[entityTypeId]".into(), owner_type.to_owned()),
            ("data[entityId]".into(), deal.to_string()),
            ("data[activityId]".into(), activity.to_string()),
            ("data[userId]".into(), "1".into()),
            ("auth[member_id]".into(), fake.member_id()),
            ("auth[domain]".into(), fake.domain()),
            ("auth[application_token]".into(), fake.application_token()),
            ("auth[access_token]".into(), user_token.clone()),
        ];
        let r = app
            .http
            .post(app.url("/b24/events"))
            .form(&form)
            .send()
            .await
            .expect("event delivered");
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(
            (status, body["code"].as_str()),
            (404, Some("activity_unknown")),
            "entityTypeId {owner_type}"
        );
    }
    app.run_outbox().await;
    assert!(!fake.activities()[0].completed);
    assert!(
        fake.calls_of("crm.activity.configurable.update").is_empty(),
        "nothing sent to the portal"
    );
    // The genuine press still works.
    assert_eq!(press_seen(&fake, activity, 1).await, 200);
    app.run_outbox().await;
    assert!(fake.activities()[0].completed);
}

on_both_databases!(a_doctor_who_may_not_read_the_item_sees_nothing_and_cannot_mark_it_seen);
async fn a_doctor_who_may_not_read_the_item_sees_nothing_and_cannot_mark_it_seen(db: TestDb) {
    let (fake, app) = clinic(&db.url).await;
    let item = fake.add_item(APPOINTMENTS, "Приём кардиолога", None);
    let token = item_link(
        &fake,
        &app,
        Document::Item {
            entity_type_id: APPOINTMENTS,
            id: item,
        },
    )
    .await;
    let survey = submit(&app, &token).await;
    assert_eq!(
        survey["patient_name"], "Приём кардиолога",
        "no contact: the title"
    );
    app.run_outbox().await;
    let activity = fake.activities()[0].id;
    fake.add_user(7, "Игорь", "Воронцов", false);
    fake.deny_item_for_user(7, APPOINTMENTS, item);

    // The item is read with the doctor's own token: refused, nothing shown.
    let (status, body) = page(fake.open_tab(7, &tab(APPOINTMENTS), item).await.unwrap()).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        Doc::parse(&body)
            .text()
            .contains("Нет доступа к элементу смарт-процесса"),
        "{body}"
    );
    for word in ANSWER_WORDS {
        assert!(!body.contains(word), "{body}");
    }
    // «Просмотрено» pressed by that doctor: not confirmed, the activity stays open.
    assert_eq!(press_seen(&fake, activity, 7).await, 403);
    app.run_outbox().await;
    assert!(!fake.activities()[0].completed);
    // A doctor who may read it opens the tab.
    let (status, body) = page(fake.open_tab(1, &tab(APPOINTMENTS), item).await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Головная боль"));
}

#[tokio::test]
async fn smart_processes_past_the_first_page_get_their_tabs_too() {
    let fake = fake().await;
    // crm.type.list answers 50 a page: the 51st type is on the second. The first
    // 50 have automation off (no tab), so only the paging is at stake.
    for id in 200..250 {
        fake.add_smart_type(id, &format!("Процесс {id}"), false);
    }
    fake.add_smart_type(250, "Процесс 250", true);
    let app = crate::support::portal::app_for(&fake, &[]).await;
    install(&fake, &app).await;
    let mut tabs = bound_tabs(&fake, &app);
    tabs.sort();
    assert_eq!(
        tabs,
        vec![
            "CRM_DEAL_DETAIL_TAB".to_owned(),
            tab(250),
            "CRM_LEAD_DETAIL_TAB".to_owned()
        ]
    );
}

on_both_databases!(a_long_smart_process_type_id_is_stored_and_read_back);
async fn a_long_smart_process_type_id_is_stored_and_read_back(db: TestDb) {
    use opros::db::entities::invitation;

    // `DYNAMIC_` and ten digits: more than the column's first 16 characters (the
    // migration widens it on PostgreSQL; SQLite keeps any length).
    let wide = 4_000_000_000;
    let fake = fake().await;
    fake.add_smart_type(wide, "Очень новый процесс", true);
    let app = app_for_db(&fake, &db.url, &[]).await;
    install(&fake, &app).await;
    let item = fake.add_item(wide, "Приём", None);
    item_link(
        &fake,
        &app,
        Document::Item {
            entity_type_id: wide,
            id: item,
        },
    )
    .await;
    let rows = invitation::Entity::find()
        .all(&app.state.db)
        .await
        .expect("reads");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].entity_type, invitation::EntityType::Dynamic(wide));
    assert_eq!(rows[0].entity_id, item as i64);
    assert!(bound_tabs(&fake, &app).contains(&tab(wide)));
}
