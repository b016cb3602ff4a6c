//! Markup where text belongs: a patient's name and a deal's title from the portal, a
//! questionnaire's title, questions and options from SURVEYS_DIR, and the patient's
//! answers all carry `<script>` and an attribute break-out. Every page that shows them
//! (the patient's page, its thank-you page, the deal tab, the admin page, the demo's
//! deal card) must show them as text: no element is created, the text is intact.

use opros::demo::{Demo, DemoOptions};
use reqwest::Method;
use serde_json::json;

use crate::support::db;
use crate::support::html::Doc;
use crate::support::portal::{app_for, install};

const HOSTILE: &str = r#"<script>alert(1)</script>"'><img src=x onerror=alert(2)>"#;

/// `pre_visit` version 2 with markup in every text a page shows (JSON is YAML too).
fn hostile_questionnaire() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let q = json!({
        "code": "pre_visit",
        "version": 2,
        "title": format!("Анкета {HOSTILE}"),
        "description": HOSTILE,
        "sections": [{
            "id": "main",
            "title": format!("Раздел {HOSTILE}"),
            "questions": [
                {"id": "note", "type": "textarea", "title": format!("Вопрос {HOSTILE}"),
                 "hint": HOSTILE, "required": true},
                {"id": "pick", "type": "single", "title": "Выбор",
                 "options": [{"value": "a", "label": format!("Вариант {HOSTILE}")},
                             {"value": "b", "label": "Другой"}],
                 "flag": {"equals": "a", "label": format!("Отметка {HOSTILE}")}}
            ]
        }]
    });
    std::fs::write(dir.path().join("hostile.yaml"), q.to_string()).expect("write");
    dir
}

