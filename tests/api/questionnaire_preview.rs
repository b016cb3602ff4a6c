//! The editor's live preview (`POST /b24/admin/questionnaires/preview`): the patient
//! page's own rendering of the definition being edited, checked by the one validator,
//! for the admin page's session only.

use opros::survey::Catalog;
use serde_json::{Value, json};

use crate::support::TestApp;
use crate::support::db::{TestDb, on_both_databases};
use crate::support::html::Doc;
use crate::support::portal::{installed_on, patient_deal};

const PREVIEW: &str = "/b24/admin/questionnaires/preview";

fn session_of(body: &str) -> String {
    Doc::parse(body)
        .attr("input[name=s]", "value")
        .expect("session field")
}

/// The admin page's session, as its script reads it from the page.
async fn admin_session(fake: &opros::testing::fake_portal::FakePortal, app: &TestApp) -> String {
    fake.set_app_url(&app.url("/b24/app"));
    let r = fake.open_app(1).await.expect("admin page");
    assert_eq!(r.status(), 200);
    session_of(&r.text().await.expect("page"))
}

/// A built-in as the editor holds it: the SURVEYS_DIR schema as JSON.
fn definition(code: &str) -> Value {
    let q = Catalog::load(None).0.latest(code).expect("built-in");
    serde_json::to_value(&*q).expect("definition as JSON")
}

async fn preview(app: &TestApp, session: Option<&str>, body: reqwest::Body) -> reqwest::Response {
    let mut request = app
        .http
        .post(app.url(PREVIEW))
        .header("content-type", "application/json")
        .body(body);
    if let Some(s) = session {
        request = request.header("X-Opros-Session", s);
    }
    request.send().await.expect("preview answers")
}

async fn preview_json(app: &TestApp, session: Option<&str>, body: &Value) -> (u16, String) {
    let r = preview(app, session, body.to_string().into()).await;
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

on_both_databases!(preview_is_the_patient_page_escaped_without_token_script_or_submit);
async fn preview_is_the_patient_page_escaped_without_token_script_or_submit(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let session = admin_session(&fake, &app).await;
    let mut def = definition("pre_visit");
    def["title"] = json!("Анкета <script>alert(1)</script>");
    def["sections"][0]["questions"][0]["title"] = json!("Жалобы \"><img src=x> сегодня");

    let r = preview(
        &app,
        Some(&session),
        json!({"definition": def}).to_string().into(),
    )
    .await;
    assert_eq!(r.status(), 200);
    let headers = r.headers().clone();
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"),
        "{headers:?}"
    );
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("sandbox") && !csp.contains("script-src"),
        "{csp}"
    );
    let body = r.text().await.unwrap();
    let doc = Doc::parse(&body);
    doc.assert_no_injected_markup();
    assert_eq!(doc.select_text("h1"), "Анкета <script>alert(1)</script>");
    assert!(
        doc.text().contains("Жалобы \"><img src=x> сегодня"),
        "{body}"
    );
    assert_eq!(doc.count("img"), 0);
    // No script at all: no draft, no JSON submission; the form goes nowhere.
    assert_eq!(doc.count("script"), 0, "{body}");
    assert_eq!(doc.count("form[action]"), 0);
    assert_eq!(doc.count("[data-token]"), 0);
    assert_eq!(doc.count("button[type=submit][disabled]"), 1);
    assert_eq!(doc.count("template"), 0);
    // Every question of the definition is on the page, as the patient's page has it.
    let questions = def["sections"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["questions"].as_array().unwrap().clone())
        .count();
    assert_eq!(doc.count("form .q"), questions, "{body}");
    // Option scores, flag rules and bands stay off the page, as on the patient's.
    let phq = definition("phq9");
    let (status, page) = preview_json(&app, Some(&session), &json!({"definition": phq})).await;
    assert_eq!(status, 200, "{page}");
    for private in ["score", "flag_if", "bands", "112"] {
        assert!(
            !page.contains(private),
            "«{private}» on the preview: {page}"
        );
    }
    app.stop().await;
}

