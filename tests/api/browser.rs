//! Headless Chromium through chromedriver against `opros demo`: the patient page at
//! phone size, the deal card with the tab in its frame, the admin page. Screenshots go
//! to `target/test-artefacts/`. Skips (a failure under OPROS_STRICT_SKIPS=1) when
//! chromium or chromedriver is missing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use opros::demo::{Demo, DemoOptions};
use serde_json::{Value, json};

use crate::support::{db, eventually, full_answers, skip};

const TEST: &str = "browser::demo_pages_in_chromium";

fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// chromedriver, killed when the test ends.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn artefacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artefacts");
    std::fs::create_dir_all(&dir).expect("artefacts dir");
    dir
}

async fn shot(client: &Client, name: &str) {
    let png = client.screenshot().await.expect("screenshot");
    std::fs::write(artefacts().join(name), png).expect("write screenshot");
}

async fn start_browser(
    chromium: &Path,
    chromedriver: &Path,
) -> (Driver, Client, tempfile::TempDir) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let child = Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let driver = Driver(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let profile = tempfile::tempdir().expect("profile dir");
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), json!("chrome"));
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium.to_string_lossy(),
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars",
                format!("--user-data-dir={}", profile.path().display()),
            ]
        }),
    );
    let client = ClientBuilder::new(HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("browser session");
    (driver, client, profile)
}

async fn js(client: &Client, script: &str) -> Value {
    client.execute(script, vec![]).await.expect(script)
}

/// Waits until the card's script has sized the frame to its content.
async fn frame_fitted(client: &Client) {
    eventually("the frame sized to its content", || async {
        js(
            client,
            "return document.querySelector('iframe.app-frame').style.height !== ''",
        )
        .await
            == Value::Bool(true)
    })
    .await;
}

#[tokio::test]
async fn demo_pages_in_chromium() {
    let Some(chromium) = find_program(&["chromium", "chromium-browser", "google-chrome"]) else {
        return skip(TEST, "chromium not installed (apt-get install chromium)");
    };
    let Some(chromedriver) = find_program(&["chromedriver"]) else {
        return skip(
            TEST,
            "chromedriver not installed (apt-get install chromium-driver)",
        );
    };
    let db = db::sqlite();
    let demo = Demo::start(DemoOptions {
        database_url: Some(db.url.clone()),
        ..DemoOptions::default()
    })
    .await
    .expect("demo starts");
    let (_driver, client, _profile) = start_browser(&chromium, &chromedriver).await;

    // The patient page on a phone.
    client.set_window_size(390, 844).await.expect("resize");
    client.goto(&demo.survey_url).await.expect("survey page");
    client
        .wait()
        .for_element(Locator::Css("#survey"))
        .await
        .expect("questionnaire shown");
    let details = client
        .find(Locator::Css("#q-allergy_details"))
        .await
        .expect("conditional question");
    assert!(!details.is_displayed().await.unwrap(), "hidden before «да»");
    js(
        &client,
        "document.querySelector('#q-allergies input[value=\"yes\"]').click()",
    )
    .await;
    assert!(details.is_displayed().await.unwrap(), "shown after «да»");
    shot(&client, "patient-conditional-390.png").await;
    client
        .find(Locator::Css("#survey button[type=submit]"))
        .await
        .expect("submit button")
        .click()
        .await
        .expect("submit");
    let summary = client
        .wait()
        .for_element(Locator::Css("#error-summary:not([hidden])"))
        .await
        .expect("missing answers reported");
    let messages = summary.text().await.unwrap();
    assert!(!messages.trim().is_empty());
    let required_shown = js(
        &client,
        "return Array.from(document.querySelectorAll('.q-error .err')).some(e => !e.hidden && e.textContent.trim().length > 0)",
    )
    .await;
    assert_eq!(
        required_shown,
        Value::Bool(true),
        "a required question says what is missing"
    );
    shot(&client, "patient-missing-390.png").await;

    // The rest of the answers as a saved draft, then submit from the page.
    let token = demo.survey_url.rsplit('/').next().unwrap().to_owned();
    let http = reqwest::Client::new();
    let survey: Value = http
        .get(demo.url(&format!("/api/v1/surveys/{token}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = http
        .put(demo.url(&format!("/api/v1/surveys/{token}/draft")))
        .json(&json!({"answers": full_answers(&survey)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Clear the page's own copy on the device so the server draft is what loads.
    js(&client, "try { localStorage.clear(); } catch (e) {}").await;
    client.goto(&demo.survey_url).await.expect("reload");
    client
        .wait()
        .for_element(Locator::Css("#survey button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually("the thank-you page", || async {
        js(&client, "return document.body.innerText")
            .await
            .as_str()
            .is_some_and(|t| t.contains("Спасибо"))
    })
    .await;
    shot(&client, "patient-thanks-390.png").await;

    // The deal card: the tab in its frame shows the flagged answers first.
    client.set_window_size(1280, 1100).await.unwrap();
    client.goto(&demo.deal_card_url()).await.unwrap();
    client.enter_frame(0).await.expect("tab frame");
    client
        .wait()
        .for_element(Locator::Css(".flagged"))
        .await
        .expect("answers in the tab");
    let order = js(
        &client,
        "const f = document.querySelector('.flagged').getBoundingClientRect().top; \
         const s = document.querySelector('.section-title').getBoundingClientRect().top; \
         return f < s",
    )
    .await;
    assert_eq!(order, Value::Bool(true), "flagged answers come first");
    client.enter_parent_frame().await.unwrap();
    frame_fitted(&client).await;
    shot(&client, "deal-card-1280.png").await;
    client.set_window_size(390, 844).await.unwrap();
    client.goto(&demo.deal_card_url()).await.unwrap();
    client.enter_frame(0).await.unwrap();
    client
        .wait()
        .for_element(Locator::Css(".flagged"))
        .await
        .unwrap();
    client.enter_parent_frame().await.unwrap();
    shot(&client, "deal-card-390.png").await;

    // The admin page.
    client.set_window_size(1280, 1100).await.unwrap();
    client.goto(&demo.admin_url()).await.unwrap();
    client.enter_frame(0).await.unwrap();
    let status = client
        .wait()
        .for_element(Locator::Css(".steps"))
        .await
        .expect("install status");
    assert!(status.text().await.unwrap().contains("Робот"));
    client.enter_parent_frame().await.unwrap();
    frame_fitted(&client).await;
    shot(&client, "admin-1280.png").await;

    let _ = client.close().await;
    demo.stop().await;
}
