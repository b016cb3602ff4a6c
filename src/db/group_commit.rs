//! Group commit. SQLite commits one writer at a time, and a burst of robot calls
//! would otherwise queue for one transaction each. Here callers queue their writes,
//! and whoever gets the write turn commits everything queued so far in one
//! transaction. Should one caller's writes fail, that transaction is rolled back
//! and each caller's writes run again in a transaction of their own, so one failure
//! costs no one else anything. A caller hears back only after the commit that holds
//! its writes: an answer still means "stored". Writes of a caller that went away
//! while queued still go out with the next commit (a robot call Bitrix24 repeats
//! finds them by its dedupe key).

use std::any::Any;
use std::future::Future;
use std::sync::{Mutex, PoisonError};

use futures::future::BoxFuture;
use sea_orm::{DatabaseTransaction, DbErr};
use tokio::sync::oneshot;

type Value = Box<dyn Any + Send>;
type Run = Box<
    dyn for<'t> Fn(&'t DatabaseTransaction) -> BoxFuture<'t, Result<Value, DbErr>> + Send + Sync,
>;
type Reply = Box<dyn FnOnce(Result<Value, DbErr>) + Send + Sync>;

/// One caller's writes, repeatable, and where their outcome goes.
pub struct Queued {
    run: Run,
    reply: Reply,
}

/// Writes waiting for the next transaction.
#[derive(Default)]
pub struct GroupCommit {
    queue: Mutex<Vec<Queued>>,
}

/// A caller's answer: the value its writes produced, once committed.
pub type Pending<T> = oneshot::Receiver<Result<T, DbErr>>;

/// What a caller hears whose writes were dropped unrun: the committer stopped
/// before them, and logged why.
pub fn answer_lost<T>() -> Result<T, DbErr> {
    Err(DbErr::Custom(
        "запись не сохранена: транзакция прервана".to_owned(),
    ))
}

/// Waits for a caller's answer.
pub async fn answer<T>(pending: Pending<T>) -> Result<T, DbErr> {
    pending.await.unwrap_or_else(|_| answer_lost())
}

impl GroupCommit {
    /// Queues writes. `work` may run more than once (see the module comment), must
    /// use only the transaction it is given, and must not wait for the write turn:
    /// the committer holds it.
    pub fn submit<T, F>(&self, work: F) -> Pending<T>
    where
        T: Send + 'static,
        F: for<'t> Fn(&'t DatabaseTransaction) -> BoxFuture<'t, Result<T, DbErr>>
            + Send
            + Sync
            + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let queued = Queued {
            run: Box::new(move |txn| {
                let written = work(txn);
                Box::pin(async move { written.await.map(|v| Box::new(v) as Value) })
            }),
            reply: Box::new(move |outcome: Result<Value, DbErr>| {
                let answer = outcome.and_then(|v| match v.downcast::<T>() {
                    Ok(v) => Ok(*v),
                    Err(_) => answer_lost(),
                });
                let _ = tx.send(answer);
            }),
        };
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(queued);
        rx
    }

    /// Everything queued so far, for the caller holding the write turn.
    pub fn take(&self) -> Vec<Queued> {
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Runs `batch` in `txn` and commits; `begin` starts the transactions of the
/// one-by-one rerun after a failure. The caller holds the write turn throughout.
pub async fn commit<B, Fut>(batch: Vec<Queued>, txn: DatabaseTransaction, begin: B)
where
    B: Fn() -> Fut,
    Fut: Future<Output = Result<DatabaseTransaction, DbErr>>,
{
    let mut values = Vec::with_capacity(batch.len());
    let mut failure = None;
    for queued in &batch {
        match (queued.run)(&txn).await {
            Ok(value) => values.push(value),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    match failure {
        None => {
            // A failed commit is not rerun: it may have committed after all (a
            // connection lost on the way), and not every caller's writes are
            // safe to apply twice.
            let committed = txn.commit().await;
            if let Err(e) = &committed {
                tracing::error!(error = %e, writes = batch.len(), "групповая запись в базу не удалась");
            }
            for (queued, value) in batch.into_iter().zip(values) {
                let outcome = match &committed {
                    Ok(()) => Ok(value),
                    Err(e) => Err(DbErr::Custom(format!("запись не сохранена: {e}"))),
                };
                (queued.reply)(outcome);
            }
        }
        Some(e) if batch.len() == 1 => {
            let _ = txn.rollback().await;
            if let Some(queued) = batch.into_iter().next() {
                (queued.reply)(Err(e));
            }
        }
        Some(e) => {
            let _ = txn.rollback().await;
            tracing::warn!(error = %e, writes = batch.len(), "групповая запись не удалась; записи повторяются по одной");
            for queued in batch {
                let outcome = alone(&queued, &begin).await;
                (queued.reply)(outcome);
            }
        }
    }
}

async fn alone<B, Fut>(queued: &Queued, begin: &B) -> Result<Value, DbErr>
where
    B: Fn() -> Fut,
    Fut: Future<Output = Result<DatabaseTransaction, DbErr>>,
{
    let txn = begin().await?;
    match (queued.run)(&txn).await {
        Ok(value) => txn.commit().await.map(|()| value),
        Err(e) => {
            let _ = txn.rollback().await;
            Err(e)
        }
    }
}
