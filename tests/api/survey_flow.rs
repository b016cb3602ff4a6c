//! The patient's side, end to end over HTTP: link → questionnaire → draft → submit.

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::db::{TestDb, on_both_databases};
use crate::support::html::Doc;
use crate::support::{TestApp, full_answers, spawn_app, spawn_app_on};

const TOKEN: &str = "mySecretToken2026SuperSecure";

async fn app(db: &TestDb) -> TestApp {
    spawn_app_on(&db.url, &[("BITRIX24_INCOMING_TOKEN", TOKEN)]).await
}

/// A link made through the webhook robot endpoint (no portal configured, so nothing
/// is delivered: this file is about the patient).
async fn new_link(app: &TestApp, deal: u32) -> (String, String) {
    let r = app
        .http
        .get(app.url(&format!(
            "/api/v1/bitrix/webhook?token={TOKEN}&lead_id={deal}&patient_name=%D0%A1%D0%BC%D0%B8%D1%80%D0%BD%D0%BE%D0%B2%D0%B0%20%D0%90%D0%BD%D0%BD%D0%B0"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    let url = body["survey_url"].as_str().unwrap().to_owned();
    let token = url.rsplit('/').next().unwrap().to_owned();
    (url, token)
}

on_both_databases!(questionnaire_json_draft_and_submit);
async fn questionnaire_json_draft_and_submit(db: TestDb) {
    let app = app(&db).await;
    let (url, token) = new_link(&app, 4217).await;
    assert!(url.starts_with(&app.base), "{url}");
    assert!(url.len() < 200, "link too long for an SMS: {}", url.len());

    let (status, survey) = app.get_json(&format!("/api/v1/surveys/{token}")).await;
    assert_eq!(status, 200, "{survey}");
    assert_eq!(survey["patient_name"], "Смирнова Анна");
    assert_eq!(survey["status"], "opened");
    let questions = survey["questions"].as_array().unwrap();
    assert!(questions.len() > 10);
    let allergy_details = questions
        .iter()
        .find(|q| q["show_if"]["question"] == "allergies")
        .expect("a question shown only on allergies");
    assert_eq!(allergy_details["show_if"]["equals"], "yes");
    assert!(
        questions
            .iter()
            .any(|q| q["type"] == "consent" && q["required"] == true)
    );

    // A draft survives: saved, then served back.
    let (status, saved) = app
        .send_json(
            Method::PUT,
            &format!("/api/v1/surveys/{token}/draft"),
            &json!({"answers": {"allergies": "yes"}}),
        )
        .await;
    assert_eq!(status, 200, "{saved}");
    let (_, again) = app.get_json(&format!("/api/v1/surveys/{token}")).await;
    assert_eq!(again["draft"]["allergies"], "yes");

    // Missing answers: 422 per question, the draft stays.
    let (status, err) = app
        .send_json(
            Method::POST,
            &format!("/api/v1/surveys/{token}/submit"),
            &json!({"answers": {"allergies": "yes"}}),
        )
        .await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(err["code"], "validation_failed");
    assert!(
        err["errors"]["allergy_details"].is_string()
            || err["errors"].as_object().unwrap().len() > 3,
        "{err}"
    );
    let (_, again) = app.get_json(&format!("/api/v1/surveys/{token}")).await;
    assert_eq!(again["draft"]["allergies"], "yes");

    let answers = full_answers(&survey);
    let (status, done) = app
        .send_json(
            Method::POST,
            &format!("/api/v1/surveys/{token}/submit"),
            &json!({"answers": answers}),
        )
        .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["status"], "completed");
    assert_eq!(done["report_sha256"].as_str().unwrap().len(), 64);

    // Once only.
    let (status, err) = app
        .send_json(
            Method::POST,
            &format!("/api/v1/surveys/{token}/submit"),
            &json!({"answers": answers}),
        )
        .await;
    assert_eq!(status, 409, "{err}");
    let (status, after) = app.get_json(&format!("/api/v1/surveys/{token}")).await;
    assert_eq!(status, 200);
    assert_eq!(after["status"], "completed");
}

on_both_databases!(tampered_unknown_and_expired_links);
async fn tampered_unknown_and_expired_links(db: TestDb) {
    let app = app(&db).await;
    let (_, token) = new_link(&app, 5).await;
    let mut tampered = token.clone();
    let at = tampered.len() - 12;
    let swap = if &tampered[at..=at] == "x" { "y" } else { "x" };
    tampered.replace_range(at..=at, swap);
    let (status, body) = app.get_json(&format!("/api/v1/surveys/{tampered}")).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["code"], "survey_not_found");
    let (status, _) = app.get_json("/api/v1/surveys/nonsense").await;
    assert_eq!(status, 404);

    // A genuine link whose time is up.
    let id = app.state.links.verify(&token, chrono::Utc::now()).unwrap();
    let expired = app.state.links.sign(
        id.as_str(),
        chrono::Utc::now() - chrono::Duration::minutes(1),
    );
    let (status, body) = app.get_json(&format!("/api/v1/surveys/{expired}")).await;
    assert_eq!(status, 410, "{body}");
    assert_eq!(
        body["message"],
        "Срок действия ссылки истёк — обратитесь в клинику"
    );
    let page = app
        .http
        .get(app.url(&format!("/s/{expired}")))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 410);
    assert_eq!(
        Doc::parse(&page.text().await.unwrap()).select_text("h1"),
        "Срок действия ссылки истёк"
    );
}

