//! Storage on both backends: migrations, exclusive claims, idempotency keys, and a
//! whole robot → submit → comment flow. Each runs as `<name>::sqlite` and, ignored
//! unless asked for (`--include-ignored`, as CI does), `<name>::postgres`.

use chrono::Utc;
use opros::db;
use opros::invitations::{self, Channel, EntityRef, EntityType, NewInvitation};
use opros::outbox::{self, Job, jobs};

use crate::support::db::{TestDb, on_both_databases};
use crate::support::portal::{app_for_db, complete_survey, fake, install, robot_link};

fn new_invitation(key: Option<&str>) -> NewInvitation {
    NewInvitation {
        portal_id: None,
        channel: Channel::Webhook,
        entity: EntityRef {
            kind: EntityType::Deal,
            id: 42,
        },
        patient_name: "Смирнова Анна".into(),
        questionnaire_code: "pre_visit".into(),
        questionnaire_version: 1,
        lifetime_days: 7,
        reuse_active: false,
        dedupe_key: key.map(str::to_owned),
    }
}

on_both_databases!(claims_are_exclusive_and_keys_idempotent);
async fn claims_are_exclusive_and_keys_idempotent(test_db: TestDb) {
    let conn = db::connect(&test_db.url).await.unwrap();
    db::migrate(&conn).await.unwrap();
    db::migrate(&conn).await.unwrap(); // a second run is a no-op

    // The same request twice: one invitation.
    let a = invitations::create_or_reuse(&conn, &new_invitation(Some("k1")), Utc::now())
        .await
        .unwrap();
    let b = invitations::create_or_reuse(&conn, &new_invitation(Some("k1")), Utc::now())
        .await
        .unwrap();
    assert_eq!(a.invitation.id, b.invitation.id, "{}", test_db.backend);
    assert!(b.existing);

    // The same job key twice: one job.
    for _ in 0..2 {
        outbox::enqueue(
            &conn,
            None,
            &Job::WriteLinkField {
                invitation: a.invitation.id.clone(),
            },
            "job-1",
        )
        .await
        .unwrap();
    }
    for i in 0..40 {
        outbox::enqueue(
            &conn,
            None,
            &Job::WriteLinkField {
                invitation: a.invitation.id.clone(),
            },
            &format!("job-n{i}"),
        )
        .await
        .unwrap();
    }
    // Four workers claim at once, round after round: every job is claimed by
    // exactly one of them, and all of them are claimed.
    let now = Utc::now();
    let mut ids: Vec<i64> = Vec::new();
    for _ in 0..20 {
        let claims = futures::future::join_all((0..4).map(|_| jobs::claim(&conn, now, 7))).await;
        let round: Vec<i64> = claims
            .into_iter()
            .flat_map(|c| c.unwrap())
            .map(|j| j.id)
            .collect();
        if round.is_empty() {
            break;
        }
        ids.extend(round);
    }
    let total = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(
        ids.len(),
        total,
        "a job was claimed twice on {}",
        test_db.backend
    );
    assert_eq!(total, 41, "{}", test_db.backend);
    assert!(jobs::claim(&conn, now, 20).await.unwrap().is_empty());

    // The generated link secret is kept once.
    let s1 = db::setting_or_insert(&conn, "link_secret", "first")
        .await
        .unwrap();
    let s2 = db::setting_or_insert(&conn, "link_secret", "second")
        .await
        .unwrap();
    assert_eq!((s1.as_str(), s2.as_str()), ("first", "first"));
}

on_both_databases!(the_whole_flow);
async fn the_whole_flow(test_db: TestDb) {
    let fake = fake().await;
    let app = app_for_db(&fake, &test_db.url, &[]).await;
    install(&fake, &app).await;
    let (_, token) = robot_link(&fake, &app).await;
    let (_, survey) = app.get_json(&format!("/api/v1/surveys/{token}")).await;
    assert_eq!(
        survey["patient_name"], "Смирнова Анна Петровна",
        "{}",
        test_db.backend
    );
    complete_survey(&fake, &app).await;
    app.run_outbox().await;
    assert_eq!(fake.timeline_comments().len(), 1, "{}", test_db.backend);
    let (status, _) = app.get_json("/healthz").await;
    assert_eq!(status, 200);
}

on_both_databases!(group_writes_commit_together_and_fail_alone);
async fn group_writes_commit_together_and_fail_alone(test_db: TestDb) {
    let app = crate::support::spawn_app_on(&test_db.url, &[]).await;
    let writes = (0..40).map(|i| {
        let state = app.state.clone();
        async move {
            state
                .group_write(move |txn| {
                    Box::pin(async move {
                        db::put_setting(txn, &format!("group:{i}"), "stored").await?;
                        if i % 10 == 3 {
                            return Err(sea_orm::DbErr::Custom(format!("job {i} refuses")));
                        }
                        Ok(i)
                    })
                })
                .await
        }
    });
    let results = futures::future::join_all(writes).await;
    for (i, result) in results.into_iter().enumerate() {
        let stored = db::get_setting(&app.state.db, &format!("group:{i}"))
            .await
            .unwrap();
        if i % 10 == 3 {
            let err = result.expect_err("a failing job fails");
            assert!(
                err.to_string().contains("refuses"),
                "{}: {err}",
                test_db.backend
            );
            assert_eq!(stored, None, "{}: job {i}'s write undone", test_db.backend);
        } else {
            assert_eq!(result.unwrap(), i);
            assert_eq!(
                stored.as_deref(),
                Some("stored"),
                "{}: job {i}",
                test_db.backend
            );
        }
    }

    // The same request five times at once: one invitation, whichever commit
    // carries them (on PostgreSQL they race in separate transactions).
    let repeats = (0..5).map(|_| {
        let state = app.state.clone();
        async move {
            state
                .group_write(|txn| {
                    Box::pin(async move {
                        invitations::create_or_reuse(
                            txn,
                            &new_invitation(Some("same-robot-call")),
                            Utc::now(),
                        )
                        .await
                    })
                })
                .await
                .unwrap()
        }
    });
    let outcomes = futures::future::join_all(repeats).await;
    let first = &outcomes[0].invitation.id;
    assert!(outcomes.iter().all(|o| &o.invitation.id == first));
    assert_eq!(outcomes.iter().filter(|o| !o.existing).count(), 1);
    app.stop().await;
}
