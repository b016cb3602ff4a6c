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
        questionnaire_version_id: None,
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
                invitation: a.invitation.id.clone().into(),
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
                invitation: a.invitation.id.clone().into(),
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
        let claims =
            futures::future::join_all((0..4).map(|_| jobs::claim(&conn, now, 7, "w", &[]))).await;
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
    assert!(
        jobs::claim(&conn, now, 20, "w", &[])
            .await
            .unwrap()
            .is_empty()
    );

    // The generated link secret is kept once.
    let s1 = db::setting_or_insert(&conn, "link_secret", "first")
        .await
        .unwrap();
    let s2 = db::setting_or_insert(&conn, "link_secret", "second")
        .await
        .unwrap();
    assert_eq!((s1.as_str(), s2.as_str()), ("first", "first"));
}

on_both_databases!(a_claim_takes_none_of_the_rows_another_claim_took_between_its_read_and_write);
async fn a_claim_takes_none_of_the_rows_another_claim_took_between_its_read_and_write(
    test_db: TestDb,
) {
    let conn = db::connect(&test_db.url).await.unwrap();
    db::migrate(&conn).await.unwrap();
    // SQLite's worker reads through the pool and writes through the writer.
    let writer = db::connect_writer(&test_db.url).await.unwrap();
    let writer = writer.as_ref().unwrap_or(&conn);
    let inv = invitations::create_or_reuse(&conn, &new_invitation(None), Utc::now())
        .await
        .unwrap();
    for i in 0..10 {
        let job = Job::WriteLinkField {
            invitation: inv.invitation.id.clone().into(),
        };
        outbox::enqueue(&conn, None, &job, &format!("between-{i}"))
            .await
            .unwrap();
    }
    let now = Utc::now();
    // Another worker claims 4 of the 10 once this claim has read them as due and
    // before its UPDATE: the UPDATE's own check leaves those 4 alone.
    let other = std::sync::Mutex::new(Vec::new());
    let through = jobs::Through {
        reader: &conn,
        writer,
        turn: || async {
            let taken = jobs::claim(writer, now, 4, "other:1", &[]).await.unwrap();
            *other.lock().unwrap() = taken;
        },
    };
    let mine = jobs::claim_through(through, now, 10, "mine:1", &[])
        .await
        .unwrap();
    let other = other.into_inner().unwrap();
    assert_eq!((other.len(), mine.len()), (4, 6), "{}", test_db.backend);
    let mut all: Vec<i64> = other.iter().chain(&mine).map(|j| j.id).collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(
        all.len(),
        10,
        "a job was claimed twice on {}",
        test_db.backend
    );
    assert!(
        mine.iter()
            .all(|j| j.lease_owner.as_deref() == Some("mine:1") && j.lease.is_some()),
        "{}",
        test_db.backend
    );
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

on_both_databases!(a_writer_waiting_for_the_turn_gets_it_while_group_writes_keep_coming);
/// The group commit keeps the write turn for the writes queued while it committed,
/// but lets go of it for another writer waiting (the outbox's claim, a page's
/// write): that one gets in although every commit finds a new write queued. On
/// PostgreSQL there is no such turn (`write_turn` is `None`): there the test only
/// shows the chain of group writes committing on.
async fn a_writer_waiting_for_the_turn_gets_it_while_group_writes_keep_coming(test_db: TestDb) {
    use std::sync::atomic::Ordering;
    let app = crate::support::spawn_app_on(&test_db.url, &[]).await;
    let chain = Chain::default();
    tokio::spawn(chain.clone().write(app.state.clone()));
    let taker = async {
        while chain.written.load(Ordering::Acquire) < 50 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let turn = app.state.write_turn().await;
        let at = chain.written.load(Ordering::Acquire);
        chain.stop.store(true, Ordering::Release);
        drop(turn);
        at
    };
    let at = tokio::time::timeout(std::time::Duration::from_secs(60), taker)
        .await
        .expect("the waiting writer got the turn while the group writes went on");
    assert!(at >= 50, "{}: {at}", test_db.backend);
    app.stop().await;
}

/// Group writes each of which queues the next while it is being committed, until
/// stopped.
#[derive(Clone, Default)]
struct Chain {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    written: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Chain {
    fn write(self, state: opros::state::AppState) -> futures::future::BoxFuture<'static, ()> {
        use std::sync::atomic::Ordering;
        Box::pin(async move {
            let (chain, next_state) = (self.clone(), state.clone());
            state
                .group_write(move |txn| {
                    let (chain, state) = (chain.clone(), next_state.clone());
                    Box::pin(async move {
                        db::put_setting(txn, "chained", "x").await?;
                        if !chain.stop.load(Ordering::Acquire) {
                            // Polled once, the next write is queued now.
                            let mut next = chain.write(state);
                            let _ = futures::poll!(&mut next);
                            tokio::spawn(next);
                        }
                        Ok(())
                    })
                })
                .await
                .expect("written");
            self.written.fetch_add(1, Ordering::AcqRel);
        })
    }
}

on_both_databases!(new_links_queued_with_other_writes_all_commit_once);
async fn new_links_queued_with_other_writes_all_commit_once(test_db: TestDb) {
    use opros::db::entities::{invitation, outbox_job};
    use opros::invitations::issue::{Request, issue};
    use sea_orm::EntityTrait;

    // New links (on SQLite committed at once, in a transaction of their own), five
    // repeats of one of them and other callers' writes, all queued together.
    let app = crate::support::spawn_app_on(&test_db.url, &[]).await;
    let link = |key: String| {
        let state = app.state.clone();
        async move {
            let request = Request {
                portal_id: None,
                channel: Channel::Webhook,
                entity: EntityRef {
                    kind: EntityType::Deal,
                    id: 42,
                },
                given_name: Some("Смирнова Анна".into()),
                reuse_active: false,
                lifetime_days: 7,
                robot_event: Some(format!("run|{key}")),
                dedupe_key: Some(key),
                questionnaire: None,
            };
            issue(&state, request).await.map_err(|e| format!("{e:?}"))
        }
    };
    let links = (0..20)
        .map(|i| format!("robot:k{i}"))
        .chain((0..5).map(|_| "robot:k3".to_owned()))
        .map(link);
    let writes = (0..10).map(|i| {
        let state = app.state.clone();
        async move {
            state
                .group_write(move |txn| {
                    Box::pin(
                        async move { db::put_setting(txn, &format!("mixed:{i}"), "stored").await },
                    )
                })
                .await
        }
    });
    let (links, writes) = futures::future::join(
        futures::future::join_all(links),
        futures::future::join_all(writes),
    )
    .await;
    let links: Vec<_> = links.into_iter().map(|l| l.expect("issued")).collect();
    assert!(writes.iter().all(Result::is_ok), "{}", test_db.backend);
    let k3: Vec<_> = links
        .iter()
        .enumerate()
        .filter(|(i, _)| *i == 3 || *i >= 20)
        .map(|(_, (inv, existing))| (inv.id.clone(), *existing))
        .collect();
    assert!(
        k3.iter().all(|(id, _)| id == &k3[0].0),
        "{}: {k3:?}",
        test_db.backend
    );
    assert_eq!(k3.iter().filter(|(_, existing)| !existing).count(), 1);

    let stored = invitation::Entity::find().all(&app.state.db).await.unwrap();
    assert_eq!(stored.len(), 20, "{}", test_db.backend);
    for (inv, _) in &links {
        assert!(
            stored.contains(inv),
            "{}: {} reads back as returned",
            test_db.backend,
            inv.id
        );
    }
    // Every stored link has its jobs, and no job names a link that was not stored.
    let jobs = outbox_job::Entity::find().all(&app.state.db).await.unwrap();
    let named: std::collections::HashSet<&str> = jobs
        .iter()
        .filter_map(|j| j.payload["invitation"].as_str())
        .collect();
    let ids: std::collections::HashSet<&str> = stored.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(named, ids, "{}", test_db.backend);
    for i in 0..10 {
        let value = db::get_setting(&app.state.db, &format!("mixed:{i}"))
            .await
            .unwrap();
        assert_eq!(value.as_deref(), Some("stored"), "{}", test_db.backend);
    }
    app.stop().await;
}

on_both_databases!(a_worker_that_lost_its_lease_records_nothing_and_released_jobs_are_due_at_once);
async fn a_worker_that_lost_its_lease_records_nothing_and_released_jobs_are_due_at_once(
    test_db: TestDb,
) {
    use opros::db::entities::outbox_job;
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

    {
        let conn = db::connect(&test_db.url).await.unwrap();
        db::migrate(&conn).await.unwrap();
        let job = Job::WriteLinkField {
            invitation: "inv".to_owned().into(),
        };
        outbox::enqueue(&conn, None, &job, "fenced").await.unwrap();
        let now = Utc::now();
        let stalled = jobs::claim(&conn, now, 10, "host:1", &[]).await.unwrap();
        assert_eq!(stalled.len(), 1, "{}", test_db.backend);
        let stalled = stalled[0].clone();
        assert_eq!(stalled.lease_owner.as_deref(), Some("host:1"));
        // Nobody else gets a leased job, and the holder's heartbeat keeps it.
        assert!(
            jobs::claim(&conn, now, 10, "host:2", &[])
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            jobs::renew(&conn, &[stalled.lease.clone().unwrap()], now)
                .await
                .unwrap(),
            1
        );

        // The holder stalls past its lease; another worker takes the job over.
        let later = now + chrono::Duration::milliseconds(jobs::LEASE_MS + 1);
        let owner = jobs::claim(&conn, later, 10, "host:2", &[]).await.unwrap();
        assert_eq!(owner.len(), 1, "{}", test_db.backend);
        let owner = owner[0].clone();
        assert_ne!(owner.lease, stalled.lease);

        // The stalled worker wakes up: it no longer holds the job, cannot renew it,
        // and what it records is dropped.
        assert!(!jobs::holds(&conn, &stalled).await.unwrap());
        assert!(jobs::holds(&conn, &owner).await.unwrap());
        assert_eq!(
            jobs::renew(&conn, &[stalled.lease.clone().unwrap()], later)
                .await
                .unwrap(),
            0
        );
        jobs::finish(
            &conn,
            &owner,
            jobs::JobOutcome::Done(serde_json::json!({"by": "owner"})),
            later,
        )
        .await
        .unwrap();
        for late in [
            jobs::JobOutcome::Dead("late".into()),
            jobs::JobOutcome::RetryAt(later, "late".into()),
            jobs::JobOutcome::Done(serde_json::json!({"by": "stalled"})),
        ] {
            jobs::finish(&conn, &stalled, late, later).await.unwrap();
        }
        let row = outbox_job::Entity::find_by_id(owner.id)
            .one(&conn)
            .await
            .unwrap()
            .unwrap();
        assert!(row.done_at.is_some() && row.dead_at.is_none(), "{row:?}");
        assert_eq!(row.result, Some(serde_json::json!({"by": "owner"})));
        assert_eq!(row.last_error, None);

        // A pushback is deferred without counting as a failure.
        outbox::enqueue(&conn, None, &job, "deferred")
            .await
            .unwrap();
        let claimed = jobs::claim(&conn, later, 10, "host:2", &[]).await.unwrap();
        assert_eq!(claimed.len(), 1);
        let probe = later + chrono::Duration::seconds(5);
        jobs::finish(
            &conn,
            &claimed[0],
            jobs::JobOutcome::Deferred(probe, "limit".into()),
            later,
        )
        .await
        .unwrap();
        let row = outbox_job::Entity::find_by_id(claimed[0].id)
            .one(&conn)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((row.attempts, row.deferrals, row.paused), (1, 1, true));
        assert_eq!(jobs::failures(&row), 0);
        assert_eq!(row.run_at, probe.timestamp_millis());
        // A restart probes a paused job at once.
        let (_, probed) = jobs::recover(&conn, Some("host:9"), later).await.unwrap();
        assert_eq!(probed, 1, "{}", test_db.backend);

        // Leases given up at shutdown, or left by this instance's previous life, are
        // due at once; other instances' leases are left alone.
        let a = jobs::claim(&conn, later, 10, "host:3", &[]).await.unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(
            jobs::release(&conn, &[a[0].lease.clone().unwrap()])
                .await
                .unwrap(),
            1
        );
        let b = jobs::claim(&conn, later, 10, "host:4", &[]).await.unwrap();
        assert_eq!(b.len(), 1, "released: due at once on {}", test_db.backend);
        let (taken, _) = jobs::recover(&conn, Some("host:3"), later).await.unwrap();
        assert_eq!(taken, 0, "host:4's lease is not host:3's to take");
        let (taken, _) = jobs::recover(&conn, Some("host:4"), later).await.unwrap();
        assert_eq!(taken, 1);
        let left = outbox_job::Entity::find()
            .filter(outbox_job::Column::LockedUntil.is_not_null())
            .all(&conn)
            .await
            .unwrap();
        assert!(left.is_empty(), "{left:?}");
    }
}

on_both_databases!(a_rounds_done_jobs_are_recorded_together_only_where_the_lease_holds);
async fn a_rounds_done_jobs_are_recorded_together_only_where_the_lease_holds(test_db: TestDb) {
    use opros::db::entities::outbox_job;
    use sea_orm::{ActiveModelTrait, ActiveValue::Set, EntityTrait};
    use serde_json::json;

    let conn = db::connect(&test_db.url).await.unwrap();
    db::migrate(&conn).await.unwrap();
    let job = Job::WriteLinkField {
        invitation: "inv".to_owned().into(),
    };
    // Seven: chunks of four, two and one.
    for i in 0..7 {
        outbox::enqueue(&conn, None, &job, &format!("round-{i}"))
            .await
            .unwrap();
    }
    let now = Utc::now();
    let claimed = jobs::claim(&conn, now, 10, "host:1", &[]).await.unwrap();
    assert_eq!(claimed.len(), 7, "{}", test_db.backend);
    let lease = claimed[0].lease.clone().unwrap();
    assert!(claimed.iter().all(|j| j.lease.as_deref() == Some(&lease)));
    // One was retried before (its error goes once done); another was taken over by
    // a worker on another instance meanwhile (it records nothing here).
    let mut retried: outbox_job::ActiveModel = claimed[1].clone().into();
    retried.last_error = Set(Some("timeout".into()));
    retried.update(&conn).await.unwrap();
    let mut taken: outbox_job::ActiveModel = claimed[4].clone().into();
    taken.lease = Set(Some("other".into()));
    taken.update(&conn).await.unwrap();

    let done: Vec<(i64, serde_json::Value)> = claimed
        .iter()
        .map(|j| (j.id, json!({"result": j.id})))
        .collect();
    opros::db::prepared::finish_done_jobs(&conn, Some(&lease), &done, now)
        .await
        .unwrap();

    for (i, j) in claimed.iter().enumerate() {
        let row = outbox_job::Entity::find_by_id(j.id)
            .one(&conn)
            .await
            .unwrap()
            .unwrap();
        if i == 4 {
            assert!(row.done_at.is_none(), "{}: {row:?}", test_db.backend);
            assert_eq!(row.lease.as_deref(), Some("other"));
            continue;
        }
        assert!(row.done_at.is_some(), "{}: {row:?}", test_db.backend);
        assert_eq!(
            row.result,
            Some(json!({"result": j.id})),
            "{}",
            test_db.backend
        );
        assert_eq!(
            (
                row.lease,
                row.lease_owner,
                row.locked_until,
                row.last_error,
                row.paused
            ),
            (None, None, None, None, false),
            "{}",
            test_db.backend
        );
    }
    assert!(
        jobs::claim(&conn, now, 10, "host:1", &[])
            .await
            .unwrap()
            .is_empty(),
        "{}",
        test_db.backend
    );
}
