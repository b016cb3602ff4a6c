//! New links of concurrent callers written together: the group commit hands the
//! requests queued in a row to [`Fresh::write_all`], which stores their invitations
//! in one INSERT, their jobs in another and wakes the documents' waits in a third,
//! where one caller alone would cost three statements (issue 19). On SQLite,
//! [`Fresh::commit_at_once`] sends the same writes and the commit as one list of
//! statements first. Only requests that do not reuse an active link come here:
//! those read first, and a read must see the links written before it in the same
//! transaction.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use sea_orm::{DatabaseConnection, DatabaseTransaction, DbErr};

use super::{Issued, NewInvitation, by_dedupe_key, new_row};
use crate::db::group_commit::Batched;
use crate::db::prepared;
use crate::outbox::{self, Job};

/// The jobs a caller queues for its outcome (see `issue::store`).
pub(super) type JobsFor = Arc<dyn Fn(&Issued) -> Vec<(Job, String)> + Send + Sync>;

/// One caller's new link: the invitation unless its key is taken, and its jobs.
pub(super) struct Fresh {
    pub new: NewInvitation,
    pub now: DateTime<Utc>,
    pub jobs: JobsFor,
}

impl Batched for Fresh {
    type Output = Issued;

    fn write_all(
        txn: &DatabaseTransaction,
        items: Vec<Arc<Self>>,
    ) -> BoxFuture<'_, Result<Vec<Issued>, DbErr>> {
        Box::pin(async move {
            let rows: Vec<_> = items.iter().map(|i| new_row(&i.new, i.now)).collect();
            let inserted = prepared::insert_invitations(txn, &rows).await?;
            let mut outcomes = Vec::with_capacity(items.len());
            for (item, row) in items.iter().zip(rows) {
                if inserted.contains(&row.id) {
                    outcomes.push(Issued {
                        invitation: row,
                        existing: false,
                    });
                    continue;
                }
                // The key was taken: a repeat of a request stored before, or earlier
                // in this batch.
                let key = item.new.dedupe_key.as_deref().unwrap_or_default();
                match by_dedupe_key(txn, key).await? {
                    Some(found) => outcomes.push(Issued {
                        invitation: found,
                        existing: true,
                    }),
                    None => return Err(DbErr::RecordNotInserted),
                }
            }
            let now = Utc::now();
            let mut jobs = Vec::with_capacity(items.len() * 3);
            let mut replaced = Vec::new();
            for (item, outcome) in items.iter().zip(&outcomes) {
                outbox::rows_of(&mut jobs, item.new.portal_id, &(item.jobs)(outcome), now)?;
                // A new link replaces the document's older ones: their waits answer
                // `revoked`.
                if let (false, Some(portal)) = (outcome.existing, item.new.portal_id) {
                    replaced.push((portal, item.new.entity));
                }
            }
            prepared::insert_jobs(txn, jobs).await?;
            outbox::survey_wait::wake_documents(txn, &replaced, now).await?;
            Ok(outcomes)
        })
    }

    const AT_ONCE: bool = true;

    /// Every item's invitation, its jobs and its document's wakes, as `write_all`
    /// would store them for an invitation that is new, in one call to SQLite's
    /// writer (`prepared::commit_new_invitations`). An item whose key was taken
    /// (a repeat) is left to `write_all`, which finds the stored row.
    fn commit_at_once(
        db: &DatabaseConnection,
        items: Vec<Arc<Self>>,
    ) -> BoxFuture<'_, Result<Vec<Option<Issued>>, DbErr>> {
        Box::pin(async move {
            let rows: Vec<_> = items.iter().map(|i| new_row(&i.new, i.now)).collect();
            let now = Utc::now();
            let mut jobs = Vec::with_capacity(items.len() * 3);
            let mut wakes = Vec::with_capacity(items.len());
            let mut of_one = Vec::new();
            for (item, row) in items.iter().zip(&rows) {
                let outcome = Issued {
                    invitation: row.clone(),
                    existing: false,
                };
                outbox::rows_of(&mut of_one, item.new.portal_id, &(item.jobs)(&outcome), now)?;
                jobs.extend(of_one.drain(..).map(|job| prepared::JobOfNew {
                    invitation: row.id.clone(),
                    job,
                }));
                if let Some(portal) = item.new.portal_id {
                    let keys = outbox::survey_wait::document_keys(portal, item.new.entity);
                    wakes.push((row.id.clone(), keys));
                }
            }
            let inserted = prepared::commit_new_invitations(
                db,
                &rows,
                jobs,
                &wakes,
                outbox::survey_wait::KIND,
                now,
            )
            .await?;
            Ok(rows
                .into_iter()
                .map(|row| {
                    inserted.contains(&row.id).then_some(Issued {
                        invitation: row,
                        existing: false,
                    })
                })
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;

    use sea_orm::{ActiveModelTrait, ConnectionTrait, EntityTrait, Set};

    use super::{Fresh, Issued};
    use crate::crm::{Channel, EntityRef, EntityType};
    use crate::db::entities::{invitation, outbox_job};
    use crate::db::group_commit::Batched;
    use crate::db::prepared::{
        NewJob, insert_invitation, insert_invitations, insert_jobs, invitation_by_dedupe_key,
    };
    use crate::invitations::NewInvitation;
    use crate::outbox::{Job, survey_wait};

    /// A database with portal 7 in it.
    async fn sqlite() -> sea_orm::DatabaseConnection {
        let db = crate::db::connect("sqlite::memory:").await.expect("db");
        crate::db::migrate(&db).await.expect("migrated");
        let now = chrono::Utc::now();
        crate::db::entities::portal::ActiveModel {
            id: Set(7),
            member_id: Set("m7".to_owned()),
            domain: Set("clinic.bitrix24.ru".to_owned()),
            client_endpoint: Set("https://clinic.bitrix24.ru/rest/".to_owned()),
            status: Set(crate::db::entities::portal::INSTALLED),
            created_at: Set(now),
            updated_at: Set(now),
            ..Default::default()
        }
        .insert(&db)
        .await
        .expect("portal");
        db
    }

    const DEAL: EntityRef = EntityRef {
        kind: EntityType::Deal,
        id: 5,
    };

    /// A robot-like request on deal 5 of portal 7, with a job keyed by its link.
    fn fresh(key: &str) -> Arc<Fresh> {
        Arc::new(Fresh {
            new: NewInvitation {
                portal_id: Some(7),
                channel: Channel::App,
                entity: DEAL,
                patient_name: "Пациент".to_owned(),
                questionnaire_code: "pre_visit".to_owned(),
                questionnaire_version: 1,
                questionnaire_version_id: Some(3),
                lifetime_days: 7,
                reuse_active: false,
                dedupe_key: Some(key.to_owned()),
            },
            now: chrono::Utc::now(),
            jobs: Arc::new(|issued: &Issued| {
                let id = &issued.invitation.id;
                vec![(
                    Job::WriteLinkField {
                        invitation: id.clone().into(),
                    },
                    format!("invitation:{id}:field"),
                )]
            }),
        })
    }

    /// Each column of the `table` row whose `key` is `value` as stored, its type and
    /// literal, but for the columns in `differing`.
    async fn stored_as(
        db: &sea_orm::DatabaseConnection,
        table: &str,
        (key, value): (&str, &str),
        differing: &[&str],
    ) -> Vec<String> {
        let columns = db
            .query_all_raw(sea_orm::Statement::from_string(
                db.get_database_backend(),
                format!("SELECT name FROM pragma_table_info('{table}')"),
            ))
            .await
            .expect("columns");
        let mut stored = Vec::new();
        for c in columns {
            let name: String = c.try_get_by_index(0).expect("name");
            if differing.contains(&name.as_str()) {
                continue;
            }
            let row = db
                .query_one_raw(sea_orm::Statement::from_sql_and_values(
                    db.get_database_backend(),
                    format!(
                        "SELECT typeof({name}) || ':' || quote({name}) FROM {table} WHERE {key} = ?"
                    ),
                    [value.into()],
                ))
                .await
                .expect("read")
                .expect("row");
            stored.push(format!(
                "{name} = {}",
                row.try_get_by_index::<String>(0).expect("cell")
            ));
        }
        stored
    }

    #[tokio::test]
    async fn rows_passed_as_json_are_stored_as_rows_bound_value_by_value() {
        let db = sqlite().await;
        let mut bound = row("bound0000001", "kb");
        bound.portal_id = Some(7);
        bound.opened_at = Some(bound.created_at + chrono::Duration::microseconds(123_456));
        bound.questionnaire_version_id = Some(3);
        // Text the JSON has to escape: quotes, a backslash, control characters.
        bound.patient_name = "Анна \"Ю\" \\ Петрова\n\t\u{1}ё".to_owned();
        let passed = invitation::Model {
            id: "json00000001".to_owned(),
            dedupe_key: Some("kj".to_owned()),
            ..bound.clone()
        };
        assert!(insert_invitation(&db, &bound).await.expect("bound"));
        insert_invitations(&db, std::slice::from_ref(&passed))
            .await
            .expect("json");
        let differing = ["id", "dedupe_key"];
        let stored = stored_as(&db, "invitation", ("id", &bound.id), &differing).await;
        assert_eq!(stored.len(), 13, "{stored:?}");
        assert_eq!(
            stored,
            stored_as(&db, "invitation", ("id", &passed.id), &differing).await
        );

        // A job: sea-orm's own insert against the JSON rows.
        let at = bound.created_at;
        let payload = serde_json::json!({"kind": "write_link_field", "invitation": "bound0000001", "n": 1.5, "text": "\"\\\n\u{1}ё"});
        outbox_job::ActiveModel {
            portal_id: Set(Some(7)),
            kind: Set("write_link_field".to_owned()),
            payload: Set(payload.clone()),
            idempotency_key: Set("job:bound".to_owned()),
            attempts: Set(0),
            run_at: Set(1_800_000_000_123),
            deferrals: Set(0),
            paused: Set(false),
            created_at: Set(at),
            ..Default::default()
        }
        .insert(&db)
        .await
        .expect("bound job");
        insert_jobs(
            &db,
            vec![NewJob {
                portal_id: Some(7),
                kind: "write_link_field",
                payload: serde_json::value::to_raw_value(&payload).expect("JSON"),
                idempotency_key: "job:json".to_owned(),
                run_at: 1_800_000_000_123,
                created_at: at,
            }],
        )
        .await
        .expect("json job");
        let differing = ["id", "idempotency_key"];
        let stored = stored_as(
            &db,
            "outbox_job",
            ("idempotency_key", "job:bound"),
            &differing,
        )
        .await;
        assert_eq!(stored.len(), 15, "{stored:?}");
        assert_eq!(
            stored,
            stored_as(
                &db,
                "outbox_job",
                ("idempotency_key", "job:json"),
                &differing
            )
            .await
        );
    }

    #[tokio::test]
    async fn new_links_commit_at_once_and_a_taken_key_is_left_to_write_all() {
        let db = sqlite().await;
        assert!(
            insert_invitation(&db, &row("stored000001", "k0"))
                .await
                .expect("stored")
        );
        // A wait on the same deal, due much later: a new link makes it due now.
        // One on deal 50 stays as it was: its keys sort right before deal 5's.
        let key_on = |id: i64| {
            let deal = EntityRef {
                kind: EntityType::Deal,
                id,
            };
            format!("{}old:hash", survey_wait::document_keys(7, deal).start)
        };
        let (wait_key, other_key) = (key_on(5), key_on(50));
        let later = chrono::Utc::now().timestamp_millis() + 86_400_000;
        let wait = |key: &str| NewJob {
            portal_id: Some(7),
            kind: survey_wait::KIND,
            payload: serde_json::value::to_raw_value(&serde_json::json!({})).expect("JSON"),
            idempotency_key: key.to_owned(),
            run_at: later,
            created_at: chrono::Utc::now(),
        };
        insert_jobs(&db, vec![wait(&wait_key), wait(&other_key)])
            .await
            .expect("waits");

        // A key stored before, and one taken earlier in the same list.
        let items: Vec<_> = ["k0", "k1", "k2", "k1"].into_iter().map(fresh).collect();
        let outcomes = Fresh::commit_at_once(&db, items).await.expect("committed");
        let taken: Vec<bool> = outcomes.iter().map(Option::is_none).collect();
        assert_eq!(taken, [true, false, false, true]);
        let mut stored = HashSet::new();
        for issued in outcomes.into_iter().flatten() {
            assert!(!issued.existing);
            let read = invitation::Entity::find_by_id(issued.invitation.id.clone())
                .one(&db)
                .await
                .expect("read");
            assert_eq!(
                read.as_ref(),
                Some(&issued.invitation),
                "reads back as returned"
            );
            stored.insert(issued.invitation.id);
        }
        // Jobs only for the links stored, none for a link that was not.
        let jobs = outbox_job::Entity::find().all(&db).await.expect("jobs");
        let of_links: HashSet<String> = jobs
            .iter()
            .filter_map(|j| j.payload["invitation"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(of_links, stored);
        let wait = jobs
            .iter()
            .find(|j| j.idempotency_key == wait_key)
            .expect("wait kept");
        assert!(wait.run_at < later, "the wait was made due");
        let other = jobs
            .iter()
            .find(|j| j.idempotency_key == other_key)
            .expect("other wait kept");
        assert_eq!(other.run_at, later, "another deal's wait was left alone");

        // An error ends the list inside its transaction: nothing of it stays, and
        // the connection is not left in a transaction (BEGIN would fail next time).
        db.execute_unprepared(
            "CREATE TRIGGER refuse BEFORE INSERT ON outbox_job BEGIN SELECT RAISE(ABORT, 'refused'); END",
        )
        .await
        .expect("trigger");
        let refused = Fresh::commit_at_once(&db, vec![fresh("k9")]).await;
        assert!(refused.is_err_and(|e| e.to_string().contains("refused")));
        assert_eq!(
            invitation_by_dedupe_key(&db, "k9").await.expect("read"),
            None
        );
        db.execute_unprepared("DROP TRIGGER refuse")
            .await
            .expect("dropped");
        let again = Fresh::commit_at_once(&db, vec![fresh("k9")])
            .await
            .expect("again");
        assert!(again[0].is_some());
    }

    fn row(id: &str, key: &str) -> invitation::Model {
        let now = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        invitation::Model {
            id: id.to_owned(),
            portal_id: None,
            channel: Channel::App,
            entity_type: EntityType::Deal,
            entity_id: 1,
            patient_name: "Пациент".to_owned(),
            questionnaire_code: "pre_visit".to_owned(),
            questionnaire_version: 1,
            status: invitation::Status::Sent,
            dedupe_key: Some(key.to_owned()),
            created_at: now,
            opened_at: None,
            completed_at: None,
            expires_at: now,
            questionnaire_version_id: None,
        }
    }

    #[tokio::test]
    async fn many_invitations_in_one_go_report_which_were_inserted() {
        let db = crate::db::connect("sqlite::memory:").await.expect("db");
        crate::db::migrate(&db).await.expect("migrated");
        assert!(
            insert_invitation(&db, &row("stored000001", "k0"))
                .await
                .expect("one")
        );
        // Three chunks (4 + 2 + 1); a key stored before, and one taken earlier in
        // the same statement, insert nothing.
        let rows: Vec<_> = (1..=7)
            .map(|i| match i {
                3 => row("taken0000003", "k0"),
                5 => row("again0000005", "k4"),
                _ => row(&format!("fresh000000{i}"), &format!("k{i}")),
            })
            .collect();
        let inserted = insert_invitations(&db, &rows).await.expect("inserted");
        let mut ids: Vec<&str> = inserted.iter().map(String::as_str).collect();
        ids.sort_unstable();
        assert_eq!(
            ids,
            [
                "fresh0000001",
                "fresh0000002",
                "fresh0000004",
                "fresh0000006",
                "fresh0000007"
            ]
        );
        let stored = invitation_by_dedupe_key(&db, "k4").await.expect("read");
        assert_eq!(stored.map(|r| r.id).as_deref(), Some("fresh0000004"));
    }
}
