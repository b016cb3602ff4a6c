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
