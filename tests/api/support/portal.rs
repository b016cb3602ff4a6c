//! A fake portal with the application installed into the service, as an admin would.

use opros::testing::fake_portal::{FakePortal, FakePortalConfig};

use super::{TestApp, spawn_app_on};

pub async fn fake() -> FakePortal {
    FakePortal::start(FakePortalConfig::default())
        .await
        .expect("fake portal starts")
}

/// Service configured for OAuth with the fake portal's credentials.
pub async fn app_for(fake: &FakePortal, extra: &[(&str, &str)]) -> TestApp {
    app_for_db(fake, &super::db::sqlite_for_process(), extra).await
}

pub async fn app_for_db(fake: &FakePortal, db_url: &str, extra: &[(&str, &str)]) -> TestApp {
    let id = fake.client_id();
    let secret = fake.client_secret();
    let oauth = fake.token_url();
    let mut vars: Vec<(&str, &str)> = vec![
        ("B24_CLIENT_ID", &id),
        ("B24_CLIENT_SECRET", &secret),
        ("B24_OAUTH_URL", &oauth),
    ];
    vars.extend_from_slice(extra);
    spawn_app_on(db_url, &vars).await
}

/// Install page POST, then what `BX24.installFinish()` does.
pub async fn install(fake: &FakePortal, app: &TestApp) -> String {
    let r = fake
        .post_install(&app.url("/b24/install"))
        .await
        .expect("install POST delivered");
    let status = r.status();
    let page = r.text().await.unwrap_or_default();
    assert_eq!(status, 200, "install page: {page}");
    // The install page binds ONAPPINSTALL; a genuine one must never be refused.
    if let Some(delivery) = fake.finish_install().await {
        let r = delivery.expect("ONAPPINSTALL delivered");
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        assert!(
            status.is_success(),
            "ONAPPINSTALL answered {status}: {body}"
        );
    }
    page
}

/// A fake portal and a service with the app installed into it.
pub async fn installed() -> (FakePortal, TestApp) {
    installed_on(&super::db::sqlite_for_process()).await
}

/// [`installed`] on the given database (see `db::on_both_databases`).
pub async fn installed_on(db_url: &str) -> (FakePortal, TestApp) {
    let fake = fake().await;
    let app = app_for_db(&fake, db_url, &[]).await;
    install(&fake, &app).await;
    (fake, app)
}

/// A deal with a contact «Смирнова Анна Петровна» in pipeline 3.
pub fn patient_deal(fake: &FakePortal) -> u64 {
    let contact = fake.add_contact("Анна", "Петровна", "Смирнова", "+79161234567");
    fake.add_deal("Приём терапевта 14.01", 3, Some(contact))
}

/// Robot run on a new patient deal, delivered; returns the deal and the link's token.
pub async fn robot_link(fake: &FakePortal, app: &TestApp) -> (u64, String) {
    let deal = patient_deal(fake);
    let (_, r) = fake
        .run_robot("opros_send_survey", deal, &[])
        .await
        .expect("robot call delivered");
    assert_eq!(r.status(), 200);
    app.run_outbox().await;
    let url = fake
        .event_sends()
        .last()
        .map(|s| s.1["SURVEY_URL"].clone())
        .expect("survey_url returned to the business process");
    let token = url.rsplit('/').next().unwrap_or_default().to_owned();
    (deal, token)
}

/// Robot → link → questionnaire → submit with a full set of answers; returns the deal.
pub async fn complete_survey(fake: &FakePortal, app: &TestApp) -> u64 {
    let (deal, token) = robot_link(fake, app).await;
    let (status, survey) = app.get_json(&format!("/api/v1/surveys/{token}")).await;
    assert_eq!(status, 200);
    let (status, body) = app
        .send_json(
            reqwest::Method::POST,
            &format!("/api/v1/surveys/{token}/submit"),
            &serde_json::json!({"answers": super::full_answers(&survey)}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    deal
}

/// Presses «Просмотрено» on `activity` as `user`, as the portal delivers it to the
/// bound event handler; the status of that one delivery.
pub async fn press_seen(fake: &FakePortal, activity: u64, user: u32) -> u16 {
    let delivered = fake
        .press_activity_button(activity, user, "seen", &[])
        .await
        .expect("the event is bound");
    assert_eq!(delivered.len(), 1, "one handler is bound");
    let response = delivered
        .into_iter()
        .next()
        .and_then(Result::ok)
        .expect("delivered");
    response.status().as_u16()
}
