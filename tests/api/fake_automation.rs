//! The fake portal's automation methods (bitrix24-automation.md §A1–§A7), driven
//! through the product's own Bitrix24 client over HTTP: what the service will rely on
//! when it registers triggers, waits in a workflow, marks the timeline and notifies
//! staff. Each test pins a documented rule, so a drift in the emulation fails here
//! before it can make a product test pass for the wrong reason.

use opros::bitrix24::B24Error;
use opros::testing::EvilServer;
use opros::testing::fake_portal::{Document, FakePortalError, OWNER_DEAL, OWNER_LEAD};
use serde_json::{Value, json};

use crate::bitrix24_client::{Setup, setup, webhook};

impl Setup {
    async fn call(&self, method: &str, params: Value) -> Result<Value, B24Error> {
        self.client.call(&self.target, method, params).await
    }
}

fn described(err: &B24Error, code: &str, text: &str) -> bool {
    match err {
        B24Error::Api {
            code: c,
            description,
            ..
        }
        | B24Error::AccessDenied {
            code: c,
            description,
        } => c == code && description.contains(text),
        _ => false,
    }
}

fn layout(tags: usize, tag_type: &str) -> Value {
    let tags: serde_json::Map<String, Value> = (0..tags)
        .map(|i| {
            (
                format!("t{i}"),
                json!({"title": "2 отметки", "type": tag_type}),
            )
        })
        .collect();
    json!({
        "icon": {"code": "document"},
        "header": {"title": "Анкета: 2 отметки для врача", "tags": tags},
        "body": {"blocks": {"q1": {"type": "text", "properties": {"value": "Аллергия"}}}},
        "footer": {"buttons": {"seen": {"title": "Просмотрено", "type": "primary",
            "action": {"type": "restEvent", "id": "seen"}}}},
    })
}

#[tokio::test]
async fn app_triggers_take_lower_case_codes_need_an_admin_app_and_move_a_placed_stage() {
    let s = setup().await;
    let deal = s.fake.add_deal("Приём", 0, None);

    let err = s
        .call(
            "crm.automation.trigger.add",
            json!({"CODE": "Opros_Completed", "NAME": "x"}),
        )
        .await
        .expect_err("upper case is refused");
    assert!(described(&err, "", "Wrong trigger code!"), "{err:?}");
    let err = s
        .client
        .call(
            &webhook(&s.fake),
            "crm.automation.trigger.add",
            json!({"CODE": "opros_completed", "NAME": "x"}),
        )
        .await
        .expect_err("a webhook has no application context");
    assert!(
        described(&err, "ACCESS_DENIED", "Application context required"),
        "{err:?}"
    );

    for name in ["Анкета", "Анкета заполнена"] {
        let added = s
            .call(
                "crm.automation.trigger.add",
                json!({"CODE": "opros_completed", "NAME": name}),
            )
            .await
            .expect("add is idempotent");
        assert_eq!(added, json!(true));
    }
    assert_eq!(
        s.fake.triggers(),
        vec![("opros_completed".to_owned(), "Анкета заполнена".to_owned())],
        "a second add only renames"
    );

    let err = s
        .call(
            "crm.automation.trigger.execute",
            json!({"CODE": "opros_red_flags", "OWNER_TYPE_ID": 2, "OWNER_ID": deal}),
        )
        .await
        .expect_err("unregistered");
    assert!(
        described(
            &err,
            "",
            "Trigger with code opros_red_flags is not registered."
        ),
        "{err:?}"
    );
    let err = s
        .call(
            "crm.automation.trigger.execute",
            json!({"CODE": "opros_completed", "OWNER_TYPE_ID": 999, "OWNER_ID": deal}),
        )
        .await
        .expect_err("no such owner type");
    assert!(
        described(&err, "", "Incorrect parameter OWNER_TYPE_ID."),
        "{err:?}"
    );

    // Not placed on a stage yet: accepted, nothing moves.
    let run = json!({"CODE": "opros_completed", "OWNER_TYPE_ID": OWNER_DEAL, "OWNER_ID": deal});
    assert_eq!(
        s.call("crm.automation.trigger.execute", run.clone())
            .await
            .expect("runs"),
        json!(true)
    );
    let stage = |s: &Setup| {
        s.fake
            .deal(deal)
            .and_then(|d| d["STAGE_ID"].as_str().map(str::to_owned))
    };
    let before = stage(&s);
    assert_ne!(before.as_deref(), Some("C0:PREPARATION"));
    s.fake
        .place_trigger(OWNER_DEAL, "opros_completed", "C0:PREPARATION");
    s.call("crm.automation.trigger.execute", run)
        .await
        .expect("runs");
    assert_eq!(stage(&s).as_deref(), Some("C0:PREPARATION"));
    assert_eq!(s.fake.trigger_runs().len(), 2);
}

