//! The Bitrix24 client against the fake portal, over real HTTP on loopback.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use opros::bitrix24::{
    B24Client, B24Error, BatchCommand, ClientConfig, RateLimit, Target, WebhookUrl, form,
};
use opros::secret::Secret;
use opros::testing::{AuthKind, FakePortal, FakePortalConfig, Fault, LogCapture, MemoryTokenStore};
use serde_json::{Value, json};

pub(crate) struct Setup {
    pub(crate) fake: FakePortal,
    pub(crate) store: Arc<MemoryTokenStore>,
    pub(crate) client: B24Client,
    pub(crate) target: Target,
}

fn client_config(fake: &FakePortal) -> ClientConfig {
    ClientConfig {
        client_id: Some(fake.client_id()),
        client_secret: Some(Secret::new(fake.client_secret())),
        oauth_url: url::Url::parse(&fake.token_url()).ok(),
        rate: RateLimit {
            per_sec: 1000.0,
            burst: 1000,
        },
        request_timeout: Duration::from_secs(5),
        max_retries: 3,
        operating_limit: Duration::from_secs(480),
    }
}

async fn setup_with(cfg: FakePortalConfig, tweak: impl FnOnce(&mut ClientConfig)) -> Setup {
    let fake = FakePortal::start(cfg).await.expect("fake portal starts");
    let store = Arc::new(MemoryTokenStore::new());
    store.insert(&fake.member_id(), fake.issue_portal_auth(1));
    let mut config = client_config(&fake);
    tweak(&mut config);
    let client = B24Client::new(config, store.clone()).expect("client builds");
    let target = Target::Portal {
        member_id: fake.member_id(),
    };
    Setup {
        fake,
        store,
        client,
        target,
    }
}

impl Setup {
    /// The simplest call there is, as the portal's app.
    async fn profile(&self) -> Result<Value, B24Error> {
        self.client.call(&self.target, "profile", json!({})).await
    }
}

pub(crate) async fn setup() -> Setup {
    setup_with(FakePortalConfig::default(), |_| {}).await
}

pub(crate) fn webhook(fake: &FakePortal) -> Target {
    Target::Webhook(
        fake.webhook_url()
            .parse::<WebhookUrl>()
            .expect("webhook url"),
    )
}

// ---- OAuth refresh -------------------------------------------------------------------

#[tokio::test]
async fn expiry_mid_flight_refreshes_once_and_rotation_keeps_working() {
    let s = setup().await;
    let deal = s.fake.add_deal("Приём терапевта", 3, None);
    s.profile().await.expect("first call");
    let before = s.store.get(&s.fake.member_id()).expect("stored");

    s.fake.expire_access_tokens();
    let got = s
        .client
        .call(&s.target, "crm.deal.get", json!({"id": deal}))
        .await
        .expect("call after expiry");
    assert_eq!(got["TITLE"], "Приём терапевта");
    assert_eq!(got["CATEGORY_ID"], "3");
    assert_eq!(s.fake.refresh_count(), 1);
    assert_eq!(s.client.refresh_count(), 1);
    let after = s.store.get(&s.fake.member_id()).expect("stored");
    assert_ne!(
        before.refresh_token, after.refresh_token,
        "rotated pair saved"
    );
    assert_ne!(before.access_token, after.access_token);

    // The rotated refresh token works on the next expiry.
    s.fake.expire_access_tokens();
    s.profile().await.expect("second expiry");
    assert_eq!(s.fake.refresh_count(), 2);
    assert_eq!(s.store.save_count(), 2);
}

#[tokio::test]
async fn twenty_concurrent_calls_across_expiry_refresh_exactly_once() {
    let s = setup().await;
    s.fake.expire_access_tokens();
    let calls = (0..20).map(|_| s.client.call(&s.target, "profile", json!({})));
    let results = futures::future::join_all(calls).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(s.fake.refresh_count(), 1);
    assert_eq!(s.client.refresh_count(), 1);
}

#[tokio::test]
async fn refreshes_ahead_of_expiry_without_hitting_expired_token() {
    let s = setup().await;
    let member = s.fake.member_id();
    let mut auth = s.store.get(&member).expect("stored");
    auth.expires_at = Utc::now() + chrono::Duration::seconds(30);
    s.store.insert(&member, auth);
    s.profile().await.expect("call");
    assert_eq!(s.fake.refresh_count(), 1);
    assert!(s.fake.calls().iter().all(|c| c.status == 200));
}

#[tokio::test]
async fn invalid_token_gets_one_refresh_then_is_permanent() {
    let s = setup().await;
    s.fake.fail_next("profile", Fault::InvalidToken, 1);
    s.profile().await.expect("one refresh cures it");
    assert_eq!(s.fake.refresh_count(), 1);

    s.fake.fail_next("profile", Fault::InvalidToken, 2);
    let err = s.profile().await.expect_err("still invalid after refresh");
    assert!(matches!(err, B24Error::InvalidToken), "{err:?}");
    assert!(err.needs_reinstall() && !err.is_retryable());
    assert_eq!(s.fake.refresh_count(), 2);
}