on_both_databases!(patient_page_without_javascript);
async fn patient_page_without_javascript(db: TestDb) {
    let app = app(&db).await;
    let (_, token) = new_link(&app, 6).await;
    let page = app
        .http
        .get(app.url(&format!("/s/{token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let html = page.text().await.unwrap();
    let doc = Doc::parse(&html);
    assert!(doc.select_text(".meta strong").contains("Смирнова Анна"));
    assert_eq!(
        doc.attr("form#survey", "action"),
        Some(format!("/s/{token}"))
    );

    // A form post with a missing required answer re-renders with messages (422).
    let r = app
        .http
        .post(app.url(&format!("/s/{token}")))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("allergies=yes")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let html = r.text().await.unwrap();
    let doc = Doc::parse(&html);
    assert_eq!(
        doc.count("#error-summary[role=alert]:not([hidden])"),
        1,
        "error summary missing"
    );

    let css = app
        .http
        .get(app.url("/assets/app.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(css.status(), 200);
    let js = app
        .http
        .get(app.url("/assets/app.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(js.status(), 200);
}

on_both_databases!(bad_bodies_are_4xx_never_5xx);
async fn bad_bodies_are_4xx_never_5xx(db: TestDb) {
    let app = app(&db).await;
    let (_, token) = new_link(&app, 7).await;
    for body in ["[1,2]", "\"x\"", "{\"answers\": 5}", "{not json"] {
        let r = app
            .http
            .post(app.url(&format!("/api/v1/surveys/{token}/submit")))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_client_error(), "{body} → {}", r.status());
        let v: Value = r.json().await.unwrap();
        assert!(v["code"].is_string() && v["message"].is_string(), "{v}");
    }
    let (status, v) = app
        .send_json(
            Method::POST,
            &format!("/api/v1/surveys/{token}/submit"),
            &json!({"answers": {"height": "abc", "smoking": 7, "chronic": "x"}}),
        )
        .await;
    assert_eq!(status, 422, "{v}");
    let big = "я".repeat(2 * 1024 * 1024);
    let r = app
        .http
        .put(app.url(&format!("/api/v1/surveys/{token}/draft")))
        .header("content-type", "application/json")
        .body(format!("{{\"answers\": {{\"complaints\": \"{big}\"}}}}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
}

#[tokio::test]
async fn the_spec_and_its_ui_refuse_writes_with_405_and_allow() {
    let app = spawn_app(&[("BITRIX24_INCOMING_TOKEN", TOKEN)]).await;
    for path in ["/docs", "/docs/", "/openapi.json"] {
        for method in [Method::POST, Method::PUT, Method::DELETE] {
            let r = app
                .http
                .request(method.clone(), app.url(path))
                .body("{}")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 405, "{method} {path}");
            assert_eq!(
                r.headers().get("allow").and_then(|v| v.to_str().ok()),
                Some("GET"),
                "{method} {path}"
            );
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["code"], "method_not_allowed", "{method} {path}: {v}");
            assert!(v["message"].is_string(), "{v}");
        }
        let r = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "GET {path}");
    }
}
