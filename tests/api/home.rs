//! `GET /`, the operator's page: the addresses to paste into Bitrix24 come from
//! `PUBLIC_URL` and nothing a request says; secrets are «настроено», never shown.

use crate::support::html::Doc;
use crate::support::{TestApp, spawn_app};

const PUBLIC: &str = "https://opros.clinic.ru";
const ROBOT_TOKEN: &str = "robot-token-5f1c9e2a";
const CLIENT_SECRET: &str = "client-secret-77d0b1";
const WEBHOOK_CODE: &str = "a1b2c3d4e5f6g7h8";
const OUTGOING_TOKEN: &str = "ssmtodolnza09g2rnm1ucbyzumejtr39";

async fn configured() -> TestApp {
    let webhook = format!("https://vash-portal.bitrix24.ru/rest/1/{WEBHOOK_CODE}/");
    spawn_app(&[
        ("PUBLIC_URL", PUBLIC),
        ("B24_CLIENT_ID", "local.6650a1b2c3d4e5.12345678"),
        ("B24_CLIENT_SECRET", CLIENT_SECRET),
        ("BITRIX24_INCOMING_TOKEN", ROBOT_TOKEN),
        ("BITRIX24_WEBHOOK_URL", &webhook),
        ("BITRIX24_OUTGOING_WEBHOOK_TOKEN", OUTGOING_TOKEN),
    ])
    .await
}

async fn page(app: &TestApp, request: reqwest::RequestBuilder) -> (u16, String) {
    let r = request.send().await.expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.text().await.expect("body");
    if status == 200 {
        let types: Vec<_> = headers.get_all("content-type").iter().collect();
        assert_eq!(types, ["text/html; charset=utf-8"], "{}", app.base);
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("default-src 'none'"), "{csp}");
    }
    (status, body)
}

#[tokio::test]
async fn the_operator_page_gives_the_addresses_for_each_setup() {
    let app = configured().await;
    let (status, html) = page(&app, app.http.get(app.url("/"))).await;
    assert_eq!(status, 200);
    let doc = Doc::parse(&html);
    for address in [
        "https://opros.clinic.ru/b24/app",
        "https://opros.clinic.ru/b24/install",
        "https://opros.clinic.ru/api/v1/bitrix/webhook?token=ВАШ_ТОКЕН&lead_id={{ID}}&category_id={{CATEGORY_ID}}",
        "https://opros.clinic.ru/api/bitrix/webhook",
    ] {
        assert!(
            doc.texts("dl.addresses code").iter().any(|c| c == address),
            "{address} missing:\n{html}"
        );
    }
    for link in ["/docs", "/README.md", "/healthz"] {
        assert!(
            doc.attrs("a", "href").iter().any(|h| h == link),
            "{link} missing"
        );
    }
    assert_eq!(
        doc.select_text("li.state--ok:nth-child(2)"),
        "База данных доступна"
    );
    assert_eq!(
        doc.texts(".state__word")
            .iter()
            .filter(|w| *w == "настроено")
            .count(),
        4,
        "{html}"
    );
    assert!(!doc.text().contains("не сможет до него достучаться"));
    // What each setup gets of the clinic's automation (issue #16, point 6).
    let app_gets = doc.select_text("#automation-app");
    for what in [
        "Только у локального приложения",
        "Анкета заполнена",
        "есть отметки для врача",
        "Дождаться анкеты",
        "смарт-процессах",
    ] {
        assert!(app_gets.contains(what), "{what}: {app_gets}");
    }
    let webhook_gets = doc.select_text("#automation-webhook");
    for what in [
        "комментарий с PDF",
        "уведомление ответственному",
        "Проверьте анкету пациента",
        "нужно локальное приложение",
    ] {
        assert!(webhook_gets.contains(what), "{what}: {webhook_gets}");
    }

    let r = app.http.get(app.url("/README.md")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let types: Vec<_> = r.headers().get_all("content-type").iter().collect();
    assert_eq!(types, ["text/plain; charset=utf-8"]);
    assert!(r.text().await.unwrap().starts_with("# opros"));
}

#[tokio::test]
async fn the_operator_page_says_only_whether_a_secret_is_set() {
    let app = configured().await;
    let (_, html) = page(&app, app.http.get(app.url("/"))).await;
    for secret in [ROBOT_TOKEN, CLIENT_SECRET, WEBHOOK_CODE, OUTGOING_TOKEN] {
        assert!(!html.contains(secret), "{secret} shown on the page");
    }

    let bare = spawn_app(&[]).await;
    let (status, html) = page(&bare, bare.http.get(bare.url("/"))).await;
    assert_eq!(status, 200);
    let doc = Doc::parse(&html);
    assert_eq!(
        doc.texts(".state__word")
            .iter()
            .filter(|w| *w == "не настроено")
            .count(),
        4,
        "{html}"
    );
    assert!(
        doc.select_text("p.notice")
            .contains("не сможет до него достучаться"),
        "a loopback PUBLIC_URL is named"
    );
}

#[tokio::test]
async fn a_request_cannot_change_the_addresses_or_inject_markup() {
    let app = configured().await;
    // Host header injection: the addresses stay PUBLIC_URL's.
    let (status, html) = page(
        &app,
        app.http
            .get(app.url("/?lead_id=<script>alert(1)</script>"))
            .header("host", "evil.example")
            .header("x-forwarded-host", "evil.example")
            .header("forwarded", "host=evil.example;proto=https"),
    )
    .await;
    assert_eq!(status, 200);
    assert!(!html.contains("evil.example"), "{html}");
    Doc::parse(&html).assert_no_injected_markup();

    // Anything but GET is refused with the methods the page has.
    let r = app.http.post(app.url("/")).body("x").send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET");
    let r = app.http.delete(app.url("/README.md")).send().await.unwrap();
    assert_eq!(r.status(), 405);

    // A path that is not a page is still the JSON 404, the path not echoed.
    let r = app
        .http
        .get(app.url("/%3Cscript%3Ealert(1)%3C%2Fscript%3E"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body = r.text().await.unwrap();
    assert!(!body.contains("<script>"), "{body}");

    // And the service is still there.
    let (status, _) = app.get_json("/healthz").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn every_page_names_one_content_type() {
    let app = configured().await;
    // The operator page, the patient's «not found» page and a Bitrix24 frame's
    // refusal: three page builders, each with one content-type header.
    for request in [
        app.http.get(app.url("/")),
        app.http.get(app.url("/s/forged-link")),
        app.http
            .post(app.url("/b24/placement/deal-tab"))
            .form(&[("AUTH_ID", "x")]),
    ] {
        let r = request.send().await.unwrap();
        let url = r.url().to_string();
        assert!(r.status().as_u16() < 500, "{url}: {}", r.status());
        let types: Vec<_> = r.headers().get_all("content-type").iter().collect();
        assert_eq!(types, ["text/html; charset=utf-8"], "{url}");
    }
}