#[tokio::test]
async fn refresh_errors_are_permanent_and_explained() {
    let s = setup().await;
    s.fake.uninstall(false).await.ok();
    let err = s
        .profile()
        .await
        .expect_err("tokens died with the uninstall");
    assert!(matches!(err, B24Error::RefreshRejected), "{err:?}");
    assert!(err.needs_reinstall() && !err.is_retryable());
    assert!(err.admin_message().contains("Переустановите"));

    let s = setup_with(FakePortalConfig::default(), |c| {
        c.client_secret = Some(Secret::new("wrong".into()));
    })
    .await;
    s.fake.expire_access_tokens();
    let err = s.profile().await.expect_err("wrong secret");
    assert!(matches!(err, B24Error::InvalidClient), "{err:?}");

    let unknown = Target::Portal {
        member_id: "nope".into(),
    };
    let err = s
        .client
        .call(&unknown, "profile", json!({}))
        .await
        .expect_err("unknown portal");
    assert!(matches!(err, B24Error::NotInstalled { .. }));
}

#[tokio::test]
async fn token_server_trouble_is_retried_and_odd_answers_understood() {
    let s = setup().await;
    // A proxy's 503 page, then a dropped connection: transient, retried.
    s.fake.fail_next("oauth.token", Fault::Status(503), 1);
    s.fake.fail_next("oauth.token", Fault::DropConnection, 1);
    s.fake.expire_access_tokens();
    s.profile().await.expect("refreshed on the third try");
    assert_eq!(s.fake.refresh_count(), 1);

    // The same refused grant, once with the documented 400 and once with 200.
    for status in [400, 200] {
        s.fake.fail_next(
            "oauth.token",
            Fault::error(status, "invalid_grant", "The refresh token is invalid"),
            1,
        );
        s.fake.expire_access_tokens();
        let err = s.profile().await.expect_err("grant refused");
        assert!(
            matches!(err, B24Error::RefreshRejected),
            "{status}: {err:?}"
        );
    }
    // An unknown OAuth error is reported with its code, not retried.
    s.fake.fail_next(
        "oauth.token",
        Fault::error(403, "PAYMENT_REQUIRED", "Subscription expired"),
        1,
    );
    let err = s.profile().await.expect_err("refused");
    assert_eq!(err.code(), Some("PAYMENT_REQUIRED"), "{err:?}");
    assert!(!err.is_retryable());
    // The portal's tokens survived all of it.
    s.profile().await.expect("still installed");
    assert_eq!(s.fake.refresh_count(), 2);
}

#[tokio::test]
async fn refreshed_tokens_that_cannot_be_stored_are_never_refreshed_again() {
    let s = setup().await;
    // The database hiccups: the new pair is stored on a later attempt.
    s.store.fail_next_saves(2);
    s.fake.expire_access_tokens();
    s.profile().await.expect("stored on the third attempt");
    assert_eq!(s.fake.refresh_count(), 1);

    // The database is gone: the portal is reported lost, and its used-up refresh
    // token is not sent again (that would only earn invalid_grant).
    s.store.fail_next_saves(100);
    s.fake.expire_access_tokens();
    let err = s.profile().await.expect_err("not stored");
    assert!(matches!(err, B24Error::TokensNotSaved(_)), "{err:?}");
    assert!(err.needs_reinstall() && !err.is_retryable());
    assert_eq!(s.fake.refresh_count(), 2);
}

#[tokio::test]
async fn a_caller_that_gives_up_does_not_cut_a_refresh_off() {
    let s = setup().await;
    s.fake
        .fail_next("oauth.token", Fault::Delay(Duration::from_millis(300)), 1);
    s.fake.expire_access_tokens();
    let before = s.store.get(&s.fake.member_id()).expect("stored");
    // The caller is dropped while the OAuth server is still thinking.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(50),
        s.client.call(&s.target, "profile", json!({})),
    )
    .await;
    assert!(gave_up.is_err());
    // The refresh goes on without its caller and saves the new pair.
    crate::support::eventually("the new pair saved", || async {
        s.store
            .get(&s.fake.member_id())
            .is_some_and(|after| after.refresh_token != before.refresh_token)
    })
    .await;
    s.profile().await.expect("the saved pair works");
    assert_eq!(s.fake.refresh_count(), 1);
}

#[tokio::test]
async fn user_tokens_are_never_refreshed_and_crm_rights_apply() {
    let s = setup().await;
    s.fake.add_user(17, "Игорь", "Воронцов", false);
    let deal = s.fake.add_deal("Приём", 0, None);
    s.fake.deny_deal_for_user(17, deal);
    let (access, _) = s.fake.issue_user_token(17);
    let doctor = Target::UserToken {
        endpoint: s.fake.client_endpoint(),
        access_token: Secret::new(access),
    };
    let me = s
        .client
        .call(&doctor, "profile", json!({}))
        .await
        .expect("profile");
    assert_eq!(me["ID"], "17");
    assert_eq!(me["ADMIN"], false);
    let err = s
        .client
        .call(&doctor, "crm.deal.get", json!({"id": deal}))
        .await
        .expect_err("denied");
    assert!(err.is_access_denied(), "{err:?}");

    s.fake.expire_access_tokens();
    let err = s
        .client
        .call(&doctor, "profile", json!({}))
        .await
        .expect_err("expired user token");
    assert!(matches!(err, B24Error::ExpiredToken));
    assert_eq!(s.fake.refresh_count(), 0);
}

