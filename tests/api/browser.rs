//! Headless Chromium through chromedriver against `opros demo`: every page the service
//! renders, in each of its states, audited with axe-core for WCAG 2.1 A and AA, and
//! the doctor's and administrator's pages walked with the Tab key. Screenshots go to
//! `target/test-artefacts/`.
//!
//! axe-core is the npm package (`npm install --prefix target/axe axe-core@4`, which
//! `.ci/run` does); the test reads `axe.min.js` from `OPROS_AXE_JS` or, by default,
//! `target/axe/node_modules/axe-core/axe.min.js`, and injects it through the driver,
//! so the pages keep their strict CSP. These tests are `#[ignore]`d with the reason
//! (`cargo test` lists them) and run with `--include-ignored`; a missing program is
//! then a SKIP line, a failure under OPROS_STRICT_SKIPS=1.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use opros::db::entities::{invitation, outbox_job};
use opros::demo::{Demo, DemoOptions};
use opros::testing::fake_portal::Fault;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
use serde_json::{Value, json};

use crate::support::{db, eventually, full_answers, skip};

/// Where `.ci/run` installs axe-core unless `OPROS_AXE_JS` says otherwise.
const AXE_DEFAULT: &str = "target/axe/node_modules/axe-core/axe.min.js";

/// The rule sets an accessibility audit for WCAG 2.1 AA runs.
const WCAG_TAGS: [&str; 4] = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"];

fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

