//! `opros demo`: the pieces a newcomer clicks through, end to end.

use opros::demo::{Demo, DemoOptions};

use crate::support::html::Doc;
use crate::support::{db, full_answers};

/// Submits the hidden frame form of a demo card page the way its script does and
/// returns the framed page.
async fn open_frame(http: &reqwest::Client, demo: &Demo, card: &str) -> (u16, String) {
    let page = http.get(card).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(!csp.contains("unsafe-inline"));
    let html = page.text().await.unwrap();
    let doc = Doc::parse(&html);
    assert!(
        doc.attrs("script", "src")
            .iter()
            .any(|src| src.starts_with("/demo/assets/demo-card.js?v=")),
        "the script is a served file"
    );
    assert_eq!(doc.count("script:not([src])"), 0);
    let action = doc
        .attr("form[data-autosubmit]", "action")
        .expect("frame form");
    let fields: Vec<(String, String)> = doc
        .attrs("form[data-autosubmit] input[type=hidden]", "name")
        .into_iter()
        .zip(doc.attrs("form[data-autosubmit] input[type=hidden]", "value"))
        .collect();
    let r = http
        .post(demo.url(&action))
        .form(&fields)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

#[tokio::test]
async fn demo_installs_sends_the_link_and_shows_the_answers() {
    let db = db::sqlite();
    let demo = Demo::start(DemoOptions {
        database_url: Some(db.url.clone()),
        ..DemoOptions::default()
    })
    .await
    .expect("demo starts");
    let http = reqwest::Client::new();
    assert!(
        demo.survey_url.starts_with(&demo.url("/s/")),
        "{}",
        demo.survey_url
    );

    let (status, tab) = open_frame(&http, &demo, &demo.deal_card_url()).await;
    assert_eq!(status, 200, "{tab}");
    let doc = Doc::parse(&tab);
    assert_eq!(doc.count(".card.empty"), 1, "{tab}");
    assert!(
        doc.select_text(".tab-head")
            .contains("Смирнова Анна Петровна")
    );

    let token = demo.survey_url.rsplit('/').next().unwrap();
    let base = demo.url("");
    let (status, body) =
        crate::support::submit_through_api(&http, &base, token, full_answers).await;
    assert_eq!(status, 200, "{body}");

    // The card shows the clinic's automation: the app trigger moved the deal, the
    // red-flag activity with its badge and the responsible's notification.
    let card = || async {
        let page = http.get(demo.deal_card_url()).send().await.unwrap();
        Doc::parse(&page.text().await.unwrap())
    };
    crate::support::eventually("the automation on the card", || async {
        let doc = card().await;
        doc.select_text(".stages .is-current") == "Анкета получена"
            && doc.count(".flag-badge") == 1
            && doc.text().contains("Уведомление ответственному")
    })
    .await;
    let doc = card().await;
    assert!(doc.text().contains("для врача"), "{}", doc.text());
    assert!(
        doc.text()
            .contains("Анкета пациента по сделке «Консультация терапевта»"),
        "{}",
        doc.text()
    );

    let (status, tab) = open_frame(&http, &demo, &demo.deal_card_url()).await;
    assert_eq!(status, 200);
    let doc = Doc::parse(&tab);
    assert_eq!(doc.select_text(".flagged h2"), "Обратите внимание", "{tab}");
    let link = doc
        .attr("form[action^='/b24/tab/report/']", "action")
        .expect("PDF form");
    let session = doc.attr("input[name=s]", "value").expect("tab session");
    let pdf = http
        .post(demo.url(&link))
        .form(&[("s", session)])
        .send()
        .await
        .unwrap();
    assert_eq!(pdf.status(), 200);
    assert!(pdf.bytes().await.unwrap().starts_with(b"%PDF"));

    let (status, admin) = open_frame(&http, &demo, &demo.admin_url()).await;
    assert_eq!(status, 200, "{admin}");
    assert!(
        Doc::parse(&admin)
            .text()
            .contains("Приложение установлено и работает")
    );
    demo.stop().await;
}

#[tokio::test]
async fn demo_pages_are_not_part_of_the_service() {
    let app = crate::support::spawn_app(&[]).await;
    let r = app.http.get(app.url("/demo/deal/1")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = app.http.get(app.url("/demo/app")).send().await.unwrap();
    assert_eq!(r.status(), 404);
}