// ---- rate limit ----------------------------------------------------------------------

#[tokio::test]
async fn burst_of_200_calls_waits_for_room_instead_of_bouncing() {
    // A 2/10 portal's bucket of 10, drained ten times as fast to keep the test short.
    let rate = (20.0, 10);
    let s = setup_with(
        FakePortalConfig {
            rate,
            ..FakePortalConfig::default()
        },
        |c| {
            c.rate = RateLimit {
                per_sec: rate.0,
                burst: rate.1,
            }
        },
    )
    .await;
    let calls = (0..200).map(|_| s.client.call(&s.target, "profile", json!({})));
    let results = futures::future::join_all(calls).await;
    assert!(results.iter().all(Result::is_ok));
    let bounced = s.fake.calls().iter().filter(|c| c.status == 503).count();
    assert!(bounced <= 3, "{bounced} QUERY_LIMIT_EXCEEDED answers");
}

#[tokio::test]
async fn query_limit_is_retried_then_reported() {
    let s = setup().await;
    s.fake.fail_next("profile", Fault::QueryLimit, 2);
    s.profile().await.expect("retried");
    s.fake.fail_next("profile", Fault::QueryLimit, 4);
    let err = s.profile().await.expect_err("bounded retries");
    assert!(matches!(err, B24Error::QueryLimitExceeded));
    assert!(err.is_retryable());
    assert_eq!(err.retry_after(), Some(Duration::from_secs(1)));
}

// ---- batch ---------------------------------------------------------------------------

#[tokio::test]
async fn batch_of_120_commands_takes_three_requests_in_order() {
    let s = setup().await;
    let ids: Vec<u64> = (0..119)
        .map(|i| s.fake.add_deal(&format!("Сделка {i}"), 0, None))
        .collect();
    let mut commands: Vec<BatchCommand> = ids
        .iter()
        .map(|id| BatchCommand::new(format!("d{id}"), "crm.deal.get", json!({"id": id})))
        .collect();
    commands.insert(
        60,
        BatchCommand::new("missing", "crm.deal.get", json!({"id": 999_999})),
    );
    let before = s.fake.http_request_count();
    let out = s
        .client
        .batch(&s.target, commands, false)
        .await
        .expect("batch");
    assert_eq!(s.fake.http_request_count() - before, 3);
    assert_eq!(out.len(), 120);
    let mut ok = out.iter().filter(|o| o.name != "missing");
    for id in &ids {
        let o = ok.next().expect("outcome");
        assert_eq!(o.name, format!("d{id}"));
        let deal = o.result.as_ref().expect("deal");
        assert_eq!(deal["ID"], id.to_string());
    }
    let missing = &out[60];
    assert_eq!(missing.name, "missing");
    assert!(missing.result.as_ref().is_err_and(B24Error::is_not_found));
}

#[tokio::test]
async fn batch_references_halt_and_files() {
    let s = setup().await;
    let contact = s
        .fake
        .add_contact("Анна", "Петровна", "Смирнова", "+79161234567");
    let deal = s.fake.add_deal("Приём", 3, Some(contact));
    let out = s
        .client
        .batch(
            &s.target,
            vec![
                BatchCommand::new("deal", "crm.deal.get", json!({"id": deal})),
                BatchCommand::new(
                    "contact",
                    "crm.contact.get",
                    json!({"id": "$result[deal][CONTACT_ID]"}),
                ),
            ],
            false,
        )
        .await
        .expect("batch");
    let contact_row = out[1].result.as_ref().expect("contact via reference");
    assert_eq!(contact_row["LAST_NAME"], "Смирнова");

    let out = s
        .client
        .batch(
            &s.target,
            vec![
                BatchCommand::new("a", "profile", json!({})),
                BatchCommand::new("b", "crm.deal.get", json!({"id": 1})),
                BatchCommand::new("c", "profile", json!({})),
                BatchCommand::new(
                    "file",
                    "crm.timeline.comment.add",
                    json!({"fields": {"ENTITY_ID": deal, "ENTITY_TYPE": "deal", "COMMENT": "x",
                        "FILES": [["a.pdf", "QUJD"]]}}),
                ),
            ],
            true,
        )
        .await
        .expect("batch");
    assert!(out[0].result.is_ok());
    assert!(out[1].result.as_ref().is_err_and(B24Error::is_not_found));
    assert!(matches!(out[2].result, Err(B24Error::NotExecuted)));
    assert!(matches!(out[3].result, Err(B24Error::FilesInBatch)));
    assert!(s.fake.timeline_comments().is_empty());
}

