//! The «Анкета пациента» tab: shown only after the portal confirmed the doctor and the
//! doctor's right to read the deal; its PDF and «Отправить новую ссылку» work only with
//! the session the tab was given.

use opros::testing::FakePortal;
use reqwest::Method;
use serde_json::Value;

use crate::support::db::{TestDb, on_both_databases};
use crate::support::html::Doc;
use crate::support::portal::{self, installed_on, patient_deal};
use crate::support::{TestApp, full_answers};

/// What the patient wrote (support::full_answers) and who they are: none of it may
/// appear on a refused page.
const PRIVATE: [&str; 3] = ["Смирнова", "пенициллин", "Головная боль"];

/// Robot → link → the patient submits every answer. Returns the link's token.
pub async fn completed_survey(fake: &FakePortal, app: &TestApp, deal: u64) -> String {
    let before = fake.event_sends().len();
    let (_, r) = fake
        .run_robot("opros_send_survey", deal, &[])
        .await
        .expect("robot delivered");
    assert_eq!(r.status(), 200);
    app.run_outbox().await;
    let sends = fake.event_sends();
    assert_eq!(sends.len(), before + 1, "{sends:?}");
    let url = sends[before]
        .1
        .get("SURVEY_URL")
        .expect("survey_url")
        .clone();
    let token = url.rsplit('/').next().expect("token").to_owned();
    let (status, survey) = app.get_json(&format!("/api/v1/surveys/{token}")).await;
    assert_eq!(status, 200, "{survey}");
    let (status, body) = app
        .send_json(
            Method::POST,
            &format!("/api/v1/surveys/{token}/submit"),
            &serde_json::json!({"answers": full_answers(&survey)}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    app.run_outbox().await;
    token
}

async fn page(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

fn assert_private_absent(body: &str) {
    for word in PRIVATE {
        assert!(!body.contains(word), "«{word}» leaked into: {body}");
    }
}

/// The value of `name="s"` in the page (the tab session).
fn session_of(body: &str) -> String {
    Doc::parse(body)
        .attr("input[name=s]", "value")
        .expect("session field")
}

/// Where the completed survey's PDF form posts: `/b24/tab/report/<id>`. The session
/// goes in the form (`s`), never in the URL.
fn report_link(body: &str) -> String {
    let link = Doc::parse(body)
        .attr("form[action^='/b24/tab/report/']", "action")
        .expect("PDF form");
    assert!(
        !link.contains('?'),
        "nothing in the PDF's URL but its id: {link}"
    );
    link
}

fn forged_tab_url(app: &TestApp, domain: &str) -> String {
    app.url(&format!(
        "/b24/placement/deal-tab?DOMAIN={domain}&PROTOCOL=0&LANG=ru"
    ))
}

fn tab_fields<'a>(auth: &'a str, member_id: &'a str, options: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("AUTH_ID", auth),
        ("AUTH_EXPIRES", "3600"),
        ("REFRESH_ID", "whatever"),
        ("member_id", member_id),
        ("PLACEMENT", "CRM_DEAL_DETAIL_TAB"),
        ("PLACEMENT_OPTIONS", options),
    ]
}

on_both_databases!(genuine_opening_shows_answers_flagged_first_and_the_pdf);
async fn genuine_opening_shows_answers_flagged_first_and_the_pdf(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let deal = patient_deal(&fake);

    let (status, empty) = page(fake.open_deal_tab(1, deal).await.unwrap()).await;
    assert_eq!(status, 200, "{empty}");
    assert_eq!(
        Doc::parse(&empty).select_text(".card.empty h2"),
        "Пациент ещё не заполнил анкету"
    );

    completed_survey(&fake, &app, deal).await;
    let r = fake.open_deal_tab(1, deal).await.unwrap();
    let csp = r
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"));
    let (status, body) = page(r).await;
    assert_eq!(status, 200, "{body}");
    let doc = Doc::parse(&body);
    assert!(
        doc.select_text(".tab-head")
            .contains("Смирнова Анна Петровна")
    );
    assert!(
        doc.texts(".badge").iter().any(|b| b.contains("заполнена")),
        "{body}"
    );
    assert_eq!(doc.count(".card.empty"), 0);
    assert_eq!(doc.count("script:not([src])"), 0, "no inline scripts");
    // Flagged answers (allergy «Да» and its details) come before every section.
    assert_eq!(doc.select_text(".flagged h2"), "Обратите внимание");
    assert!(doc.count(".flagged ~ h3.section-title") > 0, "{body}");
    assert_eq!(doc.count("h3.section-title ~ .flagged"), 0, "{body}");
    let allergy_in_flagged = doc.select_text(".flagged").contains("пенициллин");
    assert!(allergy_in_flagged, "allergy details are flagged");
    assert!(
        doc.count("h3.section-title + dl .is-flagged") > 0,
        "highlighted in place too"
    );

    // Open and download the PDF.
    let link = report_link(&body);
    let session = session_of(&body);
    let r = app
        .http
        .post(app.url(&link))
        .form(&[("s", session.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/pdf");
    assert!(
        r.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("inline")
    );
    assert!(r.bytes().await.unwrap().starts_with(b"%PDF"));
    let r = app
        .http
        .post(app.url(&link))
        .form(&[("s", session.as_str()), ("download", "1")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let disposition = r.headers()["content-disposition"].to_str().unwrap();
    assert!(disposition.starts_with("attachment") && disposition.contains(".pdf"));
}

on_both_databases!(forged_or_foreign_tokens_show_nothing);
async fn forged_or_foreign_tokens_show_nothing(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let deal = patient_deal(&fake);
    completed_survey(&fake, &app, deal).await;
    let member = fake.member_id();
    let options = format!(r#"{{"ID":"{deal}"}}"#);

    // A made-up AUTH_ID.
    let (status, body) = page(
        fake.open_placement_forged(
            &forged_tab_url(&app, &fake.domain()),
            &tab_fields("forged-token-0123456789", &member, &options),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 403);
    assert!(
        Doc::parse(&body)
            .text()
            .contains("Не удалось подтвердить вход"),
        "{body}"
    );
    assert_private_absent(&body);

    // A genuine token of another portal, with this portal's member_id, sent either to
    // this portal's domain or naming the other one.
    let other = portal::fake().await;
    let (foreign, _) = other.issue_user_token(1);
    for domain in [fake.domain(), other.domain()] {
        let (status, body) = page(
            fake.open_placement_forged(
                &forged_tab_url(&app, &domain),
                &tab_fields(&foreign, &member, &options),
            )
            .await
            .unwrap(),
        )
        .await;
        assert_eq!(status, 403, "{body}");
        assert_private_absent(&body);
    }
    // The other portal's own member_id: not installed here.
    let (status, body) = page(
        fake.open_placement_forged(
            &forged_tab_url(&app, &other.domain()),
            &tab_fields(&foreign, "another-member-id", &options),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 403);
    assert!(
        Doc::parse(&body).text().contains("не установлено"),
        "{body}"
    );
    assert_private_absent(&body);
    // The other portal never saw this portal's token; ours was asked only by us.
    assert!(
        other.calls_of("profile").is_empty(),
        "the POST's DOMAIN must never be called"
    );

    // A genuine token but the PLACEMENT_OPTIONS of a deal the user may not read.
    fake.add_user(7, "Игорь", "Воронцов", false);
    fake.deny_deal_for_user(7, deal);
    let (status, body) = page(fake.open_deal_tab(7, deal).await.unwrap()).await;
    assert_eq!(status, 403);
    assert!(
        Doc::parse(&body).text().contains("Нет доступа к сделке"),
        "{body}"
    );
    assert_private_absent(&body);
    // The deal was read with the doctor's own token.
    let reads = fake.calls_of("crm.deal.get");
    assert!(reads.iter().any(|c| c.error.is_some()), "{reads:?}");
}

on_both_databases!(uninstalled_portal_shows_nothing);
async fn uninstalled_portal_shows_nothing(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let deal = patient_deal(&fake);
    completed_survey(&fake, &app, deal).await;
    let r = fake.uninstall(false).await.unwrap();
    assert_eq!(r.status(), 200);
    app.run_outbox().await;
    let (token, _) = fake.issue_user_token(1);
    let options = format!(r#"{{"ID":"{deal}"}}"#);
    let member = fake.member_id();
    let (status, body) = page(
        fake.open_placement_forged(
            &forged_tab_url(&app, &fake.domain()),
            &tab_fields(&token, &member, &options),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 403);
    assert_private_absent(&body);
}

on_both_databases!(pdf_and_new_link_need_the_session_of_the_same_deal);
async fn pdf_and_new_link_need_the_session_of_the_same_deal(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let deal = patient_deal(&fake);
    completed_survey(&fake, &app, deal).await;
    let other_deal = patient_deal(&fake);

    let (_, body) = page(fake.open_deal_tab(1, deal).await.unwrap()).await;
    let path = report_link(&body);
    let own_session = session_of(&body);
    let own_session = own_session.as_str();
    let (_, other_body) = page(fake.open_deal_tab(1, other_deal).await.unwrap()).await;
    let other_session = session_of(&other_body);
    assert_ne!(other_session, own_session);

    let pdf = |session: Option<String>| {
        let (http, url) = (app.http.clone(), app.url(&path));
        async move {
            let form: Vec<(&str, String)> = session.into_iter().map(|s| ("s", s)).collect();
            http.post(url)
                .form(&form)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(pdf(Some(own_session.to_owned())).await, 200);
    assert_eq!(
        pdf(Some(other_session.clone())).await,
        403,
        "another deal's session"
    );
    let mut tampered = own_session.to_owned();
    let last = tampered.pop().unwrap();
    tampered.push(if last == '0' { '1' } else { '0' });
    assert_eq!(pdf(Some(tampered.clone())).await, 403);
    let forged_scope = own_session.replacen(&format!(".D{deal}."), &format!(".D{other_deal}."), 1);
    assert_eq!(pdf(Some(forged_scope)).await, 403);
    assert_eq!(pdf(None).await, 403, "no session");
    // The old link with the session in its query string is gone.
    let r = app
        .http
        .get(app.url(&format!("{path}?s={own_session}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);

    // «Отправить новую ссылку»: refused without a valid session…
    let r = app
        .http
        .post(app.url("/b24/tab/new-link"))
        .form(&[("s", tampered.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // …and with one, a fresh invitation whose link works.
    let r = app
        .http
        .post(app.url("/b24/tab/new-link"))
        .form(&[("s", own_session)])
        .send()
        .await
        .unwrap();
    let (status, body) = page(r).await;
    assert_eq!(status, 200, "{body}");
    let doc = Doc::parse(&body);
    assert_eq!(doc.select_text(".notice h2"), "Новая ссылка создана");
    let new_url = doc.attr("input#new-link", "value").expect("new link shown");
    assert!(new_url.starts_with(&app.url("/s/")), "{new_url}");
    let token = new_url.rsplit('/').next().unwrap();
    let (status, survey) = app.get_json(&format!("/api/v1/surveys/{token}")).await;
    assert_eq!(status, 200, "{survey}");
    assert_eq!(survey["status"], Value::from("opened"));
    // Both invitations are listed, the new one «отправлена» (now «открыта»).
    let (_, again) = page(fake.open_deal_tab(1, deal).await.unwrap()).await;
    assert_eq!(Doc::parse(&again).count("tbody tr"), 2, "{again}");
    // The other deal still has none.
    let (_, other_again) = page(fake.open_deal_tab(1, other_deal).await.unwrap()).await;
    assert_eq!(Doc::parse(&other_again).count(".card.empty"), 1);
}

// The frame POST is decoded once into its type: a body the bounded decoder refuses is
// a 400 page framed only for the claimed portal, before any portal is asked; a genuine
// doctor's POST whose `PLACEMENT_OPTIONS` names no record (a list, a negative id, not
// JSON) shows nothing and reads no deal.
on_both_databases!(frame_posts_that_name_no_record_ask_nothing_and_show_nothing);
async fn frame_posts_that_name_no_record_ask_nothing_and_show_nothing(db: TestDb) {
    let (fake, app) = installed_on(&db.url).await;
    let deal = patient_deal(&fake);
    completed_survey(&fake, &app, deal).await;
    let member = fake.member_id();
    let profiles_before = fake.calls_of("profile").len();

    let deep = format!("{}=1", "a".to_owned() + &"%5Ba%5D".repeat(12));
    let r = app
        .http
        .post(forged_tab_url(&app, &fake.domain()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("AUTH_ID=x&member_id={member}&{deep}"))
        .send()
        .await
        .unwrap();
    let csp = r
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let (status, body) = page(r).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        Doc::parse(&body)
            .text()
            .contains("Не удалось прочитать запрос"),
        "{body}"
    );
    assert!(
        csp.contains(&format!("frame-ancestors http://{}", fake.domain())),
        "{csp}"
    );
    assert_eq!(
        fake.calls_of("profile").len(),
        profiles_before,
        "nobody asked"
    );

    let (token, _) = fake.issue_user_token(1);
    let reads_before = fake.calls_of("crm.deal.get").len();
    let list = format!("[{deal}]");
    for options in [list.as_str(), r#"{"ID":"-3"}"#, "not json", ""] {
        let (status, body) = page(
            fake.open_placement_forged(
                &forged_tab_url(&app, &fake.domain()),
                &tab_fields(&token, &member, options),
            )
            .await
            .unwrap(),
        )
        .await;
        assert_eq!(status, 400, "{options}: {body}");
        assert!(
            Doc::parse(&body).text().contains("не передал номер сделки"),
            "{options}: {body}"
        );
        assert_private_absent(&body);
    }
    assert_eq!(
        fake.calls_of("crm.deal.get").len(),
        reads_before,
        "no deal is read for a POST that names none"
    );
    let (status, _) = app.get_json("/healthz").await;
    assert_eq!(status, 200);
}