fn axe_path() -> PathBuf {
    std::env::var_os("OPROS_AXE_JS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(AXE_DEFAULT))
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

/// A browser session with axe-core at hand; the audit findings of every page are
/// gathered and reported together at the end.
struct Browser {
    client: Client,
    axe: String,
    findings: Vec<String>,
    audited: Vec<String>,
    _driver: Driver,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// `None` (with a SKIP line) when a program or axe-core is missing.
    async fn start(test: &str) -> Option<Browser> {
        let Some(chromium) = find_program(&["chromium", "chromium-browser", "google-chrome"])
        else {
            skip(test, "chromium not installed (apt-get install chromium)");
            return None;
        };
        let Some(chromedriver) = find_program(&["chromedriver"]) else {
            skip(
                test,
                "chromedriver not installed (apt-get install chromium-driver)",
            );
            return None;
        };
        let axe_js = axe_path();
        let Ok(axe) = std::fs::read_to_string(&axe_js) else {
            skip(
                test,
                &format!(
                    "axe-core not found at {} (npm install --prefix target/axe axe-core@4, or set OPROS_AXE_JS)",
                    axe_js.display()
                ),
            );
            return None;
        };
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
        Some(Browser {
            client,
            axe,
            findings: Vec::new(),
            audited: Vec::new(),
            _driver: driver,
            _profile: profile,
        })
    }

    async fn js(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.expect(script)
    }

    async fn shot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("screenshot");
        std::fs::write(artefacts().join(name), png).expect("write screenshot");
    }

    /// Opens every `<details>` and runs axe-core in the current document (injected
    /// through the driver, so the page's CSP is untouched); keeps every violation
    /// with its rule, element and, for contrast, the ratio found and the one required.
    async fn audit(&mut self, page: &str) {
        // What is folded away (questionnaires, handler addresses) is checked too.
        self.js("document.querySelectorAll('details').forEach(d => { d.open = true; })")
            .await;
        let injected = self
            .client
            .execute(&format!("{}\n;return typeof window.axe;", self.axe), vec![])
            .await
            .expect("inject axe-core");
        assert_eq!(injected, json!("object"), "axe-core loaded into {page}");
        let result = self
            .client
            .execute_async(
                r#"const done = arguments[arguments.length - 1];
                const tags = arguments[0];
                window.axe.run(document, {
                    runOnly: {type: 'tag', values: tags},
                    resultTypes: ['violations'],
                    iframes: false,
                }).then(r => done({violations: r.violations.map(v => ({
                    id: v.id,
                    help: v.help,
                    nodes: v.nodes.map(n => ({
                        target: n.target.join(' '),
                        html: n.html.slice(0, 160),
                        summary: n.failureSummary,
                        data: n.any.concat(n.all, n.none).map(c => c.data)
                            .find(d => d && d.contrastRatio !== undefined) || null,
                    })),
                }))}), e => done({error: String(e)}));"#,
                vec![json!(WCAG_TAGS)],
            )
            .await
            .expect("axe.run");
        assert!(result.get("error").is_none(), "axe on {page}: {result}");
        self.audited.push(page.to_owned());
        for v in result["violations"].as_array().cloned().unwrap_or_default() {
            for node in v["nodes"].as_array().cloned().unwrap_or_default() {
                let contrast = match node["data"].as_object() {
                    Some(d) => format!(
                        " — contrast {}:1 ({} on {}, {}, needs {})",
                        d.get("contrastRatio").unwrap_or(&Value::Null),
                        d.get("fgColor").and_then(Value::as_str).unwrap_or("?"),
                        d.get("bgColor").and_then(Value::as_str).unwrap_or("?"),
                        d.get("fontSize").and_then(Value::as_str).unwrap_or("?"),
                        d.get("expectedContrastRatio")
                            .and_then(Value::as_str)
                            .unwrap_or("?"),
                    ),
                    None => String::new(),
                };
                self.findings.push(format!(
                    "{page}: {rule} ({help}) at `{target}` {html}{contrast}",
                    rule = v["id"].as_str().unwrap_or("?"),
                    help = v["help"].as_str().unwrap_or(""),
                    target = node["target"].as_str().unwrap_or("?"),
                    html = node["html"].as_str().unwrap_or(""),
                ));
            }
        }
    }

    /// Fails with every violation found on any audited page.
    fn assert_no_violations(&self) {
        assert!(
            self.findings.is_empty(),
            "axe-core ({}) found {} WCAG 2.1 AA violation(s) on {:?}:\n{}",
            WCAG_TAGS.join(", "),
            self.findings.len(),
            self.audited,
            self.findings.join("\n")
        );
    }

    async fn press(&self, key: Key) {
        let c: char = key.into();
        let keys = KeyActions::new("keyboard".into())
            .then(KeyAction::Down { value: c })
            .then(KeyAction::Up { value: c });
        self.client.perform_actions(keys).await.expect("key press");
    }

    /// Walks the page with Tab from the top: every visible control is reached once,
    /// in document order, and shows a focus ring (`:focus-visible` with an outline).
    /// Returns the labels of the controls reached.
    async fn tab_through(&self, page: &str) -> Vec<String> {
        let expected = self
            .js(
                "window.scrollTo(0, 0); window.focus();\
                 const start = document.createElement('span'); start.tabIndex = -1;\
                 document.body.prepend(start); start.focus(); start.blur();\
                 const sel = 'a[href], button:not([disabled]), input:not([type=hidden]):not([disabled]), \
                   select:not([disabled]), textarea:not([disabled]), summary, [tabindex]:not([tabindex=\"-1\"])';\
                 const all = Array.from(document.querySelectorAll(sel))\
                   .filter(e => e.getClientRects().length > 0 && getComputedStyle(e).visibility !== 'hidden');\
                 all.forEach((e, i) => e.dataset.kb = String(i));\
                 return all.map(e => (e.innerText || e.value || e.getAttribute('aria-label') || e.name || e.tagName).trim().slice(0, 40));",
            )
            .await;
        let expected: Vec<String> = serde_json::from_value(expected).expect("labels");
        assert!(!expected.is_empty(), "{page}: no controls found");
        for (step, label) in expected.iter().enumerate() {
            self.press(Key::Tab).await;
            let seen = self
                .js(
                    "const e = document.activeElement; const s = getComputedStyle(e);\
                     return {kb: e.dataset ? (e.dataset.kb || null) : null, tag: e.tagName,\
                       visible: e.matches(':focus-visible') && s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) >= 1};",
                )
                .await;
            let index = seen["kb"].as_str().and_then(|k| k.parse::<usize>().ok());
            assert_eq!(
                index,
                Some(step),
                "{page}: Tab press {} should reach «{label}», reached {seen}",
                step + 1,
            );
            assert_eq!(
                seen["visible"],
                Value::Bool(true),
                "{page}: «{label}» has focus but no visible focus ring",
            );
        }
        expected
    }

    /// Opens a Bitrix24 frame page of the demo card as the whole window: the card's
    /// own form, which plays the portal's POST into the frame, is sent again to the
    /// top window (optionally to another handler of ours).
    async fn open_frame_page(&self, card_url: &str, handler: Option<&str>) {
        self.client.goto(card_url).await.expect("demo card");
        let retarget = match handler {
            Some(path) => format!(
                "const u = new URL(f.action); u.pathname = {}; f.action = u.toString();",
                json!(path)
            ),
            None => String::new(),
        };
        self.js(&format!(
            "const f = document.querySelector('form[data-autosubmit]'); {retarget} \
             f.target = '_self'; HTMLFormElement.prototype.submit.call(f);"
        ))
        .await;
        eventually("the frame page as the top window", || async {
            self.js("return document.querySelector('main.frame') !== null && document.readyState === 'complete'")
                .await
                == Value::Bool(true)
        })
        .await;
    }

    async fn text(&self) -> String {
        self.js("return document.body.innerText")
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

async fn start_demo() -> (Demo, db::TestDb) {
    let db = db::sqlite();
    let demo = Demo::start(DemoOptions {
        database_url: Some(db.url.clone()),
        extra: [("CLINIC_NAME".to_owned(), "Клиника «Здоровье»".to_owned())].into(),
        ..DemoOptions::default()
    })
    .await
    .expect("demo starts");
    (demo, db)
}

fn token_of(link: &str) -> String {
    link.rsplit('/').next().unwrap_or_default().to_owned()
}

/// Submits answers through the patient API, as the page's script does.
async fn submit_answers(demo: &Demo, link: &str, answers: impl Fn(&Value) -> Value) {
    let base = demo.url("");
    let (status, body) = crate::support::submit_through_api(
        &reqwest::Client::new(),
        &base,
        &token_of(link),
        answers,
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// Answers that raise no flag: «нет» wherever «нет» is an answer.
fn calm_answers(survey: &Value) -> Value {
    let mut answers = full_answers(survey);
    let questions = survey["questions"].as_array().cloned().unwrap_or_default();
    if let Some(map) = answers.as_object_mut() {
        for q in &questions {
            let has_no = q["type"] == "yes_no"
                || q["options"]
                    .as_array()
                    .is_some_and(|o| o.iter().any(|o| o["value"] == "no"));
            if has_no {
                map.insert(q["id"].as_str().unwrap_or_default().to_owned(), json!("no"));
            }
        }
    }
    answers
}

#[tokio::test]
#[ignore = "needs chromium, chromedriver and axe-core (see README)"]
async fn patient_and_operator_pages_pass_wcag_in_chromium() {
    const TEST: &str = "browser::patient_and_operator_pages_pass_wcag_in_chromium";
    let Some(mut b) = Browser::start(TEST).await else {
        return;
    };
    let (demo, _db) = start_demo().await;

    // The operator page, on a desktop.
    b.client.set_window_size(1280, 1000).await.expect("resize");
    b.client.goto(&demo.url("/")).await.expect("operator page");
    let text = b.text().await;
    assert!(text.contains(&demo.url("/b24/app")), "{text}");
    assert!(
        text.contains("не сможет до него достучаться"),
        "loopback PUBLIC_URL named"
    );
    b.audit("operator page").await;
    b.shot("operator-1280.png").await;

    // A forged link, at phone size.
    b.client.set_window_size(390, 844).await.expect("resize");
    b.client
        .goto(&demo.url("/s/not-a-real-link"))
        .await
        .expect("bad link");
    assert!(b.text().await.contains("Страница не найдена"));
    b.audit("patient: bad link").await;
    b.shot("patient-bad-link-390.png").await;

    // The questionnaire as it opens.
    b.client.goto(&demo.survey_url).await.expect("survey page");
    b.client
        .wait()
        .for_element(Locator::Css("#survey"))
        .await
        .expect("questionnaire shown");
    b.audit("patient: open").await;
    let details = b
        .client
        .find(Locator::Css("#q-allergy_details"))
        .await
        .expect("conditional question");
    assert!(!details.is_displayed().await.unwrap(), "hidden before «да»");
    b.js("document.querySelector('#q-allergies input[value=\"yes\"]').click()")
        .await;
    assert!(details.is_displayed().await.unwrap(), "shown after «да»");
    b.shot("patient-conditional-390.png").await;

    // Submitted with answers missing: the script's error summary.
    b.client
        .find(Locator::Css("#survey button[type=submit]"))
        .await
        .expect("submit button")
        .click()
        .await
        .expect("submit");
    let summary = b
        .client
        .wait()
        .for_element(Locator::Css("#error-summary:not([hidden])"))
        .await
        .expect("missing answers reported");
    assert!(!summary.text().await.unwrap().trim().is_empty());
    let required_shown = b
        .js("return Array.from(document.querySelectorAll('.q-error .err')).some(e => !e.hidden && e.textContent.trim().length > 0)")
        .await;
    assert_eq!(
        required_shown,
        Value::Bool(true),
        "a required question says what is missing"
    );
    b.audit("patient: errors (script)").await;
    b.shot("patient-missing-390.png").await;

    // The same without the script: the form posted as is, the server's 422 page.
    b.js("HTMLFormElement.prototype.submit.call(document.querySelector('#survey'))")
        .await;
    eventually("the server's error page", || async {
        b.js("return document.readyState === 'complete' && document.title.startsWith('Ошибка')")
            .await
            == Value::Bool(true)
    })
    .await;
    b.audit("patient: errors (server)").await;
    b.shot("patient-errors-server-390.png").await;

    // The rest of the answers as a saved draft, then submit from the page.
    let token = token_of(&demo.survey_url);
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
    b.js("try { localStorage.clear(); } catch (e) {}").await;
    b.client.goto(&demo.survey_url).await.expect("reload");
    b.client
        .wait()
        .for_element(Locator::Css("#survey button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually("the thank-you page", || async {
        b.text().await.contains("Спасибо")
    })
    .await;
    b.audit("patient: done").await;
    b.shot("patient-thanks-390.png").await;

    // The link again after completion.
    b.client.goto(&demo.survey_url).await.expect("reopen");
    assert!(b.text().await.contains("ответы получены"), "completed page");
    b.audit("patient: completed link").await;

    b.assert_no_violations();
    let _ = b.client.clone().close().await;
    demo.stop().await;
}

#[tokio::test]
#[ignore = "needs chromium, chromedriver and axe-core (see README)"]
async fn tab_admin_and_install_pages_pass_wcag_and_keyboard_in_chromium() {
    const TEST: &str = "browser::tab_admin_and_install_pages_pass_wcag_and_keyboard_in_chromium";
    let Some(mut b) = Browser::start(TEST).await else {
        return;
    };
    let (demo, _db) = start_demo().await;
    b.client.set_window_size(1280, 1000).await.expect("resize");

    // A deal nobody has sent a questionnaire for: the empty tab.
    let contact = demo
        .portal
        .add_contact("Олег", "Иванович", "Петров", "+79160000001");
    let calm_deal = demo.portal.add_deal("Повторный приём", 0, Some(contact));
    let calm_card = demo.url(&format!("/demo/deal/{calm_deal}"));
    b.open_frame_page(&calm_card, None).await;
    assert!(b.text().await.contains("Пациент ещё не заполнил анкету"));
    b.audit("tab: empty").await;
    b.shot("tab-empty-1280.png").await;

    // Its one action by keyboard: Tab to «Отправить новую ссылку», Enter.
    let reached = b.tab_through("tab: empty").await;
    assert_eq!(reached, ["Отправить новую ссылку"]);
    b.press(Key::Enter).await;
    b.client
        .wait()
        .for_element(Locator::Css("#new-link"))
        .await
        .expect("the new link shown");
    let link = b
        .js("return document.querySelector('#new-link').value")
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(link.contains("/s/"), "{link}");
    b.audit("tab: new link").await;
    let reached = b.tab_through("tab: new link").await;
    assert!(reached.contains(&"Скопировать".to_owned()), "{reached:?}");
    b.shot("tab-new-link-1280.png").await;

    // That link expires unanswered: the patient's page and the tab's badge.
    let past = Utc::now() - chrono::Duration::days(1);
    invitation::Entity::update_many()
        .col_expr(invitation::Column::ExpiresAt, Expr::value(past))
        .filter(invitation::Column::EntityId.eq(calm_deal as i64))
        .exec(&demo.state.db)
        .await
        .expect("expire the link");
    b.client.set_window_size(390, 844).await.expect("resize");
    b.client.goto(&link).await.expect("expired link");
    assert!(b.text().await.contains("Срок действия ссылки истёк"));
    b.audit("patient: expired").await;
    b.shot("patient-expired-390.png").await;
    b.client.set_window_size(1280, 1000).await.expect("resize");
    b.open_frame_page(&calm_card, None).await;
    assert!(b.text().await.contains("истекла"), "the expired badge");
    b.audit("tab: expired link").await;

    // A questionnaire answered with nothing to flag.
    b.tab_through("tab: expired link").await;
    b.press(Key::Enter).await;
    b.client
        .wait()
        .for_element(Locator::Css("#new-link"))
        .await
        .expect("a second link");
    let link = b
        .js("return document.querySelector('#new-link').value")
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned();
    submit_answers(&demo, &link, calm_answers).await;
    b.open_frame_page(&calm_card, None).await;
    assert!(b.text().await.contains("Открыть PDF"));
    assert!(
        b.client.find(Locator::Css(".flagged")).await.is_err(),
        "calm answers raise no flag"
    );
    b.audit("tab: answers").await;
    b.shot("tab-answers-1280.png").await;

    // The demo deal with flagged answers, in the card's frame as a doctor sees it.
    submit_answers(&demo, &demo.survey_url, full_answers).await;
    b.client.goto(&demo.deal_card_url()).await.unwrap();
    b.client.enter_frame(0).await.expect("tab frame");
    b.client
        .wait()
        .for_element(Locator::Css(".flagged"))
        .await
        .expect("answers in the tab");
    let order = b
        .js(
            "const f = document.querySelector('.flagged').getBoundingClientRect().top; \
             const s = document.querySelector('.section-title').getBoundingClientRect().top; \
             return f < s",
        )
        .await;
    assert_eq!(order, Value::Bool(true), "flagged answers come first");
    b.client.enter_parent_frame().await.unwrap();
    eventually("the frame sized to its content", || async {
        b.js("return document.querySelector('iframe.app-frame').style.height !== ''")
            .await
            == Value::Bool(true)
    })
    .await;
    b.shot("deal-card-1280.png").await;
    b.open_frame_page(&demo.deal_card_url(), None).await;
    b.audit("tab: flagged answers").await;
    let reached = b.tab_through("tab: flagged answers").await;
    for action in ["Отправить новую ссылку", "Открыть PDF", "Скачать PDF"]
    {
        assert!(
            reached.contains(&action.to_owned()),
            "{action}: {reached:?}"
        );
    }
    b.client.set_window_size(390, 844).await.unwrap();
    b.audit("tab: flagged answers, phone").await;
    b.shot("tab-flagged-390.png").await;
    b.client.goto(&demo.deal_card_url()).await.unwrap();
    b.client.enter_frame(0).await.unwrap();
    b.client
        .wait()
        .for_element(Locator::Css(".flagged"))
        .await
        .unwrap();
    b.client.enter_parent_frame().await.unwrap();
    b.shot("deal-card-390.png").await;

    // The administrator's page with a job the portal refused for good: every action
    // by keyboard, then «Сохранить».
    let last_job = outbox_job::Entity::find()
        .order_by_desc(outbox_job::Column::Id)
        .one(&demo.state.db)
        .await
        .expect("read jobs")
        .expect("the demo queued jobs");
    outbox_job::Entity::update_many()
        .col_expr(
            outbox_job::Column::DoneAt,
            Expr::value(Option::<chrono::DateTime<Utc>>::None),
        )
        .col_expr(outbox_job::Column::DeadAt, Expr::value(Some(Utc::now())))
        .col_expr(
            outbox_job::Column::LastError,
            Expr::value(Some("ACCESS_DENIED: Access denied".to_owned())),
        )
        .filter(outbox_job::Column::Id.eq(last_job.id))
        .exec(&demo.state.db)
        .await
        .expect("a dead job");
    b.client.set_window_size(1280, 1100).await.unwrap();
    b.open_frame_page(&demo.admin_url(), None).await;
    let status = b
        .client
        .find(Locator::Css(".steps"))
        .await
        .expect("install status");
    assert!(status.text().await.unwrap().contains("Робот"));
    b.audit("admin").await;
    b.shot("admin-1280.png").await;
    let reached = b.tab_through("admin").await;
    for action in ["Переустановить", "Сохранить"] {
        assert!(
            reached.contains(&action.to_owned()),
            "{action}: {reached:?}"
        );
    }
    b.js("Array.from(document.querySelectorAll('button')).find(e => e.textContent.trim() === 'Сохранить').focus()")
        .await;
    b.shot("admin-focus-1280.png").await;
    b.press(Key::Enter).await;
    b.client
        .wait()
        .for_element(Locator::Css(".notice"))
        .await
        .expect("settings saved");
    b.audit("admin: saved").await;
    b.client.goto(&demo.admin_url()).await.unwrap();
    b.client.enter_frame(0).await.unwrap();
    b.client
        .wait()
        .for_element(Locator::Css(".steps"))
        .await
        .unwrap();
    b.client.enter_parent_frame().await.unwrap();
    b.shot("admin-card-1280.png").await;

    // The install page, as the portal opens it on (re)installation.
    b.open_frame_page(&demo.admin_url(), Some("/b24/install"))
        .await;
    assert!(b.text().await.contains("установлено"), "{}", b.text().await);
    b.audit("install").await;
    b.shot("install-1280.png").await;
    b.client.set_window_size(390, 844).await.unwrap();
    b.audit("install, phone").await;

    // An installation the portal refuses in part: the failed steps, in red.
    for method in ["bizproc.robot.update", "bizproc.robot.add"] {
        demo.portal.fail_next(
            method,
            Fault::error(403, "ACCESS_DENIED", "Access denied"),
            10,
        );
    }
    b.client.set_window_size(1280, 1000).await.unwrap();
    b.open_frame_page(&demo.admin_url(), Some("/b24/install"))
        .await;
    assert!(b.text().await.contains("Установка не завершена"));
    assert!(
        b.client.find(Locator::Css(".step--fail")).await.is_ok(),
        "a failed step shown"
    );
    b.audit("install: failed step").await;
    b.shot("install-failed-1280.png").await;
    demo.portal.clear_faults("bizproc.robot.update");
    demo.portal.clear_faults("bizproc.robot.add");

    b.assert_no_violations();
    let _ = b.client.clone().close().await;
    demo.stop().await;
}

#[tokio::test]
#[ignore = "needs chromium, chromedriver and axe-core (see README)"]
async fn phq9_page_at_phone_width_shows_its_rules_and_the_crisis_message() {
    const TEST: &str = "browser::phq9_page_at_phone_width_shows_its_rules_and_the_crisis_message";
    let Some(mut b) = Browser::start(TEST).await else {
        return;
    };
    let fake = crate::support::portal::fake().await;
    let app = crate::support::portal::app_for(&fake, &[]).await;
    crate::support::portal::install(&fake, &app).await;
    let deal = crate::support::portal::patient_deal(&fake);
    let (_, r) = fake
        .run_robot("opros_send_survey", deal, &[("survey_code", "phq9")])
        .await
        .expect("robot call delivered");
    assert_eq!(r.status(), 200);
    app.run_outbox().await;
    let link = fake
        .event_sends()
        .last()
        .map(|s| s.1["SURVEY_URL"].clone())
        .expect("survey_url");

    b.client.set_window_size(390, 844).await.expect("resize");
    b.client
        .goto(&app.url(&format!("/s/{}", token_of(&link))))
        .await
        .expect("PHQ-9 page");
    b.client
        .wait()
        .for_element(Locator::Css("#survey"))
        .await
        .expect("questionnaire shown");
    b.audit("PHQ-9: open").await;
    b.shot("phq9-390.png").await;

    // The difficulty item follows an `any` rule of `not_equals` tests, in the page.
    let difficulty = b
        .client
        .find(Locator::Css("#q-difficulty"))
        .await
        .expect("difficulty item");
    assert!(!difficulty.is_displayed().await.unwrap(), "hidden at first");
    for i in 1..=8 {
        b.js(&format!(
            "document.querySelector('#q-q{i} input[value=\"not_at_all\"]').click()"
        ))
        .await;
    }
    assert!(
        !difficulty.is_displayed().await.unwrap(),
        "no problem marked"
    );
    b.js("document.querySelector('#q-q9 input[value=\"several_days\"]').click()")
        .await;
    assert!(
        difficulty.is_displayed().await.unwrap(),
        "shown after item 9"
    );

    b.client
        .find(Locator::Css("#survey button[type=submit]"))
        .await
        .expect("submit button")
        .click()
        .await
        .expect("submit");
    eventually("the done page with the crisis message", || async {
        b.text().await.contains("8-800-2000-122")
    })
    .await;
    let note = b
        .js("return document.querySelector('.message-note').textContent")
        .await;
    assert!(note.as_str().unwrap_or_default().contains("112"), "{note}");
    b.audit("PHQ-9: done with the crisis message").await;
    b.shot("phq9-done-390.png").await;
    b.assert_no_violations();
    let _ = b.client.clone().close().await;
}

#[tokio::test]
#[ignore = "needs chromium, chromedriver and axe-core (see README)"]
async fn date_limits_and_formats_are_checked_on_the_page_before_submit() {
    const TEST: &str = "browser::date_limits_and_formats_are_checked_on_the_page_before_submit";
    let Some(mut b) = Browser::start(TEST).await else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let intake = json!({"code": "intake", "version": 1, "title": "Регистрация",
    "sections": [{"id": "s", "title": "О вас", "questions": [
        {"id": "birth", "type": "date", "title": "Дата рождения", "required": true,
         "min_date": "-120y", "max_date": "-1d"},
        {"id": "phone", "type": "text", "title": "Телефон", "format": "phone"},
        {"id": "email", "type": "text", "title": "Почта", "format": "email"}
    ]}]});
    std::fs::write(dir.path().join("intake.json"), intake.to_string()).expect("write");
    let surveys = dir.path().display().to_string();
    let fake = crate::support::portal::fake().await;
    let app = crate::support::portal::app_for(&fake, &[("SURVEYS_DIR", &surveys)]).await;
    crate::support::portal::install(&fake, &app).await;
    let deal = crate::support::portal::patient_deal(&fake);
    let (_, r) = fake
        .run_robot("opros_send_survey", deal, &[("survey_code", "intake")])
        .await
        .expect("robot call delivered");
    assert_eq!(r.status(), 200);
    app.run_outbox().await;
    let link = fake
        .event_sends()
        .last()
        .map(|s| s.1["SURVEY_URL"].clone())
        .expect("survey_url");

    b.client.set_window_size(390, 844).await.expect("resize");
    b.client
        .goto(&app.url(&format!("/s/{}", token_of(&link))))
        .await
        .expect("page");
    b.client
        .wait()
        .for_element(Locator::Css("#survey"))
        .await
        .expect("questionnaire shown");
    let today = Utc::now()
        .with_timezone(&opros::completion::MSK)
        .format("%Y-%m-%d")
        .to_string();
    let set = |id: &str, value: &str| {
        format!(
            "const e = document.querySelector('#f-{id}'); e.value = '{value}'; \
             e.dispatchEvent(new Event('input', {{bubbles: true}})); \
             e.dispatchEvent(new Event('change', {{bubbles: true}}));"
        )
    };
    b.js(&set("birth", &today)).await;
    b.js(&set("phone", "123")).await;
    b.js(&set("email", "anna@")).await;
    b.client
        .find(Locator::Css("#survey button[type=submit]"))
        .await
        .expect("submit button")
        .click()
        .await
        .expect("submit");
    b.client
        .wait()
        .for_element(Locator::Css("#error-summary:not([hidden])"))
        .await
        .expect("errors summarised");
    let error = |id: &'static str| {
        let b = &b;
        async move {
            b.js(&format!(
                "return document.querySelector('#e-{id}').textContent"
            ))
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
        }
    };
    let birth = error("birth").await;
    assert!(birth.starts_with("Укажите дату с "), "{birth}");
    assert!(error("phone").await.contains("телефона"));
    assert!(error("email").await.contains("почты"));
    // Checked in the page: nothing reached the server.
    let (status, survey) = app
        .get_json(&format!("/api/v1/surveys/{}", token_of(&link)))
        .await;
    assert_eq!(status, 200);
    assert_ne!(survey["status"], "completed");
    b.audit("intake: errors (script)").await;
    b.shot("intake-date-errors-390.png").await;
    b.assert_no_violations();
    let _ = b.client.clone().close().await;
}

/// Collects the page's script errors (the editor's handlers are async: a failure
/// is an unhandled rejection) into `window.__errors`.
const SCRIPT_ERRORS: &str = "window.__errors = []; \
    window.addEventListener('unhandledrejection', e => window.__errors.push(String(e.reason && e.reason.stack || e.reason))); \
    window.addEventListener('error', e => window.__errors.push(e.message + ' at ' + e.lineno));";

/// The text a page (or the editor's preview, a same-origin sandboxed frame) shows.
const PREVIEW_TEXT: &str = "const f = document.getElementById('qe-preview'); \
    return f && f.contentDocument && f.contentDocument.body ? f.contentDocument.body.innerText : '';";

#[tokio::test]
#[ignore = "needs chromium, chromedriver and axe-core (see README)"]
async fn questionnaire_editor_edits_previews_and_publishes_for_the_next_robot_run() {
    const TEST: &str =
        "browser::questionnaire_editor_edits_previews_and_publishes_for_the_next_robot_run";
    let Some(mut b) = Browser::start(TEST).await else {
        return;
    };
    let (demo, _db) = start_demo().await;
    b.client.set_window_size(900, 1400).await.expect("resize");
    b.open_frame_page(&demo.admin_url(), None).await;
    b.client
        .wait()
        .for_element(Locator::Css("#qe-list p.muted, #qe-list table"))
        .await
        .expect("the portal's list");
    assert!(
        b.text().await.contains("пока нет своих анкет"),
        "{}",
        b.text().await
    );

    // «Создать из шаблона» by keyboard: the default questionnaire is offered first.
    let template = b
        .js("return document.getElementById('qe-template').value")
        .await;
    assert_eq!(template, json!("pre_visit"));
    b.js(SCRIPT_ERRORS).await;
    b.js("document.getElementById('qe-create').focus()").await;
    b.press(Key::Enter).await;
    let title_field = b
        .client
        .wait()
        .for_element(Locator::Css("#qe-f-sections-0-questions-0-title"))
        .await
        .expect("the editor with the first question");
    eventually("the list names the new questionnaire", || async {
        b.js("return document.querySelector('#qe-list table') !== null")
            .await
            == Value::Bool(true)
    })
    .await;
    eventually("the first preview", || async {
        b.js(PREVIEW_TEXT)
            .await
            .as_str()
            .is_some_and(|t| t.contains("Отправить анкету"))
    })
    .await;

    // The first question's text, typed; the preview follows.
    const NEW_TEXT: &str = "Что беспокоит вас сегодня <больше всего>?";
    title_field.clear().await.expect("clear");
    title_field.send_keys(NEW_TEXT).await.expect("type");
    eventually("the preview shows the new text", || async {
        b.js(PREVIEW_TEXT)
            .await
            .as_str()
            .is_some_and(|t| t.contains(NEW_TEXT))
    })
    .await;
    let preview_width = b
        .js("return document.getElementById('qe-preview').getBoundingClientRect().width")
        .await;
    let width = preview_width.as_f64().unwrap_or_default();
    assert!((360.0..=400.0).contains(&width), "a phone's width: {width}");
    b.audit("admin: questionnaire editor").await;
    b.js("document.getElementById('qe-editor').scrollIntoView()")
        .await;
    b.shot("editor-900.png").await;
    // Unpublished changes are not dropped by one «Закрыть редактор».
    b.js("document.getElementById('qe-close').focus()").await;
    b.press(Key::Enter).await;
    let kept = b
        .js("return [document.getElementById('qe-editor').hidden, document.getElementById('qe-publish-status').textContent]")
        .await;
    assert_eq!(kept[0], Value::Bool(false), "{kept}");
    assert!(
        kept[1]
            .as_str()
            .is_some_and(|t| t.contains("неопубликованные изменения")),
        "{kept}"
    );

    // A new page, with a new session: this tab kept the unpublished text.
    b.open_frame_page(&demo.admin_url(), None).await;
    b.js(SCRIPT_ERRORS).await;
    b.client
        .wait()
        .for_element(Locator::Css("#qe-list [data-action=edit]"))
        .await
        .expect("the list");
    b.js("document.querySelector('#qe-list [data-action=edit]').focus()")
        .await;
    b.press(Key::Enter).await;
    b.client
        .wait()
        .for_element(Locator::Css("#qe-restore:not([hidden]) button"))
        .await
        .expect("the kept changes offered");
    b.js("document.querySelector('#qe-restore button').focus()")
        .await;
    b.press(Key::Enter).await;
    let title_field = b
        .client
        .find(Locator::Css("#qe-f-sections-0-questions-0-title"))
        .await
        .expect("the first question's text");
    assert_eq!(
        title_field.prop("value").await.expect("value").as_deref(),
        Some(NEW_TEXT)
    );
    eventually("the preview of the kept changes", || async {
        b.js(PREVIEW_TEXT)
            .await
            .as_str()
            .is_some_and(|t| t.contains(NEW_TEXT))
    })
    .await;

    // A problem is named in Russian and leads to its field.
    title_field.clear().await.expect("clear");
    title_field.send_keys(" ").await.expect("type");
    b.js("document.getElementById('qe-publish').focus()").await;
    b.press(Key::Enter).await;
    let link = b
        .client
        .wait()
        .for_element(Locator::Css("#qe-problems a[data-focus]"))
        .await
        .expect("the problem, linked");
    let problem = link.text().await.unwrap_or_default();
    assert!(problem.contains("нет текста"), "{problem}");
    b.audit("admin: editor with a problem").await;
    b.shot("editor-problem-900.png").await;
    b.js("document.querySelector('#qe-problems a[data-focus]').focus()")
        .await;
    b.press(Key::Enter).await;
    let focused = b.js("return document.activeElement.id").await;
    assert_eq!(focused, json!("qe-f-sections-0-questions-0-title"));

    // Fixed, and «Опубликовать».
    title_field.send_keys(NEW_TEXT).await.expect("type");
    b.js("document.getElementById('qe-publish').focus()").await;
    b.press(Key::Enter).await;
    eventually("«Опубликована версия 2»", || async {
        b.js("return document.getElementById('qe-publish-status').textContent")
            .await
            .as_str()
            .is_some_and(|t| t.contains("Опубликована версия 2"))
    })
    .await;
    assert!(
        b.client
            .find(Locator::Css("#qe-problems:not([hidden])"))
            .await
            .is_err(),
        "the problems are gone"
    );
    b.shot("editor-published-900.png").await;

    // «Копировать», then the copy «В архив», by keyboard.
    let first = b
        .js("return Number(document.querySelector('#qe-list [data-action=duplicate]').dataset.id)")
        .await;
    b.js("document.querySelector('#qe-list [data-action=duplicate]').focus()")
        .await;
    b.press(Key::Enter).await;
    eventually("the copy in the list", || async {
        b.js("return document.querySelectorAll('#qe-list tbody tr').length")
            .await
            == json!(2)
    })
    .await;
    assert!(b.text().await.contains("pre_visit_2"), "{}", b.text().await);
    b.js(&format!(
        "document.querySelector('#qe-list [data-action=archive]:not([data-id=\"{first}\"])').focus()"
    ))
    .await;
    b.press(Key::Enter).await;
    eventually("the copy archived", || async {
        b.js("return document.querySelector('#qe-list .badge') !== null && document.activeElement.textContent.startsWith('Вернуть')")
            .await
            == Value::Bool(true)
    })
    .await;

    // «Импорт» of the README's example, pasted: the editor opens on it, its nested
    // condition as JSON, its preview at once.
    let example = crate::questionnaire_preview::readme_example().to_string();
    let paste = b
        .client
        .find(Locator::Css("#qe-import-text"))
        .await
        .expect("the paste area");
    paste.send_keys(&example).await.expect("paste");
    b.js("document.getElementById('qe-import').focus()").await;
    b.press(Key::Enter).await;
    eventually("the imported questionnaire in the editor", || async {
        b.js("return document.getElementById('qe-editor-heading').textContent")
            .await
            .as_str()
            .is_some_and(|t| t.contains("Самочувствие перед приёмом"))
    })
    .await;
    assert!(
        b.client
            .find(Locator::Css("#qe-fields textarea[id$='-json']"))
            .await
            .is_ok(),
        "the nested condition, as JSON"
    );
    eventually("the imported questionnaire's preview", || async {
        b.js(PREVIEW_TEXT)
            .await
            .as_str()
            .is_some_and(|t| t.contains("Дата рождения"))
    })
    .await;
    b.audit("admin: imported questionnaire").await;

    // Build by keyboard: a new question, moved up, made a choice with a condition;
    // the result is a definition the validator takes.
    b.js("document.querySelector('[data-op=add][data-make=question]').focus()")
        .await;
    b.press(Key::Enter).await;
    let focused = b.js("return document.activeElement.id").await;
    assert_eq!(focused, json!("qe-f-sections-0-questions-6-id"));
    b.js("document.querySelector('[data-place=\"sections.0.questions.6\"] [data-op=up]').focus()")
        .await;
    b.press(Key::Enter).await;
    let moved = b
        .js("const e = document.activeElement; return [e.dataset.op, e.dataset.path]")
        .await;
    assert_eq!(moved, json!(["up", "[\"sections\",0,\"questions\",5]"]));
    let kind = b
        .client
        .find(Locator::Css("#qe-f-sections-0-questions-5-type"))
        .await
        .expect("the type select");
    kind.select_by_value("single").await.expect("single");
    b.client
        .wait()
        .for_element(Locator::Css("#qe-f-sections-0-questions-5-options-1-label"))
        .await
        .expect("two options to start with");
    let mode = b
        .client
        .find(Locator::Css("#qe-f-sections-0-questions-5-show_if-mode"))
        .await
        .expect("the condition's mode");
    mode.select_by_value("all").await.expect("all");
    b.client
        .wait()
        .for_element(Locator::Css(
            "#qe-f-sections-0-questions-5-show_if-all-0-test",
        ))
        .await
        .expect("the first condition of the group");
    b.js("document.getElementById('qe-publish').focus()").await;
    b.press(Key::Enter).await;
    eventually("the built questionnaire published", || async {
        b.js("return document.getElementById('qe-publish-status').textContent")
            .await
            .as_str()
            .is_some_and(|t| t.contains("Опубликована версия 2"))
    })
    .await;
    b.audit("admin: a question built by keyboard").await;

    // An option added and removed, a score and a message added: still a definition
    // the validator takes.
    b.js(r#"document.querySelector('[data-place="sections.0.questions.5.options"] > [data-make=option]').focus()"#)
        .await;
    b.press(Key::Enter).await;
    let focused = b.js("return document.activeElement.id").await;
    assert_eq!(
        focused,
        json!("qe-f-sections-0-questions-5-options-2-value")
    );
    b.js("document.querySelector('[data-place=\"sections.0.questions.5.options.2\"] [data-op=remove]').focus()")
        .await;
    b.press(Key::Enter).await;
    let options = b
        .js("return document.querySelectorAll('[data-place=\"sections.0.questions.5.options\"] li').length")
        .await;
    assert_eq!(options, json!(2));
    for make in ["score", "message"] {
        b.js(&format!(
            "document.querySelector('[data-op=add][data-make={make}]').focus()"
        ))
        .await;
        b.press(Key::Enter).await;
    }
    assert!(
        b.client
            .find(Locator::Css("#qe-f-scores-1-bands-0-label"))
            .await
            .is_ok(),
        "a second score with its band"
    );
    assert!(
        b.client
            .find(Locator::Css("#qe-f-messages-1-text"))
            .await
            .is_ok(),
        "a second message"
    );
    b.js("document.getElementById('qe-publish').focus()").await;
    b.press(Key::Enter).await;
    eventually("the scored questionnaire published", || async {
        b.js("return document.getElementById('qe-publish-status').textContent")
            .await
            .as_str()
            .is_some_and(|t| t.contains("Опубликована версия 3"))
    })
    .await;
    assert_eq!(
        b.js("return window.__errors").await,
        json!([]),
        "script errors"
    );

    // The next robot run sends the new version.
    let contact = demo
        .portal
        .add_contact("Олег", "Иванович", "Петров", "+79160000002");
    let deal = demo.portal.add_deal("Повторный приём", 0, Some(contact));
    let sent = demo.portal.event_sends().len();
    let (_, answer) = demo
        .portal
        .run_robot(opros::local_app::registration::ROBOT_CODE, deal, &[])
        .await
        .expect("robot call");
    assert_eq!(answer.status(), 200);
    eventually("the link returned to the business process", || async {
        demo.state.nudge_outbox();
        demo.portal.event_sends().len() > sent
    })
    .await;
    let link = demo.portal.event_sends()[sent].1["SURVEY_URL"].clone();
    b.client.set_window_size(390, 844).await.expect("resize");
    b.client.goto(&link).await.expect("the patient's page");
    assert!(b.text().await.contains(NEW_TEXT), "{}", b.text().await);
    b.shot("patient-edited-390.png").await;

    b.assert_no_violations();
    let _ = b.client.clone().close().await;
    demo.stop().await;
}