#[tokio::test]
async fn a_trigger_moves_a_smart_process_item_only_with_automation_enabled() {
    let s = setup().await;
    s.fake.add_smart_type(128, "Диспансеризация", false);
    s.fake.add_smart_type(130, "Медосмотры", true);
    let off = s.fake.add_item(128, "Иванов", None);
    let on = s.fake.add_item(130, "Петров", None);
    s.call(
        "crm.automation.trigger.add",
        json!({"CODE": "opros_completed", "NAME": "Анкета заполнена"}),
    )
    .await
    .expect("add");
    for (kind, id) in [(128, off), (130, on)] {
        s.fake.place_trigger(kind, "opros_completed", "DONE");
        s.call(
            "crm.automation.trigger.execute",
            json!({"CODE": "opros_completed", "OWNER_TYPE_ID": kind, "OWNER_ID": id}),
        )
        .await
        .expect("runs");
    }
    let stage = |kind, id| s.fake.item(kind, id).map(|i| i["stageId"].clone());
    assert_ne!(stage(128, off), Some(json!("DONE")), "automation off");
    assert_eq!(stage(130, on), Some(json!("DONE")));

    let types = s.call("crm.type.list", json!({})).await.expect("types");
    assert_eq!(types["types"][1]["isAutomationEnabled"], "Y");
    let item = s
        .call("crm.item.get", json!({"entityTypeId": 130, "id": on}))
        .await
        .expect("item");
    assert_eq!(item["item"]["title"], "Петров");
    let lead = s.fake.add_lead("Лид", "Анна", "Смирнова");
    let item = s
        .call(
            "crm.item.get",
            json!({"entityTypeId": OWNER_LEAD, "id": lead}),
        )
        .await
        .expect("lead");
    assert_eq!(item["item"]["assignedById"], "1", "camelCase keys");
}

#[tokio::test]
async fn configurable_activities_follow_the_layout_rules_and_need_the_app() {
    let s = setup().await;
    let deal = s.fake.add_deal("Приём", 0, None);
    let add = |layout: Value| {
        json!({"ownerTypeId": OWNER_DEAL, "ownerId": deal,
               "fields": {"completed": "N", "badgeCode": "opros_flags", "responsibleId": 1},
               "layout": layout})
    };
    let err = s
        .client
        .call(
            &webhook(&s.fake),
            "crm.activity.configurable.add",
            add(layout(1, "failure")),
        )
        .await
        .expect_err("application context only");
    assert!(described(&err, "ERROR_WRONG_CONTEXT", ""), "{err:?}");
    let err = s
        .call("crm.activity.configurable.add", add(layout(3, "failure")))
        .await
        .expect_err("three tags");
    assert!(described(&err, "TOO_MANY_ITEMS", ""), "{err:?}");
    let err = s
        .call("crm.activity.configurable.add", add(layout(1, "lavender")))
        .await
        .expect_err("lavender");
    assert!(described(&err, "ENUM_FIELD", ""), "{err:?}");
    let mut extra = add(layout(1, "failure"));
    extra["fields"]["subject"] = json!("x");
    let err = s
        .call("crm.activity.configurable.add", extra)
        .await
        .expect_err("unknown field");
    assert!(described(&err, "FIELD_IS_REDUNDANT", ""), "{err:?}");

    let badge = s
        .call("crm.activity.badge.add", json!({"code": "opros_flags", "title": "Анкета", "value": "Отметки", "type": "failure"}))
        .await
        .expect("badge");
    assert_eq!(badge["badge"]["type"], "failure");
    let made = s
        .call("crm.activity.configurable.add", add(layout(2, "failure")))
        .await
        .expect("adds");
    let id = made["activity"]["id"].as_u64().expect("id");
    s.call(
        "crm.activity.configurable.update",
        json!({"id": id, "fields": {"completed": "Y"}}),
    )
    .await
    .expect("completes");
    let activity = s
        .fake
        .activities()
        .into_iter()
        .find(|a| a.id == id)
        .expect("stored");
    assert!(activity.completed);
    assert_eq!(activity.owner_id, deal);
}

