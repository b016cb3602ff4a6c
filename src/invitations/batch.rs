//! New links of concurrent callers written together: the group commit hands the
//! requests queued in a row to [`Fresh::write_all`], which stores their invitations
//! in one multi-row INSERT, their jobs in another and wakes the documents' waits in
//! a third, where one caller alone would cost three statements (issue 19). Only
//! requests that do not reuse an active link come here: those read first, and a
//! read must see the links written before it in the same transaction.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use sea_orm::{DatabaseTransaction, DbErr};

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
}

#[cfg(test)]
mod tests {
    use crate::crm::{Channel, EntityType};
    use crate::db::entities::invitation;
    use crate::db::prepared::{insert_invitation, insert_invitations, invitation_by_dedupe_key};

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
