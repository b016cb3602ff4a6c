//! The questionnaires a portal owns, over HTTP: the editor's API with the admin
//! page's session, version pinning from the robot to the patient and the doctor,
//! per-portal isolation, the robot's select, and the attacks on the API.

use opros::testing::fake_portal::{FakePortal, FakePortalConfig};
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::db::{TestDb, on_both_databases};
use crate::support::html::Doc;
use crate::support::portal::{install, installed_on, patient_deal};
use crate::support::{TestApp, eventually, full_answers};

const LIST: &str = "/b24/admin/questionnaires";
const SEND: &str = "opros_send_survey";
const SESSION: &str = "X-Opros-Session";

/// A small questionnaire of the clinic's own; `question` is the first question's
/// title, which tells the versions apart on every page.
fn dental(code: &str, question: &str) -> Value {
    json!({
        "code": code,
        "version": 7,
        "title": "Стоматологическая анкета",
        "sections": [{
            "id": "main",
            "title": "Жалобы",
            "questions": [
                {"id": "pain", "type": "single", "title": question, "required": true,
                 "options": [{"value": "no", "label": "Нет"}, {"value": "yes", "label": "Да"}]},
                {"id": "notes", "type": "text", "title": "Что ещё важно знать врачу?"}
            ]
        }]
    })
}

/// The admin page's session, as the page hands it to its script.
async fn admin_session(fake: &FakePortal, app: &TestApp) -> String {
    fake.set_app_url(&app.url("/b24/app"));
    let r = fake.open_app(1).await.expect("app page delivered");
    let status = r.status();
    let body = r.text().await.unwrap_or_default();
    assert_eq!(status, 200, "{body}");
    Doc::parse(&body)
        .attr("input[name=s]", "value")
        .expect("session field")
}