#[tokio::test]
async fn list_all_follows_next() {
    let s = setup().await;
    for i in 0..120 {
        s.fake
            .add_deal(&format!("Сделка {i}"), if i % 2 == 0 { 3 } else { 0 }, None);
    }
    let before = s.fake.http_request_count();
    let all = s
        .client
        .list_all(
            &s.target,
            "crm.deal.list",
            json!({"filter": {"CATEGORY_ID": 3}}),
        )
        .await
        .expect("list");
    assert_eq!(all.len(), 60);
    assert_eq!(s.fake.http_request_count() - before, 2);
}

// ---- webhook mode --------------------------------------------------------------------

#[tokio::test]
async fn webhook_mode_end_to_end() {
    let s = setup().await;
    let hook = webhook(&s.fake);
    let deal = s.fake.add_deal("Приём", 3, None);
    s.client
        .call(
            &s.target,
            "crm.deal.userfield.add",
            json!({"fields": {"FIELD_NAME": "OPROS_LINK", "USER_TYPE_ID": "url"}}),
        )
        .await
        .expect("userfield");
    let got = s
        .client
        .call(&hook, "crm.deal.get", json!({"id": deal}))
        .await
        .expect("get");
    assert_eq!(got["UF_CRM_OPROS_LINK"], "");
    let link = "https://opros.clinic.example/s/7Hq2LwX9?a=1&b=«Ё»";
    let updated = s
        .client
        .call(
            &hook,
            "crm.deal.update",
            json!({"id": deal, "fields": {"UF_CRM_OPROS_LINK": link, "TITLE": "Приём № 2 & ещё"}}),
        )
        .await
        .expect("update");
    assert_eq!(updated, json!(true));
    let stored = s.fake.deal(deal).expect("deal");
    assert_eq!(stored["UF_CRM_OPROS_LINK"], link);
    assert_eq!(stored["TITLE"], "Приём № 2 & ещё");
    let call = s.fake.calls_of("crm.deal.update").pop().expect("recorded");
    assert_eq!(call.auth, AuthKind::Webhook { user_id: 1 });

    let err = s
        .client
        .call(
            &hook,
            "bizproc.robot.add",
            json!({"CODE": "opros_send_survey", "HANDLER": "https://opros.clinic.example/r", "NAME": "Отправить опрос"}),
        )
        .await
        .expect_err("application context required");
    assert!(matches!(err, B24Error::AccessDenied { .. }), "{err:?}");
    assert!(!err.is_retryable());
    assert!(err.admin_message().contains("доступ"));
    let err = s
        .client
        .call(
            &hook,
            "placement.bind",
            json!({"PLACEMENT": "CRM_DEAL_DETAIL_TAB", "HANDLER": "https://x.example/"}),
        )
        .await
        .expect_err("wrong auth type");
    assert!(matches!(err, B24Error::WrongAuthType { .. }), "{err:?}");

    let bad: WebhookUrl = format!("{}rest/1/wrongcode/", s.fake.base_url())
        .parse()
        .expect("url");
    let err = s
        .client
        .call(&Target::Webhook(bad), "profile", json!({}))
        .await
        .expect_err("wrong code");
    assert!(matches!(err, B24Error::NoAuth));
}

// ---- error mapping and retries -------------------------------------------------------

#[tokio::test]
async fn every_error_kind_is_mapped() {
    let s = setup().await;
    type Check = fn(&B24Error) -> bool;
    let cases: Vec<(Fault, Check)> = vec![
        (
            Fault::error(401, "NO_AUTH_FOUND", "Wrong authorization data"),
            |e| matches!(e, B24Error::NoAuth),
        ),
        (Fault::error(403, "insufficient_scope", ""), |e| {
            matches!(e, B24Error::InsufficientScope)
        }),
        (Fault::error(403, "ACCESS_DENIED", "Access denied!"), |e| {
            matches!(e, B24Error::AccessDenied { .. })
        }),
        (
            Fault::error(403, "WRONG_AUTH_TYPE", "Application context required"),
            |e| matches!(e, B24Error::WrongAuthType { .. }),
        ),
        (Fault::error(503, "OVERLOAD_LIMIT", ""), |e| {
            matches!(e, B24Error::Overload)
        }),
        (Fault::error(400, "", "Not found"), |e| e.is_not_found()),
        // Some errors come with HTTP 200 (§6.1).
        (
            Fault::error(200, "ERROR_ARGUMENT", "Argument is required"),
            |e| e.code() == Some("ERROR_ARGUMENT"),
        ),
    ];
    for (fault, check) in cases {
        let before = s.fake.http_request_count();
        s.fake.fail_next("profile", fault.clone(), 1);
        let err = s.profile().await.expect_err("fault");
        assert!(check(&err), "{fault:?} → {err:?}");
        assert!(!err.is_retryable(), "{err:?}");
        assert_eq!(
            s.fake.http_request_count() - before,
            1,
            "{fault:?} not retried"
        );
        assert!(!err.admin_message().is_empty());
    }
    let err = s
        .client
        .call(&s.target, "crm.nothing.here", json!({}))
        .await
        .expect_err("unknown method");
    assert!(matches!(err, B24Error::MethodNotFound { .. }));
    assert!(err.admin_message().contains("crm.nothing.here"));
    let err = s
        .client
        .call(&s.target, "placement.bind", json!({}))
        .await
        .expect_err("ERROR_ARGUMENT with 200");
    assert_eq!(err.code(), Some("ERROR_ARGUMENT"));
}

