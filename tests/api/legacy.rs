//! The clinic guides' two simpler setups, in webhook mode against the fake portal.

use opros::testing::fake_portal::{AuthKind, FakePortal};
use serde_json::{Value, json};

use crate::support::db::{TestDb, on_both_databases};
use crate::support::portal::{fake, patient_deal};
use crate::support::{TestApp, full_answers, logs, spawn_app, spawn_app_on};

const TOKEN: &str = "mySecretToken2026SuperSecure";
const OUTGOING: &str = "ssmtodolnza09g2rnm1ucbyzumejtr39";

async fn webhook_app(fake: &FakePortal, db_url: &str, extra: &[(&str, &str)]) -> TestApp {
    let hook = fake.webhook_url();
    let mut vars: Vec<(&str, &str)> = vec![
        ("BITRIX24_WEBHOOK_URL", &hook),
        ("BITRIX24_INCOMING_TOKEN", TOKEN),
        ("BITRIX24_OUTGOING_WEBHOOK_TOKEN", OUTGOING),
    ];
    vars.extend_from_slice(extra);
    spawn_app_on(db_url, &vars).await
}

async fn json_of(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

on_both_databases!(builtin_webhook_robot_with_query_string);
async fn builtin_webhook_robot_with_query_string(db: TestDb) {
    let log = logs::capture();
    let fake = fake().await;
    let app = webhook_app(&fake, &db.url, &[]).await;
    let deal = patient_deal(&fake);
    // The robot «Вебхук» posts only document_id[*]; the rest is in the URL, with the
    // name variables left unrendered, as a misconfigured robot sends them.
    let url = format!(
        "{}?token={TOKEN}&patient_name=%7B%7BCONTACT_NAME%7D%7D%20%7B%7BCONTACT_LAST_NAME%7D%7D",
        app.url("/api/v1/bitrix/webhook")
    );
    let (status, body) = json_of(fake.post_webhook_robot(&url, deal).await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ok"], true);
    let link = body["survey_url"].as_str().unwrap().to_owned();
    assert!(body["survey_id"].is_string() && body["expires_at"].is_string());

    app.run_outbox().await;
    // The link is written into the field through the inbound webhook …
    assert_eq!(
        fake.deal(deal).unwrap()["UF_CRM_OPROS_LINK"],
        Value::from(link.clone())
    );
    assert!(
        fake.calls_of("crm.deal.update")
            .iter()
            .all(|c| matches!(c.auth, AuthKind::Webhook { .. }))
    );
    // … and the guide's «Unknown» problem does not happen: the name came from the contact.
    let token = link.rsplit('/').next().unwrap();
    let (_, survey) = app.get_json(&format!("/api/v1/surveys/{token}")).await;
    assert_eq!(survey["patient_name"], "Смирнова Анна Петровна");

    // Same deal within the lifetime: the same link; force=1: a new one.
    let (_, again) = json_of(fake.post_webhook_robot(&url, deal).await.unwrap()).await;
    assert_eq!(again["survey_url"], Value::from(link.clone()));
    let (_, forced) = json_of(
        fake.post_webhook_robot(&format!("{url}&force=1"), deal)
            .await
            .unwrap(),
    )
    .await;
    assert_ne!(forced["survey_url"], Value::from(link));

    let text = log.text();
    assert!(text.contains("Получен вебхук от Битрикс24"));
    assert!(text.contains("Сгенерирована ссылка для опроса"));
    assert!(!text.contains(TOKEN), "the secret must not be logged");
    assert!(
        !text.contains("a1b2c3d4e5f6g7h8"),
        "the webhook code must not be logged"
    );
}

on_both_databases!(every_body_format_is_understood);
async fn every_body_format_is_understood(db: TestDb) {
    let fake = fake().await;
    let app = webhook_app(&fake, &db.url, &[]).await;
    let endpoint = app.url("/api/v1/bitrix/webhook");
    let d1 = patient_deal(&fake);
    let r = app
        .http
        .post(&endpoint)
        .json(&json!({"lead_id": d1.to_string(), "patient_name": "Иванов Иван", "entity_type": "DEAL", "auth_token": TOKEN}))
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(r).await;
    assert_eq!(status, 200, "{body}");

    let d2 = patient_deal(&fake);
    let r = app
        .http
        .post(&endpoint)
        .form(&[("lead_id", d2.to_string()), ("token", TOKEN.to_owned())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let d3 = patient_deal(&fake);
    let multipart = format!(
        "--b0undary\r\nContent-Disposition: form-data; name=\"lead_id\"\r\n\r\n{d3}\r\n\
         --b0undary\r\nContent-Disposition: form-data; name=\"auth_token\"\r\n\r\n{TOKEN}\r\n--b0undary--\r\n"
    );
    let r = app
        .http
        .post(&endpoint)
        .header("content-type", "multipart/form-data; boundary=b0undary")
        .body(multipart)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // JSON sent as "form": the body is unambiguous, so it is understood.
    let d4 = patient_deal(&fake);
    let r = app
        .http
        .post(&endpoint)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(json!({"lead_id": d4, "auth_token": TOKEN}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Garbage: 400 that says what was expected, never «Error parsing data».
    let r = app
        .http
        .post(format!("{endpoint}?token={TOKEN}"))
        .header("content-type", "application/json")
        .body("{lead_id: ")
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(r).await;
    assert_eq!(status, 400);
    assert!(body["message"].as_str().unwrap().contains("JSON"), "{body}");
}

on_both_databases!(token_errors);
async fn token_errors(db: TestDb) {
    let fake = fake().await;
    let app = webhook_app(&fake, &db.url, &[]).await;
    let endpoint = app.url("/api/v1/bitrix/webhook");
    let r = app
        .http
        .get(format!("{endpoint}?lead_id=1&token=wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = app
        .http
        .get(format!("{endpoint}?lead_id=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let unconfigured = spawn_app(&[]).await;
    let r = unconfigured
        .http
        .get(unconfigured.url(&format!("/api/v1/bitrix/webhook?lead_id=1&token={TOKEN}")))
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(r).await;
    assert_eq!(status, 503);
    assert_eq!(
        body["message"],
        "Интеграция не настроена: задайте BITRIX24_INCOMING_TOKEN"
    );
}

on_both_databases!(pipeline_filter_asks_the_portal_when_not_told);
async fn pipeline_filter_asks_the_portal_when_not_told(db: TestDb) {
    let fake = fake().await;
    let app = webhook_app(&fake, &db.url, &[("BITRIX24_CATEGORY_ID", "5")]).await;
    let deal = patient_deal(&fake); // pipeline 3
    let endpoint = app.url("/api/v1/bitrix/webhook");
    let r = app
        .http
        .get(format!("{endpoint}?token={TOKEN}&lead_id={deal}"))
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(r).await;
    assert_eq!(status, 403);
    assert_eq!(body["message"], "Эта воронка не обрабатывается");
    assert_eq!(
        fake.calls_of("crm.deal.get").len(),
        1,
        "asked the portal, did not guess"
    );

    let r = app
        .http
        .get(format!(
            "{endpoint}?token={TOKEN}&lead_id={deal}&category_id=5"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the request's own category is believed");
}

on_both_databases!(completion_goes_through_the_webhook_url);
async fn completion_goes_through_the_webhook_url(db: TestDb) {
    let fake = fake().await;
    let app = webhook_app(&fake, &db.url, &[]).await;
    let deal = patient_deal(&fake);
    let r = app
        .http
        .get(app.url(&format!(
            "/api/v1/bitrix/webhook?token={TOKEN}&lead_id={deal}"
        )))
        .send()
        .await
        .unwrap();
    let (_, body) = json_of(r).await;
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
            &json!({"answers": full_answers(&survey)}),
        )
        .await;
    assert_eq!(status, 200);
    app.run_outbox().await;
    let comments = fake.timeline_comments();
    assert_eq!(comments.len(), 1);
    assert_eq!(comments[0].entity_id, deal);
    assert_eq!(comments[0].files.len(), 1);
}

on_both_databases!(outgoing_webhook_token_and_events);
async fn outgoing_webhook_token_and_events(db: TestDb) {
    let log = logs::capture();
    let fake = fake().await;
    let app = webhook_app(&fake, &db.url, &[]).await;
    let endpoint = app.url("/api/bitrix/webhook");
    let deal = patient_deal(&fake);

    let r = fake
        .post_outgoing_webhook(
            &endpoint,
            "ONCRMDEALADD",
            deal,
            "wrong-token-wrong-token-wrong-tok",
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    app.run_outbox().await;
    assert!(
        fake.calls_of("crm.deal.update").is_empty(),
        "nothing written"
    );
    let text = log.text();
    assert!(
        text.contains("⚠️ Неверный токен исходящего вебхука. Получен: строка из 33 символов"),
        "{text}"
    );
    assert!(!text.contains("wrong-token-wrong-token-wrong-tok"));

    // Delivered twice (Bitrix24 may repeat): one invitation, one link.
    for _ in 0..2 {
        let r = fake
            .post_outgoing_webhook(&endpoint, "ONCRMDEALADD", deal, OUTGOING)
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    app.run_outbox().await;
    assert!(
        log.text()
            .contains("✅ Токен исходящего вебхука проверен успешно")
    );
    assert!(!log.text().contains(OUTGOING));
    use sea_orm::EntityTrait;
    let invitations = opros::db::entities::invitation::Entity::find()
        .all(&app.state.db)
        .await
        .unwrap();
    assert_eq!(invitations.len(), 1);
    assert!(
        fake.deal(deal).unwrap()["UF_CRM_OPROS_LINK"]
            .as_str()
            .unwrap()
            .contains("/s/")
    );

    // Token in the query string or a header works too; other events are ignored.
    let r = app
        .http
        .post(format!("{endpoint}?application_token={OUTGOING}"))
        .form(&[("event", "ONCRMDEALUPDATE"), ("data[FIELDS][ID]", "1")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = app
        .http
        .post(&endpoint)
        .header("x-application-token", OUTGOING)
        .form(&[("event", "ONCRMCONTACTADD"), ("data[FIELDS][ID]", "1")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let unconfigured = spawn_app(&[]).await;
    let r = fake
        .post_outgoing_webhook(
            &unconfigured.url("/api/bitrix/webhook"),
            "ONCRMDEALADD",
            deal,
            OUTGOING,
        )
        .await
        .unwrap();
    let (status, body) = json_of(r).await;
    assert_eq!(status, 503);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("BITRIX24_OUTGOING_WEBHOOK_TOKEN")
    );
}

on_both_databases!(the_webhook_robot_in_a_smart_process_serves_the_item_not_a_deal);
async fn the_webhook_robot_in_a_smart_process_serves_the_item_not_a_deal(db: TestDb) {
    use opros::testing::fake_portal::Document;

    let fake = fake().await;
    // A deal pipeline filter is set; the item's pipelines are not the deals'.
    let app = webhook_app(&fake, &db.url, &[("BITRIX24_CATEGORY_ID", "5")]).await;
    fake.add_smart_type(128, "Приёмы", true);
    let contact = fake.add_contact("Анна", "Петровна", "Смирнова", "+79161234567");
    // A deal with the same id exists and is in another pipeline: it must not be read.
    let deal = patient_deal(&fake);
    fake.add_item_with_id(128, deal, "Приём кардиолога", Some(contact));
    let url = format!("{}?token={TOKEN}", app.url("/api/v1/bitrix/webhook"));
    let item = Document::Item {
        entity_type_id: 128,
        id: deal,
    };
    let (status, body) = json_of(fake.post_webhook_robot_on(&url, item).await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        fake.calls_of("crm.deal.get").is_empty(),
        "no deal is read for an item"
    );
    app.run_outbox().await;
    let token = body["survey_url"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    let (_, survey) = app.get_json(&format!("/api/v1/surveys/{token}")).await;
    assert_eq!(survey["patient_name"], "Смирнова Анна Петровна");
    let (status, body) = app
        .send_json(
            reqwest::Method::POST,
            &format!("/api/v1/surveys/{token}/submit"),
            &json!({"answers": full_answers(&survey)}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    app.run_outbox().await;

    // The comment with the PDF and the to-do land on the item, through the webhook.
    let comments = fake.timeline_comments();
    assert_eq!(comments.len(), 1, "{comments:?}");
    assert_eq!(
        (comments[0].entity_type.as_str(), comments[0].entity_id),
        ("dynamic_128", deal)
    );
    let todos = fake.todos();
    assert_eq!(todos.len(), 1, "{todos:?}");
    assert_eq!(todos[0]["ownerTypeId"], 128);
    assert_eq!(todos[0]["ownerId"], deal);
    assert!(fake.calls_of("crm.deal.get").is_empty());
    assert!(fake.calls_of("crm.deal.update").is_empty());
}
