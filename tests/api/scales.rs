//! Clinical scales end to end: PHQ-9 sent by the robot, filled by the patient, its
//! score in the comment, the PDF and the tab; the crisis message on the patient's
//! "done" page and nowhere else. And the validation rules a clinic sets, checked on
//! the server (422 per question) and described to the page.

use reqwest::Method;
use sea_orm::EntityTrait;
use serde_json::{Value, json};

use crate::support::html::Doc;
use crate::support::portal::{app_for, fake, install, patient_deal};
use crate::support::{TestApp, logs};

/// Words of the crisis message that no outbound call, log line or portal text may carry.
const CRISIS: [&str; 3] = ["8-800-2000-122", "Вы не одни", "позвоните 112"];

/// Robot with `survey_code`; returns the deal and the link's token.
async fn link_for(fake: &opros::testing::FakePortal, app: &TestApp, code: &str) -> (u64, String) {
    let deal = patient_deal(fake);
    let (_, r) = fake
        .run_robot("opros_send_survey", deal, &[("survey_code", code)])
        .await
        .expect("robot call delivered");
    assert_eq!(r.status(), 200);
    app.run_outbox().await;
    let url = fake
        .event_sends()
        .last()
        .map(|s| s.1["SURVEY_URL"].clone())
        .expect("survey_url returned");
    (deal, url.rsplit('/').next().unwrap_or_default().to_owned())
}

