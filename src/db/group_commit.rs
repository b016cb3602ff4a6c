//! Group commit. SQLite commits one writer at a time, and a burst of robot calls
//! would otherwise queue for one transaction each. Here callers queue their writes,
//! and whoever gets the write turn commits everything queued so far in one
//! transaction. Should one caller's writes fail, that transaction is rolled back
//! and each caller's writes run again in a transaction of their own, so one failure
//! costs no one else anything. A caller hears back only after the commit that holds
//! its writes: an answer still means "stored". Writes of a caller that went away
//! while queued still go out with the next commit (a robot call Bitrix24 repeats
//! finds them by its dedupe key).
//!
//! Writes of one kind may also be queued as a [`Batched`] item: the items queued in
//! a row are then written together (a multi-row INSERT rather than one per caller),
//! so a batch of N callers costs a few statements, not N times as many. SQLite's
//! driver hands every statement to the connection's thread and waits for the answer
//! (issue 19's profile: ~14 context switches per robot call), and the committer
//! holds the write turn meanwhile.
//!
//! A kind may go further on SQLite ([`Batched::AT_ONCE`]): its items are then
//! written and committed by one call to the writer's thread
//! ([`Batched::commit_at_once`]), in a transaction of their own before the rest of
//! the batch. Under load each call waits 0.2–0.4 ms for the threads to be scheduled:
//! ~32 robot calls' new links took 2.4–3.4 ms as one call against 4.5–5.4 ms as six
//! (issue 19). Callers queued together are independent, so the order in which their
//! transactions commit is free.

use std::any::{Any, TypeId};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use futures::future::BoxFuture;
use sea_orm::{DatabaseConnection, DatabaseTransaction, DbErr};
use tokio::sync::oneshot;

type Value = Box<dyn Any + Send>;
type Run = Box<
    dyn for<'t> Fn(&'t DatabaseTransaction) -> BoxFuture<'t, Result<Value, DbErr>> + Send + Sync,
>;
type Reply = Box<dyn FnOnce(Result<Value, DbErr>) + Send + Sync>;
type Item = Arc<dyn Any + Send + Sync>;
type WriteAll =
    for<'t> fn(&'t DatabaseTransaction, Vec<Item>) -> BoxFuture<'t, Result<Vec<Value>, DbErr>>;
type AtOnce = for<'d> fn(
    &'d DatabaseConnection,
    Vec<Item>,
) -> BoxFuture<'d, Result<Vec<Option<Value>>, DbErr>>;

/// Writes that many callers' items can make together. `write_all` gets the items
/// queued in a row (at most [`MAX_BATCH`], in the order queued) and returns one value
/// per item, in that order; it may run again for any subset of them after a
/// rollback, and must use only the transaction it is given.
pub trait Batched: Send + Sync + Sized + 'static {
    type Output: Send + 'static;
    fn write_all(
        txn: &DatabaseTransaction,
        items: Vec<Arc<Self>>,
    ) -> BoxFuture<'_, Result<Vec<Self::Output>, DbErr>>;

    /// Whether [`commit_at_once`](Self::commit_at_once) is there to be used.
    const AT_ONCE: bool = false;

    /// SQLite only, where [`AT_ONCE`](Self::AT_ONCE): writes `items` (at most
    /// [`MAX_BATCH`]) and commits them in one call to the writer's thread, on `db`,
    /// the writer, outside any transaction. Returns one value per item, in order:
    /// `None` leaves the item to `write_all` in the ordinary transaction that
    /// follows, and nothing of it may have been stored. An error means nothing was
    /// stored: the items go to the ordinary transaction.
    fn commit_at_once(
        _db: &DatabaseConnection,
        items: Vec<Arc<Self>>,
    ) -> BoxFuture<'_, Result<Vec<Option<Self::Output>>, DbErr>> {
        let none = items.iter().map(|_| None).collect();
        Box::pin(async move { Ok(none) })
    }
}

/// Items written by one `write_all` or `commit_at_once` at most: bounds a
/// statement's rows and a transaction's size.
pub const MAX_BATCH: usize = 64;

/// One caller's writes, repeatable, and where their outcome goes.
pub struct Queued {
    run: Run,
    batch: Option<BatchPart>,
    reply: Reply,
}

/// A [`Batched`] item, type-erased: its kind, the item and its kind's `write_all`.
struct BatchPart {
    kind: TypeId,
    item: Item,
    write_all: WriteAll,
    at_once: Option<AtOnce>,
}

/// `items` as the kind `B` they were queued as: all of them, or none.
fn typed<B: Batched>(items: Vec<Item>) -> Option<Vec<Arc<B>>> {
    let count = items.len();
    let typed: Vec<Arc<B>> = items
        .into_iter()
        .filter_map(|i| i.downcast::<B>().ok())
        .collect();
    (typed.len() == count).then_some(typed)
}

/// A kind's values, checked to be one per item.
fn one_each<T>(values: Vec<T>, count: usize) -> Result<Vec<T>, DbErr> {
    if values.len() != count {
        return Err(DbErr::Custom(format!(
            "пакетная запись вернула {} значений вместо {count}",
            values.len()
        )));
    }
    Ok(values)
}