async fn call(
    app: &TestApp,
    method: Method,
    path: &str,
    session: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = app.http.request(method, app.url(path));
    if let Some(s) = session {
        request = request.header(SESSION, s);
    }
    if let Some(b) = body {
        request = request.json(&b);
    }
    let r = request.send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn import(app: &TestApp, session: &str, definition: Value) -> Value {
    let (status, body) = call(
        app,
        Method::POST,
        LIST,
        Some(session),
        Some(json!({"definition": definition})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body
}

async fn publish(app: &TestApp, session: &str, id: i64, definition: Value) -> (u16, Value) {
    call(
        app,
        Method::POST,
        &format!("{LIST}/{id}/versions"),
        Some(session),
        Some(json!({"definition": definition})),
    )
    .await
}

/// `GET /b24/admin/questionnaires/{id}` with `session`: status and body.
async fn detail(app: &TestApp, session: &str, id: impl std::fmt::Display) -> (u16, Value) {
    call(
        app,
        Method::GET,
        &format!("{LIST}/{id}"),
        Some(session),
        None,
    )
    .await
}

/// Runs «Отправить опрос» with `code` on a new patient deal; returns the deal and the
/// link's token.
async fn send(fake: &FakePortal, app: &TestApp, code: &str) -> (u64, String) {
    let deal = patient_deal(fake);
    let before = fake.event_sends().len();
    let (_, r) = fake
        .run_robot(SEND, deal, &[("survey_code", code)])
        .await
        .expect("robot delivered");
    assert_eq!(r.status(), 200);
    app.run_outbox().await;
    let sends = fake.event_sends();
    assert_eq!(sends.len(), before + 1, "{sends:?}");
    let url = sends[before].1["SURVEY_URL"].clone();
    (deal, url.rsplit('/').next().unwrap_or_default().to_owned())
}

async fn first_question(app: &TestApp, token: &str) -> String {
    let (status, survey) = app.get_json(&format!("/api/v1/surveys/{token}")).await;
    assert_eq!(status, 200, "{survey}");
    survey["questions"][0]["title"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn count_rows(app: &TestApp, table: &str) -> i64 {
    use sea_orm::{ConnectionTrait, Statement};
    let row = app
        .state
        .db
        .query_one_raw(Statement::from_string(
            app.state.db.get_database_backend(),
            format!("SELECT COUNT(*) AS n FROM {table}"),
        ))
        .await
        .expect("count")
        .expect("a row");
    row.try_get::<i64>("", "n").expect("n")
}

/// The PDF's text, or `None` (with a SKIP line) without `pdftotext` (poppler-utils).
fn pdf_text(pdf: &[u8]) -> Option<String> {
    if std::process::Command::new("pdftotext")
        .arg("-v")
        .output()
        .is_err()
    {
        crate::support::skip(
            "questionnaires: the pinned version in the PDF",
            "pdftotext not installed (apt-get install poppler-utils)",
        );
        return None;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("r.pdf");
    std::fs::write(&path, pdf).expect("write");
    let out = std::process::Command::new("pdftotext")
        .arg(&path)
        .arg("-")
        .output()
        .expect("pdftotext runs");
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

on_both_databases!(a_sent_link_keeps_its_version_and_a_new_robot_run_gets_the_new_one);
async fn a_sent_link_keeps_its_version_and_a_new_robot_run_gets_the_new_one(db: TestDb) {
    let log = crate::support::logs::capture();
    let (fake, app) = installed_on(&db.url).await;
    let session = admin_session(&fake, &app).await;
    let created = import(&app, &session, dental("dental", "Болит ли зуб сейчас?")).await;
    let id = created["id"].as_i64().expect("id");
    assert_eq!(
        created["versions"][0]["version"], 1,
        "the server numbers: {created}"
    );
    assert_eq!(created["definition"]["version"], 1);

    let (deal, v1_token) = send(&fake, &app, "dental").await;
    assert_eq!(
        first_question(&app, &v1_token).await,
        "Болит ли зуб сейчас?"
    );

    let (status, version) =
        publish(&app, &session, id, dental("dental", "Кровоточат ли дёсны?")).await;
    assert_eq!(status, 201, "{version}");
    assert_eq!(version["version"], 2);
    assert_eq!(version["published_by"], 1);

    // The patient who already has the link still sees version 1, on the API and the page.
    assert_eq!(
        first_question(&app, &v1_token).await,
        "Болит ли зуб сейчас?"
    );
    let page = app
        .http
        .get(app.url(&format!("/s/{v1_token}")))
        .send()
        .await
        .expect("page")
        .text()
        .await
        .unwrap_or_default();
    let text = Doc::parse(&page).text();
    assert!(text.contains("Болит ли зуб сейчас?"), "{page}");
    assert!(!text.contains("Кровоточат"), "{page}");

    // The patient submits; the doctor's tab and the PDF show version 1.
    let (status, survey) = app.get_json(&format!("/api/v1/surveys/{v1_token}")).await;
    assert_eq!(status, 200);
    let (status, body) = app
        .send_json(
            Method::POST,
            &format!("/api/v1/surveys/{v1_token}/submit"),
            &json!({"answers": full_answers(&survey)}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    app.run_outbox().await;
    let r = fake.open_deal_tab(1, deal).await.expect("tab delivered");
    assert_eq!(r.status(), 200);
    let tab = Doc::parse(&r.text().await.unwrap_or_default()).text();
    assert!(tab.contains("Болит ли зуб сейчас?"), "{tab}");
    assert!(!tab.contains("Кровоточат"), "{tab}");
    let comments = fake.timeline_comments();
    let pdf = comments
        .iter()
        .find(|c| c.entity_id == deal)
        .and_then(|c| c.files.first())
        .map(|(_, bytes)| bytes.clone())
        .expect("the comment carries the PDF");
    if let Some(pdf) = pdf_text(&pdf) {
        assert!(pdf.contains("Болит ли зуб"), "{pdf}");
        assert!(!pdf.contains("Кровоточат"), "{pdf}");
    }

    // A new robot run sends version 2.
    let (_, v2_token) = send(&fake, &app, "dental").await;
    assert_eq!(
        first_question(&app, &v2_token).await,
        "Кровоточат ли дёсны?"
    );

    // The editor's actions are logged by ids: no session, no link, no answer.
    let text = log.text();
    assert!(text.contains("Опубликована новая версия анкеты"), "{text}");
    for secret in [
        session.as_str(),
        v1_token.as_str(),
        v2_token.as_str(),
        "пенициллин",
    ] {
        assert!(!text.contains(secret), "«{secret}» logged");
    }

    // Who published what is audited with the administrator's user id.
    use opros::db::entities::audit_event;
    use sea_orm::EntityTrait;
    let audit = audit_event::Entity::find()
        .all(&app.state.db)
        .await
        .expect("audit");
    for (action, subject) in [
        (
            "questionnaire_create",
            format!("questionnaire:{id} version:1"),
        ),
        (
            "questionnaire_publish",
            format!("questionnaire:{id} version:2"),
        ),
    ] {
        assert!(
            audit.iter().any(|a| a.action == action
                && a.actor == "user:1"
                && a.subject.as_deref() == Some(subject.as_str())),
            "{action} not audited: {audit:?}"
        );
    }
}

/// A second portal with the application installed into the same service.
async fn second_portal(app: &TestApp) -> FakePortal {
    let other = FakePortal::start(FakePortalConfig {
        member_id: "5e0c2a9b7d1f4c3e8a6b2d0f9e7c5a31".into(),
        ..FakePortalConfig::default()
    })
    .await
    .expect("second portal");
    install(&other, app).await;
    other
}

on_both_databases!(another_portal_s_questionnaires_are_invisible);
async fn another_portal_s_questionnaires_are_invisible(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let other = second_portal(&app).await;
    let ours = admin_session(&fake, &app).await;
    let theirs = admin_session(&other, &app).await;

    let secret = import(&app, &ours, dental("dental", "Болит ли зуб сейчас?")).await;
    let id = secret["id"].as_i64().expect("id");
    // Portal A's own «phq9» shadows the template for A only.
    let mut own_phq9 = dental("phq9", "Вопрос только для клиники А");
    own_phq9["title"] = json!("PHQ-9 клиники А");
    import(&app, &ours, own_phq9).await;

    let (status, list) = call(&app, Method::GET, LIST, Some(&theirs), None).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["items"], json!([]), "{list}");
    assert!(
        list["templates"].as_array().is_some_and(|t| t
            .iter()
            .any(|t| t["code"] == "phq9" && t["source"] == "builtin")),
        "{list}"
    );
    let one = format!("{LIST}/{id}");
    for (method, path, body) in [
        (Method::GET, one.clone(), None),
        (Method::GET, format!("{one}/export"), None),
        (
            Method::POST,
            format!("{one}/versions"),
            Some(json!({"definition": dental("dental", "Подмена")})),
        ),
        (
            Method::POST,
            format!("{one}/archive"),
            Some(json!({"archived": true})),
        ),
        (
            Method::POST,
            LIST.to_owned(),
            Some(json!({"duplicate_of": id})),
        ),
    ] {
        let (status, body) = call(&app, method.clone(), &path, Some(&theirs), body).await;
        assert_eq!(status, 404, "{method} {path}: {body}");
        assert_eq!(body["code"], "questionnaire_not_found", "{body}");
        assert!(!body.to_string().contains("Болит"), "{body}");
    }
    // Nothing of theirs changed ours.
    let (status, mine) = call(&app, Method::GET, &one, Some(&ours), None).await;
    assert_eq!(status, 200);
    assert_eq!(mine["archived"], false);
    assert_eq!(mine["versions"].as_array().map(Vec::len), Some(1));

    // B's robot with A's own code: unknown there. With a code A shadows: the template.
    let deal = patient_deal(&other);
    let (_, r) = other
        .run_robot(SEND, deal, &[("survey_code", "dental")])
        .await
        .expect("robot delivered");
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.expect("error body");
    assert_eq!(body["code"], "questionnaire_unknown", "{body}");
    let (_, token) = send(&other, &app, "phq9").await;
    let question = first_question(&app, &token).await;
    assert!(!question.contains("клиники А"), "{question}");
    let (_, token) = send(&fake, &app, "phq9").await;
    assert_eq!(
        first_question(&app, &token).await,
        "Вопрос только для клиники А"
    );
}

#[tokio::test]
async fn publish_names_every_problem_in_russian_and_stores_nothing() {
    let db = crate::support::db::sqlite();
    let (fake, app) = installed_on(&db.url).await;
    let session = admin_session(&fake, &app).await;
    let id = import(&app, &session, dental("dental", "Болит ли зуб?")).await["id"]
        .as_i64()
        .expect("id");
    let broken = json!({
        "code": "dental",
        "version": 1,
        "title": "Сломанная",
        "sections": [{"id": "s", "title": "Раздел", "questions": [
            {"id": "a", "type": "single", "title": "A", "options": [],
             "show_if": {"question": "b", "equals": "x"}},
            {"id": "b", "type": "single", "title": "B",
             "options": [{"value": "x", "label": "X", "score": 1}],
             "show_if": {"question": "a", "equals": "y"}},
            {"id": "b", "type": "text", "title": "Повтор"},
            {"id": "c", "type": "text", "title": "C", "show_if": {"question": "nowhere", "equals": "x"}}
        ]}],
        "scores": [{"id": "total", "title": "Сумма", "questions": ["b"], "bands": [
            {"from": 0, "to": 1, "label": "Низкий"},
            {"from": 1, "to": 2, "label": "Перекрытие"},
            {"from": 4, "to": 5, "label": "После пропуска"}
        ]}]
    });
    let (status, body) = publish(&app, &session, id, broken).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], "invalid_definition");
    let problems = body["problems"].as_array().cloned().unwrap_or_default();
    let message = body["message"].as_str().unwrap_or_default();
    assert_eq!(
        message,
        format!(
            "Анкета не опубликована: {} {}",
            problems.len(),
            match problems.len() % 10 {
                1 if problems.len() % 100 != 11 => "ошибка",
                2..=4 if !(12..=14).contains(&(problems.len() % 100)) => "ошибки",
                _ => "ошибок",
            }
        )
    );
    let codes: Vec<&str> = problems.iter().filter_map(|p| p["code"].as_str()).collect();
    for expected in [
        "unknown_question",
        "show_if_cycle",
        "duplicate_id",
        "empty_options",
        "band_overlap",
        "band_gap",
    ] {
        assert!(codes.contains(&expected), "{expected} missing: {body}");
    }
    for p in &problems {
        let reason = p["reason"].as_str().unwrap_or_default();
        assert!(
            reason
                .chars()
                .any(|c| ('а'..='я').contains(&c.to_lowercase().next().unwrap_or(c))),
            "not Russian: {p}"
        );
        assert!(p["place"].is_string(), "{p}");
    }

    // A changed code and a shape error are problems too.
    let (status, body) = publish(&app, &session, id, dental("other_code", "Вопрос")).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["problems"][0]["code"], "code_changed", "{body}");
    let (status, body) =
        publish(&app, &session, id, json!({"code": "dental", "sections": 5})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["problems"][0]["code"], "bad_shape", "{body}");
    assert_eq!(body["message"], "Анкета не опубликована: 1 ошибка");

    let (_, detail) = detail(&app, &session, id).await;
    assert_eq!(
        detail["versions"].as_array().map(Vec::len),
        Some(1),
        "{detail}"
    );
    assert_eq!(count_rows(&app, "questionnaire_version").await, 1);
}

on_both_databases!(an_export_imports_as_the_same_definition);
async fn an_export_imports_as_the_same_definition(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let other = second_portal(&app).await;
    let ours = admin_session(&fake, &app).await;
    let theirs = admin_session(&other, &app).await;
    // A built-in with scores, bands and messages survives the round trip whole.
    let (status, created) = call(
        &app,
        Method::POST,
        LIST,
        Some(&ours),
        Some(json!({"from_template": "phq9"})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_i64().expect("id");
    let r = app
        .http
        .get(app.url(&format!("{LIST}/{id}/export")))
        .header(SESSION, &ours)
        .send()
        .await
        .expect("export");
    assert_eq!(r.status(), 200);
    let disposition = r
        .headers()
        .get("content-disposition")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(disposition, "attachment; filename=\"phq9.json\"");
    assert!(
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("application/json"))
    );
    let exported: Value = r.json().await.expect("JSON file");
    assert_eq!(exported, created["definition"]);
    assert!(exported["scores"].as_array().is_some_and(|s| !s.is_empty()));

    let imported = import(&app, &theirs, exported.clone()).await;
    assert_eq!(imported["definition"], exported);
    assert_eq!(imported["code"], "phq9");
    // The same file again is a taken code.
    let (status, body) = call(
        &app,
        Method::POST,
        LIST,
        Some(&theirs),
        Some(json!({"definition": exported})),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "code_taken");
}

on_both_databases!(archive_hides_from_the_select_and_old_links_still_work);
async fn archive_hides_from_the_select_and_old_links_still_work(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let session = admin_session(&fake, &app).await;
    let options = || {
        fake.robots()
            .iter()
            .find(|r| r["CODE"] == SEND)
            .map(|r| r["PROPERTIES"]["survey_code"]["Options"].clone())
            .unwrap_or(Value::Null)
    };
    assert!(
        options()["pre_visit"].is_string(),
        "templates at install: {}",
        options()
    );
    assert!(options()["dental"].is_null());
    let updates = || fake.calls_of("bizproc.robot.update").len();
    let before = updates();

    let id = import(&app, &session, dental("dental", "Болит ли зуб сейчас?")).await["id"]
        .as_i64()
        .expect("id");
    app.run_outbox().await;
    assert_eq!(updates(), before + 1, "one refresh per change");
    assert_eq!(options()["dental"], "Стоматологическая анкета");

    let (_, token) = send(&fake, &app, "dental").await;
    let (status, archived) = call(
        &app,
        Method::POST,
        &format!("{LIST}/{id}/archive"),
        Some(&session),
        Some(json!({"archived": true})),
    )
    .await;
    assert_eq!(status, 200, "{archived}");
    assert_eq!(archived["archived"], true);
    app.run_outbox().await;
    assert_eq!(updates(), before + 2);
    assert!(options()["dental"].is_null(), "{}", options());
    assert!(options()["pre_visit"].is_string());

    // The robot is no longer offered it (no template of that code either)…
    let deal = patient_deal(&fake);
    let (_, r) = fake
        .run_robot(SEND, deal, &[("survey_code", "dental")])
        .await
        .expect("robot delivered");
    assert_eq!(r.status(), 400);
    // …but the link already sent still opens its version.
    assert_eq!(first_question(&app, &token).await, "Болит ли зуб сейчас?");
    let (status, list) = call(&app, Method::GET, LIST, Some(&session), None).await;
    assert_eq!(status, 200);
    assert_eq!(list["items"][0]["archived"], true, "{list}");

    // Back from the archive: offered again, audited both ways.
    let (status, _) = call(
        &app,
        Method::POST,
        &format!("{LIST}/{id}/archive"),
        Some(&session),
        Some(json!({"archived": false})),
    )
    .await;
    assert_eq!(status, 200);
    app.run_outbox().await;
    assert_eq!(updates(), before + 3);
    assert_eq!(options()["dental"], "Стоматологическая анкета");
    use opros::db::entities::audit_event;
    use sea_orm::EntityTrait;
    let actions: Vec<String> = audit_event::Entity::find()
        .all(&app.state.db)
        .await
        .expect("audit")
        .into_iter()
        .filter(|a| a.actor == "user:1")
        .map(|a| a.action)
        .collect();
    for expected in ["questionnaire_archive", "questionnaire_unarchive"] {
        assert!(actions.iter().any(|a| a == expected), "{actions:?}");
    }
}

#[tokio::test]
async fn templates_copies_and_taken_codes() {
    let db = crate::support::db::sqlite();
    let (fake, app) = installed_on(&db.url).await;
    let session = admin_session(&fake, &app).await;
    let create = |body: Value| call(&app, Method::POST, LIST, Some(&session), Some(body));
    let (status, phq9) = create(json!({"from_template": "phq9"})).await;
    assert_eq!(status, 201, "{phq9}");
    let (status, body) = create(json!({"from_template": "phq9"})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "code_taken");
    let (status, body) = create(json!({"from_template": "no_such_template"})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["problems"][0]["code"], "unknown_template");
    for (n, code) in [(2, "phq9_2"), (3, "phq9_3")] {
        let (status, copy) = create(json!({"duplicate_of": phq9["id"]})).await;
        assert_eq!(status, 201, "copy {n}: {copy}");
        assert_eq!(copy["code"], code);
        assert_eq!(copy["definition"]["code"], code);
        assert!(
            copy["title"]
                .as_str()
                .is_some_and(|t| t.ends_with(" (копия)")),
            "{copy}"
        );
    }
    for body in [
        json!({}),
        json!({"from_template": "phq9", "duplicate_of": 1}),
        json!({"from_template": "phq9", "portal_id": 2}),
    ] {
        let (status, answer) = create(body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["code"], "bad_json");
    }
    // A code longer than the catalog keeps is a problem, not a database error.
    let (status, body) = create(json!({"definition": dental(&"a".repeat(65), "Вопрос")})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["problems"][0]["code"], "code_too_long", "{body}");
    // The robot now sends the portal's own phq9, pinned by its version id.
    let (_, token) = send(&fake, &app, "phq9").await;
    use opros::db::entities::invitation;
    use sea_orm::EntityTrait;
    let rows = invitation::Entity::find()
        .all(&app.state.db)
        .await
        .expect("rows");
    assert!(
        rows.iter().all(|r| r.questionnaire_version_id.is_some()),
        "{rows:?}"
    );
    assert!(!first_question(&app, &token).await.is_empty());
}

on_both_databases!(another_instance_sees_a_publish_within_seconds);
async fn another_instance_sees_a_publish_within_seconds(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let session = admin_session(&fake, &app).await;
    let id = import(&app, &session, dental("dental", "Болит ли зуб сейчас?")).await["id"]
        .as_i64()
        .expect("id");
    let second = crate::support::portal::app_for_db(&fake, &db.url, &[]).await;
    let portal = fake_portal_id(&app).await;
    let title = |state: opros::AppState| async move {
        opros::questionnaires::resolve(&state, Some(portal), "dental")
            .await
            .expect("resolve")
            .and_then(|r| r.questionnaire.questions().next().map(|q| q.title.clone()))
            .unwrap_or_default()
    };
    assert_eq!(title(second.state.clone()).await, "Болит ли зуб сейчас?");
    let (status, _) = publish(&app, &session, id, dental("dental", "Кровоточат ли дёсны?")).await;
    assert_eq!(status, 201);
    // This instance at once; the other after its cache's refresh (a few seconds).
    assert_eq!(title(app.state.clone()).await, "Кровоточат ли дёсны?");
    eventually("the other instance reads the new version", || {
        let state = second.state.clone();
        async move { title(state).await == "Кровоточат ли дёсны?" }
    })
    .await;
}

async fn fake_portal_id(app: &TestApp) -> i64 {
    use opros::db::entities::portal;
    use sea_orm::EntityTrait;
    portal::Entity::find()
        .all(&app.state.db)
        .await
        .expect("portals")
        .first()
        .map(|p| p.id)
        .expect("installed portal")
}

on_both_databases!(the_editor_api_refuses_every_caller_but_the_portal_s_admin);
async fn the_editor_api_refuses_every_caller_but_the_portal_s_admin(db: TestDb) {
    use opros::local_app::session::{Scope, Session};
    let (fake, app) = installed_on(&db.url).await;
    let genuine = admin_session(&fake, &app).await;
    let portal = fake_portal_id(&app).await;
    let key = app.state.session_key.expose().clone();
    let now = chrono::Utc::now();
    // A genuine deal tab's session: the doctor's, bound to one deal.
    let deal_tab = Session::new(
        portal,
        1,
        Scope::Entity(opros::crm::EntityRef {
            kind: opros::crm::EntityType::Deal,
            id: 1,
        }),
        now,
    )
    .sign(&key);
    let tampered = genuine.replacen(&format!("{portal}."), &format!("{}.", portal + 1), 1);
    let foreign_key = Session::new(portal, 1, Scope::Admin, now).sign(b"someone else's key");
    let expired =
        Session::new(portal, 1, Scope::Admin, now - chrono::Duration::hours(1)).sign(&key);
    let no_portal = Session::new(portal + 100, 1, Scope::Admin, now).sign(&key);
    let refused: [(&str, Option<&str>); 6] = [
        ("no session", None),
        ("deal tab session", Some(&deal_tab)),
        ("tampered", Some(&tampered)),
        ("another key", Some(&foreign_key)),
        ("expired", Some(&expired)),
        ("portal not installed", Some(&no_portal)),
    ];
    let calls = [
        (Method::GET, LIST.to_owned(), None),
        (
            Method::POST,
            LIST.to_owned(),
            Some(json!({"from_template": "phq9"})),
        ),
        (Method::GET, format!("{LIST}/1"), None),
        (Method::GET, format!("{LIST}/1/export"), None),
        (
            Method::POST,
            format!("{LIST}/1/versions"),
            Some(json!({"definition": dental("dental", "X")})),
        ),
        (
            Method::POST,
            format!("{LIST}/1/archive"),
            Some(json!({"archived": true})),
        ),
    ];
    for (what, session) in refused {
        for (method, path, body) in &calls {
            let (status, answer) = call(&app, method.clone(), path, session, body.clone()).await;
            assert_eq!(status, 401, "{what}: {method} {path}: {answer}");
            assert_eq!(answer["code"], "session_expired", "{answer}");
            assert!(
                answer["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("Сеанс"))
            );
        }
    }
    assert_eq!(count_rows(&app, "questionnaire").await, 0);
    // A session in the query string is not a session.
    let r = app
        .http
        .get(app.url(&format!("{LIST}?s={genuine}")))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 401);
    // The genuine session works: the refusals above were the session's.
    let (status, _) = call(&app, Method::GET, LIST, Some(&genuine), None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn huge_and_deeply_nested_bodies_are_refused_and_the_service_lives_on() {
    let db = crate::support::db::sqlite();
    let (fake, app) = installed_on(&db.url).await;
    let session = admin_session(&fake, &app).await;
    let huge = format!(
        "{{\"definition\": {{\"title\": \"{}\"}}}}",
        "я".repeat(1024 * 1024)
    );
    let r = app
        .http
        .post(app.url(LIST))
        .header(SESSION, &session)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 413);
    let deep = format!(
        "{{\"definition\": {}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    for path in [LIST.to_owned(), format!("{LIST}/1/versions")] {
        let r = app
            .http
            .post(app.url(&path))
            .header(SESSION, &session)
            .header("content-type", "application/json")
            .body(deep.clone())
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 400, "{path}");
        let body: Value = r.json().await.expect("error body");
        assert_eq!(body["code"], "bad_json", "{body}");
        assert!(!body.to_string().contains("[[["), "{body}");
    }
    for junk in ["", "not json", "{\"archived\": \"yes\"}", "[]"] {
        let r = app
            .http
            .post(app.url(&format!("{LIST}/1/archive")))
            .header(SESSION, &session)
            .body(junk)
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 400, "{junk:?}");
    }
    for id in ["abc", "-1", "0", "99999999999999999999999"] {
        let (status, body) = detail(&app, &session, id).await;
        assert_eq!(status, 404, "{id}: {body}");
        assert_eq!(body["code"], "questionnaire_not_found");
    }
    let (status, _) = call(&app, Method::GET, LIST, Some(&session), None).await;
    assert_eq!(status, 200, "the service still answers");
    assert_eq!(count_rows(&app, "questionnaire").await, 0);
}

on_both_databases!(script_in_a_definition_is_stored_as_text_and_shown_escaped);
async fn script_in_a_definition_is_stored_as_text_and_shown_escaped(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let session = admin_session(&fake, &app).await;
    let attack = "<script>alert(1)</script><img src=x onerror=alert(2)>";
    let mut definition = dental("xss", attack);
    definition["title"] = json!(format!("Анкета {attack}"));
    let created = import(&app, &session, definition).await;
    assert_eq!(
        created["definition"]["sections"][0]["questions"][0]["title"],
        attack
    );
    let (_, token) = send(&fake, &app, "xss").await;
    let page = app
        .http
        .get(app.url(&format!("/s/{token}")))
        .send()
        .await
        .expect("page")
        .text()
        .await
        .unwrap_or_default();
    assert!(!page.contains("<script>alert"), "{page}");
    assert!(!page.contains("<img src=x"), "{page}");
    assert!(page.contains("&#60;script&#62;alert(1)"), "{page}");
    let doc = Doc::parse(&page);
    assert_eq!(doc.count("script:not([src])"), 0);
    assert_eq!(doc.count("img[onerror]"), 0);
    assert!(doc.text().contains(attack), "shown as text");
}

on_both_databases!(an_uninstall_with_clean_removes_the_portal_s_questionnaires);
async fn an_uninstall_with_clean_removes_the_portal_s_questionnaires(db: TestDb) {
    use opros::testing::fake_portal::UninstalledAnswer;
    let (fake, app) = installed_on(&db.url).await;
    let other = second_portal(&app).await;
    let ours = admin_session(&fake, &app).await;
    let theirs = admin_session(&other, &app).await;
    let id = import(&app, &ours, dental("dental", "Болит ли зуб сейчас?")).await["id"]
        .as_i64()
        .expect("id");
    import(&app, &theirs, dental("dental", "Вопрос другой клиники")).await;
    let (_, token) = send(&fake, &app, "dental").await;
    assert_eq!(first_question(&app, &token).await, "Болит ли зуб сейчас?");
    fake.answer_after_uninstall(UninstalledAnswer::InvalidToken);
    let r = fake.uninstall(true).await.expect("event delivered");
    assert_eq!(r.status(), 200);
    app.run_outbox().await;
    assert_eq!(
        count_rows(&app, "questionnaire").await,
        1,
        "the other portal's stays"
    );
    assert_eq!(count_rows(&app, "questionnaire_version").await, 1);
    let (status, _) = detail(&app, &ours, id).await;
    assert_eq!(status, 401, "the portal is uninstalled");
    let (status, list) = call(&app, Method::GET, LIST, Some(&theirs), None).await;
    assert_eq!(status, 200);
    assert_eq!(list["items"][0]["code"], "dental", "{list}");
}

on_both_databases!(concurrent_publishes_each_get_a_version_of_their_own);
async fn concurrent_publishes_each_get_a_version_of_their_own(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let session = admin_session(&fake, &app).await;
    let id = import(&app, &session, dental("dental", "Вопрос 1")).await["id"]
        .as_i64()
        .expect("id");
    let publishes = (2..=6).map(|n| {
        let (app, session) = (&app, &session);
        async move { publish(app, session, id, dental("dental", &format!("Вопрос {n}"))).await }
    });
    let mut numbers: Vec<i64> = futures::future::join_all(publishes)
        .await
        .into_iter()
        .map(|(status, body)| {
            assert_eq!(status, 201, "{body}");
            body["version"].as_i64().expect("version")
        })
        .collect();
    numbers.sort_unstable();
    assert_eq!(numbers, vec![2, 3, 4, 5, 6]);
    let (_, detail) = detail(&app, &session, id).await;
    assert_eq!(
        detail["versions"].as_array().map(Vec::len),
        Some(6),
        "{detail}"
    );
}