fn pdf_text(pdf: &[u8]) -> Option<String> {
    let dir = tempfile::tempdir().ok()?;
    let path = dir.path().join("r.pdf");
    std::fs::write(&path, pdf).ok()?;
    let out = std::process::Command::new("pdftotext")
        .arg(&path)
        .arg("-")
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn phq9_score_reaches_the_doctor_and_the_crisis_message_only_the_patient() {
    let log = logs::capture();
    let fake = fake().await;
    let app = app_for(&fake, &[]).await;
    install(&fake, &app).await;
    let (deal, token) = link_for(&fake, &app, "phq9").await;

    // The patient's JSON and page carry no scores, flag rules, bands or messages.
    let (status, survey) = app.get_json(&format!("/api/v1/surveys/{token}")).await;
    assert_eq!(status, 200, "{survey}");
    let page = app
        .http
        .get(app.url(&format!("/s/{token}")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for text in [survey.to_string(), page.clone()] {
        for secret in [
            "score",
            "flag_if",
            "bands",
            "умеренно тяжёлая",
            "пункт 9",
            "8-800-2000-122",
        ] {
            assert!(
                !text.contains(secret),
                "«{secret}» reached the patient: {text}"
            );
        }
    }
    assert_eq!(survey["questions"].as_array().map(Vec::len), Some(10));
    assert_eq!(
        survey["questions"][0]["options"][1],
        json!({"value": "several_days", "label": "Несколько дней"})
    );
    // The difficulty item appears once a problem is marked: the rule reaches the page.
    assert!(
        Doc::parse(&page).count("#q-difficulty[data-show-if][hidden]") == 1,
        "{page}"
    );

    // 8 × «Более половины дней» + item 9 «Несколько дней»: 17, moderately severe.
    let mut answers = serde_json::Map::new();
    for i in 1..=8 {
        answers.insert(format!("q{i}"), json!("more_than_half"));
    }
    answers.insert("q9".into(), json!("several_days"));
    let (status, body) = app
        .send_json(
            Method::POST,
            &format!("/api/v1/surveys/{token}/submit"),
            &json!({"answers": answers}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let messages = body["patient_messages"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(messages.len(), 1, "{body}");
    let message = messages[0].as_str().unwrap_or_default();
    for words in CRISIS {
        assert!(message.contains(words), "{message}");
    }
    app.run_outbox().await;

    // Stored with the response: the scores and what the patient was shown.
    let stored = opros::db::entities::response::Entity::find()
        .one(&app.state.db)
        .await
        .unwrap()
        .and_then(|r| r.outcome)
        .expect("outcome stored");
    assert_eq!(stored["scores"][0]["total"], json!(17.0), "{stored}");
    assert_eq!(stored["scores"][0]["band"], "умеренно тяжёлая");
    assert_eq!(stored["patient_messages"][0], json!(message));

    let comments = fake.timeline_comments();
    assert_eq!(comments.len(), 1, "{comments:?}");
    let comment = &comments[0];
    assert_eq!(comment.entity_id, deal);
    assert!(
        comment
            .comment
            .contains("Баллы: PHQ-9: 17 — умеренно тяжёлая."),
        "{}",
        comment.comment
    );
    assert!(
        comment.comment.contains("PHQ-9, пункт 9"),
        "item 9 is a red flag: {}",
        comment.comment
    );
    match pdf_text(&comment.files[0].1) {
        Some(text) if !text.is_empty() => {
            assert!(text.contains("Баллы по шкалам"), "{text}");
            assert!(text.contains("17 — умеренно тяжёлая"), "{text}");
            let flags = text.find("Обратите внимание").expect("flags box");
            let scores = text.find("Баллы по шкалам").expect("scores box");
            assert!(flags < scores, "scores come after the flags: {text}");
        }
        _ => crate::support::skip(
            "scales::phq9_score_reaches_the_doctor",
            "pdftotext not installed (apt-get install poppler-utils)",
        ),
    }

    let tab = fake
        .open_deal_tab(1, deal)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let doc = Doc::parse(&tab);
    assert_eq!(
        doc.texts(".scores .is-flagged dd"),
        ["17 — умеренно тяжёлая (требует внимания)"],
        "{tab}"
    );
    assert!(doc.select_text(".flagged").contains("пункт 9"), "{tab}");

    // The crisis message went to no one: no call to the portal, no log line.
    let calls: Vec<String> = fake.calls().iter().map(|c| c.params.to_string()).collect();
    let comments_text: Vec<&str> = comments.iter().map(|c| c.comment.as_str()).collect();
    for words in CRISIS {
        assert!(
            !calls.iter().any(|c| c.contains(words)),
            "«{words}» sent: {calls:?}"
        );
        assert!(!comments_text.iter().any(|c| c.contains(words)));
        assert!(!log.text().contains(words), "«{words}» logged");
    }

    // Opening the completed link again shows only «thank you»: the message follows
    // from the answers, and whoever holds the link must not learn them.
    let again = app
        .http
        .get(app.url(&format!("/s/{token}")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(again.contains("Спасибо"), "{again}");
    assert!(!again.contains("8-800-2000-122"), "{again}");
}

#[tokio::test]
async fn the_page_without_javascript_shows_the_crisis_message_after_submit() {
    let fake = fake().await;
    let app = app_for(&fake, &[]).await;
    install(&fake, &app).await;
    let (_, token) = link_for(&fake, &app, "phq9").await;
    let mut form: Vec<(String, &str)> = (1..=8).map(|i| (format!("q{i}"), "not_at_all")).collect();
    form.push(("q9".into(), "nearly_every_day"));
    let r = app
        .http
        .post(app.url(&format!("/s/{token}")))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    let doc = Doc::parse(&html);
    let note = doc.select_text(".message-note");
    assert!(
        note.contains("112") && note.contains("8-800-2000-122"),
        "{html}"
    );
    app.run_outbox().await;
    let comment = &fake.timeline_comments()[0].comment;
    assert!(comment.contains("PHQ-9: 3 — минимальная"), "{comment}");
    assert!(!comment.contains("8-800"), "{comment}");
}

#[tokio::test]
async fn gad7_score_is_in_the_comment() {
    let fake = fake().await;
    let app = app_for(&fake, &[]).await;
    install(&fake, &app).await;
    let (_, token) = link_for(&fake, &app, "gad7").await;
    let answers: serde_json::Map<String, Value> = (1..=7)
        .map(|i| {
            (
                format!("q{i}"),
                json!(if i <= 5 {
                    "more_than_half"
                } else {
                    "not_at_all"
                }),
            )
        })
        .collect();
    let (status, body) = app
        .send_json(
            Method::POST,
            &format!("/api/v1/surveys/{token}/submit"),
            &json!({"answers": answers}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("patient_messages").is_none(), "{body}");
    app.run_outbox().await;
    let comment = &fake.timeline_comments()[0].comment;
    assert!(
        comment.contains("Баллы: GAD-7: 10 — умеренная."),
        "{comment}"
    );
}

/// A clinic's own questionnaire with the rules a registration form needs.
const INTAKE: &str = r#"{"code": "intake", "version": 1, "title": "Регистрация",
  "sections": [{"id": "s", "title": "О вас", "questions": [
    {"id": "birth", "type": "date", "title": "Дата рождения", "required": true,
     "min_date": "-120y", "max_date": "-1d"},
    {"id": "visit", "type": "date", "title": "Желаемая дата приёма",
     "min_date": "today", "max_date": "+60d"},
    {"id": "temp", "type": "number", "title": "Температура", "unit": "°C", "min": 34, "max": 43},
    {"id": "phone", "type": "text", "title": "Телефон", "format": "phone"},
    {"id": "email", "type": "text", "title": "Почта", "format": "email", "max_length": 60}
  ]}]}"#;

#[tokio::test]
async fn dates_ranges_and_formats_are_refused_per_question_and_described_to_the_page() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("intake.json"), INTAKE).unwrap();
    let dir_path = dir.path().display().to_string();
    let fake = fake().await;
    let app = app_for(&fake, &[("SURVEYS_DIR", &dir_path)]).await;
    install(&fake, &app).await;
    let (_, token) = link_for(&fake, &app, "intake").await;

    let today = chrono::Utc::now()
        .with_timezone(&opros::completion::MSK)
        .date_naive();
    let iso = |d: chrono::NaiveDate| d.format("%Y-%m-%d").to_string();
    let submit = |answers: Value| {
        let app = &app;
        let token = token.clone();
        async move {
            app.send_json(
                Method::POST,
                &format!("/api/v1/surveys/{token}/submit"),
                &json!({"answers": answers}),
            )
            .await
        }
    };

    let (status, body) = submit(json!({
        "birth": iso(today),
        "visit": iso(today - chrono::Duration::days(1)),
        "temp": 45,
        "phone": "12345",
        "email": "кто-то@",
    }))
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], "validation_failed");
    let errors = &body["errors"];
    let yesterday = (today - chrono::Duration::days(1)).format("%d.%m.%Y");
    assert!(
        errors["birth"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("по {yesterday}")),
        "a birth date is before today: {body}"
    );
    assert!(
        errors["visit"]
            .as_str()
            .unwrap_or_default()
            .starts_with("Укажите дату с "),
        "{body}"
    );
    assert_eq!(errors["temp"], "Введите число от 34 до 43");
    assert!(
        errors["phone"]
            .as_str()
            .unwrap_or_default()
            .contains("телефона"),
        "{body}"
    );
    assert!(
        errors["email"]
            .as_str()
            .unwrap_or_default()
            .contains("почты"),
        "{body}"
    );

    let too_old = today - chrono::Months::new(121 * 12);
    let (status, body) = submit(json!({"birth": iso(too_old)})).await;
    assert_eq!(status, 422, "age over 120: {body}");

    // The page gets the same limits, resolved for today, and the formats.
    let page = app
        .http
        .get(app.url(&format!("/s/{token}")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let doc = Doc::parse(&page);
    assert_eq!(
        doc.attr("#f-birth", "max"),
        Some(iso(today - chrono::Duration::days(1)))
    );
    assert!(doc.attr("#q-birth", "data-range-msg").is_some());
    assert_eq!(doc.attr("#f-phone", "type").as_deref(), Some("tel"));
    assert_eq!(
        doc.attr("#f-email", "data-format").as_deref(),
        Some("email")
    );
    assert_eq!(doc.attr("#f-email", "maxlength").as_deref(), Some("60"));

    let (status, body) = submit(json!({
        "birth": "1980-02-29",
        "visit": iso(today + chrono::Duration::days(3)),
        "temp": "36,6",
        "phone": "8 (912) 345-67-89",
        "email": "anna@example.ru",
    }))
    .await;
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_surveys_dir_file_with_problems_stops_the_start_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let broken = INTAKE.replace(
        r#""format": "phone""#,
        r#""format": "phone", "show_if": {"question": "ghost", "equals": "x"}"#,
    );
    std::fs::write(dir.path().join("intake.json"), broken).unwrap();
    let db = format!("sqlite://{}/opros.db?mode=rwc", dir.path().display());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_opros"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .arg("serve")
        .env("SURVEYS_DIR", dir.path())
        .env("DATABASE_URL", db)
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("анкеты содержат ошибки"), "{stderr}");
    assert!(
        stderr.contains("«ghost»") && stderr.contains("unknown_question"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

const HOSTILE: &str = r#"<script>alert(1)</script>"'><img src=x onerror=alert(2)>"#;

/// Markup in a message, a score's title and band, and a rule's value (in the page's
/// `data-show-if` attribute) stays text on every page that shows it.
#[tokio::test]
async fn markup_in_messages_scores_and_rules_is_shown_as_text() {
    let dir = tempfile::tempdir().unwrap();
    let q = json!({
        "code": "hostile", "version": 1, "title": "Анкета",
        "sections": [{"id": "s", "title": "Раздел", "questions": [
            {"id": "note", "type": "text", "title": "Заметка"},
            {"id": "pick", "type": "single", "title": "Выбор", "required": true,
             "options": [{"value": "a", "label": "А", "score": 1},
                         {"value": "b", "label": "Б", "score": 0}]},
            {"id": "more", "type": "text", "title": "Ещё",
             "show_if": {"all": [{"question": "note", "not_equals": HOSTILE},
                                 {"question": "pick", "in": ["a"]}]}}
        ]}],
        "scores": [{"id": "x", "title": format!("Шкала {HOSTILE}"), "questions": "all",
                    "bands": [{"from": 0, "to": 0, "label": "ноль"},
                              {"from": 1, "to": 1, "label": format!("один {HOSTILE}"), "flag": true}]}],
        "messages": [{"when": {"question": "pick", "equals": "a"}, "text": format!("Совет {HOSTILE}")}]
    });
    std::fs::write(dir.path().join("hostile.json"), q.to_string()).unwrap();
    let dir_path = dir.path().display().to_string();
    let fake = fake().await;
    let app = app_for(&fake, &[("SURVEYS_DIR", &dir_path)]).await;
    install(&fake, &app).await;
    let (deal, token) = link_for(&fake, &app, "hostile").await;

    let page = app
        .http
        .get(app.url(&format!("/s/{token}")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let doc = Doc::parse(&page);
    doc.assert_no_injected_markup();
    let rule: Value = serde_json::from_str(&doc.attr("#q-more", "data-show-if").expect("rule"))
        .expect("the attribute is the rule's JSON");
    assert_eq!(rule["all"][0]["not_equals"], HOSTILE);
    assert!(!page.contains("Совет") && !page.contains("Шкала"), "{page}");

    let r = app
        .http
        .post(app.url(&format!("/s/{token}")))
        .form(&[("pick", "a"), ("note", HOSTILE)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let done = Doc::parse(&r.text().await.unwrap());
    done.assert_no_injected_markup();
    assert_eq!(
        done.select_text(".message-note"),
        format!("Совет {HOSTILE}")
    );

    app.run_outbox().await;
    let tab = fake
        .open_deal_tab(1, deal)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let doc = Doc::parse(&tab);
    doc.assert_no_injected_markup();
    assert_eq!(doc.select_text(".scores dt"), format!("Шкала {HOSTILE}"));
    assert_eq!(
        doc.select_text(".scores dd"),
        format!("1 — один {HOSTILE} (требует внимания)")
    );
    let comment = &fake.timeline_comments()[0].comment;
    assert!(!comment.contains("Совет"), "{comment}");
    let (status, _) = app.get_json("/healthz").await;
    assert_eq!(status, 200);
}

/// A patient cannot make the service show or store a message by sending it, nor by
/// an answer outside the options: the crisis message follows only from valid answers.
#[tokio::test]
async fn a_forged_submit_brings_no_message() {
    let fake = fake().await;
    let app = app_for(&fake, &[]).await;
    install(&fake, &app).await;
    let (_, token) = link_for(&fake, &app, "phq9").await;
    let mut answers: serde_json::Map<String, Value> = (1..=8)
        .map(|i| (format!("q{i}"), json!("not_at_all")))
        .collect();
    answers.insert("q9".into(), json!("3"));
    let (status, body) = app
        .send_json(
            Method::POST,
            &format!("/api/v1/surveys/{token}/submit"),
            &json!({"answers": answers, "patient_messages": ["Фальшивка"]}),
        )
        .await;
    assert_eq!(status, 422, "a score is not an answer: {body}");
    assert_eq!(
        body["errors"]["q9"],
        "Выберите один из предложенных вариантов"
    );
    answers.insert("q9".into(), json!("not_at_all"));
    answers.insert("patient_messages".into(), json!(["Фальшивка"]));
    let (status, body) = app
        .send_json(
            Method::POST,
            &format!("/api/v1/surveys/{token}/submit"),
            &json!({"answers": answers}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("patient_messages").is_none(), "{body}");
    let stored = opros::db::entities::response::Entity::find()
        .one(&app.state.db)
        .await
        .unwrap()
        .and_then(|r| r.outcome)
        .expect("outcome stored");
    assert_eq!(stored["patient_messages"], json!([]), "{stored}");
}
