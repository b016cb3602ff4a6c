//! Several instances of the service on one PostgreSQL database, each with its own
//! process-local state: they must refresh a portal's tokens one at a time (Bitrix24
//! rotates the refresh token, protocol §2.4) and stay inside the portal's request
//! limit together (§10.1). Skipped without OPROS_TEST_POSTGRES_URL.

use std::time::Duration;

use opros::bitrix24::{RateLimit, SharedBucket, Target};
use opros::db::rate_bucket::DbRateBucket;
use opros::testing::fake_portal::{FakePortal, FakePortalConfig};
use serde_json::json;

use crate::support::TestApp;
use crate::support::db::{TestDb, postgres};
use crate::support::portal::{app_for_db, install};

/// Two instances on a fresh PostgreSQL database, the app installed through the first;
/// the database lives as long as the returned handle (it is dropped with it).
async fn two_instances(
    test: &str,
    fake: &FakePortal,
    extra: &[(&str, &str)],
) -> Option<([TestApp; 2], TestDb)> {
    let pg = postgres(test).await?;
    let a = app_for_db(fake, &pg.url, extra).await;
    install(fake, &a).await;
    let b = app_for_db(fake, &pg.url, extra).await;
    Some(([a, b], pg))
}

/// Every instance calls `profile` `per_instance` times at once.
async fn call_from_all(apps: &[TestApp; 2], fake: &FakePortal, per_instance: usize) -> usize {
    let target = Target::Portal {
        member_id: fake.member_id(),
    };
    let calls = apps.iter().flat_map(|app| {
        let target = target.clone();
        (0..per_instance).map(move |_| {
            let client = app.state.b24.clone();
            let target = target.clone();
            async move { client.call(&target, "profile", json!({})).await }
        })
    });
    let results = futures::future::join_all(calls).await;
    for result in &results {
        if let Err(err) = result {
            panic!("a call failed: {err}");
        }
    }
    results.len()
}

#[tokio::test]
#[ignore = "needs OPROS_TEST_POSTGRES_URL (see README)"]
async fn instances_on_one_database_refresh_a_portal_once() {
    let fake = FakePortal::start(FakePortalConfig::default())
        .await
        .expect("fake portal starts");
    let Some((apps, _db)) = two_instances("instances::refresh", &fake, &[]).await else {
        return;
    };
    let before = fake.refresh_count();
    fake.expire_access_tokens();
    assert_eq!(call_from_all(&apps, &fake, 10).await, 20);
    assert_eq!(
        fake.refresh_count() - before,
        1,
        "both instances saw the expiry; exactly one may use the refresh token"
    );
    let refreshed: u64 = apps.iter().map(|a| a.state.b24.refresh_count()).sum();
    assert_eq!(refreshed, 1);
    // The rotated pair both instances now use keeps working after another expiry.
    fake.expire_access_tokens();
    call_from_all(&apps, &fake, 3).await;
    assert_eq!(fake.refresh_count() - before, 2);
}

#[tokio::test]
#[ignore = "needs OPROS_TEST_POSTGRES_URL (see README)"]
async fn a_refresh_in_flight_does_not_hold_up_robot_calls() {
    use opros::bitrix24::TokenStore;
    use opros::local_app::portals::DbTokenStore;

    let fake = FakePortal::start(FakePortalConfig::default())
        .await
        .expect("fake portal starts");
    let Some(([app, _other], _db)) = two_instances("instances::refresh_vs_robot", &fake, &[]).await
    else {
        return;
    };
    // Another instance is in the middle of a refresh: it holds the portal's row.
    let store = DbTokenStore::new(app.state.db.clone());
    let member_id = fake.member_id();
    let held = store.lock_refresh(&member_id).await.expect("lock");
    let deal = fake.add_deal("Приём", 3, None);
    let answered = tokio::time::timeout(
        Duration::from_secs(10),
        fake.run_robot("opros_send_survey", deal, &[]),
    )
    .await
    .expect("the robot call does not wait for the refresh")
    .expect("delivered");
    assert!(answered.1.status().is_success());
    held.release().await.expect("release");
}