#[tokio::test]
async fn markup_in_names_questionnaires_and_answers_is_shown_as_text() {
    let surveys = hostile_questionnaire();
    let fake = crate::support::portal::fake().await;
    let dir = surveys.path().display().to_string();
    let app = app_for(&fake, &[("SURVEYS_DIR", &dir)]).await;
    install(&fake, &app).await;
    let contact = fake.add_contact(HOSTILE, "", "Смирнова", "+79161234567");
    let deal = fake.add_deal(HOSTILE, 3, Some(contact));
    let (_, r) = fake
        .run_robot("opros_send_survey", deal, &[])
        .await
        .expect("robot delivered");
    assert_eq!(r.status(), 200);
    app.run_outbox().await;
    let url = fake
        .event_sends()
        .into_iter()
        .find_map(|(_, values, _)| values.get("SURVEY_URL").cloned())
        .expect("survey_url returned");
    let token = url.rsplit('/').next().expect("token").to_owned();

    // The patient's page.
    let html = app
        .http
        .get(app.url(&format!("/s/{token}")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let doc = Doc::parse(&html);
    doc.assert_no_injected_markup();
    assert_eq!(doc.select_text("h1"), format!("Анкета {HOSTILE}"));
    assert_eq!(doc.select_text("title"), format!("Анкета {HOSTILE}"));
    assert!(doc.select_text(".meta strong").contains(HOSTILE), "{html}");
    assert_eq!(
        doc.select_text("section.section h2"),
        format!("Раздел {HOSTILE}")
    );
    assert_eq!(
        doc.select_text("#q-note .q-text"),
        format!("Вопрос {HOSTILE}")
    );
    assert_eq!(doc.select_text("#h-note"), HOSTILE);
    assert_eq!(
        doc.select_text("#q-pick .choice span"),
        format!("Вариант {HOSTILE}")
    );
    // What the script shows after a submission is inert text too.
    assert!(doc.select_text("template#tpl-done").contains(HOSTILE));

    // The patient answers with markup.
    let (status, body) = app
        .send_json(
            Method::POST,
            &format!("/api/v1/surveys/{token}/submit"),
            &json!({"answers": {"note": HOSTILE, "pick": "a"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    app.run_outbox().await;

    // The thank-you page names the questionnaire.
    let html = app
        .http
        .get(app.url(&format!("/s/{token}")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let doc = Doc::parse(&html);
    doc.assert_no_injected_markup();
    assert!(
        doc.select_text("main p")
            .contains(&format!("Анкета {HOSTILE}")),
        "{html}"
    );

    // The deal tab.
    let html = fake
        .open_deal_tab(1, deal)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let doc = Doc::parse(&html);
    doc.assert_no_injected_markup();
    assert!(doc.select_text(".tab-head").contains(HOSTILE), "{html}");
    assert_eq!(doc.select_text(".result h2"), format!("Анкета {HOSTILE}"));
    assert_eq!(doc.select_text(".flagged dt"), format!("Отметка {HOSTILE}"));
    assert_eq!(
        doc.select_text("h3.section-title"),
        format!("Раздел {HOSTILE}")
    );
    let questions = doc.texts("h3.section-title + dl dt");
    let answers = doc.texts("h3.section-title + dl dd");
    assert!(
        questions.contains(&format!("Вопрос {HOSTILE}")),
        "{questions:?}"
    );
    assert!(answers.iter().any(|a| a == HOSTILE), "{answers:?}");
    assert!(
        answers.contains(&format!("Вариант {HOSTILE}")),
        "{answers:?}"
    );

    // The admin page offers the questionnaire as a template (its questions are
    // the editor's, read through the editor's JSON API and its preview).
    fake.set_app_url(&app.url("/b24/app"));
    let html = fake.open_app(1).await.unwrap().text().await.unwrap();
    let doc = Doc::parse(&html);
    doc.assert_no_injected_markup();
    assert!(
        doc.texts("#qe-template option")
            .iter()
            .any(|t| t.starts_with(&format!("Анкета {HOSTILE} ("))),
        "{html}"
    );

    // And the service is still there.
    let (status, _) = app.get_json("/healthz").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn markup_in_the_demo_deal_card_is_shown_as_text() {
    let db = db::sqlite();
    let demo = Demo::start(DemoOptions {
        database_url: Some(db.url.clone()),
        ..DemoOptions::default()
    })
    .await
    .expect("demo starts");
    let contact = demo
        .portal
        .add_contact(HOSTILE, "", "Смирнова", "+79161234567");
    let deal = demo.portal.add_deal(HOSTILE, 0, Some(contact));
    let html = reqwest::get(demo.url(&format!("/demo/deal/{deal}")))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let doc = Doc::parse(&html);
    doc.assert_no_injected_markup();
    assert_eq!(doc.select_text("title"), HOSTILE);
    assert_eq!(doc.select_text(".deal-head h1"), HOSTILE);
    assert!(doc.select_text(".deal-info dd").contains(HOSTILE), "{html}");
    // The frame form's values arrive intact (JSON with quotes in an attribute).
    let options = doc
        .attr(
            "form[data-autosubmit] input[name=PLACEMENT_OPTIONS]",
            "value",
        )
        .expect("placement options");
    let options: serde_json::Value = serde_json::from_str(&options).expect("JSON");
    assert_eq!(options["ID"], deal.to_string());
    // The card's own files are served under the URLs it names, each with one type.
    let mut linked = doc.attrs("link[rel=stylesheet]", "href");
    linked.extend(doc.attrs("script[src]", "src"));
    assert_eq!(linked.len(), 2, "{linked:?}");
    for url in linked {
        let name = url
            .trim_start_matches("/demo/assets/")
            .split('?')
            .next()
            .unwrap_or_default();
        let asset = opros::assets::demo(name).unwrap_or_else(|| panic!("{url}"));
        assert_eq!(url, asset.url());
        let r = reqwest::get(demo.url(&url)).await.unwrap();
        assert_eq!(r.status(), 200, "{url}");
        let types: Vec<_> = r.headers().get_all("content-type").iter().collect();
        assert_eq!(types, [asset.content_type], "{url}");
        assert_eq!(r.text().await.unwrap(), asset.body);
    }
    demo.stop().await;
}