on_both_databases!(preview_lists_every_problem_of_the_one_validator);
async fn preview_lists_every_problem_of_the_one_validator(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let session = admin_session(&fake, &app).await;
    let def = json!({
        "code": "dental",
        "version": 1,
        "title": "Стоматология",
        "sections": [{"id": "main", "title": "Главное", "questions": [
            {"id": "pain", "type": "yes_no", "title": "Болит зуб?"},
            {"id": "pain", "type": "single", "title": "Где?", "options": []},
            {"id": "when", "type": "text", "title": "Когда?", "show_if": {"question": "nowhere", "equals": "yes"}},
            {"id": "severity", "type": "single", "title": "Насколько?", "options": [
                {"value": "low", "label": "Слабо", "score": 0},
                {"value": "high", "label": "Сильно", "score": 9}]}
        ]}],
        "scores": [{"id": "total", "title": "Итог", "questions": ["severity"],
            "bands": [{"from": 0, "to": 3, "label": "мало"}, {"from": 2, "to": 9, "label": "много"}]}]
    });
    let (status, body) = preview_json(&app, Some(&session), &json!({"definition": def})).await;
    assert_eq!(status, 422, "{body}");
    let answer: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(answer["code"], "invalid_definition");
    let problems = answer["problems"].as_array().expect("problems");
    let codes: Vec<&str> = problems.iter().filter_map(|p| p["code"].as_str()).collect();
    for expected in [
        "duplicate_id",
        "empty_options",
        "unknown_question",
        "band_overlap",
    ] {
        assert!(codes.contains(&expected), "{expected} in {codes:?}");
    }
    for p in problems {
        let reason = p["reason"].as_str().unwrap_or_default();
        assert!(
            reason.chars().any(|c| ('а'..='я').contains(&c)),
            "a Russian reason: {p}"
        );
        assert!(p["place"].as_str().is_some_and(|s| !s.is_empty()), "{p}");
    }
    assert!(
        problems
            .iter()
            .any(|p| p["place"] == "sections[0].questions[2] (when).show_if"),
        "{problems:?}"
    );

    // A definition that does not fit the schema: one problem naming why.
    let (status, body) = preview_json(
        &app,
        Some(&session),
        &json!({"definition": {"code": "x", "title": "Без разделов"}}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    let answer: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(answer["problems"][0]["place"], "definition", "{answer}");

    // Not JSON at all.
    let r = preview(&app, Some(&session), "{\"definition\": ".into()).await;
    assert_eq!(r.status(), 400);
    let answer: Value = r.json().await.expect("JSON");
    assert_eq!(answer["code"], "bad_json");
    app.stop().await;
}

on_both_databases!(preview_needs_the_admin_pages_session_and_a_bounded_body);
async fn preview_needs_the_admin_pages_session_and_a_bounded_body(db: TestDb) {
    let log = crate::support::logs::capture();
    let (fake, app) = installed_on(&db.url).await;
    let session = admin_session(&fake, &app).await;
    let body = json!({"definition": definition("pre_visit")});
    let title = definition("pre_visit")["sections"][0]["questions"][0]["title"]
        .as_str()
        .unwrap()
        .to_owned();

    // A doctor's deal-tab session is genuine but not the admin page's.
    let deal = patient_deal(&fake);
    let tab = fake.open_deal_tab(1, deal).await.expect("deal tab");
    let tab_session = session_of(&tab.text().await.unwrap());
    // The admin session with its MAC changed, and one with its portal changed.
    let mut forged = session.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == '0' { '1' } else { '0' });
    let other_portal = format!("9{session}");
    for (what, s) in [
        ("no session", None),
        ("forged MAC", Some(forged.as_str())),
        ("another portal", Some(other_portal.as_str())),
        ("deal-tab session", Some(tab_session.as_str())),
        ("empty", Some("")),
    ] {
        let (status, answer) = preview_json(&app, s, &body).await;
        assert_eq!(status, 401, "{what}: {answer}");
        let answer: Value = serde_json::from_str(&answer).expect("JSON");
        assert_eq!(answer["code"], "session_expired", "{what}");
        assert!(
            !answer.to_string().contains(&title),
            "{what}: nothing rendered"
        );
    }
    // The session in a form field or the query does not count: only the header.
    let r = app
        .http
        .post(app.url(&format!("{PREVIEW}?s={session}")))
        .form(&[("s", session.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Over the body limit: 413 before anything is parsed.
    let huge = format!(
        "{{\"definition\": {{\"title\": \"{}\"}}}}",
        "я".repeat(700_000)
    );
    let r = preview(&app, Some(&session), huge.into()).await;
    assert_eq!(r.status(), 413);
    // A condition nested far deeper than any editor writes: a 4xx, not a crash.
    let mut deep = json!({"question": "complaints", "answered": true});
    for _ in 0..300 {
        deep = json!({"all": [deep]});
    }
    let mut def = definition("pre_visit");
    def["sections"][0]["questions"][1]["show_if"] = deep;
    let (status, answer) = preview_json(&app, Some(&session), &json!({"definition": def})).await;
    assert!((400..500).contains(&status), "{status}: {answer}");

    // The service is alive and the genuine session still works.
    let (status, page) = preview_json(&app, Some(&session), &body).await;
    assert_eq!(status, 200, "{page}");
    assert!(Doc::parse(&page).text().contains(&title));
    app.stop().await;
    // Neither the session nor what was being edited reached the log.
    let lines = log.text();
    assert!(lines.contains("без действующего сеанса"), "{lines}");
    for secret in [session.as_str(), tab_session.as_str(), title.as_str()] {
        assert!(!lines.contains(secret), "«{secret}» logged: {lines}");
    }
}

/// The README's one full example, taken from the README itself.
pub(crate) fn readme_example() -> Value {
    let readme = include_str!("../../README.md");
    let start = readme
        .find("### Схема анкеты")
        .expect("README: «Схема анкеты»");
    let block = &readme[start..];
    let open = block.find("```json\n").expect("a JSON example") + "```json\n".len();
    let close = block[open..].find("```").expect("the example's end");
    serde_json::from_str(&block[open..open + close]).expect("the README's example is JSON")
}

on_both_databases!(readme_example_is_a_valid_questionnaire);
async fn readme_example_is_a_valid_questionnaire(db: TestDb) {
    let example = readme_example();
    let q: opros::survey::Questionnaire =
        serde_json::from_value(example.clone()).expect("the schema");
    assert_eq!(q.check(), Vec::new(), "the one validator finds nothing");
    let (fake, app) = installed_on(&db.url).await;
    let session = admin_session(&fake, &app).await;
    let (status, page) = preview_json(&app, Some(&session), &json!({"definition": example})).await;
    assert_eq!(status, 200, "{page}");
    let doc = Doc::parse(&page);
    for question in q.questions() {
        assert!(doc.text().contains(&question.title), "{}", question.title);
    }
    app.stop().await;
}