#[tokio::test]
#[ignore = "needs OPROS_TEST_POSTGRES_URL (see README)"]
async fn instances_on_one_database_share_the_portal_rate_limit() {
    // Each instance alone would send 19 requests at once, together 38 into a
    // bucket of 20.
    let fake = FakePortal::start(FakePortalConfig {
        rate: (20.0, 20),
        ..FakePortalConfig::default()
    })
    .await
    .expect("fake portal starts");
    let Some((apps, _db)) =
        two_instances("instances::rate", &fake, &[("B24_RATE_LIMIT", "20/20")]).await
    else {
        return;
    };
    let sent_before = fake.calls().len();
    assert_eq!(call_from_all(&apps, &fake, 40).await, 80);
    let calls = fake.calls();
    let bounced = calls[sent_before..]
        .iter()
        .filter(|c| c.status == 503)
        .count();
    assert!(bounced <= 2, "{bounced} QUERY_LIMIT_EXCEEDED answers");
}

#[tokio::test]
#[ignore = "needs OPROS_TEST_POSTGRES_URL (see README)"]
async fn shared_bucket_paces_like_the_in_process_one() {
    let Some(pg) = postgres("instances::bucket").await else {
        return;
    };
    let conn = opros::db::connect(&pg.url).await.expect("connect");
    opros::db::migrate(&conn).await.expect("migrate");
    let bucket = DbRateBucket::for_shared_db(&conn).expect("PostgreSQL shares buckets");
    // 10 per second, bucket of 4: three go at once (one slot stays free), then
    // one every 100 ms.
    let rate = RateLimit {
        per_sec: 10.0,
        burst: 4,
    };
    // (start, end, wait) of each reservation; the database reads its clock
    // somewhere between start and end.
    let mut calls = Vec::new();
    for _ in 0..5 {
        let start = std::time::Instant::now();
        let wait = bucket
            .reserve("clinic.example:443", rate)
            .await
            .expect("reserve");
        calls.push((start, std::time::Instant::now(), wait));
    }
    let waits: Vec<Duration> = calls.iter().map(|c| c.2).collect();
    assert!(waits[..3].iter().all(Duration::is_zero), "{waits:?}");
    // The k-th request may go 100 ms × (k − 2) after the first one was counted.
    let (first_start, first_end, _) = calls[0];
    let slack = Duration::from_millis(2);
    for (k, (start, end, wait)) in calls.iter().enumerate().skip(3) {
        let due = Duration::from_millis(100 * (k as u64 - 2));
        let earliest = (*start + *wait).duration_since(first_end);
        let latest = (*end + *wait).duration_since(first_start);
        assert!(
            earliest <= due + slack && due <= latest + slack,
            "request {k}: due {due:?}, ready between {earliest:?} and {latest:?}"
        );
    }
    // Another portal has a bucket of its own.
    assert_eq!(
        bucket
            .reserve("other.example:443", rate)
            .await
            .expect("reserve"),
        Duration::ZERO
    );
    // After the portal's own 503 the bucket counts as full, although this one
    // request was all it had seen: the next goes when one slot has drained.
    // The database's clock moves on between the two statements; what it waited plus
    // what passed meanwhile is one slot's drain time (100 ms).
    let fill_start = std::time::Instant::now();
    bucket
        .mark_full("other.example:443", rate)
        .await
        .expect("fill");
    let after_fill = bucket
        .reserve("other.example:443", rate)
        .await
        .expect("reserve");
    let passed = fill_start.elapsed();
    assert!(
        !after_fill.is_zero() && after_fill + passed + slack >= Duration::from_millis(100),
        "waited {after_fill:?} after {passed:?}"
    );
    assert!(
        DbRateBucket::for_shared_db(&opros::db::connect("sqlite::memory:").await.expect("sqlite"))
            .is_none()
    );
}