#[tokio::test]
async fn transient_failures_are_retried_with_backoff() {
    let s = setup_with(FakePortalConfig::default(), |c| {
        c.request_timeout = Duration::from_millis(300);
    })
    .await;
    let before = s.fake.http_request_count();
    s.fake.fail_next("profile", Fault::Status(502), 2);
    s.profile().await.expect("5xx twice then success");
    assert_eq!(s.fake.http_request_count() - before, 3);

    s.fake.fail_next("profile", Fault::DropConnection, 1);
    s.fake
        .fail_next("user.admin", Fault::Delay(Duration::from_secs(1)), 1);
    s.profile().await.expect("dropped connection retried");
    assert_eq!(
        s.client
            .call(&s.target, "user.admin", json!({}))
            .await
            .expect("timeout retried"),
        json!(true)
    );

    s.fake.fail_next("profile", Fault::DropConnection, 4);
    let err = s.profile().await.expect_err("dropped every time");
    assert!(matches!(err, B24Error::Network { .. }), "{err:?}");

    s.fake.fail_next("profile", Fault::Status(500), 4);
    let err = s.profile().await.expect_err("bounded");
    assert!(
        matches!(err, B24Error::Server { status: 500, .. }),
        "{err:?}"
    );
    assert!(err.is_retryable());
}

/// A portal whose `crm.deal.get` budget is 1 s, after two calls of 0.6 s each; the
/// client assumes `client_limit` as the budget.
async fn spend_deal_get_budget(client_limit: Duration) -> (Setup, u64) {
    let s = setup_with(
        FakePortalConfig {
            operating_limit_secs: 1.0,
            ..FakePortalConfig::default()
        },
        |c| c.operating_limit = client_limit,
    )
    .await;
    let deal = s.fake.add_deal("Приём", 0, None);
    s.fake.set_operating_cost("crm.deal.get", 0.6);
    for _ in 0..2 {
        s.client
            .call(&s.target, "crm.deal.get", json!({"id": deal}))
            .await
            .expect("within budget");
    }
    (s, deal)
}

#[tokio::test]
async fn operation_time_limit_pauses_only_that_method() {
    // The client does not know this portal's small budget: the portal refuses.
    let (s, deal) = spend_deal_get_budget(Duration::from_secs(480)).await;
    let err = s
        .client
        .call(&s.target, "crm.deal.get", json!({"id": deal}))
        .await
        .expect_err("over budget");
    let B24Error::OperationTimeLimit { method, until } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(method, "crm.deal.get");
    assert!(
        *until > Utc::now() + chrono::Duration::seconds(60),
        "{until}"
    );
    assert!(err.is_retryable() && err.retry_after().is_some());

    let requests = s.fake.http_request_count();
    let again = s
        .client
        .call(&s.target, "crm.deal.get", json!({"id": deal}))
        .await
        .expect_err("paused");
    assert!(matches!(again, B24Error::OperationTimeLimit { .. }));
    assert_eq!(s.fake.http_request_count(), requests, "paused locally");
    s.profile().await.expect("other methods keep working");
}

#[tokio::test]
async fn spent_operating_budget_pauses_the_method_before_the_portal_refuses() {
    let (s, deal) = spend_deal_get_budget(Duration::from_secs(1)).await;
    // The second answer said 1.2 s of 1 s are spent: the third call waits for the
    // oldest basket without asking.
    let requests = s.fake.http_request_count();
    let err = s
        .client
        .call(&s.target, "crm.deal.get", json!({"id": deal}))
        .await
        .expect_err("paused");
    let B24Error::OperationTimeLimit { until, .. } = &err else {
        panic!("{err:?}");
    };
    assert!(
        *until > Utc::now() + chrono::Duration::seconds(60),
        "{until}"
    );
    assert_eq!(s.fake.http_request_count(), requests);
    assert!(s.fake.calls().iter().all(|c| c.status != 429));
    s.profile().await.expect("other methods keep working");
}

// ---- logs ----------------------------------------------------------------------------