#[tokio::test]
async fn a_notification_with_the_same_tag_replaces_the_earlier_and_needs_scope_im() {
    let s = setup().await;
    let err = s
        .call(
            "im.notify.system.add",
            json!({"USER_ID": 1, "MESSAGE": "  "}),
        )
        .await
        .expect_err("empty");
    assert!(described(&err, "MESSAGE_EMPTY", ""), "{err:?}");
    for flags in [1, 2] {
        s.call(
            "im.notify.system.add",
            json!({"USER_ID": 1, "MESSAGE": format!("Анкета: {flags} отметки"), "TAG": "opros|m|DEAL_5"}),
        )
        .await
        .expect("sent");
    }
    s.call(
        "im.notify.system.add",
        json!({"USER_ID": 1, "MESSAGE": "другое", "TAG": "opros|m|DEAL_6"}),
    )
    .await
    .expect("sent");
    let list = s.fake.notifications();
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(list[0].message, "Анкета: 2 отметки");

    s.fake.revoke_scope("im");
    let err = s
        .call(
            "im.notify.system.add",
            json!({"USER_ID": 1, "MESSAGE": "x"}),
        )
        .await
        .expect_err("no im");
    assert!(matches!(err, B24Error::InsufficientScope), "{err:?}");
    let todo = s
        .call(
            "crm.activity.todo.add",
            json!({"ownerTypeId": 2, "ownerId": s.fake.add_deal("Д", 0, None),
            "deadline": "2026-12-08T10:00:00+03:00", "title": "Проверьте анкету пациента"}),
        )
        .await
        .expect("crm still works");
    assert!(todo["id"].as_u64().is_some());
}

#[tokio::test]
async fn a_waiting_robot_logs_until_its_step_closes_on_a_lead() {
    let s = setup().await;
    let handler = EvilServer::start().await.expect("receiver");
    s.call(
        "bizproc.robot.add",
        json!({"CODE": "opros_await_survey", "HANDLER": format!("http://{}/b24/robot/await-survey", handler.domain()),
               "NAME": "Дождаться анкеты", "USE_SUBSCRIPTION": "Y", "AUTH_USER_ID": 1,
               "RETURN_PROPERTIES": {"status": {"Name": "Статус", "Type": "string"}}}),
    )
    .await
    .expect("robot");
    let lead = s.fake.add_lead("Лид", "Анна", "Смирнова");
    let (token, _) = s
        .fake
        .run_robot_on("opros_await_survey", Document::Lead(lead), &[])
        .await
        .expect("runs");
    let call = handler.requests().pop().expect("robot called");
    assert!(
        call.contains(&format!("LEAD_{lead}")) && call.contains("CCrmDocumentLead"),
        "{call:?}"
    );

    let err = s
        .call(
            "bizproc.activity.log",
            json!({"EVENT_TOKEN": token, "LOG_MESSAGE": ""}),
        )
        .await
        .expect_err("empty message");
    assert!(described(&err, "ERROR_EMPTY_LOG_MESSAGE", ""), "{err:?}");
    s.call(
        "bizproc.activity.log",
        json!({"EVENT_TOKEN": token, "LOG_MESSAGE": "Пациент открыл анкету"}),
    )
    .await
    .expect("logs and keeps the step open");
    s.fake.close_robot_step(&token);
    for method in ["bizproc.activity.log", "bizproc.event.send"] {
        let err = s
            .call(method, json!({"EVENT_TOKEN": token, "LOG_MESSAGE": "x", "RETURN_VALUES": {"status": "completed"}}))
            .await
            .expect_err("the step timed out");
        assert!(
            matches!(err, B24Error::AccessDenied { .. }),
            "{method}: {err:?}"
        );
    }
    assert_eq!(s.fake.workflow_log().len(), 1);
}

#[tokio::test]
async fn pressing_a_rest_event_button_reaches_only_the_bound_handler_with_the_users_token() {
    let s = setup().await;
    let deal = s.fake.add_deal("Приём", 0, None);
    let handler = EvilServer::start().await.expect("receiver");
    s.call("event.bind", json!({"event": "ONCRMTIMELINEITEMACTION", "handler": format!("http://{}/b24/events", handler.domain())}))
        .await
        .expect("bound");
    let made = s
        .call("crm.activity.configurable.add", json!({"ownerTypeId": OWNER_DEAL, "ownerId": deal, "fields": {}, "layout": layout(1, "failure")}))
        .await
        .expect("adds");
    let id = made["activity"]["id"].as_u64().expect("id");
    let sent = s
        .fake
        .press_activity_button(id, 1, "seen", &[("survey", "abc")])
        .await
        .expect("pressed");
    assert_eq!(sent.len(), 1);
    let event = handler.requests().pop().expect("event delivered");
    for part in [
        "ONCRMTIMELINEITEMACTION".to_owned(),
        format!("data[activityId]={id}"),
        format!("data[entityId]={deal}"),
        "data[entityTypeId]=2".to_owned(),
        "data[survey]=abc".to_owned(),
        "auth[access_token]".to_owned(),
    ] {
        let encoded = part.replace('[', "%5B").replace(']', "%5D");
        assert!(
            event.body.contains(&encoded) || event.body.contains(&part),
            "{part} in {}",
            event.body
        );
    }
}