fn write_erased<B: Batched>(
    txn: &DatabaseTransaction,
    items: Vec<Item>,
) -> BoxFuture<'_, Result<Vec<Value>, DbErr>> {
    let count = items.len();
    let typed = typed::<B>(items);
    Box::pin(async move {
        let Some(typed) = typed else {
            return answer_lost();
        };
        let values = one_each(B::write_all(txn, typed).await?, count)?;
        Ok(values.into_iter().map(|v| Box::new(v) as Value).collect())
    })
}

fn at_once_erased<B: Batched>(
    db: &DatabaseConnection,
    items: Vec<Item>,
) -> BoxFuture<'_, Result<Vec<Option<Value>>, DbErr>> {
    let count = items.len();
    let typed = typed::<B>(items);
    Box::pin(async move {
        let Some(typed) = typed else {
            return answer_lost();
        };
        let values = one_each(B::commit_at_once(db, typed).await?, count)?;
        Ok(values
            .into_iter()
            .map(|v| v.map(|v| Box::new(v) as Value))
            .collect())
    })
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
        let run: Run = Box::new(move |txn| {
            let written = work(txn);
            Box::pin(async move { written.await.map(|v| Box::new(v) as Value) })
        });
        self.push(run, None)
    }

    /// Queues a [`Batched`] item: written together with the items of its kind
    /// queued right before and after it (see the module comment).
    pub fn submit_batched<B: Batched>(&self, item: B) -> Pending<B::Output> {
        let item: Item = Arc::new(item);
        let alone = Arc::clone(&item);
        let run: Run = Box::new(move |txn| {
            let written = write_erased::<B>(txn, vec![Arc::clone(&alone)]);
            Box::pin(async move { written.await?.pop().map_or_else(answer_lost, Ok) })
        });
        let batch = BatchPart {
            kind: TypeId::of::<B>(),
            item,
            write_all: write_erased::<B>,
            at_once: B::AT_ONCE.then_some(at_once_erased::<B> as AtOnce),
        };
        self.push(run, Some(batch))
    }

    fn push<T: Send + 'static>(&self, run: Run, batch: Option<BatchPart>) -> Pending<T> {
        let (tx, rx) = oneshot::channel();
        let queued = Queued {
            run,
            batch,
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

/// Commits the items of `batch` whose kind can ([`Batched::commit_at_once`]) through
/// `writer`, up to [`MAX_BATCH`] of a kind per transaction, and answers their
/// callers; returns the rest of `batch`, for [`commit`]. The caller holds the write
/// turn.
pub async fn commit_at_once(batch: Vec<Queued>, writer: &DatabaseConnection) -> Vec<Queued> {
    let (mut fast, mut rest): (Vec<Queued>, Vec<Queued>) = batch
        .into_iter()
        .partition(|q| q.batch.as_ref().is_some_and(|b| b.at_once.is_some()));
    // Stable: each kind's items stay in the order queued.
    fast.sort_by_key(|q| q.batch.as_ref().map(|b| b.kind));
    while !fast.is_empty() {
        let tail = fast.split_off(run_length(&fast));
        let run = std::mem::replace(&mut fast, tail);
        let Some(at_once) = run[0].batch.as_ref().and_then(|b| b.at_once) else {
            rest.extend(run);
            continue;
        };
        let items = run
            .iter()
            .filter_map(|q| q.batch.as_ref().map(|b| Arc::clone(&b.item)))
            .collect();
        match at_once(writer, items).await {
            Ok(values) => {
                for (queued, value) in run.into_iter().zip(values) {
                    match value {
                        Some(value) => (queued.reply)(Ok(value)),
                        None => rest.push(queued),
                    }
                }
            }
            // Rolled back, so the writes can run again (unlike a failed commit in
            // `commit`): on a local file SQLite answers a COMMIT with an error only
            // when the transaction did not commit, and the list rolls it back.
            Err(e) => {
                tracing::warn!(error = %e, writes = run.len(), "пакетная запись не удалась; записи повторяются в общей транзакции");
                rest.extend(run);
            }
        }
    }
    rest
}

/// How many of `queued`'s first items share the first one's kind, [`MAX_BATCH`] at most.
fn run_length(queued: &[Queued]) -> usize {
    let kind = |q: &Queued| q.batch.as_ref().map(|b| b.kind);
    let first = queued.first().map(kind);
    queued
        .iter()
        .take(MAX_BATCH)
        .take_while(|q| Some(kind(q)) == first)
        .count()
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
    while let Some(step) = step_of(&batch[values.len()..]) {
        let written = match step {
            Step::Alone(queued) => (queued.run)(&txn).await.map(|v| vec![v]),
            Step::Together(write_all, items) => write_all(&txn, items).await,
        };
        match written {
            Ok(written) => values.extend(written),
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

/// What to write next: one caller's writes, or up to [`MAX_BATCH`] items of one
/// kind queued in a row.
enum Step<'a> {
    Alone(&'a Queued),
    Together(WriteAll, Vec<Item>),
}

fn step_of(rest: &[Queued]) -> Option<Step<'_>> {
    let first = rest.first()?;
    let Some(part) = &first.batch else {
        return Some(Step::Alone(first));
    };
    let items: Vec<Item> = rest
        .iter()
        .take(MAX_BATCH)
        .map_while(|q| q.batch.as_ref().filter(|b| b.kind == part.kind))
        .map(|b| Arc::clone(&b.item))
        .collect();
    // A batch of one is the caller's own run, which checks its single value.
    if items.len() == 1 {
        return Some(Step::Alone(first));
    }
    Some(Step::Together(part.write_all, items))
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