#[tokio::test]
async fn no_secret_reaches_the_log() {
    let (capture, _guard) = LogCapture::install();
    let secret = "SENTINEL-CLIENT-SECRET-7f3a9c";
    let code = "SENTINELHOOKCODE5e1d";
    let s = setup_with(
        FakePortalConfig {
            client_secret: secret.into(),
            webhook_code: code.into(),
            ..FakePortalConfig::default()
        },
        |_| {},
    )
    .await;
    let member = s.fake.member_id();
    let mut sentinels = vec![secret.to_owned(), code.to_owned()];
    let first = s.store.get(&member).expect("stored");
    sentinels.push(first.access_token.expose().clone());
    sentinels.push(first.refresh_token.expose().clone());

    let deal = s.fake.add_deal("Смирнова Анна Петровна", 0, None);
    s.fake.expire_access_tokens();
    s.client
        .call(&s.target, "crm.deal.get", json!({"id": deal}))
        .await
        .expect("refresh + call");
    let hook = webhook(&s.fake);
    s.client
        .call(&hook, "crm.deal.get", json!({"id": deal}))
        .await
        .expect("webhook call");
    let _ = s
        .client
        .call(&hook, "bizproc.robot.add", json!({"CODE": "x"}))
        .await;
    s.fake.fail_next("profile", Fault::Status(502), 1);
    s.profile().await.expect("retried");
    // A connection error to a closed port: reqwest's message would carry the URL.
    let dead: WebhookUrl = format!("http://127.0.0.1:9/rest/1/{code}/")
        .parse()
        .expect("url");
    let err = s
        .client
        .call(&Target::Webhook(dead.clone()), "profile", json!({}))
        .await
        .expect_err("refused");
    assert!(!format!("{err} {err:?} {dead} {dead:?}").contains(code));
    s.fake.fail_next(
        "oauth.token",
        Fault::error(400, "invalid_grant", "Invalid grant"),
        1,
    );
    s.fake.expire_access_tokens();
    let _ = s.profile().await;

    let latest = s.store.get(&member).expect("stored");
    sentinels.push(latest.access_token.expose().clone());
    sentinels.push(latest.refresh_token.expose().clone());
    let log = capture.contents();
    assert!(log.contains("Bitrix24"), "log captured: {log}");
    for sentinel in &sentinels {
        assert!(!log.contains(sentinel.as_str()), "secret leaked: {log}");
    }
    assert!(!log.contains("Смирнова"), "patient data leaked");
}

// ---- fake portal self tests ----------------------------------------------------------

fn fixtures_dir() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let candidates = [
        manifest.join("../shared/b24-fixtures"),
        manifest.join("shared/b24-fixtures"),
        PathBuf::from("/work/shared/b24-fixtures"),
    ];
    candidates
        .into_iter()
        .find(|p| p.is_dir())
        .expect("b24-fixtures directory next to the repository")
}