#[tokio::test]
async fn smart_processes_are_listed_to_admins_read_with_the_callers_rights_and_commented() {
    let s = setup().await;
    // crm.type.list pages by 50 (rest_help/crm/dynamic/methodscrmtype).
    for id in 128..=178 {
        s.fake.add_smart_type(id, &format!("Процесс {id}"), true);
    }
    let first = s.call("crm.type.list", json!({})).await.expect("types");
    assert_eq!(first["types"].as_array().map(Vec::len), Some(50));
    let rest = s
        .call("crm.type.list", json!({"start": 50}))
        .await
        .expect("types");
    assert_eq!(rest["types"][0]["entityTypeId"], 178);

    // A comment in an item's timeline: `dynamic_<id>` (crm-timeline-comment-add.md).
    let item = s.fake.add_item(130, "Петров", None);
    let id = s
        .call(
            "crm.timeline.comment.add",
            json!({"fields": {"ENTITY_TYPE": "dynamic_130", "ENTITY_ID": item, "COMMENT": "Анкета"}}),
        )
        .await
        .expect("comment on the item");
    assert!(id.as_u64().is_some_and(|n| n > 0), "{id}");
    let err = s
        .call(
            "crm.timeline.comment.add",
            json!({"fields": {"ENTITY_TYPE": "dynamic_131", "ENTITY_ID": item, "COMMENT": "Анкета"}}),
        )
        .await
        .expect_err("the item is not of that type");
    assert!(
        described(&err, "OWNER_NOT_FOUND", "Owner not found"),
        "{err:?}"
    );

    // A user who is no administrator: no type list; an item denied to them is refused.
    s.fake.add_user(7, "Игорь", "Воронцов", false);
    s.fake.deny_item_for_user(7, 130, item);
    s.store
        .insert(&s.fake.member_id(), s.fake.issue_portal_auth(7));
    let err = s
        .call("crm.type.list", json!({}))
        .await
        .expect_err("administrators only");
    assert!(err.is_access_denied(), "{err:?}");
    let err = s
        .call("crm.item.get", json!({"entityTypeId": 130, "id": item}))
        .await
        .expect_err("the user's rights apply");
    assert!(err.is_access_denied(), "{err:?}");
}

#[tokio::test]
async fn a_robot_is_offered_only_for_the_document_types_its_filter_includes() {
    let s = setup().await;
    s.fake.add_smart_type(128, "Приёмы", true);
    let item = s.fake.add_item(128, "Приём", None);
    // bizproc-robot-add.md: FILTER.INCLUDE of full or partial document types.
    s.call(
        "bizproc.robot.add",
        json!({
            "CODE": "deals_only", "HANDLER": "https://opros.example/b24/robot/send-survey",
            "NAME": {"ru": "Только сделки"},
            "FILTER": {"INCLUDE": [["crm", "CCrmDocumentDeal"]]},
        }),
    )
    .await
    .expect("robot added");
    let refused = s
        .fake
        .run_robot_on(
            "deals_only",
            Document::Item {
                entity_type_id: 128,
                id: item,
            },
            &[],
        )
        .await;
    assert!(
        matches!(&refused, Err(FakePortalError::NotBound(why)) if why.contains("not offered")),
        "not offered for a smart process: {refused:?}"
    );
    // A deal is offered: the delivery is attempted (to a handler nobody serves).
    let offered = s
        .fake
        .run_robot_on("deals_only", Document::Deal(4217), &[])
        .await;
    assert!(
        matches!(&offered, Err(FakePortalError::Http(_))),
        "{offered:?}"
    );
}

/// The robot bench's made-up runs (`FakePortal::accept_event_tokens`): a token with
/// the prefix is good for one `bizproc.event.send`, as a real run's is (§4.4), and
/// the prefix opens nothing else.
#[tokio::test]
async fn a_made_up_runs_token_takes_one_event_send_and_no_other_token_does() {
    let s = setup().await;
    s.fake.accept_event_tokens("bench7f.", "opros_send_survey");
    let send = |token: &str| {
        s.call(
            "bizproc.event.send",
            json!({"EVENT_TOKEN": token, "RETURN_VALUES": {"survey_id": "s1"}}),
        )
    };
    assert_eq!(
        send("bench7f.1|A1").await.expect("a made-up run's token"),
        json!(true)
    );
    for (token, why) in [
        ("bench7f.1|A1", "spent"),
        ("bench7e.1|A1", "another prefix"),
        ("x.bench7f.1|A1", "the prefix inside"),
    ] {
        let err = send(token).await.expect_err(why);
        assert!(described(&err, "ACCESS_DENIED", ""), "{why}: {err:?}");
    }
    assert_eq!(s.fake.event_send_count(), 1);
}