/// A fixture as decoded pairs: `#` lines and blank lines skipped.
fn fixture_pairs(name: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(fixtures_dir().join(name)).expect("fixture");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The fixture as wire bytes: keys and values percent-encoded.
fn fixture_wire(name: &str) -> String {
    form::encode(&fixture_pairs(name))
}

#[test]
fn fixture_forms_parse_from_wire_bytes() {
    let names: Vec<String> = std::fs::read_dir(fixtures_dir())
        .expect("dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".form.txt"))
        .collect();
    assert!(names.len() >= 15, "{names:?}");
    for name in &names {
        let wire = fixture_wire(name);
        assert!(!wire.contains('['), "{name}: brackets percent-encoded");
        assert_eq!(
            form::decode_pairs(wire.as_bytes()),
            fixture_pairs(name),
            "{name}"
        );
    }
    let robot =
        opros::testing::form_tree::decode_json(fixture_wire("robot-call.form.txt").as_bytes());
    assert_eq!(
        robot["document_id"],
        json!(["crm", "CCrmDocumentDeal", "DEAL_4217"])
    );
    assert_eq!(
        robot["properties"]["patient_name"],
        "Смирнова Анна Петровна"
    );
    assert!(
        robot["event_token"]
            .as_str()
            .is_some_and(|t| t.contains('|'))
    );

    #[derive(serde::Deserialize)]
    struct Auth {
        member_id: String,
        application_token: String,
    }
    #[derive(serde::Deserialize)]
    struct Event {
        event: String,
        data: std::collections::HashMap<String, String>,
        auth: Auth,
    }
    let e: Event = form::decode(fixture_wire("onappuninstall.form.txt").as_bytes()).expect("typed");
    assert_eq!(e.event, "ONAPPUNINSTALL");
    assert_eq!(e.data["CLEAN"], "1");
    assert_eq!(e.auth.member_id, "4f2a9c1e7b3d5a6f8e0c2b4d6a8f1e3c");
    assert_eq!(e.auth.application_token, "9b1e4c7a2d5f8e0b3a6c9d2f5e8b1a4c");
}

/// Posts a request fixture to the fake with a valid token in place of the fixture's.
async fn post_fixture(fake: &FakePortal, method: &str, fixture: &str, token: &str) -> (u16, Value) {
    let mut pairs = fixture_pairs(fixture);
    for (k, v) in &mut pairs {
        if k == "auth" {
            *v = token.to_owned();
        }
    }
    let url = format!("{}{method}.json", fake.client_endpoint());
    let response = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form::encode(&pairs))
        .send()
        .await
        .expect("post");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json"))
}

#[tokio::test]
async fn fake_accepts_request_fixtures_and_reproduces_quirks() {
    let fake = FakePortal::start(FakePortalConfig::default())
        .await
        .expect("start");
    let (admin, _) = fake.issue_user_token(1);
    let contact = fake.add_contact("Анна", "Петровна", "Смирнова", "+79161234567");
    let deal = fake.add_deal("Приём терапевта 14.01", 3, Some(contact));
    assert_eq!((deal, contact), (4217, 1093));

    let (status, body) = post_fixture(
        &fake,
        "bizproc.robot.add",
        "bizproc-robot-add.form.txt",
        &admin,
    )
    .await;
    assert_eq!((status, &body["result"]), (200, &json!(true)), "{body}");
    let (status, body) = post_fixture(
        &fake,
        "bizproc.robot.add",
        "bizproc-robot-add.form.txt",
        &admin,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("ERROR_ACTIVITY_ALREADY_INSTALLED"))
    );
    assert_eq!(fake.robots()[0]["NAME"]["ru"], "Отправить опрос");

    let (status, _) = post_fixture(
        &fake,
        "crm.deal.userfield.add",
        "userfield-add.form.txt",
        &admin,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        fake.userfields("deal")[0]["FIELD_NAME"],
        "UF_CRM_OPROS_LINK"
    );
    let (status, body) = post_fixture(
        &fake,
        "crm.deal.userfield.add",
        "userfield-add.form.txt",
        &admin,
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("ERROR_CORE")));

    let (status, _) =
        post_fixture(&fake, "placement.bind", "placement-bind.form.txt", &admin).await;
    assert_eq!(status, 200);
    let (status, body) =
        post_fixture(&fake, "placement.bind", "placement-bind.form.txt", &admin).await;
    assert_eq!(status, 400);
    assert_eq!(
        body["error_description"],
        "Unable to set placement handler: Handler already binded"
    );
    let (status, _) = post_fixture(&fake, "event.bind", "event-bind.form.txt", &admin).await;
    assert_eq!(status, 200);
    let (_, body) = post_fixture(&fake, "event.bind", "event-bind.form.txt", &admin).await;
    assert_eq!(
        body["error_description"],
        "Unable to set event handler: Handler already binded"
    );

    let (status, body) = post_fixture(
        &fake,
        "crm.timeline.comment.add",
        "timeline-comment-add.form.txt",
        &admin,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let comment = &fake.timeline_comments()[0];
    assert_eq!(comment.entity_id, 4217);
    assert!(comment.files[0].1.starts_with(b"%PDF"));

    // Batch fixture: `$result` reference, empty result_error serialised as [].
    let (status, body) = post_fixture(&fake, "batch", "batch-request.form.txt", &admin).await;
    assert_eq!(status, 200);
    assert_eq!(body["result"]["result"]["contact"]["LAST_NAME"], "Смирнова");
    assert_eq!(
        body["result"]["result"]["fields"][0]["FIELD_NAME"],
        "UF_CRM_OPROS_LINK"
    );
    assert_eq!(body["result"]["result_error"], json!([]));
    assert_eq!(body["result"]["result_total"]["fields"], 1);
    assert!(body["time"]["operating_reset_at"].is_u64());

    // File-carrying comment inside batch → per-command error, HTTP 200.
    let inner = form::encode(&fixture_pairs("timeline-comment-add.form.txt")[..5]);
    let pairs = vec![
        (
            "cmd[c]".to_owned(),
            format!("crm.timeline.comment.add?{inner}"),
        ),
        ("auth".to_owned(), admin.clone()),
    ];
    let response = reqwest::Client::new()
        .post(format!("{}batch", fake.client_endpoint()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form::encode(&pairs))
        .send()
        .await
        .expect("post");
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["result"]["result"], json!([]));
    assert_eq!(
        body["result"]["result_error"]["c"]["error"],
        "ERROR_BATCH_METHOD_NOT_ALLOWED"
    );

    // JSON body with auth inside, 51 commands → ERROR_BATCH_LENGTH_EXCEEDED.
    let cmd: serde_json::Map<String, Value> = (0..51)
        .map(|i| (format!("c{i}"), json!("profile")))
        .collect();
    let response = reqwest::Client::new()
        .post(format!("{}batch.json", fake.client_endpoint()))
        .json(&json!({"auth": admin, "cmd": cmd}))
        .send()
        .await
        .expect("post");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"], "ERROR_BATCH_LENGTH_EXCEEDED");
}

#[tokio::test]
async fn bizproc_event_send_is_accepted_once_per_token() {
    let s = setup().await;
    let handler = format!("{}robot-handler", s.fake.base_url());
    s.client
        .call(
            &s.target,
            "bizproc.robot.add",
            json!({"CODE": "opros_send_survey", "HANDLER": handler, "AUTH_USER_ID": 1,
                "USE_SUBSCRIPTION": "Y", "NAME": {"ru": "Отправить опрос"},
                "RETURN_PROPERTIES": {"survey_url": {"Name": {"ru": "Ссылка"}, "Type": "string"},
                                      "survey_id": {"Name": {"ru": "ID"}, "Type": "string"}}}),
        )
        .await
        .expect("robot added");
    let err = s
        .client
        .call(
            &s.target,
            "bizproc.robot.add",
            json!({"CODE": "opros_send_survey", "HANDLER": handler, "NAME": "x"}),
        )
        .await
        .expect_err("duplicate");
    assert!(err.is_already_registered(), "{err:?}");

    let deal = s.fake.add_deal("Приём", 3, None);
    let (token, _) = s
        .fake
        .run_robot("opros_send_survey", deal, &[("survey_code", "after_visit")])
        .await
        .expect("robot run");
    let params = json!({"EVENT_TOKEN": token, "LOG_MESSAGE": "Ссылка на опрос создана",
        "RETURN_VALUES": {"survey_url": "https://opros.clinic.example/s/7Hq2LwX9", "Survey_Id": "7Hq2LwX9", "extra": "x"}});
    s.client
        .call(&s.target, "bizproc.event.send", params.clone())
        .await
        .expect("first send");
    let err = s
        .client
        .call(&s.target, "bizproc.event.send", params)
        .await
        .expect_err("second send");
    assert_eq!(err.code(), Some("ACCESS_DENIED"));
    let sends = s.fake.event_sends();
    assert_eq!(sends.len(), 1);
    let keys: Vec<&String> = sends[0].1.keys().collect();
    assert_eq!(keys, ["SURVEY_ID", "SURVEY_URL"]);
    assert_eq!(sends[0].2, "Ссылка на опрос создана");
    assert!(s.fake.run_robot("unknown", deal, &[]).await.is_err());
}

#[tokio::test]
async fn install_gate_and_app_update() {
    let s = setup().await;
    let handler = format!("{}events", s.fake.base_url());
    for event in ["ONAPPINSTALL", "ONCRMDEALUPDATE"] {
        s.client
            .call(
                &s.target,
                "event.bind",
                json!({"event": event, "handler": handler}),
            )
            .await
            .expect("bound");
    }
    let info = s
        .client
        .call(&s.target, "app.info", json!({}))
        .await
        .expect("info");
    assert_eq!(info["INSTALLED"], false);
    assert!(
        s.fake
            .fire_event("ONCRMDEALUPDATE", 1, true)
            .await
            .is_empty()
    );
    assert!(s.fake.finish_install().await.is_some());
    let info = s
        .client
        .call(&s.target, "app.info", json!({}))
        .await
        .expect("info");
    assert_eq!(info["INSTALLED"], true);
    assert_eq!(
        s.fake.fire_event("ONCRMDEALUPDATE", 1, false).await.len(),
        1
    );
    let listed = s
        .client
        .call(&s.target, "event.get", json!({}))
        .await
        .expect("get");
    assert_eq!(listed.as_array().map(Vec::len), Some(2));
    s.fake.app_update();
    assert!(s.fake.event_bindings().is_empty());
}

// ---- calls that must not run twice ----------------------------------------------------

#[tokio::test]
async fn a_call_once_is_not_sent_again_after_an_answer_that_may_hide_it_ran() {
    let s = setup_with(FakePortalConfig::default(), |c| {
        c.request_timeout = Duration::from_millis(500);
    })
    .await;
    let deal = s.fake.add_deal("Приём терапевта", 3, None);
    let comment =
        |text: &str| json!({"fields": {"ENTITY_ID": deal, "ENTITY_TYPE": "deal", "COMMENT": text}});
    // The portal stores the comment, then its answer never comes in time.
    s.fake.fail_next(
        "crm.timeline.comment.add",
        Fault::ProcessThenHang(Duration::from_secs(3)),
        1,
    );
    let err = s
        .client
        .call_once(&s.target, "crm.timeline.comment.add", comment("раз"))
        .await
        .expect_err("no answer in time");
    assert!(matches!(err, B24Error::Timeout), "{err:?}");
    assert!(err.may_have_run());
    assert_eq!(s.fake.timeline_comments().len(), 1, "sent exactly once");

    // The same after a 502 stored behind a proxy.
    s.fake
        .fail_next("crm.timeline.comment.add", Fault::ProcessThenStatus(502), 1);
    let err = s
        .client
        .call_once(&s.target, "crm.timeline.comment.add", comment("два"))
        .await
        .expect_err("502");
    assert!(err.may_have_run(), "{err:?}");
    assert_eq!(s.fake.timeline_comments().len(), 2);

    // An answer that says the call did not run is still retried: a rate-limit refusal.
    s.fake
        .fail_next("crm.timeline.comment.add", Fault::QueryLimit, 1);
    s.client
        .call_once(&s.target, "crm.timeline.comment.add", comment("три"))
        .await
        .expect("sent again after QUERY_LIMIT_EXCEEDED");
    assert_eq!(s.fake.timeline_comments().len(), 3);

    // The ordinary call repeats a 502: what `call_once` exists to avoid.
    s.fake
        .fail_next("crm.timeline.comment.add", Fault::ProcessThenStatus(502), 1);
    s.client
        .call(&s.target, "crm.timeline.comment.add", comment("четыре"))
        .await
        .expect("retried");
    assert_eq!(s.fake.timeline_comments().len(), 5, "a duplicate");
}
